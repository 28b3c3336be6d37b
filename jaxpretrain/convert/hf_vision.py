"""Hugging Face ResNet and ViT checkpoints as jaxpretrain vision models.

`convert.load_hf(directory)` comes here for `model_type` 'resnet' and 'vit':
`config.json` becomes a `ResNet` or `ViT` encoder (under a `Classifier` for
`*ForImageClassification`), and the weights are renamed onto its variables:

  * PyTorch `Conv2d` weights (out, in, h, w) become Flax kernels (h, w, in, out),
    `Linear` weights (out, in) become (in, out);
  * LayerNorm and BatchNorm `weight` becomes `scale`; BatchNorm running
    statistics go to the `batch_stats` collection (`running_mean` -> `mean`,
    `running_var` -> `var`), so eval mode (`train=False`) matches PyTorch's;
  * ResNet's `embedder.embedder` is our `stem`, `encoder.stages.{s}.layers.{b}`
    our `stage{s}_block{b}` (see `jaxpretrain.models.resnet`); ViT's names
    follow `jaxpretrain.models.vit`, both as the Hub stores them
    (`encoder.layer.{i}.attention.attention.query`) and as `transformers` 5
    names its modules (`layers.{i}.attention.q_proj`, what `state_dict()` holds);
  * `ResNetForImageClassification`'s `classifier.1` (after a flatten) and
    `ViTForImageClassification`'s `classifier` are our `head/dense`: ResNet's
    classifies the pooled features, ViT's the class token after the final norm
    (`ViT(pooling='cls')`).

Images go in as NHWC float32 in [0, 1]. When the directory holds a
`preprocessor_config.json` that normalises (`image_mean`, `image_std`,
`do_normalize`), those become the encoder's `input_mean` and `input_std`, so
the model applies the processor's normalisation itself. Without one, inputs go
in unchanged, already normalised as the checkpoint expects.

Weights the converter does not know are an error; known ones the chosen model
does not use (ViTModel's tanh pooler, ViT's mask token, BatchNorm's
`num_batches_tracked`, a classifier under a `*Model` architecture) are logged
at INFO level.
"""

from collections.abc import Mapping
import json
import os
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxpretrain import paths
from jaxpretrain import tree as tree_lib
from jaxpretrain.convert import rules
from jaxpretrain.errors import ConfigError
from jaxpretrain.models.heads import Classifier
from jaxpretrain.models.resnet import BOTTLENECK_EXPANSION, ResNet
from jaxpretrain.models.vit import ViT

Variables = dict[str, Any]

# model_type -> the prefix its classifiers put before the encoder's weights, and the
# encoder-only architecture.
_FAMILIES = {
    'resnet': ('resnet.', 'ResNetModel'),
    'vit': ('vit.', 'ViTModel'),
}
MODEL_TYPES: tuple[str, ...] = tuple(sorted(_FAMILIES))

# architectures[0] -> (model_type, task). 'backbone' is the bare encoder.
VISION_ARCHITECTURES: dict[str, tuple[str, str]] = {
    'ResNetModel': ('resnet', 'backbone'),
    'ResNetForImageClassification': ('resnet', 'image_classification'),
    'ViTModel': ('vit', 'backbone'),
    'ViTForImageClassification': ('vit', 'image_classification'),
}

