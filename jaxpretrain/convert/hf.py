"""Hugging Face BERT, RoBERTa, DistilBERT and GPT-2 checkpoints as jaxpretrain models.

`load_hf(directory)` reads a directory written by `save_pretrained` (or
downloaded from the Hub): `config.json` becomes a `TransformerConfig` and the
task model named by `architectures[0]`, and the weights are renamed onto the
model's parameter tree:

  * PyTorch `Linear` weights (out, in) are transposed to Flax kernels (in, out);
    GPT-2's `Conv1D` weights are already (in, out), and its fused `c_attn`
    splits into `query`, `key` and `value`;
  * LayerNorm `weight` (or `gamma`) becomes `scale`, embeddings' `weight`
    becomes `embedding`;
  * tied decoders (`cls.predictions.decoder`, `lm_head.decoder`,
    `vocab_projector`, GPT-2's `lm_head`) are the word embeddings again and are
    not stored twice; their bias is the head's `bias`;
  * classification heads: BERT's `pooler` + `classifier`, RoBERTa's
    `classifier.dense` (tanh) + `classifier.out_proj` and DistilBERT's
    `pre_classifier` (ReLU) + `classifier` are the backbone's pooler and our
    `head/dense`, so they run as `SequenceClassifier(pooling='pooled')`.

Weights the converter does not know are an error; known ones the chosen model
does not use (BERT's next-sentence head, GPT-2's causal-mask buffers, an MLM head
under a backbone-only architecture) are logged at INFO level.

ResNet and ViT checkpoints (`model_type` 'resnet' or 'vit') take the same entry
points and are converted by `jaxpretrain.convert.hf_vision`.
"""

from collections.abc import Mapping
import os
import re
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxpretrain import tree as tree_lib
from jaxpretrain.convert import files, hf_vision, rules
from jaxpretrain.errors import ConfigError
from jaxpretrain.models import memory
from jaxpretrain.models.core import set_fields
from jaxpretrain.models.resnet import ResNet
from jaxpretrain.models.text_heads import (BertForMaskedLM, GPTForCausalLM, Regressor,
                                           SequenceClassifier, TokenClassifier)
from jaxpretrain.models.transformer import Transformer, TransformerConfig
from jaxpretrain.models.vit import ViT

Params = dict[str, Any]

# The models `load_hf` returns bare, without a task head.
_ENCODERS = (Transformer, ResNet, ViT)

# model_type -> the prefix its task models put before the backbone's weights, and
# the backbone-only architecture.
_FAMILIES = {
    'bert': ('bert.', 'BertModel'),
    'roberta': ('roberta.', 'RobertaModel'),
    'distilbert': ('distilbert.', 'DistilBertModel'),
    'gpt2': ('transformer.', 'GPT2Model'),
}

# architectures[0] -> (model_type, task). 'backbone' is the bare `Transformer`.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    'BertModel': ('bert', 'backbone'),
    'BertForMaskedLM': ('bert', 'masked_lm'),
    'BertForSequenceClassification': ('bert', 'sequence_classification'),
    'BertForTokenClassification': ('bert', 'token_classification'),
    'RobertaModel': ('roberta', 'backbone'),
    'RobertaForMaskedLM': ('roberta', 'masked_lm'),
    'RobertaForSequenceClassification': ('roberta', 'sequence_classification'),
    'RobertaForTokenClassification': ('roberta', 'token_classification'),
    'DistilBertModel': ('distilbert', 'backbone'),
    'DistilBertForMaskedLM': ('distilbert', 'masked_lm'),
    'DistilBertForSequenceClassification': ('distilbert', 'sequence_classification'),
    'DistilBertForTokenClassification': ('distilbert', 'token_classification'),
    'GPT2Model': ('gpt2', 'backbone'),
    'GPT2LMHeadModel': ('gpt2', 'causal_lm'),
}

_ACTIVATIONS = {'gelu': 'gelu', 'relu': 'relu', 'gelu_new': 'gelu_new',
                'gelu_pytorch_tanh': 'gelu_new'}

