"""The Transformer's own layers equal the stock ones: values and gradients; dropout statistics.

Also in bfloat16 and under sharding, where they were not tuned.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxpretrain import parallel
from jaxpretrain.errors import ConfigError
from jaxpretrain.models.layers import (LAYER_SETS, Dense, Dropout, add_bias, keep_mask, layer_set,
                                       tied_logits)
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


# bfloat16 keeps 8 significant bits: a value rounds by up to 2**-9 of itself, and a product
# of rounded operands summed over a few dozen terms stays within 2**-6 of the largest value.
BF16_TOLERANCE = 2 ** -6


def _dense_forms(use_bias=True):
  """The tuned and the stock dense layer in bfloat16, as functions of float32 (params, x)."""
  ours = Dense(6, use_bias=use_bias, dtype=jnp.bfloat16)
  stock = nn.Dense(6, use_bias=use_bias, dtype=jnp.bfloat16)
  f_ours = lambda p, x: ours.apply({'params': p}, x).astype(jnp.float32)
  f_stock = lambda p, x: stock.apply({'params': p}, x).astype(jnp.float32)
  return f_ours, f_stock


def _close_in_bfloat16(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  np.testing.assert_allclose(a, b, atol=BF16_TOLERANCE * np.abs(b).max(), rtol=0)


def test_dense_in_bfloat16_equals_flax_dense_and_gives_float32_parameter_gradients():
  x = _normal(1, (4, 8, 32))
  params = {'kernel': _normal(2, (32, 6)) / 6, 'bias': _normal(3, (6,))}
  f_ours, f_stock = _dense_forms()
  assert f_ours(params, x).dtype == jnp.float32
  assert nn.Dense(6, dtype=jnp.bfloat16).apply({'params': params}, x).dtype == jnp.bfloat16
  assert Dense(6, dtype=jnp.bfloat16).apply({'params': params}, x).dtype == jnp.bfloat16
  _close_in_bfloat16(f_ours(params, x), f_stock(params, x))
  g_ours, g_stock = _grads(f_ours, params, x), _grads(f_stock, params, x)
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(g_ours))
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_stock)):
    _close_in_bfloat16(a, b)


def test_tied_logits_and_add_bias_in_bfloat16_equal_the_plain_expressions():
  x, table, bias = _normal(1, (3, 4, 16)), _normal(2, (11, 16)), _normal(3, (11,))
  bf16 = lambda a: a.astype(jnp.bfloat16)
  # As the LM head uses them: bfloat16 product, float32 logits, float32 bias.
  ours = lambda x, t, b: add_bias(tied_logits(bf16(x), bf16(t)).astype(jnp.float32), b)
  plain = lambda x, t, b: (bf16(x) @ bf16(t).T).astype(jnp.float32) + b
  _close_in_bfloat16(ours(x, table, bias), plain(x, table, bias))
  for g_ours, g_plain in zip(_grads(ours, x, table, bias), _grads(plain, x, table, bias)):
    assert g_ours.dtype == jnp.float32
    _close_in_bfloat16(g_ours, g_plain)


def test_dropout_in_bfloat16_keeps_the_mean():
  x = jnp.ones((256, 256), jnp.bfloat16)
  y = Dropout(0.1).apply({}, x, deterministic=False, rngs={'dropout': KEY})
  assert y.dtype == jnp.bfloat16
  kept = np.asarray(y[y != 0], np.float32)
  # Each kept element is 1 / 0.9 rounded once (1.109375 or 1.1171875), never the same way.
  assert np.all(np.abs(kept - 1 / 0.9) <= 2 ** -8 * 1.2)
  assert abs(float(jnp.mean(y.astype(jnp.float32))) - 1.0) < 0.01


def test_tuned_layers_on_a_sharded_batch_and_kernel_equal_the_unsharded_ones():
  """Inside jit over the 8 devices, inputs split on 'data' and the kernel on 'data' (FSDP)."""
  mesh = parallel.make_mesh()
  x, bias = _normal(1, (16, 5, 32)), _normal(3, (40,))
  params = {'kernel': _normal(2, (32, 40)) / 6, 'bias': bias}
  layer = Dense(40)

  def f(p, x):
    h_NxF = layer.apply({'params': p}, x)
    h_NxF = Dropout(0.25).apply({}, h_NxF, deterministic=False, rngs={'dropout': KEY})
    return add_bias(tied_logits(h_NxF, p['kernel']), p['bias'][:32])

  loss = lambda p, x: jnp.sum(f(p, x) * _normal(9, (16, 5, 32)))
  value_and_grads = jax.value_and_grad(loss, argnums=(0, 1))
  expected = jax.jit(value_and_grads)(params, x)
  split = lambda spec: NamedSharding(mesh, spec)
  sharded_params = {'kernel': jax.device_put(params['kernel'], split(P('data'))),
                    'bias': jax.device_put(bias, split(P()))}
  got = jax.jit(value_and_grads)(sharded_params, jax.device_put(x, split(P('data'))))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_layer_sets_share_their_parameters_and_an_unknown_one_is_a_config_error():
  x = _normal(1, (2, 8))
  shapes = {name: jax.tree.map(jnp.shape, layers.dense(4, name='d').init(KEY, x))
            for name, layers in LAYER_SETS.items()}
  assert shapes['fast'] == shapes['flax']
  with pytest.raises(ConfigError, match=r"unknown layers 'jax'.*\['fast', 'flax'\]"):
    layer_set('jax')
