"""Hugging Face ResNet and ViT checkpoints: converted models match `transformers` in eval mode."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file
import torch
import transformers

from jaxpretrain import convert, finetune
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import CheckpointMismatchError, ConfigError
from jaxpretrain.models.heads import Classifier
from jaxpretrain.models.resnet import ResNet
from jaxpretrain.models.vit import ViT
from tests.helpers import copy_of

B, NUM_LABELS = 2, 3
RESNET_SIZE, VIT_SIZE = 32, 16
# Per-channel statistics unlike any default, so that a swapped channel would show.
MEAN, STD = (0.2, 0.4, 0.6), (0.5, 0.25, 2.0)


def resnet_config(layer_type='basic', **overrides):
  """Embedding 8, two stages of one block: (8, 16) channels basic, (16, 32) bottleneck."""
  hidden_sizes = [8, 16] if layer_type == 'basic' else [16, 32]
  return transformers.ResNetConfig(embedding_size=8, hidden_sizes=hidden_sizes, depths=[1, 1],
                                   layer_type=layer_type, num_labels=NUM_LABELS, **overrides)


def vit_config(**overrides):
  """Hidden 32, 2 layers, 2 heads, MLP 37, 16x16 RGB images in 4x4 patches."""
  return transformers.ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=37, image_size=VIT_SIZE, patch_size=4,
                                num_channels=3, num_labels=NUM_LABELS, **overrides)


def hf_model(architecture, config):
  """A random `transformers` model in eval mode; every weight and BatchNorm statistic perturbed."""
  torch.manual_seed(0)
  model = getattr(transformers, architecture)(config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(0.1 * torch.randn_like(p))
    for layer in model.modules():
      if isinstance(layer, torch.nn.BatchNorm2d):
        layer.running_mean.normal_(0.0, 0.2)
        layer.running_var.uniform_(0.5, 1.5)
  return model


def save(model, directory, *, pickle=False, preprocessor=False):
  """`save_pretrained` or the `pytorch_model.bin` layout, and a normalising preprocessor config."""
  directory = pathlib.Path(directory)
  if pickle:
    model.config.architectures = [type(model).__name__]  # As save_pretrained records it.
    model.config.save_pretrained(directory)
    torch.save(model.state_dict(), directory / 'pytorch_model.bin')
  else:
    model.save_pretrained(directory)
  if preprocessor:
    (directory / 'preprocessor_config.json').write_text(json.dumps({
        'image_processor_type': 'ViTImageProcessor', 'do_rescale': True,
        'rescale_factor': 1 / 255, 'do_normalize': True, 'image_mean': MEAN, 'image_std': STD}))
  return directory


def images(size, seed=0):
  return np.random.default_rng(seed).uniform(size=(B, size, size, 3)).astype(np.float32)


def run_both(directory, hf, image, *, normalised):
  """Our converted model on `image` and `transformers` on it (normalised as the processor would)."""
  model, variables = convert.load_hf(directory)
  inputs = {'image': image} if isinstance(model, Classifier) else image
  ours = jax.jit(functools.partial(model.apply, train=False))(variables, inputs)
  pixels = (image - np.asarray(MEAN)) / np.asarray(STD) if normalised else image
  with torch.no_grad():
    theirs = hf(torch.from_numpy(pixels.astype(np.float32).transpose(0, 3, 1, 2).copy()))
  return model, ours, theirs


def nchw_to_nhwc(t):
  return t.detach().numpy().transpose(0, 2, 3, 1)


def assert_close(ours, theirs):
  np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize('architecture,layer_type,overrides,pickle,preprocessor', [
    ('ResNetForImageClassification', 'basic', {}, False, True),
    ('ResNetForImageClassification', 'bottleneck',
     {'downsample_in_first_stage': True, 'downsample_in_bottleneck': True}, True, False),
    ('ResNetModel', 'bottleneck', {}, False, False),
    ('ResNetModel', 'basic', {}, True, True),
])
def test_resnet_parity_in_eval_mode(tmp_path, architecture, layer_type, overrides, pickle,
                                    preprocessor, caplog):
  hf = hf_model(architecture, resnet_config(layer_type, **overrides))
  directory = save(hf, tmp_path, pickle=pickle, preprocessor=preprocessor)
  assert (tmp_path / ('pytorch_model.bin' if pickle else 'model.safetensors')).is_file()
  with caplog.at_level('INFO'):
    model, ours, theirs = run_both(directory, hf, images(RESNET_SIZE), normalised=preprocessor)
  assert 'num_batches_tracked' in caplog.text
  encoder = model.encoder if isinstance(model, Classifier) else model
  assert type(encoder) is ResNet and encoder.block == layer_type
  assert encoder.input_mean == (MEAN if preprocessor else 0.0)
  if architecture == 'ResNetModel':
    assert type(model) is ResNet
    assert_close(ours['features'], theirs.pooler_output.flatten(1).numpy())
    assert_close(ours['feature_map'], nchw_to_nhwc(theirs.last_hidden_state))
  else:
    assert type(model) is Classifier and model.num_classes == NUM_LABELS
    assert ours['logits'].shape == (B, NUM_LABELS)
    assert_close(ours['logits'], theirs.logits.numpy())


@pytest.mark.parametrize('architecture,pickle,preprocessor', [
    ('ViTForImageClassification', False, True),
    ('ViTForImageClassification', True, False),  # transformers 5's module names
    ('ViTModel', False, False),
])
def test_vit_parity(tmp_path, architecture, pickle, preprocessor, caplog):
  hf = hf_model(architecture, vit_config())
  directory = save(hf, tmp_path, pickle=pickle, preprocessor=preprocessor)
  with caplog.at_level('INFO'):
    model, ours, theirs = run_both(directory, hf, images(VIT_SIZE), normalised=preprocessor)
  encoder = model.encoder if isinstance(model, Classifier) else model
  assert encoder.input_mean == (MEAN if preprocessor else 0.0)
  if architecture == 'ViTModel':
    # HF's optional pooler (dense + tanh on the class token) has no counterpart in our ViT.
    assert type(model) is ViT and 'pooler.dense.weight' in caplog.text
    assert_close(ours['tokens'], theirs.last_hidden_state.numpy())
    assert_close(ours['features'], theirs.last_hidden_state[:, 0].numpy())
  else:
    assert type(model) is Classifier and type(model.encoder) is ViT
    assert model.encoder.pooling == 'cls' and ours['logits'].shape == (B, NUM_LABELS)
    assert_close(ours['logits'], theirs.logits.numpy())


@pytest.fixture(scope='module')
def resnet_dir(tmp_path_factory):
  """A saved tiny basic ResNetForImageClassification, copied and broken by the error tests."""
  hf = hf_model('ResNetForImageClassification', resnet_config('basic'))
  return save(hf, tmp_path_factory.mktemp('resnet'))


@pytest.fixture(scope='module')
def vit_dir(tmp_path_factory):
  """A saved tiny ViTForImageClassification."""
  return save(hf_model('ViTForImageClassification', vit_config()), tmp_path_factory.mktemp('vit'))


def test_hf_variables_name_collections_as_task_models_do(resnet_dir, vit_dir):
  state_dict = load_file(resnet_dir / 'model.safetensors')
  for architecture in ('ResNetForImageClassification', 'ResNetModel'):
    variables = convert.hf_variables(resnet_dir, architecture=architecture)
    assert sorted(variables) == ['batch_stats', 'params']
    heads = ['head'] if architecture == 'ResNetForImageClassification' else []
    assert sorted(variables['params']) == ['encoder', *heads]
    assert sorted(variables['batch_stats']) == ['encoder']
    stats = variables['batch_stats']['encoder']
    np.testing.assert_array_equal(stats['stem']['norm']['mean'],
                                  state_dict['resnet.embedder.embedder.normalization.running_mean'])
    np.testing.assert_array_equal(
        stats['stage1_block0']['shortcut_norm']['var'],
        state_dict['resnet.encoder.stages.1.layers.0.shortcut.normalization.running_var'])
    params = convert.hf_params(resnet_dir, architecture=architecture)
    jax.tree.map(np.testing.assert_array_equal, params, variables['params'])
  variables = convert.hf_variables(vit_dir)
  assert sorted(variables) == ['params'] and sorted(variables['params']) == ['encoder', 'head']
  cls_token = load_file(vit_dir / 'model.safetensors')['vit.embeddings.cls_token']
  np.testing.assert_array_equal(variables['params']['encoder']['embeddings']['cls_token'],
                                cls_token)


@pytest.mark.parametrize('name', ['resnet', 'vit'])
def test_from_pretrained_grafts_the_whole_encoder_under_a_new_head(resnet_dir, vit_dir, name):
  directory = {'resnet': resnet_dir, 'vit': vit_dir}[name]
  size = {'resnet': RESNET_SIZE, 'vit': VIT_SIZE}[name]
  converted, _ = convert.load_hf(directory)
  model = Classifier(converted.encoder, num_classes=5)
  batch = {'image': jnp.zeros((1, size, size, 3))}
  # The new classifier's variables as at init (zeros stand in for random values).
  initial = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                         jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), batch)))
  pretrained = convert.hf_variables(directory)
  grafted, report = finetune.graft(initial['params'], pretrained['params'], select='encoder/.*')
  encoder_paths = sorted(tree_lib.flatten(initial['params']['encoder']))
  assert sorted(report.loaded) == [f'encoder/{p}' for p in encoder_paths]
  assert report.missing == () and report.unexpected == ()
  jax.tree.map(np.testing.assert_array_equal, grafted['encoder'], pretrained['params']['encoder'])
  jax.tree.map(np.testing.assert_array_equal, grafted['head'], initial['params']['head'])
  transform = finetune.from_pretrained(str(directory), select='encoder/.*')
  transformed = transform.init(initial['params'], jax.random.PRNGKey(1))
  jax.tree.map(np.testing.assert_array_equal, transformed, grafted)
  if name == 'resnet':
    # The BatchNorm statistics come with the weights, into the model state.
    assert tree_lib.flatten(initial['batch_stats'])
    state = transform.init_state({'batch_stats': initial['batch_stats']})
    jax.tree.map(np.testing.assert_array_equal, state['batch_stats'], pretrained['batch_stats'])


def test_preprocessor_normalisation_only_when_it_normalises(resnet_dir, tmp_path):
  stats = {'image_mean': MEAN, 'image_std': STD}
  for preprocessor, mean in (({**stats, 'do_normalize': False}, 0.0), ({**stats}, MEAN),
                             ({'image_mean': [0.5], 'image_std': [0.5]}, (0.5,) * 3),
                             ({'do_normalize': True}, 0.0)):
    model, _ = convert.load_hf(copy_of(resnet_dir, tmp_path, preprocessor=preprocessor))
    assert model.encoder.input_mean == mean


def test_clear_errors_for_unsupported_configs_and_weights(resnet_dir, vit_dir, tmp_path):
  resnet_errors = [
      ({'hidden_act': 'gelu'}, r"ResNet with hidden_act='gelu' is not supported \(only 'relu'\)"),
      ({'layer_type': 'preactivation'}, "layer_type='preactivation'.*'basic' or 'bottleneck'"),
      ({'layer_type': 'bottleneck', 'hidden_sizes': [6, 16]}, r'\[6, 16\].*multiple of 4'),
      ({'depths': [1]}, r'depths=\[1\].*one hidden size per stage'),
      ({'architectures': ['ResNetBackbone']},
       "'ResNetBackbone' is not supported.*ResNetForImageClassification"),
  ]
  for config, message in resnet_errors:
    with pytest.raises(ConfigError, match=message):
      convert.load_hf(copy_of(resnet_dir, tmp_path, config=config))
  vit_errors = [
      ({'hidden_act': 'gelu_new'},
       r"ViT with hidden_act='gelu_new' is not supported \(only 'gelu'\)"),
      ({'qkv_bias': False}, r'qkv_bias=False is not supported \(only True\)'),
      ({'image_size': [16, 32]}, r'image_size=\[16, 32\].*square'),
  ]
  for config, message in vit_errors:
    with pytest.raises(ConfigError, match=message):
      convert.load_hf(copy_of(vit_dir, tmp_path, config=config))
  with pytest.raises(ConfigError, match=r'image_mean=\[0.1, 0.2\].*3 channels'):
    convert.load_hf(copy_of(resnet_dir, tmp_path,
                            preprocessor={'image_mean': [0.1, 0.2], 'image_std': [1.0, 1.0]}))
  with pytest.raises(CheckpointMismatchError,
                     match=r'resnet\.encoder\.stages\.1\.layers\.0\.layer\.0\.convolution\.weight '
                           r'\(3, 3, 8, 16\) for params/encoder/stage1_block0/conv0/kernel '
                           r'\(3, 3, 8, 24\)'):
    convert.load_hf(copy_of(resnet_dir, tmp_path, config={'hidden_sizes': [8, 24]}))
  with pytest.raises(CheckpointMismatchError, match='lacks.*batch_stats/encoder/stem/norm/var'):
    convert.load_hf(copy_of(resnet_dir, tmp_path, weights={
        'resnet.embedder.embedder.normalization.running_var': None}))
  with pytest.raises(CheckpointMismatchError, match='match nothing.*vit.encoder.adapter.weight'):
    convert.load_hf(copy_of(vit_dir, tmp_path,
                            weights={'vit.encoder.adapter.weight': np.zeros(3, np.float32)}))
  with pytest.raises(ConfigError, match="model_type 'convnext' is not supported.*'resnet'"):
    convert.load_hf(copy_of(resnet_dir, tmp_path, config={'model_type': 'convnext'}))