# (regex over a PyTorch module name, without the family prefix; our module path; kind).
# Kinds: 'linear' (transpose), 'conv1d' (already (in, out)), 'qkv' (GPT-2's fused
# projection), 'norm', 'embedding', 'bias' (a bare bias parameter), 'decoder' (tied LM
# projection: its weight is the word embeddings unless untied, its bias the head's).
_BERT_RULES = (
    (r'embeddings\.word_embeddings', r'encoder/embeddings/word_embeddings', 'embedding'),
    (r'embeddings\.position_embeddings', r'encoder/embeddings/position_embeddings', 'embedding'),
    (r'embeddings\.token_type_embeddings', r'encoder/embeddings/token_type_embeddings',
     'embedding'),
    (r'embeddings\.LayerNorm', r'encoder/embeddings/layer_norm', 'norm'),
    (r'encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)', r'encoder/layer_\1/attention/\2',
     'linear'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense', r'encoder/layer_\1/attention/output',
     'linear'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.LayerNorm', r'encoder/layer_\1/attention_norm',
     'norm'),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense', r'encoder/layer_\1/mlp/input', 'linear'),
    (r'encoder\.layer\.(\d+)\.output\.dense', r'encoder/layer_\1/mlp/output', 'linear'),
    (r'encoder\.layer\.(\d+)\.output\.LayerNorm', r'encoder/layer_\1/mlp_norm', 'norm'),
    (r'pooler\.dense', r'encoder/pooler/dense', 'linear'),
    (r'cls\.predictions\.transform\.dense', r'head/dense', 'linear'),
    (r'cls\.predictions\.transform\.LayerNorm', r'head/layer_norm', 'norm'),
    (r'cls\.predictions', r'head', 'bias'),
    (r'cls\.predictions\.decoder', r'head', 'decoder'),
    (r'lm_head\.dense', r'head/dense', 'linear'),
    (r'lm_head\.layer_norm', r'head/layer_norm', 'norm'),
    (r'lm_head', r'head', 'bias'),
    (r'lm_head\.decoder', r'head', 'decoder'),
    (r'classifier\.dense', r'encoder/pooler/dense', 'linear'),  # RoBERTa: dense + tanh
    (r'classifier\.out_proj', r'head/dense', 'linear'),
    (r'classifier', r'head/dense', 'linear'),
)
_DISTILBERT_RULES = (
    (r'embeddings\.word_embeddings', r'encoder/embeddings/word_embeddings', 'embedding'),
    (r'embeddings\.position_embeddings', r'encoder/embeddings/position_embeddings', 'embedding'),
    (r'embeddings\.LayerNorm', r'encoder/embeddings/layer_norm', 'norm'),
    (r'transformer\.layer\.(\d+)\.attention\.q_lin', r'encoder/layer_\1/attention/query', 'linear'),
    (r'transformer\.layer\.(\d+)\.attention\.k_lin', r'encoder/layer_\1/attention/key', 'linear'),
    (r'transformer\.layer\.(\d+)\.attention\.v_lin', r'encoder/layer_\1/attention/value', 'linear'),
    (r'transformer\.layer\.(\d+)\.attention\.out_lin', r'encoder/layer_\1/attention/output',
     'linear'),
    (r'transformer\.layer\.(\d+)\.sa_layer_norm', r'encoder/layer_\1/attention_norm', 'norm'),
    (r'transformer\.layer\.(\d+)\.ffn\.lin1', r'encoder/layer_\1/mlp/input', 'linear'),
    (r'transformer\.layer\.(\d+)\.ffn\.lin2', r'encoder/layer_\1/mlp/output', 'linear'),
    (r'transformer\.layer\.(\d+)\.output_layer_norm', r'encoder/layer_\1/mlp_norm', 'norm'),
    (r'vocab_transform', r'head/dense', 'linear'),
    (r'vocab_layer_norm', r'head/layer_norm', 'norm'),
    (r'vocab_projector', r'head', 'decoder'),
    (r'pre_classifier', r'encoder/pooler/dense', 'linear'),  # dense + ReLU
    (r'classifier', r'head/dense', 'linear'),
)
_GPT2_RULES = (
    (r'wte', r'encoder/embeddings/word_embeddings', 'embedding'),
    (r'wpe', r'encoder/embeddings/position_embeddings', 'embedding'),
    (r'h\.(\d+)\.ln_1', r'encoder/layer_\1/attention_norm', 'norm'),
    (r'h\.(\d+)\.attn\.c_attn', r'encoder/layer_\1/attention', 'qkv'),
    (r'h\.(\d+)\.attn\.c_proj', r'encoder/layer_\1/attention/output', 'conv1d'),
    (r'h\.(\d+)\.ln_2', r'encoder/layer_\1/mlp_norm', 'norm'),
    (r'h\.(\d+)\.mlp\.c_fc', r'encoder/layer_\1/mlp/input', 'conv1d'),
    (r'h\.(\d+)\.mlp\.c_proj', r'encoder/layer_\1/mlp/output', 'conv1d'),
    (r'ln_f', r'encoder/final_norm', 'norm'),
    (r'lm_head', r'head', 'decoder'),
)
_RULES = {'bert': _BERT_RULES, 'roberta': _BERT_RULES, 'distilbert': _DISTILBERT_RULES,
          'gpt2': _GPT2_RULES}