# (regex over a PyTorch module name, without the family prefix; our module path; kind).
# Kinds: 'conv' (OIHW -> HWIO), 'linear' (transpose), 'norm' (LayerNorm), 'batch_norm'
# (parameters and running statistics), 'embeddings' (ViT's bare tensors).
_RESNET_RULES = (
    (r'embedder\.embedder\.convolution', r'encoder/stem/conv', 'conv'),
    (r'embedder\.embedder\.normalization', r'encoder/stem/norm', 'batch_norm'),
    (r'encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution',
     r'encoder/stage\1_block\2/conv\3', 'conv'),
    (r'encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization',
     r'encoder/stage\1_block\2/norm\3', 'batch_norm'),
    (r'encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution',
     r'encoder/stage\1_block\2/shortcut_conv', 'conv'),
    (r'encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization',
     r'encoder/stage\1_block\2/shortcut_norm', 'batch_norm'),
    (r'classifier\.1', r'head/dense', 'linear'),  # classifier.0 is a Flatten
)
_VIT_RULES = (
    (r'embeddings', r'encoder/embeddings', 'embeddings'),
    (r'embeddings\.patch_embeddings\.projection', r'encoder/embeddings/patch_embeddings', 'conv'),
    # The Hub's names (what save_pretrained writes).
    (r'encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)',
     r'encoder/layer_\1/attention/\2', 'linear'),
    (r'encoder\.layer\.(\d+)\.attention\.output\.dense', r'encoder/layer_\1/attention/output',
     'linear'),
    (r'encoder\.layer\.(\d+)\.layernorm_before', r'encoder/layer_\1/attention_norm', 'norm'),
    (r'encoder\.layer\.(\d+)\.intermediate\.dense', r'encoder/layer_\1/mlp/input', 'linear'),
    (r'encoder\.layer\.(\d+)\.output\.dense', r'encoder/layer_\1/mlp/output', 'linear'),
    (r'encoder\.layer\.(\d+)\.layernorm_after', r'encoder/layer_\1/mlp_norm', 'norm'),
    # transformers 5's module names (a live model's state_dict()).
    (r'layers\.(\d+)\.attention\.q_proj', r'encoder/layer_\1/attention/query', 'linear'),
    (r'layers\.(\d+)\.attention\.k_proj', r'encoder/layer_\1/attention/key', 'linear'),
    (r'layers\.(\d+)\.attention\.v_proj', r'encoder/layer_\1/attention/value', 'linear'),
    (r'layers\.(\d+)\.attention\.o_proj', r'encoder/layer_\1/attention/output', 'linear'),
    (r'layers\.(\d+)\.layernorm_before', r'encoder/layer_\1/attention_norm', 'norm'),
    (r'layers\.(\d+)\.mlp\.fc1', r'encoder/layer_\1/mlp/input', 'linear'),
    (r'layers\.(\d+)\.mlp\.fc2', r'encoder/layer_\1/mlp/output', 'linear'),
    (r'layers\.(\d+)\.layernorm_after', r'encoder/layer_\1/mlp_norm', 'norm'),
    (r'layernorm', r'encoder/final_norm', 'norm'),
    (r'pooler\.dense', r'encoder/pooler/dense', 'linear'),  # ViTModel's dense + tanh
    (r'classifier', r'head/dense', 'linear'),
)
_RULES = {'resnet': _RESNET_RULES, 'vit': _VIT_RULES}

# Each kind's parameter names, ours as (collection, name), and layout.
_PARAM, _STATS = 'params', 'batch_stats'
_KINDS = {
    'conv': rules.Kind({'weight': (_PARAM, 'kernel'), 'bias': (_PARAM, 'bias')},
                       weight=rules.conv_kernel),
    'linear': rules.Kind({'weight': (_PARAM, 'kernel'), 'bias': (_PARAM, 'bias')},
                         weight=rules.linear_kernel),
    'norm': rules.Kind({'weight': (_PARAM, 'scale'), 'bias': (_PARAM, 'bias')}),
    'batch_norm': rules.Kind({'weight': (_PARAM, 'scale'), 'bias': (_PARAM, 'bias'),
                              'running_mean': (_STATS, 'mean'), 'running_var': (_STATS, 'var'),
                              # A step counter; momentum is fixed.
                              'num_batches_tracked': rules.Unused()}),
    'embeddings': rules.Kind({'cls_token': (_PARAM, 'cls_token'),
                              'position_embeddings': (_PARAM, 'position_embeddings'),
                              # Masked image modelling only.
                              'mask_token': (_PARAM, 'mask_token')}),
}


def read_preprocessor_config(directory: str | os.PathLike) -> dict[str, Any] | None:
  """The `preprocessor_config.json` of a Hugging Face model directory, or None without one."""
  path = paths.as_path(directory) / 'preprocessor_config.json'
  if not path.is_file():
    return None
  return json.loads(path.read_text())


