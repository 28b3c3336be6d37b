"""The Transformer's own layers equal the stock ones: values and gradients; dropout statistics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain.models.layers import Dense, Dropout, add_bias, keep_mask, tied_logits
from jaxpretrain.objectives.common import top1_hits

KEY = jax.random.PRNGKey(0)


def _normal(seed, shape):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _grads(f, *args):
  """Gradients of a random projection of f's output, so that every output element counts."""
  weights = _normal(99, jax.eval_shape(f, *args).shape)
  return jax.grad(lambda *a: jnp.sum(f(*a) * weights), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize('use_bias', [True, False])
def test_dense_equals_flax_dense_in_value_and_gradient(use_bias):
  x = _normal(1, (2, 5, 8))
  ours, stock = Dense(6, use_bias=use_bias), nn.Dense(6, use_bias=use_bias)
  params = stock.init(KEY, x)['params']
  if use_bias:
    params = {**params, 'bias': _normal(2, (6,))}
  assert jax.tree.structure(ours.init(KEY, x)['params']) == jax.tree.structure(params)
  f_ours = lambda p, x: ours.apply({'params': p}, x)
  f_stock = lambda p, x: stock.apply({'params': p}, x)
  np.testing.assert_allclose(f_ours(params, x), f_stock(params, x), rtol=1e-6, atol=1e-6)
  for g_ours, g_stock in zip(jax.tree.leaves(_grads(f_ours, params, x)),
                             jax.tree.leaves(_grads(f_stock, params, x))):
    np.testing.assert_allclose(g_ours, g_stock, rtol=1e-5, atol=1e-5)


def test_tied_logits_and_add_bias_equal_autodiff_of_the_plain_expressions():
  x, table, bias = _normal(1, (3, 4, 8)), _normal(2, (11, 8)), _normal(3, (11,))
  ours = lambda x, t, b: add_bias(tied_logits(x, t), b)
  plain = lambda x, t, b: x @ t.T + b
  np.testing.assert_allclose(ours(x, table, bias), plain(x, table, bias), rtol=1e-6, atol=1e-6)
  for g_ours, g_plain in zip(_grads(ours, x, table, bias), _grads(plain, x, table, bias)):
    np.testing.assert_allclose(g_ours, g_plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('shape', [(64, 128), (4, 63, 33), (1,)])
def test_keep_mask_has_the_shape_and_the_drop_rate(shape):
  n = int(np.prod(shape))
  masks = jax.vmap(lambda k: keep_mask(k, 0.1, shape))(jax.random.split(KEY, 400 if n < 100 else 20))
  assert masks.shape[1:] == shape and masks.dtype == jnp.bool_
  dropped = 1.0 - float(jnp.mean(masks))
  # Binomial standard error of the drop fraction, at least 5 of them apart.
  assert abs(dropped - 0.1) < 5 * (0.1 * 0.9 / masks.size) ** 0.5
  assert not bool(jnp.all(masks[0] == masks[1]))  # each key its own mask


def test_dropout_is_unbiased_deterministic_per_key_and_the_identity_in_evaluation():
  x = jnp.ones((256, 256))
  layer = Dropout(0.25)
  y = layer.apply({}, x, deterministic=False, rngs={'dropout': KEY})
  kept = y != 0
  np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # 0.25 is exact in 16 bits
  assert abs(float(jnp.mean(y)) - 1.0) < 0.01
  np.testing.assert_array_equal(y, layer.apply({}, x, deterministic=False,
                                               rngs={'dropout': KEY}))
  np.testing.assert_array_equal(layer.apply({}, x, deterministic=True), x)
  np.testing.assert_array_equal(Dropout(1.0).apply({}, x, deterministic=False,
                                                   rngs={'dropout': KEY}), 0 * x)


def test_top1_hits_is_argmax_accuracy_without_ties():
  logits, labels = _normal(1, (6, 9, 50)), jax.random.randint(KEY, (6, 9), 0, 50)
  labels = labels.at[0].set(jnp.argmax(logits[0], -1))  # some hits for sure
  np.testing.assert_array_equal(top1_hits(logits=logits, labels=labels),
                                (jnp.argmax(logits, -1) == labels).astype(jnp.float32))
  assert float(top1_hits(logits=logits, labels=labels)[0].min()) == 1.0
