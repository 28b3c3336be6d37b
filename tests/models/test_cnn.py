"""ResNet, VGG and Inception encoders: shapes, public parameter counts, parity with
transformers' ResNetModel, BatchNorm synchronised across pmap, and eval-mode behaviour;
the pixel-shuffle decoder of their feature maps."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from jaxpretrain import convert
from jaxpretrain.models import (Classifier, ConvDecoder, ConvEncoder, PixelShuffleDecoder,
                                depth_to_space,
                                init_variables, make_apply_fn, space_to_depth, sync_batch_norm)
from jaxpretrain.models.inception import InceptionV1, inception
from jaxpretrain.models.resnet import ResNet, resnet
from jaxpretrain.models.vgg import VGG, vgg
from jaxpretrain.models.vit import vit
from jaxpretrain.state import TrainState
from tests.helpers import assert_trees_close, image_batch, run_mesh, run_pmap, run_single, to_numpy

KEY = jax.random.PRNGKey(0)


def _tiny_resnet(block='basic', stem='small', **kwargs):
  return ResNet(stage_sizes=(1, 1), block=block, widths=(4, 8), stem=stem, stem_width=4,
                **kwargs)


def _tiny_vgg(**kwargs):
  return VGG(stages=((4,), (8, 8), (8,)), **kwargs)


def _tiny_inception(**kwargs):
  return InceptionV1(stages=(((2, 2, 4, 1, 2, 2),), ((4, 2, 4, 1, 2, 2),)),
                     stem_widths=(4, 4, 8), **kwargs)


def _num_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _image(n, size, channels=1, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, size, size, channels)).astype(np.float32)


def _variables(model, batch, seed=0):
  """A model's variables drawn with numpy: He-scaled kernels, BatchNorm at its initial state.

  XLA:CPU takes seconds to compile each random initialiser of a new shape, far longer than
  these tiny models take to run; `init_variables` gives only the shapes, by `eval_shape`.
  """
  shapes = jax.eval_shape(lambda b: init_variables(model, KEY, b), batch)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      fan_in = np.prod(leaf.shape[:-1])
      return (rng.standard_normal(leaf.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    return np.full(leaf.shape, 1.0 if name in ('scale', 'var') else 0.0, np.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


# Each encoder, the input size it gets, and the (h, w, C) of its feature map.
SHAPE_CASES = {
    # (The parity tests below run both blocks on the imagenet stem too.)
    'resnet_basic_small': (_tiny_resnet('basic', 'small'), 16, (8, 8, 8)),
    'resnet_bottleneck_imagenet': (_tiny_resnet('bottleneck', 'imagenet', input_mean=(0.5,),
                                                input_std=(0.25,)), 16, (2, 2, 32)),
    # 28 -> 14 -> 7 -> 3: pools run while the map is at least 2x2.
    'vgg_bn_28px': (_tiny_vgg(batch_norm=True), 28, (3, 3, 8)),
    'vgg_28px_one_pool': (_tiny_vgg(max_pools=1), 28, (14, 14, 8)),
    'vgg_16px_until_1x1': (VGG(stages=((2,),) * 6), 16, (1, 1, 2)),
    'inception_small_x2': (_tiny_inception(stem='small', width_multiplier=2.0), 28, (14, 14, 24)),
    'inception_imagenet': (_tiny_inception(stem='imagenet', large_branch='3x3x2'), 32, (2, 2, 12)),
}


@pytest.mark.parametrize('case', sorted(SHAPE_CASES))
def test_encoder_shapes_and_finiteness_under_a_classifier(case):
  encoder, size, (h, w, c) = SHAPE_CASES[case]
  model = Classifier(encoder, num_classes=3)

  @jax.jit
  def run(variables, batch):
    # The encoder alone in eval mode; the classifier in train mode.
    encoded = model.apply(variables, batch['image'], method=lambda m, x: m.encoder(x))
    return encoded, make_apply_fn(model)(variables, batch, train=True)

  batch = {'image': _image(4, size)}
  encoded, out = run(_variables(model, batch), batch)
  assert encoded['feature_map'].shape == (4, h, w, c)
  # The features are the global mean of the feature map.
  np.testing.assert_allclose(encoded['features'], encoded['feature_map'].mean(axis=(1, 2)),
                             atol=1e-6)
  assert out['features'].shape == (4, c)
  assert out['logits'].shape == (4, 3)
  assert np.isfinite(encoded['feature_map']).all() and np.isfinite(out['logits']).all()


def _preset_shapes(encoder, num_classes=1000, size=224):
  """Parameter count and output shapes of a classifier, by `jax.eval_shape` (no compute)."""
  model = Classifier(encoder, num_classes)
  batch = {'image': jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)}
  variables = jax.eval_shape(lambda b: model.init(KEY, b), batch)
  encoded = jax.eval_shape(lambda v, b: encoder.apply(v, b['image']),
                           {k: v['encoder'] for k, v in variables.items()}, batch)
  return _num_params(variables['params']), encoded['feature_map'].shape


@pytest.mark.parametrize('encoder, num_params, feature_map', [
    # torchvision's resnets with their 1000-class fc.
    (resnet('resnet18'), 11_689_512, (1, 7, 7, 512)),
    (resnet('resnet34'), 21_797_672, (1, 7, 7, 512)),
    (resnet('resnet50'), 25_557_032, (1, 7, 7, 2048)),
    # torchvision's googlenet without auxiliary classifiers (its 5x5 branch is a 3x3).
    (inception('inception_v1', large_branch='3x3'), 6_624_904, (1, 7, 7, 1024)),
    # VGG's convolutions (torchvision's `features`, Keras' VGG16 without top) and a
    # 1000-class dense head.
    (vgg('vgg11'), 9_220_480 + 513_000, (1, 7, 7, 512)),
    (vgg('vgg16'), 14_714_688 + 513_000, (1, 7, 7, 512)),
], ids=['resnet18', 'resnet34', 'resnet50', 'googlenet', 'vgg11', 'vgg16'])
def test_preset_parameter_counts_match_the_public_models(encoder, num_params, feature_map):
  assert _preset_shapes(encoder) == (num_params, feature_map)


@pytest.mark.parametrize('name', ['vgg11', 'vgg16'])
def test_vgg_batch_norm_adds_a_scale_and_bias_per_channel(name):
  plain, with_bn = (_preset_shapes(vgg(n), size=32)[0] for n in (name, f'{name}_bn'))
  channels = sum(sum(stage) for stage in vgg(name).stages)
  assert with_bn - plain == 2 * channels


@pytest.mark.parametrize('encoder, mean, std', [
    (_tiny_resnet(), (0.2, 0.4, 0.6), (0.5, 0.25, 2.0)),
    (_tiny_vgg(), 0.5, 0.25),
], ids=['resnet_per_channel', 'vgg_scalar'])
def test_inputs_are_standardised_first(encoder, mean, std):
  image = _image(2, 8, channels=3)
  variables = _variables(encoder, image)
  standardising = encoder.clone(input_mean=mean, input_std=std)
  outputs = jax.jit(lambda v, x: (standardising.apply(v, x),
                                  encoder.apply(v, (x - np.asarray(mean)) / np.asarray(std))))(
                                      variables, image)
  np.testing.assert_allclose(outputs[0]['feature_map'], outputs[1]['feature_map'],
                             atol=1e-5, rtol=1e-5)


def test_unknown_names_are_errors():
  with pytest.raises(ValueError, match='resnet18'):
    resnet('resnet19')
  with pytest.raises(ValueError, match='vgg16_bn'):
    vgg('vgg19')
  with pytest.raises(ValueError, match='inception_v1'):
    inception('inception_v3')
  with pytest.raises(ValueError, match="'imagenet' or 'small'"):
    jax.eval_shape(_tiny_resnet(stem='cifar').init, KEY, _image(1, 8))


# Parity with transformers' ResNetModel.

@pytest.mark.parametrize('layer_type', ['basic', 'bottleneck'])
def test_resnet_matches_transformers_resnet_model(layer_type):
  # The bottleneck's first stage widens 8 -> 16 at stride 1 (a shortcut without
  # downsampling, as in ResNet-50); the basic one keeps 8 (no shortcut, as in ResNet-18).
  hidden_sizes = [8, 16] if layer_type == 'basic' else [16, 32]
  config = transformers.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=hidden_sizes,
                                     depths=[2, 1], layer_type=layer_type)
  torch.manual_seed(0)
  hf = transformers.ResNetModel(config).eval()
  with torch.no_grad():
    for layer in hf.modules():
      if isinstance(layer, torch.nn.BatchNorm2d):
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_(0.0, 0.2)
        layer.running_mean.normal_(0.0, 0.2)
        layer.running_var.uniform_(0.5, 1.5)
  widths = [h // 4 for h in hidden_sizes] if layer_type == 'bottleneck' else hidden_sizes
  ours = ResNet(stage_sizes=(2, 1), block=layer_type, widths=widths, stem='imagenet',
                stem_width=8)
  image = _image(2, 32, channels=3)
  state_dict = {k: v.numpy() for k, v in hf.state_dict().items()}
  _, variables = convert.from_state_dict(hf.config.to_dict(), state_dict,
                                         architecture='ResNetModel')
  # Every variable of ours comes from the state dict, and nothing else does.
  expected = jax.eval_shape(ours.init, KEY, image)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(np.shape, expected)
  with torch.no_grad():
    hf_out = hf(torch.from_numpy(image.transpose(0, 3, 1, 2)))
  out = jax.jit(ours.apply)(variables, image)
  np.testing.assert_allclose(out['features'], hf_out.pooler_output.flatten(1).numpy(),
                             atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(out['feature_map'],
                             hf_out.last_hidden_state.numpy().transpose(0, 2, 3, 1),
                             atol=1e-4, rtol=1e-4)


# BatchNorm statistics across devices.

def _bn_state(bn_axis_name, batch):
  # One block whose shortcut is a 1x1 conv and BN: four BatchNorms in all.
  encoder = ResNet(stage_sizes=(1,), widths=(8,), stem='small', stem_width=4,
                   bn_axis_name=bn_axis_name)
  model = Classifier(encoder, num_classes=3)
  variables = _variables(model, batch)
  params = variables.pop('params')
  return to_numpy(TrainState.create(apply_fn=make_apply_fn(model), params=params,
                                    tx=optax.sgd(0.1), rng=KEY, model_state=variables))


def test_batch_norm_synchronised_over_pmap_equals_single_device_and_mesh():
  batches = [image_batch(16, size=8, seed=s) for s in range(2)]
  single, _ = run_single(_bn_state(None, batches[0]), batches)
  runs = {'mesh': run_mesh(_bn_state(None, batches[0]), batches)[0],
          'pmap_synced': run_pmap(_bn_state('batch', batches[0]), batches)[0]}
  for state in runs.values():
    assert int(state.step) == 2
    assert_trees_close(single.params, state.params, atol=1e-4, rtol=1e-4)
    assert_trees_close(single.model_state, state.model_state, atol=1e-4, rtol=1e-4)
  # Unsynchronised, each device normalises its 2 examples by their own statistics.
  local, _ = run_pmap(_bn_state(None, batches[0]), batches)
  for tree in ('params', 'model_state'):
    gaps = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), getattr(single, tree),
                        getattr(local, tree))
    assert max(jax.tree.leaves(gaps)) > 1e-2


def test_sync_batch_norm_names_the_axis_in_every_module_that_has_batch_norm():
  model = sync_batch_norm(Classifier(_tiny_resnet(), num_classes=3), 'batch')
  assert model.encoder.bn_axis_name == 'batch'
  conv = sync_batch_norm(Classifier(ConvEncoder(stages=((4,),)), num_classes=3), 'batch')
  assert conv.encoder.bn_axis_name == 'batch'
  without = Classifier(vit('vit_tiny', image_size=8, patch_size=4, hidden=8, depth=1, heads=2,
                           mlp_size=8, channels=3), num_classes=3)
  assert sync_batch_norm(without, 'batch') is without  # a ViT has no BatchNorm
  batch = image_batch(4, size=8)  # The same parameters and statistics, by name and shape:
  assert_trees_close(_variables(model, batch),
                     _variables(Classifier(_tiny_resnet(), num_classes=3), batch))


# Train and eval modes.

@pytest.mark.parametrize('encoder', [_tiny_resnet('bottleneck'), _tiny_vgg(batch_norm=True),
                                     _tiny_inception(stem='small')],
                         ids=['resnet', 'vgg_bn', 'inception'])
def test_train_updates_batch_stats_and_eval_uses_them(encoder):
  model = Classifier(encoder, num_classes=3)
  train_fn = jax.jit(lambda v, b: make_apply_fn(model)(v, b, train=True))
  eval_fn = jax.jit(lambda v, b: model.apply(v, b, train=False, mutable=['batch_stats']))
  batch = {'image': _image(4, 8, seed=1)}
  # The same first example among other ones.
  other = {'image': np.concatenate([batch['image'][:1], _image(3, 8, seed=2)])}
  initial = _variables(model, batch)

  trained = train_fn(initial, batch)['model_state']
  assert set(trained) == {'batch_stats'}
  moved = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), initial['batch_stats'],
                       trained['batch_stats'])
  assert min(jax.tree.leaves(moved)) > 0  # every BatchNorm saw the batch
  variables = {**initial, **trained}
  evaluated, after_eval = eval_fn(variables, batch)
  assert_trees_close(after_eval, trained, atol=0, rtol=0)
  np.testing.assert_array_equal(eval_fn(variables, batch)[0]['logits'], evaluated['logits'])
  # With running statistics an example's output does not depend on the rest of its batch;
  # in training it does.
  np.testing.assert_allclose(eval_fn(variables, other)[0]['logits'][0], evaluated['logits'][0],
                             atol=1e-6)
  in_training = [train_fn(variables, b)['logits'][0] for b in (batch, other)]
  assert np.max(np.abs(in_training[0] - in_training[1])) > 1e-4


def test_depth_to_space_inverts_space_to_depth():
  x = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  folded = space_to_depth(x, 4)
  assert folded.shape == (2, 2, 3, 48)
  np.testing.assert_array_equal(depth_to_space(folded, 4), x)


def test_depth_to_space_unfolds_rectangular_blocks_in_row_major_order():
  x = np.arange(2 * 3 * 6 * 4, dtype=np.float32).reshape(2, 3, 6, 4)
  out = depth_to_space(x, (1, 4))  # Each location holds a 1 x 4 strip of one channel.
  assert out.shape == (2, 3, 24, 1)
  np.testing.assert_array_equal(out[1, 2, 8:12, 0], x[1, 2, 2])


@pytest.mark.parametrize('decoder', [PixelShuffleDecoder(hidden=8, out_size=(12, 20)),
                                     PixelShuffleDecoder(hidden=0, out_size=(14, 20)),
                                     ConvDecoder(widths=(4,), out_size=(12, 20))])
def test_decoders_rebuild_a_rectangular_image(decoder):
  feature_map = jnp.ones((2, 3, 5, 16))  # 4 x 4 blocks tile 12 x 20; 14 x 20 is resized.
  variables = decoder.init(KEY, feature_map)
  out = decoder.apply(variables, feature_map)
  assert out.shape == (2, *decoder.out_size, 1) and np.isfinite(np.asarray(out)).all()


@pytest.mark.parametrize('side', [7, 4, 3])
def test_pixel_shuffle_decoder_rebuilds_the_image_size(side):
  """7x7 (conv net, ViT) and 4x4 (ResNet) maps tile 28x28 exactly; 3x3 is resized to it."""
  decoder = PixelShuffleDecoder(hidden=8, out_channels=1, out_size=28)
  feature_map = jnp.ones((2, side, side, 16))
  variables = decoder.init(KEY, feature_map)
  out = decoder.apply(variables, feature_map)
  assert out.shape == (2, 28, 28, 1) and np.isfinite(np.asarray(out)).all()
  # Every pixel of a block comes from its own location's features alone.
  if side == 7:
    grad = jax.grad(lambda f: decoder.apply(variables, f)[0, 5, 9, 0])(feature_map)
    assert set(zip(*np.nonzero(np.asarray(grad).any(-1)))) == {(0, 1, 2)}