# Stored weights no model here uses: position-id and causal-mask buffers of older
# `transformers`, and BERT's next-sentence head.
_UNUSED = re.compile(r'(.*\.)?position_ids|h\.\d+\.attn\.(masked_)?bias|cls\.seq_relationship\..*')

# Each kind's parameter names, ours, and layout.
_LINEAR = {'weight': 'kernel', 'bias': 'bias'}
_KINDS = {
    'linear': rules.Kind(_LINEAR, weight=rules.linear_kernel),
    'conv1d': rules.Kind(_LINEAR),
    'qkv': rules.Kind(_LINEAR, split=('query', 'key', 'value')),
    'norm': rules.Kind({'weight': 'scale', 'bias': 'bias', 'gamma': 'scale', 'beta': 'bias'}),
    'embedding': rules.Kind({'weight': 'embedding'}),
    'bias': rules.Kind({'bias': 'bias'}),
    # The decoder's bias is the head's `bias`, which older versions store twice; sorted
    # names put `*.bias` before `*.decoder.bias`.
    'decoder': rules.Kind({'weight': 'decoder/kernel', 'bias': 'bias'},
                          weight=rules.linear_kernel, repeats=True),
}
# With tied word embeddings the decoder's weight is the embedding table again.
_TIED_KINDS = {**_KINDS, 'decoder': _KINDS['decoder']._replace(
    leaves={'weight': rules.Unused('tied to the word embeddings'), 'bias': 'bias'})}


def load_hf(directory: str | os.PathLike, *, architecture: str | None = None,
            scan_layers: bool = False) -> tuple[nn.Module, Params]:
  """A Hugging Face model directory as a jaxpretrain model and its variables.

  Args:
    directory: holds `config.json` and `model.safetensors` (read without
      PyTorch) or `pytorch_model.bin` (needs PyTorch), or sharded versions;
      for vision models, optionally a `preprocessor_config.json` whose
      normalisation the model then applies itself (see `hf_vision`).
    architecture: overrides `architectures[0]` of `config.json`, e.g.
      'BertModel' to load only the backbone of a `BertForMaskedLM`. Without
      either, the family's backbone-only architecture.
    scan_layers: a Transformer or ViT whose blocks run under `nn.scan`, its
      layers' weights stacked under `layers/` (`models.memory`).

  Returns:
    `(model, variables)`. `*Model` architectures give the bare `Transformer`
    backbone (its parameters at the root of `variables['params']`), or the bare
    `ResNet` or `ViT` encoder; `*ForMaskedLM` a `BertForMaskedLM`,
    `GPT2LMHeadModel` a `GPTForCausalLM`, `*ForSequenceClassification` a
    `SequenceClassifier` (a `Regressor` when `num_labels == 1`),
    `*ForTokenClassification` a `TokenClassifier` and
    `*ForImageClassification` a `Classifier`, each with the backbone under
    `encoder/` and the task layers under `head/`. ResNets' variables also hold
    the BatchNorm statistics under `batch_stats`.

  Raises:
    MissingFileError: no `config.json` or no weights file.
    ConfigError: an unsupported `model_type`, architecture or option.
    CheckpointMismatchError: unknown, missing or wrongly shaped weights.

  Example:
    >>> model, variables = load_hf('bert-tiny/')
    >>> out = model.apply(variables, {'input_ids': ids, 'attention_mask': mask})
    >>> model, variables = load_hf('resnet-tiny/')  # a ResNetForImageClassification
    >>> logits = model.apply(variables, {'image': images_in_0_1}, train=False)['logits']
  """
  model, variables = from_state_dict(
      files.read_config(directory), files.read_state_dict(directory), architecture=architecture,
      preprocessor=hf_vision.read_preprocessor_config(directory))
  if not scan_layers:
    return model, variables
  scanned = set_fields(model, scan_layers=True)
  if scanned is model:
    raise ConfigError(f'scan_layers=True: {type(model).__name__} has no Transformer blocks to scan')
  return scanned, {**variables, 'params': memory.stack_layers(variables['params'])}