def from_state_dict(hf_config: Mapping[str, Any], state_dict: Mapping[str, Any], *,
                    architecture: str | None = None,
                    preprocessor: Mapping[str, Any] | None = None
                    ) -> tuple[nn.Module, Variables]:
  """A ResNet or ViT config dict and state dict as a jaxpretrain model and its variables.

  Args:
    hf_config: the contents of a `config.json` (or a `transformers` config's
      `to_dict()`) with `model_type` 'resnet' or 'vit'.
    state_dict: PyTorch weight names to numpy arrays.
    architecture: overrides `architectures[0]`, e.g. 'ViTModel' for the
      encoder of a `ViTForImageClassification`; without either, the encoder.
    preprocessor: the contents of a `preprocessor_config.json`; its
      `image_mean`/`image_std` (when `do_normalize`) become part of the model,
      which then takes images in [0, 1].

  Returns:
    `(model, variables)`: `*Model` gives the bare `ResNet` or `ViT` (its
    variables at the root of each collection), `*ForImageClassification` a
    `Classifier` with the encoder under `encoder/` and the head under `head/`.
    ResNets' variables hold `params` and `batch_stats`, ViTs' `params`.

  Raises:
    ConfigError: an unsupported architecture or configuration value.
    CheckpointMismatchError: unknown, missing or wrongly shaped weights.
  """
  model_type = hf_config.get('model_type')
  if model_type not in _FAMILIES:
    raise ConfigError(f'model_type {model_type!r} is not a vision model; '
                      f'jaxpretrain.convert.hf_vision reads {list(MODEL_TYPES)} checkpoints.')
  prefix, architecture, task = rules.resolve(hf_config, architecture, _FAMILIES,
                                             VISION_ARCHITECTURES, backbone='encoder')
  mean, std = _normalisation(preprocessor, hf_config.get('num_channels') or 3)
  encoder = (_resnet if model_type == 'resnet' else _vit)(hf_config)
  if mean is not None:
    encoder = encoder.clone(input_mean=mean, input_std=std)
  num_labels = hf_config.get('num_labels') or len(hf_config.get('id2label') or {}) or 2
  model = encoder if task == 'backbone' else Classifier(encoder, num_labels)
  flat, sources, unused = rules.rename(state_dict, prefix, _RULES[model_type], _KINDS)
  variables = rules.collect(flat, sources, unused, _expected_shapes(model, hf_config),
                            architecture)
  if task == 'backbone':
    variables = {name: tree['encoder'] for name, tree in variables.items()}
  return model, variables


