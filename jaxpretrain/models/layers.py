"""Layers of the Transformer written for speed: dense, dropout and the vocabulary projection.

Each computes what the stock Flax/JAX form computes (tests check values and
gradients); they differ in how much work the compiled training step does.
BENCHMARKS.md measures each on a CPU:

* `Dense` (and `dense`) keeps XLA from fusing the elementwise work that made
  an operand (dropout, GELU, LayerNorm) into the transposed copy its kernel
  gradient needs, which then runs about ten times slower than a plain copy.
* `Dropout` draws 16 random bits per element instead of a 32-bit float: half
  the random-number hashes.
* `tied_logits` gives the word-embedding gradient of `x @ E.T` as one matmul
  that reads the logits' gradient as it lies, where autodiff's form makes
  XLA:CPU first copy that (N, V) array transposed.
* `add_bias` sums the gradient of a vocabulary-wide bias as a product with a
  vector of ones: XLA:CPU runs the column sum of an (N, 30522) array about 30
  times slower than that product.

In 16-bit compute dtypes their parameter gradients accumulate in float32 and
dropout scales in float32. `LAYER_SETS` holds them and the stock forms
(`nn.Dense`, `nn.Dropout`, plain logits and bias), with the same parameters,
so that a model can choose either and load the other's checkpoints: accelerators
other than XLA:CPU may run the stock forms faster.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxpretrain.errors import ConfigError

_BITS = 16


def keep_mask(rng: jax.Array, rate: float, shape: tuple[int, ...]) -> jax.Array:
  """A boolean mask that is False with probability `round(rate * 2**16) / 2**16`.

  Each pair of elements along the last axis shares one 32-bit draw, split in
  two 16-bit halves; the leading axes stay as they are, so a mask of a sharded
  activation is drawn sharded.
  """
  *lead, last = shape
  pairs = -(-last // 2)
  bits = jax.random.bits(rng, (*lead, pairs), jnp.uint32)
  halves = jax.lax.bitcast_convert_type(bits, jnp.uint16).reshape(*lead, 2 * pairs)
  return halves[..., :last] >= jnp.uint16(round(rate * 2 ** _BITS))


class Dropout(nn.Module):
  """Inverted dropout: zeroes elements with probability `rate`, scales the rest to keep the mean.

  The drop probability is `rate` rounded to a multiple of 2**-16 (0.1 becomes
  0.100006), and the kept elements are scaled by the inverse of the exact keep
  probability. The rng comes from the 'dropout' collection, as for
  `flax.linen.Dropout`.

  Attributes:
    rate: drop probability.
    deterministic: if True, the identity (evaluation); may also be given at call time.
  """
  rate: float
  deterministic: bool | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - round(self.rate * 2 ** _BITS) / 2 ** _BITS
    keep = keep_mask(self.make_rng('dropout'), self.rate, x.shape)
    # Scaled in float32: 1 / keep_prob rounded to bfloat16 (1.109 for 1.111) would bias
    # every kept element the same way.
    scaled = (x.astype(jnp.promote_types(x.dtype, jnp.float32)) / keep_prob).astype(x.dtype)
    return jnp.where(keep, scaled, jnp.zeros((), x.dtype))


@jax.custom_vjp
def tied_logits(x_NxD: jax.Array, table_VxD: jax.Array) -> jax.Array:
  """Logits `x @ table.T` over a (V, D) embedding table, for any leading axes of `x`."""
  return jnp.einsum('...d,vd->...v', x_NxD, table_VxD)


def _tied_logits_forward(x_NxD, table_VxD):
  return tied_logits(x_NxD, table_VxD), (x_NxD, table_VxD)


def _accumulated(a: jax.Array) -> Any:
  """The dtype a sum over the rows of `a` accumulates in: float32 at least."""
  return jnp.promote_types(a.dtype, jnp.float32)


def table_gradient(x_NxD: jax.Array, g_NxV: jax.Array) -> jax.Array:
  """The (V, D) gradient `g.T @ x` of a table projected as `x @ table.T`, over all leading axes.

  Computed as `(x.T @ g).T`, contracting the rows of both with `g` read as laid
  out, so that XLA:CPU makes no transposed copy of the (N, V) gradient. The sum
  over rows is float32 (or wider) whatever the inputs' dtype.
  """
  d, v = x_NxD.shape[-1], g_NxV.shape[-1]
  return jnp.einsum('nd,nv->dv', x_NxD.reshape(-1, d), g_NxV.reshape(-1, v),
                    preferred_element_type=_accumulated(g_NxV)).T


def _tied_logits_backward(residuals, g_NxV):
  x_NxD, table_VxD = residuals
  g_x = jnp.einsum('...v,vd->...d', g_NxV, table_VxD).astype(x_NxD.dtype)
  return g_x, table_gradient(x_NxD, g_NxV).astype(table_VxD.dtype)


tied_logits.defvjp(_tied_logits_forward, _tied_logits_backward)


@jax.custom_vjp
def add_bias(x_NxV: jax.Array, bias_V: jax.Array) -> jax.Array:
  """`x + bias` over the last axis, for any leading axes of `x`, in `x`'s dtype."""
  return x_NxV + bias_V.astype(x_NxV.dtype)


