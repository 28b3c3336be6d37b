"""Hugging Face checkpoints: converted models match `transformers` on padded batches."""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.torch import save_file as save_torch_file
import torch
import transformers

from jaxpretrain import convert, finetune
from jaxpretrain.errors import CheckpointMismatchError, ConfigError
from jaxpretrain.models import (BertForMaskedLM, GPTForCausalLM, Regressor, SequenceClassifier,
                                TokenClassifier, Transformer)
from tests.helpers import copy_of

V, D, B, L = 99, 32, 3, 10
PAD = {'bert': 0, 'roberta': 1, 'distilbert': 0, 'gpt2': 0}


def hf_config(model_type, **overrides):
  """A tiny `transformers` config: hidden 32, 2 layers, 4 heads, MLP 37, vocab 99, 64 positions."""
  if model_type == 'distilbert':
    return transformers.DistilBertConfig(vocab_size=V, dim=D, n_layers=2, n_heads=4, hidden_dim=37,
                                         max_position_embeddings=64, **overrides)
  if model_type == 'gpt2':
    return transformers.GPT2Config(vocab_size=V, n_embd=D, n_layer=2, n_head=4, n_inner=37,
                                   n_positions=64, bos_token_id=V - 1, eos_token_id=V - 1,
                                   **overrides)
  config = {'bert': transformers.BertConfig, 'roberta': transformers.RobertaConfig}[model_type]
  return config(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=37, max_position_embeddings=64, pad_token_id=PAD[model_type],
                **overrides)


def hf_model(architecture, model_type, **overrides):
  """A random `transformers` model in eval mode; every weight (biases, norms too) is perturbed."""
  torch.manual_seed(0)
  model = getattr(transformers, architecture)(hf_config(model_type, **overrides)).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
  return model


def save(model, directory, *, pickle=False):
  """`save_pretrained`, or the older `pytorch_model.bin` layout (all of the state dict)."""
  if pickle:
    model.config.architectures = [type(model).__name__]  # As save_pretrained records it.
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), pathlib.Path(directory) / 'pytorch_model.bin')
  else:
    model.save_pretrained(directory)
  return directory


def padded_batch(model_type, seed=0):
  """Rows padded at the end by 0, 3 and 6 tokens; BERT also gets two segments."""
  rng = np.random.default_rng(seed)
  input_ids = rng.integers(3, V - 1, (B, L))
  attention_mask = np.ones((B, L), np.int64)
  for row, pad in enumerate((0, 3, 6)):
    attention_mask[row, L - pad:] = 0
  input_ids[attention_mask == 0] = PAD[model_type]
  batch = {'input_ids': input_ids, 'attention_mask': attention_mask}
  if model_type == 'bert':
    batch['token_type_ids'] = (np.arange(L) >= np.array([[5], [3], [2]])).astype(np.int64)
  return batch


def run_both(directory, hf, batch, **hf_kwargs):
  """Our converted model's and `transformers`' outputs on the same batch."""
  model, variables = convert.load_hf(directory)
  ours = jax.jit(model.apply)(variables, {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()})
  with torch.no_grad():
    theirs = hf(**{k: torch.from_numpy(v) for k, v in batch.items()}, **hf_kwargs)
  return model, ours, theirs


def max_diff(a, b):
  return float(np.max(np.abs(np.asarray(a) - b.detach().numpy())))


def mlm_labels(batch, seed=1):
  """Original ids at about a third of the real tokens, -100 (ignored) elsewhere."""
  rng = np.random.default_rng(seed)
  chosen = (rng.uniform(size=batch['input_ids'].shape) < 0.35) & (batch['attention_mask'] == 1)
  chosen[:, 1] = True
  return np.where(chosen, batch['input_ids'], -100)


def cross_entropy(logits, labels):
  """Mean token cross-entropy over labels that are not -100, as `transformers` computes it."""
  where = labels != -100
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), jnp.where(where, labels, 0))
  return float(jnp.sum(losses * where) / jnp.sum(where))