def hf_variables(directory: str | os.PathLike, *, architecture: str | None = None) -> Params:
  """All variables of a Hugging Face model directory, named as our task models name them.

  Each collection (`params`, and ResNets' `batch_stats`) holds the backbone
  under `encoder/` (also for `*Model` architectures) and any task layers under
  `head/`, as in a `Classifier` or `SequenceClassifier` built on the backbone.

  Example:
    >>> stats = hf_variables('resnet-tiny/')['batch_stats']
    >>> model_state, report = finetune.graft(model_state['batch_stats'], stats,
    ...                                      select='encoder/.*')
  """
  model, variables = load_hf(directory, architecture=architecture)
  if isinstance(model, _ENCODERS):
    return {name: {'encoder': tree} for name, tree in variables.items()}
  return dict(variables)


def hf_params(directory: str | os.PathLike, *, architecture: str | None = None) -> Params:
  """The parameters of a Hugging Face model directory, named as our task models name them.

  The backbone is under `encoder/` (also for `*Model` architectures) and any
  task layers under `head/`, so `finetune.from_pretrained` grafts them
  directly; select `'encoder/.*'` to start a new head. `hf_variables` also
  gives the other collections (BatchNorm statistics).

  Example:
    >>> transform = finetune.from_pretrained(lambda: hf_params('bert-tiny/'),
    ...                                      select='encoder/.*')
  """
  return hf_variables(directory, architecture=architecture)['params']


def from_state_dict(hf_config: Mapping[str, Any], state_dict: Mapping[str, Any], *,
                    architecture: str | None = None,
                    preprocessor: Mapping[str, Any] | None = None
                    ) -> tuple[nn.Module, Params]:
  """`load_hf` on a config dict and a state dict of arrays already in memory.

  Args:
    hf_config: the contents of a `config.json` (or `transformers` config's
      `to_dict()`).
    state_dict: PyTorch weight names to numpy arrays.
    architecture: as in `load_hf`.
    preprocessor: for vision models, the contents of a
      `preprocessor_config.json` (see `hf_vision.from_state_dict`).
  """
  model_type = hf_config.get('model_type')
  if model_type in hf_vision.MODEL_TYPES:
    return hf_vision.from_state_dict(hf_config, state_dict, architecture=architecture,
                                     preprocessor=preprocessor)
  if model_type not in _FAMILIES:
    raise ConfigError(f'model_type {model_type!r} is not supported; jaxpretrain.convert reads '
                      f'{sorted([*_FAMILIES, *hf_vision.MODEL_TYPES])} checkpoints.')
  prefix, architecture, task = rules.resolve(hf_config, architecture, _FAMILIES, ARCHITECTURES,
                                             backbone='backbone')
  has_pooler = any(k.removeprefix(prefix).startswith('pooler.') for k in state_dict)
  model = _model(hf_config, task, has_pooler)
  kinds = _TIED_KINDS if model.config.tie_word_embeddings else _KINDS
  flat, sources, unused = rules.rename(state_dict, prefix, _RULES[model_type], kinds,
                                      unused=_UNUSED.fullmatch)
  params = rules.collect(flat, sources, unused, _expected_shapes(model), architecture)
  if isinstance(model, Transformer):
    params = params['encoder']
  return model, {'params': params}


def _model(hf: Mapping[str, Any], task: str, has_pooler: bool) -> nn.Module:
  """The task model for `task` on the backbone `hf` describes."""
  sequence = task == 'sequence_classification'
  # The encoders' classification heads start with a dense layer on the first token:
  # BERT's pooler, RoBERTa's classifier.dense, DistilBERT's pre_classifier.
  cfg = _transformer_config(hf, pooler=has_pooler or sequence)
  if task == 'backbone':
    return Transformer(cfg)
  if task == 'masked_lm':
    return BertForMaskedLM(cfg)
  if task == 'causal_lm':
    return GPTForCausalLM(cfg)
  num_labels = hf.get('num_labels') or len(hf.get('id2label') or {}) or 2
  dropout = hf.get('classifier_dropout')
  if hf['model_type'] == 'distilbert':
    dropout = hf.get('seq_classif_dropout', 0.2) if sequence else hf.get('dropout', 0.1)
  dropout = cfg.dropout if dropout is None else float(dropout)
  if sequence and num_labels == 1:  # As in `transformers`: one label is regression.
    return Regressor(cfg, pooling='pooled', dropout=dropout)
  if sequence:
    return SequenceClassifier(cfg, num_labels, pooling='pooled', dropout=dropout)
  return TokenClassifier(cfg, num_labels, dropout=dropout)