def sum_rows(g_NxF: jax.Array) -> jax.Array:
  """The sum over all leading axes, as a product with a vector of ones (see `add_bias`).

  Accumulated and returned in float32 (or wider).
  """
  f = g_NxF.shape[-1]
  return jnp.matmul(jnp.ones((g_NxF.size // f,), g_NxF.dtype), g_NxF.reshape(-1, f),
                    preferred_element_type=_accumulated(g_NxF))


def _add_bias_forward(x_NxV, bias_V):
  return add_bias(x_NxV, bias_V), bias_V  # The bias only for its dtype: V values.


def _add_bias_backward(bias_V, g_NxV):
  return g_NxV, sum_rows(g_NxV).astype(bias_V.dtype)


add_bias.defvjp(_add_bias_forward, _add_bias_backward)


@jax.custom_vjp
def dense(x_NxD: jax.Array, kernel_DxF: jax.Array, bias_F: jax.Array) -> jax.Array:
  """`x @ kernel + bias` over the last axis of `x`."""
  return jnp.einsum('...d,df->...f', x_NxD, kernel_DxF) + bias_F


def _dense_forward(x_NxD, kernel_DxF, bias_F):
  return dense(x_NxD, kernel_DxF, bias_F), (x_NxD, kernel_DxF, bias_F)


def _dense_backward(residuals, g_NxF):
  x_NxD, kernel_DxF, bias_F = residuals
  # The kernel's gradient contracts both over their rows, so XLA:CPU copies one of them
  # transposed; unfused, that copy is a plain transpose, where fused with the elementwise
  # work that made its operand (dropout, GELU) it runs about ten times slower.
  x_NxD, g_NxF = jax.lax.optimization_barrier((x_NxD, g_NxF))
  d, f = kernel_DxF.shape
  g_x = jnp.einsum('...f,df->...d', g_NxF, kernel_DxF)
  g_kernel = jnp.einsum('nd,nf->df', x_NxD.reshape(-1, d), g_NxF.reshape(-1, f),
                        preferred_element_type=_accumulated(g_NxF))
  return g_x, g_kernel.astype(kernel_DxF.dtype), sum_rows(g_NxF).astype(bias_F.dtype)


dense.defvjp(_dense_forward, _dense_backward)


class Dense(nn.Module):
  """A dense layer with `kernel` (D, F) and `bias` (F), as `flax.linen.Dense` names them.

  Attributes:
    features: F.
    use_bias: add a bias.
    dtype: computation dtype (parameters stay float32).
    kernel_init: initialiser of the kernel (the bias starts at zero).
  """
  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
    bias = (self.param('bias', nn.initializers.zeros, (self.features,)) if self.use_bias
            else jnp.zeros((self.features,)))
    # Named so that remat='dots' can keep it: the custom VJP hides its matmul from the policy.
    return checkpoint_name(
        dense(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype)), 'dense')



def plain_logits(x_NxD: jax.Array, table_VxD: jax.Array) -> jax.Array:
  """`x @ table.T` as autodiff sees it: the stock form of `tied_logits`."""
  return jnp.einsum('...d,vd->...v', x_NxD, table_VxD)


class LayerSet(NamedTuple):
  """The layers a Transformer is built from (see `LAYER_SETS`).

  Attributes:
    dense: `(features, *, use_bias, dtype, kernel_init, name)` -> a module with
      `kernel` (D, F) and `bias` (F).
    dropout: `(rate, deterministic=None)` -> a module drawing from 'dropout'.
    tied_logits: `(x_NxD, table_VxD)` -> `x @ table.T`.
    add_bias: `(x_NxV, bias_V)` -> `x + bias`.
    fused_loss: a language-model head given targets returns their loss
      (`vocab_loss.projected_nll`) instead of the logits.
  """
  dense: Callable[..., nn.Module]
  dropout: Callable[..., nn.Module]
  tied_logits: Callable[[jax.Array, jax.Array], jax.Array]
  add_bias: Callable[[jax.Array, jax.Array], jax.Array]
  fused_loss: bool


# 'fast': this module's layers, tuned on XLA:CPU (BENCHMARKS.md); 'flax': the stock forms.
LAYER_SETS: dict[str, LayerSet] = {
    'fast': LayerSet(Dense, Dropout, tied_logits, add_bias, fused_loss=True),
    'flax': LayerSet(nn.Dense, nn.Dropout, plain_logits, jnp.add, fused_loss=False),
}


def layer_set(name: str) -> LayerSet:
  """The `LAYER_SETS` entry `name`; an unknown name is a ConfigError listing the known ones."""
  if name not in LAYER_SETS:
    raise ConfigError(f'unknown layers {name!r}; use one of {sorted(LAYER_SETS)} '
                      '(e.g. --config.model.layers=flax)')
  return LAYER_SETS[name]