@pytest.mark.parametrize('architecture,model_type', [('BertForMaskedLM', 'bert'),
                                                     ('RobertaForMaskedLM', 'roberta'),
                                                     ('DistilBertForMaskedLM', 'distilbert')])
def test_masked_lm_parity(tmp_path, architecture, model_type):
  hf = hf_model(architecture, model_type)
  batch = padded_batch(model_type)
  labels = mlm_labels(batch)
  model, ours, theirs = run_both(save(hf, tmp_path), hf, batch, labels=torch.from_numpy(labels))
  assert isinstance(model, BertForMaskedLM)
  with torch.no_grad():
    hidden = hf.base_model(**{k: torch.from_numpy(v) for k, v in batch.items()})
  assert max_diff(ours['hidden_states'], hidden.last_hidden_state) < 1e-4
  assert max_diff(ours['logits'], theirs.logits) < 1e-4
  assert abs(cross_entropy(ours['logits'], labels) - theirs.loss.item()) < 1e-5


@pytest.mark.parametrize('pickle', [False, True])
def test_gpt2_lm_parity_from_safetensors_and_pytorch_pickle(tmp_path, pickle):
  hf = hf_model('GPT2LMHeadModel', 'gpt2')
  batch = padded_batch('gpt2')
  labels = np.where(batch['attention_mask'] == 1, batch['input_ids'], -100)
  directory = save(hf, tmp_path, pickle=pickle)
  assert (tmp_path / ('pytorch_model.bin' if pickle else 'model.safetensors')).is_file()
  model, ours, theirs = run_both(directory, hf, batch, labels=torch.from_numpy(labels))
  assert isinstance(model, GPTForCausalLM)
  with torch.no_grad():
    hidden = hf.transformer(**{k: torch.from_numpy(v) for k, v in batch.items()})
  assert max_diff(ours['hidden_states'], hidden.last_hidden_state) < 1e-4
  assert max_diff(ours['logits'], theirs.logits) < 1e-4
  next_token = cross_entropy(ours['logits'][:, :-1], labels[:, 1:])
  assert abs(next_token - theirs.loss.item()) < 1e-5


def test_bert_model_backbone_parity_with_pooler(tmp_path):
  hf = hf_model('BertModel', 'bert')
  batch = padded_batch('bert')
  model, ours, theirs = run_both(save(hf, tmp_path), hf, batch)
  assert type(model) is Transformer and model.config.pooler
  assert max_diff(ours['hidden_states'], theirs.last_hidden_state) < 1e-4
  assert max_diff(ours['pooled'], theirs.pooler_output) < 1e-4
  params = convert.hf_params(tmp_path)
  assert sorted(params) == ['encoder']
  assert params['encoder']['pooler']['dense']['kernel'].shape == (D, D)


@pytest.mark.parametrize('architecture,model_type,num_labels,ours_type', [
    ('BertForSequenceClassification', 'bert', 3, SequenceClassifier),
    ('RobertaForSequenceClassification', 'roberta', 3, SequenceClassifier),
    ('DistilBertForSequenceClassification', 'distilbert', 3, SequenceClassifier),
    ('BertForSequenceClassification', 'bert', 1, Regressor),
    ('RobertaForTokenClassification', 'roberta', 5, TokenClassifier),
])
def test_classifier_parity(tmp_path, architecture, model_type, num_labels, ours_type):
  hf = hf_model(architecture, model_type, num_labels=num_labels)
  batch = padded_batch(model_type)
  model, ours, theirs = run_both(save(hf, tmp_path), hf, batch)
  assert type(model) is ours_type
  logits = theirs.logits[..., 0] if ours_type is Regressor else theirs.logits
  assert ours['logits'].shape == tuple(logits.shape)
  assert max_diff(ours['logits'], logits) < 1e-4


@pytest.fixture(scope='module')
def bert_dir(tmp_path_factory):
  """A saved tiny BertForMaskedLM, copied and broken by the error tests."""
  return save(hf_model('BertForMaskedLM', 'bert'), tmp_path_factory.mktemp('bert'))


