"""`init_variables`: one compiled program per module configuration and batch shape."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpretrain.models.core import init_variables

TRACES = []  # One entry each time a module's forward pass is traced, i.e. compiled.


class _Stack(nn.Module):
  widths: tuple[int, ...] | list[int]

  @nn.compact
  def __call__(self, batch, *, train):
    del train
    TRACES.append(self.widths)
    x = batch['x']
    for width in self.widths:
      x = nn.Dense(width)(x)
    return {'y': x}


def _shapes(variables):
  return jax.tree.map(jnp.shape, variables)


def test_equal_modules_share_one_compiled_init_per_batch_shape():
  TRACES.clear()
  first = init_variables(_Stack((4, 5)), jax.random.PRNGKey(0), {'x': jnp.ones((2, 3))})
  again = init_variables(_Stack((4, 5)), jax.random.PRNGKey(0), {'x': jnp.ones((2, 3))})
  assert len(TRACES) == 1
  jax.tree.map(np.testing.assert_array_equal, first, again)
  other = init_variables(_Stack((4, 5)), jax.random.PRNGKey(1), {'x': jnp.ones((2, 3))})
  assert len(TRACES) == 1  # Another key is an argument, not a new program.
  assert not np.array_equal(first['params']['Dense_0']['kernel'],
                            other['params']['Dense_0']['kernel'])
  init_variables(_Stack((4, 6)), jax.random.PRNGKey(0), {'x': jnp.ones((2, 3))})
  init_variables(_Stack((4, 5)), jax.random.PRNGKey(0), {'x': jnp.ones((7, 3))})
  assert len(TRACES) == 3


def test_a_module_with_an_unhashable_field_initialises_as_a_hashable_one():
  listed = init_variables(_Stack([4, 5]), jax.random.PRNGKey(0), {'x': jnp.ones((2, 3))})
  tupled = init_variables(_Stack((4, 5)), jax.random.PRNGKey(0), {'x': jnp.ones((2, 3))})
  assert _shapes(listed) == _shapes(tupled)
  jax.tree.map(np.testing.assert_array_equal, listed, tupled)