def _resnet(hf: Mapping[str, Any]) -> ResNet:
  """Our `ResNet` for a `ResNetConfig` dict (defaults as theirs: ResNet-50)."""
  get = lambda key, default: default if hf.get(key) is None else hf[key]
  _require(hf, 'ResNet', 'hidden_act', ('relu',))
  block = get('layer_type', 'bottleneck')
  if block not in ('basic', 'bottleneck'):
    raise ConfigError(f"ResNet with layer_type={block!r} is not supported (only 'basic' or "
                      "'bottleneck').")
  hidden_sizes = tuple(get('hidden_sizes', (256, 512, 1024, 2048)))
  depths = tuple(get('depths', (3, 4, 6, 3)))
  if len(hidden_sizes) != len(depths):
    raise ConfigError(f'ResNet with hidden_sizes={list(hidden_sizes)} and depths={list(depths)} '
                      'is not supported: give one hidden size per stage.')
  widths = hidden_sizes
  if block == 'bottleneck':
    # Our bottlenecks output BOTTLENECK_EXPANSION times their width, as theirs reduce by it.
    if any(h % BOTTLENECK_EXPANSION for h in hidden_sizes):
      raise ConfigError(f'bottleneck ResNet with hidden_sizes={list(hidden_sizes)} is not '
                        f'supported: each must be a multiple of {BOTTLENECK_EXPANSION}.')
    widths = tuple(h // BOTTLENECK_EXPANSION for h in hidden_sizes)
  return ResNet(stage_sizes=depths, block=block, widths=widths, stem='imagenet',
                stem_width=get('embedding_size', 64),
                downsample_in_first_stage=bool(get('downsample_in_first_stage', False)),
                downsample_in_bottleneck=bool(get('downsample_in_bottleneck', False)))


def _vit(hf: Mapping[str, Any]) -> ViT:
  """Our `ViT` (class-token features) for a `ViTConfig` dict (defaults as theirs: ViT-B/16)."""
  get = lambda key, default: default if hf.get(key) is None else hf[key]
  _require(hf, 'ViT', 'hidden_act', ('gelu',))  # exact (erf) GELU, as our blocks compute it
  _require(hf, 'ViT', 'qkv_bias', (True,))
  d = get('hidden_size', 768)
  return ViT(image_size=_square(get('image_size', 224), 'image_size'),
             patch_size=_square(get('patch_size', 16), 'patch_size'),
             channels=get('num_channels', 3), hidden=d, depth=get('num_hidden_layers', 12),
             heads=get('num_attention_heads', 12), mlp_size=get('intermediate_size', 4 * d),
             dropout=float(get('hidden_dropout_prob', 0.0)),
             attention_dropout=float(get('attention_probs_dropout_prob', 0.0)),
             layer_norm_eps=get('layer_norm_eps', 1e-12), class_token=True, pooling='cls',
             initializer_range=get('initializer_range', 0.02))


def _require(hf: Mapping[str, Any], family: str, key: str, supported: tuple[Any, ...]) -> None:
  """Raises unless `hf[key]` (when set) is one of the `supported` values."""
  if hf.get(key) is not None and hf[key] not in supported:
    raise ConfigError(f'{family} with {key}={hf[key]!r} is not supported (only '
                      f'{" or ".join(repr(s) for s in supported)}).')


def _square(size: int | list[int], key: str) -> int:
  """A side length from an int or an (h, w) pair, which must be equal."""
  if isinstance(size, int):
    return size
  if len(size) == 2 and size[0] == size[1]:
    return int(size[0])
  raise ConfigError(f'ViT with {key}={list(size)} is not supported (only square ones, '
                    'an int or two equal sides).')


def _normalisation(preprocessor: Mapping[str, Any] | None, channels: int
                   ) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
  """The per-channel `(mean, std)` a preprocessor config normalises by, or (None, None)."""
  if not preprocessor or not preprocessor.get('do_normalize', True):
    return None, None
  mean, std = preprocessor.get('image_mean'), preprocessor.get('image_std')
  if mean is None or std is None:
    return None, None
  mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
  if mean.size not in (1, channels) or std.size not in (1, channels) or not np.all(std > 0):
    raise ConfigError(
        f"preprocessor_config.json's image_mean={mean.tolist()} and image_std={std.tolist()} "
        f'are not supported for {channels} channels (only one value or one per channel, and '
        'positive standard deviations).')
  return (tuple(float(m) for m in np.broadcast_to(mean, (channels,))),
          tuple(float(s) for s in np.broadcast_to(std, (channels,))))


def _expected_shapes(model: nn.Module, hf: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Our model's variable shapes by `collection/`-led path, the encoder always under `encoder/`."""
  encoder = model.encoder if isinstance(model, Classifier) else model
  # ResNets take any size; ViTs the one their position table is built for.
  size = encoder.image_size if isinstance(encoder, ViT) else 64
  image = jnp.zeros((1, size, size, hf.get('num_channels') or 3), jnp.float32)
  batch = {'image': image} if isinstance(model, Classifier) else image
  shapes = rules.shapes(model, batch)
  if not isinstance(model, Classifier):
    shapes = {name: {'encoder': tree} for name, tree in shapes.items()}
  return {f'{name}/{p}': tuple(x.shape) for name, tree in shapes.items()
          for p, x in tree_lib.flatten(tree).items()}
