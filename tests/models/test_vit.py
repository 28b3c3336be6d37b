"""Vision Transformer and masked autoencoder models: shapes, poolings, presets, HF parity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import convert
from jaxpretrain.errors import ConfigError
from jaxpretrain.models.core import init_variables, make_apply_fn
from jaxpretrain.models.heads import Classifier
from jaxpretrain.models.mae import MaskedAutoencoder, sincos_2d_positions
from jaxpretrain.models.vit import VIT_PRESETS, ViT, vit

KEY = jax.random.PRNGKey(0)
B, SIZE, PATCH, D = 2, 16, 4, 32
N = (SIZE // PATCH) ** 2


def tiny_vit(**overrides):
  fields = dict(image_size=SIZE, patch_size=PATCH, channels=1, hidden=D, depth=1, heads=2,
                mlp_size=64)
  return ViT(**{**fields, **overrides})


def images(n=B, channels=1, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, SIZE, SIZE, channels)).astype(np.float32)


# Compiled once per pooling; shared by the tests of `tiny_vit()`'s variables.
APPLY = {pooling: jax.jit(tiny_vit(pooling=pooling).apply) for pooling in ('cls', 'mean')}


@pytest.fixture(scope='module')
def vit_variables():
  """Variables of `tiny_vit()`, which every pooling of it shares."""
  return jax.jit(tiny_vit().init)(KEY, images())


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_vit_shapes_and_poolings(vit_variables, pooling):
  out = APPLY[pooling](vit_variables, images())
  tokens = np.asarray(out['tokens'])
  assert tokens.shape == (B, 1 + N, D)
  assert out['features'].shape == (B, D)
  assert np.isfinite(tokens).all() and np.isfinite(np.asarray(out['features'])).all()
  expected = tokens[:, 0] if pooling == 'cls' else tokens[:, 1:].mean(1)
  np.testing.assert_allclose(out['features'], expected, atol=1e-6)
  # The feature map is the patch tokens on their grid, row by row.
  grid = SIZE // PATCH
  np.testing.assert_array_equal(out['feature_map'], tokens[:, 1:].reshape(B, grid, grid, D))


def test_vit_without_class_token_shapes():
  module = tiny_vit(class_token=False, pooling='mean')
  variables = jax.eval_shape(module.init, KEY, images())
  assert variables['params']['embeddings']['position_embeddings'].shape == (1, N, D)
  assert 'cls_token' not in variables['params']['embeddings']
  out = jax.eval_shape(module.apply, variables, images())
  assert out['tokens'].shape == (B, N, D) and out['features'].shape == (B, D)
  visible = jax.ShapeDtypeStruct((B, 5), jnp.int32)
  out = jax.eval_shape(lambda v, x, i: module.apply(v, x, visible_BxK=i), variables, images(),
                       visible)
  assert out['tokens'].shape == (B, 5, D) and 'feature_map' not in out


def test_visible_patches_keep_their_positions_and_the_class_token_leads(vit_variables):
  apply = APPLY['cls']
  image = images()
  full = apply(vit_variables, image)
  # All patches, shuffled differently per example: blocks are permutation-equivariant, so
  # the tokens must be the full run's tokens in the shuffled order, which holds only if each
  # patch got its own position before the gather.
  perm = np.stack([np.random.default_rng(i).permutation(N) for i in range(B)]).astype(np.int32)
  shuffled = apply(vit_variables, image, visible_BxK=perm)['tokens']
  np.testing.assert_allclose(shuffled[:, 0], full['tokens'][:, 0], atol=1e-5)
  np.testing.assert_allclose(shuffled[:, 1:],
                             np.take_along_axis(np.asarray(full['tokens'])[:, 1:],
                                                perm[..., None], 1), atol=1e-5)
  subset = apply(vit_variables, image, visible_BxK=perm[:, :5])
  assert subset['tokens'].shape == (B, 6, D)
  assert not np.allclose(subset['features'], full['features'], atol=1e-3)


def test_classifier_on_vit_classifies_the_features(vit_variables):
  model = Classifier(tiny_vit(), num_classes=7)
  batch = {'image': images()}
  rng = np.random.default_rng(0)
  head = {'dense': {'kernel': rng.normal(size=(D, 7)).astype(np.float32),
                    'bias': rng.normal(size=7).astype(np.float32)}}
  params = {'encoder': vit_variables['params'], 'head': head}
  expected = jax.eval_shape(lambda: init_variables(model, KEY, batch))['params']
  assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape, expected)
  out = jax.jit(make_apply_fn(model))({'params': params}, batch)
  features = APPLY['cls'](vit_variables, batch['image'])['features']
  assert out['logits'].shape == (B, 7) and np.isfinite(np.asarray(out['logits'])).all()
  np.testing.assert_allclose(out['logits'], features @ head['dense']['kernel']
                             + head['dense']['bias'], atol=1e-5)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_presets_and_vit_base_parameter_count():
  assert {name: (p['hidden'], p['depth'], p['heads']) for name, p in VIT_PRESETS.items()} == {
      'vit_tiny': (192, 12, 3), 'vit_small': (384, 12, 6), 'vit_base': (768, 12, 12)}
  model = Classifier(vit('vit_base'), num_classes=1000)
  shapes = jax.eval_shape(model.init, KEY, {'image': jnp.zeros((1, 224, 224, 3))})
  assert _count(shapes['params']) == 86_567_656  # timm / Hugging Face ViT-B/16, 1000 classes
  small = vit('vit_tiny', image_size=28, patch_size=4, channels=1, depth=1)
  shapes = jax.eval_shape(small.init, KEY, jnp.zeros((1, 28, 28, 1)))['params']
  assert shapes['embeddings']['position_embeddings'].shape == (1, 50, 192)
  assert shapes['layer_0']['mlp']['input']['kernel'].shape == (192, 768)


def test_configuration_errors_name_the_fix():
  with pytest.raises(ConfigError, match='vit_base'):
    vit('vit_huge')
  with pytest.raises(ConfigError, match='class_token'):
    jax.eval_shape(tiny_vit(class_token=False).init, KEY, images())
  with pytest.raises(ConfigError, match='image_size'):
    jax.eval_shape(tiny_vit().init, KEY, images(channels=3))


def test_hugging_face_vit_parity(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  config = transformers.ViTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, image_size=SIZE, patch_size=PATCH,
                                  num_channels=3, num_labels=5)
  hf = transformers.ViTForImageClassification(config).eval()
  with torch.no_grad():  # Random LayerNorms too, so that a swapped scale and bias would show.
    for name, p in hf.named_parameters():
      if 'layernorm' in name:
        p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith('weight') else 0.0))
  hf.save_pretrained(tmp_path)  # The Hub's names, as `save_pretrained` writes them.
  _, variables = convert.from_state_dict(convert.read_config(tmp_path),
                                         convert.read_state_dict(tmp_path),
                                         architecture='ViTForImageClassification')
  params = variables['params']

  encoder = ViT(image_size=SIZE, patch_size=PATCH, channels=3, hidden=D, depth=2, heads=2,
                mlp_size=64)
  model = Classifier(encoder, num_classes=5)
  image = images(channels=3)
  expected = jax.eval_shape(model.init, KEY, {'image': image})['params']
  assert jax.tree.map(lambda x: x.shape, params) == jax.tree.map(lambda x: x.shape, expected)
  out = model.apply({'params': params}, {'image': image})
  pixels = torch.from_numpy(image.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
  with torch.no_grad():
    theirs_tokens = hf.vit(pixels).last_hidden_state.numpy()
    theirs_logits = hf(pixels).logits.numpy()
  tokens = encoder.apply({'params': params['encoder']}, image)['tokens']
  np.testing.assert_allclose(tokens, theirs_tokens, atol=1e-4)
  np.testing.assert_allclose(out['logits'], theirs_logits, atol=1e-4)


def tiny_mae(**overrides):
  return MaskedAutoencoder(tiny_vit(**overrides), decoder_hidden=16, decoder_depth=1,
                           decoder_heads=2)


def test_mae_encoder_grafts_onto_a_classifier():
  batch = {'image': images()}
  mae = jax.eval_shape(tiny_mae().init, KEY, batch)['params']
  classifier = jax.eval_shape(Classifier(tiny_vit(), 10).init, KEY, batch)['params']
  assert sorted(mae) == ['decoder', 'encoder']
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
  assert shapes(mae['encoder']) == shapes(classifier['encoder'])


def test_mae_predicts_every_patch_from_the_visible_ones():
  model = tiny_mae()
  image = images()
  params = jax.jit(model.init)(KEY, {'image': image})['params']
  apply = jax.jit(model.apply)
  visible = np.array([[0, 3, 9, 15], [1, 2, 4, 8]], np.int32)
  out = apply({'params': params}, {'image': image, 'visible_patches': visible})
  assert out['predicted_patches'].shape == (B, N, PATCH * PATCH * 1)
  assert out['features'].shape == (B, D)
  assert np.isfinite(np.asarray(out['predicted_patches'])).all()
  # New pixels in the masked patches change no prediction: the encoder never sees them.
  patch_of_pixel = (np.arange(SIZE)[:, None] // PATCH) * (SIZE // PATCH) + np.arange(SIZE) // PATCH
  hidden = ~(patch_of_pixel[None] == visible[:, :, None, None]).any(1)
  repainted = np.where(hidden[..., None], images(seed=1), image)
  again = apply({'params': params}, {'image': repainted, 'visible_patches': visible})
  np.testing.assert_allclose(again['predicted_patches'], out['predicted_patches'], atol=1e-6)
  changed = np.where(hidden[..., None], image, images(seed=1))
  moved = apply({'params': params}, {'image': changed, 'visible_patches': visible})
  assert not np.allclose(moved['predicted_patches'], out['predicted_patches'], atol=1e-4)


def test_mae_without_visible_patches_or_class_token_predicts_every_patch():
  for model in (tiny_mae(), tiny_mae(class_token=False, pooling='mean')):
    variables = jax.eval_shape(model.init, KEY, {'image': images()})
    out = jax.eval_shape(model.apply, variables, {'image': images()})
    assert out['predicted_patches'].shape == (B, N, PATCH * PATCH)
    visible = jax.ShapeDtypeStruct((B, 4), jnp.int32)
    out = jax.eval_shape(lambda v, x, i: model.apply(v, {'image': x, 'visible_patches': i}),
                         variables, images(), visible)
    assert out['predicted_patches'].shape == (B, N, PATCH * PATCH)


def test_sincos_positions_are_distinct_and_bounded():
  pos = sincos_2d_positions(16, 4)
  assert pos.shape == (16, 16)
  assert np.abs(pos).max() <= 1.0
  distances = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(16)
  assert distances.min() > 1e-3
  # Column first, row second: patches of one column share the first half's values.
  np.testing.assert_allclose(pos[0, :8], pos[4, :8])
  np.testing.assert_allclose(pos[0, 8:], pos[1, 8:])
  with pytest.raises(ConfigError, match='divisible by 4'):
    sincos_2d_positions(6, 4)