def test_clear_errors_for_malformed_directories(bert_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match='no config.json'):
    convert.load_hf(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
  with pytest.raises(FileNotFoundError, match='model.safetensors'):
    convert.load_hf(tmp_path)
  with pytest.raises(ConfigError, match="model_type 't5' is not supported"):
    convert.load_hf(copy_of(bert_dir, tmp_path, config={'model_type': 't5'}))
  with pytest.raises(ConfigError, match="'BertForPreTraining' is not supported.*BertForMaskedLM"):
    convert.load_hf(copy_of(bert_dir, tmp_path, config={'architectures': ['BertForPreTraining']}))
  with pytest.raises(ConfigError, match='position_embedding_type'):
    convert.load_hf(copy_of(bert_dir, tmp_path, config={'position_embedding_type': 'relative_key'}))
  with pytest.raises(CheckpointMismatchError,
                     match=r'bert\.encoder\.layer\.1\.intermediate\.dense\.weight \(32, 37\) for '
                           r'encoder/layer_1/mlp/input/kernel \(32, 40\)'):
    convert.load_hf(copy_of(bert_dir, tmp_path, config={'intermediate_size': 40}))
  wrong = np.zeros((V, 8), np.float32)
  with pytest.raises(CheckpointMismatchError, match='bert.embeddings.word_embeddings.weight'):
    convert.load_hf(copy_of(bert_dir, tmp_path,
                            weights={'bert.embeddings.word_embeddings.weight': wrong}))
  with pytest.raises(CheckpointMismatchError, match='lacks.*encoder/layer_0/mlp_norm/scale'):
    convert.load_hf(copy_of(bert_dir, tmp_path,
                            weights={'bert.encoder.layer.0.output.LayerNorm.weight': None}))
  with pytest.raises(CheckpointMismatchError, match='match nothing.*bert.encoder.adapter.weight'):
    convert.load_hf(copy_of(bert_dir, tmp_path,
                            weights={'bert.encoder.adapter.weight': np.zeros(3, np.float32)}))


def test_backbone_of_an_mlm_checkpoint_and_from_pretrained_reads_hf_directories(bert_dir, caplog):
  with caplog.at_level('INFO'):
    model, variables = convert.load_hf(bert_dir, architecture='BertModel')
  assert type(model) is Transformer and 'cls.predictions.bias' in caplog.text
  full = convert.hf_params(bert_dir)
  assert sorted(full) == ['encoder', 'head']
  jax.tree.map(np.testing.assert_array_equal, variables['params'], full['encoder'])
  # A classifier's parameters as at init (zeros stand in for random values).
  params = {'encoder': jax.tree.map(np.zeros_like, full['encoder']),
            'head': {'dense': {'kernel': np.zeros((D, 4), np.float32),
                               'bias': np.zeros(4, np.float32)}}}
  grafted = finetune.from_pretrained(str(bert_dir), select='encoder/.*').init(
      params, jax.random.PRNGKey(1))
  jax.tree.map(np.testing.assert_array_equal, grafted, {**full, 'head': params['head']})


def test_safetensors_need_no_torch_and_pickles_say_so(bert_dir, tmp_path, monkeypatch):
  torch.save({'w': torch.ones(2)}, tmp_path / 'pytorch_model.bin')
  (tmp_path / 'config.json').write_text((bert_dir / 'config.json').read_text())
  bf16 = tmp_path / 'bf16'
  bf16.mkdir()
  save_torch_file({'w': torch.tensor([1.5, -2.0], dtype=torch.bfloat16)},
                  bf16 / 'model.safetensors')
  monkeypatch.setitem(sys.modules, 'torch', None)  # `import torch` now fails.
  model, _ = convert.load_hf(bert_dir)
  assert isinstance(model, BertForMaskedLM)
  np.testing.assert_array_equal(convert.read_state_dict(bf16)['w'], [1.5, -2.0])
  with pytest.raises(ImportError, match='needs PyTorch.*safetensors'):
    convert.load_hf(tmp_path)
