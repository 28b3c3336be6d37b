"""Mixed precision: every family trains in bfloat16 with float32 parameters, logits and losses."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxpretrain import build, objectives
from jaxpretrain.config import transformer_section
from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune import create_state, identity
from jaxpretrain.step import make_train_step
from tests.helpers import image_batch

Config = ml_collections.ConfigDict

TINY_TRANSFORMER = dict(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
TINY_VIT = dict(name='vit', preset='vit_tiny', image_size=8, patch_size=4, channels=1, hidden=16,
                depth=1, heads=2, mlp_size=32)
CONV = dict(stages=((4,), (8,)), norm='batch')

# model section, objective, batch kind ('image' or 'text'); each as small as compiles fast.
FAMILIES = {
    'conv_classifier': (dict(name='classifier', num_classes=3, encoder=CONV),
                        objectives.classification, 'image'),
    'resnet': (dict(name='classifier', num_classes=3, encoder=dict(
        name='resnet', preset='resnet18', stem='small', stem_width=4, widths=(4, 8),
        stage_sizes=(1, 1))), objectives.classification, 'image'),
    'vgg': (dict(name='classifier', num_classes=3, encoder=dict(
        name='vgg', preset='vgg11_bn', stages=((4,), (8,)))), objectives.classification, 'image'),
    'inception': (dict(name='classifier', num_classes=3, encoder=dict(
        name='inception', preset='inception_v1', stem='small', stem_widths=(4,),
        stages=(((2, 2, 2, 2, 2, 2),),))), objectives.classification, 'image'),
    'vit': (dict(name='classifier', num_classes=3, encoder=TINY_VIT),
            objectives.classification, 'image'),
    'conv_autoencoder': (dict(name='autoencoder', encoder=CONV,
                              decoder=dict(widths=(4,), out_size=8)),
                         objectives.denoising, 'image'),
    'pixel_shuffle': (dict(name='autoencoder', encoder=CONV,
                           decoder=dict(name='pixel_shuffle', hidden=8, out_size=8)),
                      objectives.denoising, 'image'),
    'mae': (dict(name='mae', encoder=TINY_VIT, decoder=dict(
        decoder_hidden=8, decoder_depth=1, decoder_heads=2)),
            lambda: objectives.masked_image_modeling(patch_size=4), 'image'),
    'contrastive': (dict(name='contrastive', encoder=CONV,
                         projection=dict(projection_hidden=8, projection_dim=4)),
                    lambda: objectives.simclr(augment=None), 'image'),
    'bert_mlm': (dict(name='bert_mlm', transformer=transformer_section('bert_tiny',
                                                                      **TINY_TRANSFORMER)),
                 lambda: objectives.masked_lm(mask_id=3, vocab_size=40, special_ids=(0, 1, 2, 3)),
                 'text'),
    'gpt_clm': (dict(name='gpt_clm', transformer=transformer_section('gpt2_tiny',
                                                                    **TINY_TRANSFORMER)),
                objectives.causal_lm, 'text'),
    'text_classifier': (dict(name='text_classifier', num_classes=3, transformer=transformer_section(
        'bert_tiny', **TINY_TRANSFORMER)), objectives.classification, 'text'),
}


def _batch(kind: str) -> dict[str, np.ndarray]:
  if kind == 'image':
    return image_batch(8)
  rng = np.random.default_rng(0)
  return {'input_ids': rng.integers(4, 40, (8, 16)).astype(np.int32),
          'attention_mask': np.ones((8, 16), np.int32),
          'label': rng.integers(0, 3, 8).astype(np.int32)}


def _state(family: str, dtype: str, **switches):
  section, objective, kind = FAMILIES[family]
  model = build.model(Config({**section, 'dtype': dtype, **switches}))
  batch = _batch(kind)
  state = create_state(model, identity(), tx=optax.adamw(1e-3), rng=jax.random.PRNGKey(0),
                       example_batch=batch)
  return state, objective(), batch


def _floats(tree) -> list[jax.Array]:
  return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]


# A product (matmul or convolution) whose result is bfloat16, in a jaxpr's text.
_BF16_PRODUCT = re.compile(r':bf16\[[\d,]*\] = (dot_general|conv_general_dilated)\b')


@pytest.mark.parametrize('family', sorted(FAMILIES))
def test_every_family_trains_a_bfloat16_step_with_float32_parameters_and_outputs(family):
  state, objective, batch = _state(family, 'bfloat16')
  step = make_train_step(objective)
  # The products really run in bfloat16 (XLA:CPU may still widen them when it compiles).
  assert _BF16_PRODUCT.search(str(jax.make_jaxpr(step)(state, batch)))
  new, metrics = jax.jit(step)(state, batch)
  assert np.isfinite(float(metrics['loss']))
  assert metrics['loss'].dtype == jnp.float32
  for tree in (new.params, new.opt_state, new.model_state):
    assert all(x.dtype == jnp.float32 for x in _floats(tree))
  outputs = jax.eval_shape(lambda v: new.apply_fn(v, batch, train=False), new.variables())
  for name in ('logits', 'reconstruction', 'predicted_patches', 'projection'):
    if name in outputs:
      assert outputs[name].dtype == jnp.float32, name


def test_an_unknown_dtype_is_a_config_error_naming_the_valid_ones():
  with pytest.raises(ConfigError, match=r"unknown model.dtype 'int8'.*bfloat16.*float16.*float32"):
    _state('conv_classifier', 'int8')