def _transformer_config(hf: Mapping[str, Any], *, pooler: bool) -> TransformerConfig:
  """Our `TransformerConfig` for a `transformers` config dict (defaults as theirs)."""
  model_type = hf['model_type']
  get = lambda key, default: default if hf.get(key) is None else hf[key]
  if model_type == 'gpt2':
    for key, ok in (('scale_attn_weights', True), ('scale_attn_by_inverse_layer_idx', False),
                    ('add_cross_attention', False)):
      if get(key, ok) != ok:
        raise ConfigError(f'GPT-2 with {key}={hf[key]} is not supported (only {key}={ok}).')
    d = get('n_embd', 768)
    pad = get('pad_token_id', get('eos_token_id', 0))
    return TransformerConfig(
        vocab_size=get('vocab_size', 50257), hidden_size=d, num_layers=get('n_layer', 12),
        num_heads=get('n_head', 12), intermediate_size=get('n_inner', 4 * d),
        max_position_embeddings=get('n_positions', 1024), type_vocab_size=0,
        dropout=get('resid_pdrop', 0.1), attention_dropout=get('attn_pdrop', 0.1),
        layer_norm_eps=get('layer_norm_epsilon', 1e-5), pre_norm=True, causal=True,
        activation=_activation(get('activation_function', 'gelu_new')),
        pad_token_id=pad, tie_word_embeddings=get('tie_word_embeddings', True), pooler=False,
        initializer_range=get('initializer_range', 0.02))
  if model_type == 'distilbert':
    return TransformerConfig(
        vocab_size=get('vocab_size', 30522), hidden_size=get('dim', 768),
        num_layers=get('n_layers', 6), num_heads=get('n_heads', 12),
        intermediate_size=get('hidden_dim', 3072),
        max_position_embeddings=get('max_position_embeddings', 512), type_vocab_size=0,
        dropout=get('dropout', 0.1), attention_dropout=get('attention_dropout', 0.1),
        layer_norm_eps=1e-12, activation=_activation(get('activation', 'gelu')),
        pad_token_id=get('pad_token_id', 0), tie_word_embeddings=get('tie_word_embeddings', True),
        pooler=pooler, pooler_activation='relu', initializer_range=get('initializer_range', 0.02))
  for key, ok in (('position_embedding_type', 'absolute'), ('is_decoder', False),
                  ('add_cross_attention', False)):
    if get(key, ok) != ok:
      raise ConfigError(f'{model_type} with {key}={hf[key]!r} is not supported (only {ok!r}).')
  pad = get('pad_token_id', 1 if model_type == 'roberta' else 0)
  return TransformerConfig(
      vocab_size=get('vocab_size', 30522), hidden_size=get('hidden_size', 768),
      num_layers=get('num_hidden_layers', 12), num_heads=get('num_attention_heads', 12),
      intermediate_size=get('intermediate_size', 3072),
      max_position_embeddings=get('max_position_embeddings', 512),
      type_vocab_size=get('type_vocab_size', 2), dropout=get('hidden_dropout_prob', 0.1),
      attention_dropout=get('attention_probs_dropout_prob', 0.1),
      layer_norm_eps=get('layer_norm_eps', 1e-12),
      activation=_activation(get('hidden_act', 'gelu')), pad_token_id=pad,
      position_offset=pad + 1 if model_type == 'roberta' else 0,
      tie_word_embeddings=get('tie_word_embeddings', True), pooler=pooler,
      initializer_range=get('initializer_range', 0.02))


def _activation(name: str) -> str:
  if name not in _ACTIVATIONS:
    raise ConfigError(f'activation {name!r} is not supported; use one of {sorted(_ACTIVATIONS)}.')
  return _ACTIVATIONS[name]


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
  """Our model's parameter shapes by `/`-joined path, always with the backbone under `encoder/`."""
  batch = {'input_ids': jnp.zeros((1, 1), jnp.int32)}
  params = rules.shapes(model, batch)['params']
  if isinstance(model, Transformer):
    params = {'encoder': params}
  return {p: tuple(x.shape) for p, x in tree_lib.flatten(params).items()}
