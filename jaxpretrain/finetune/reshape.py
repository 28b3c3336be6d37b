"""Shape adapters: fitting a pre-trained array into a parameter of another shape.

An adapter is `(pretrained, init) -> array of init's shape`, where `init` is the
new model's freshly initialised value. `from_pretrained(reshape=[(regex, adapter)])`
applies it to the parameters whose shapes differ.
"""

from collections.abc import Callable
import functools
import math

import jax
import jax.numpy as jnp

from jaxpretrain.errors import CheckpointMismatchError

Adapter = Callable[[jax.Array, jax.Array], jax.Array]


def _resize_vocab(pretrained: jax.Array, init: jax.Array, *, axis: int) -> jax.Array:
  if pretrained.ndim != init.ndim or any(
      a != b for i, (a, b) in enumerate(zip(pretrained.shape, init.shape))
      if i != axis % init.ndim):
    raise CheckpointMismatchError(
        f'resize_vocab(axis={axis}) changes one axis only, but {pretrained.shape} → '
        f'{init.shape} differ elsewhere')
  keep = min(pretrained.shape[axis], init.shape[axis])
  old = jax.lax.slice_in_dim(pretrained, 0, keep, axis=axis).astype(init.dtype)
  return jax.lax.dynamic_update_slice_in_dim(init, old, 0, axis=axis)


def resize_vocab(axis: int = 0) -> Adapter:
  """Keeps the pre-trained rows of a vocabulary; new rows keep their init, extra rows go.

  Args:
    axis: the vocabulary axis (0 for an embedding table, -1 for an output bias
      or a vocabulary projection's kernel).
  """
  return functools.partial(_resize_vocab, axis=axis)


def _interpolate_positions(pretrained: jax.Array, init: jax.Array, *, prefix_tokens: int,
                           grid: bool) -> jax.Array:
  # Positions on axis -2, features on -1; any leading axes (e.g. a batch of 1) are kept.
  if pretrained.shape[:-2] != init.shape[:-2] or pretrained.shape[-1] != init.shape[-1]:
    raise CheckpointMismatchError(
        f'interpolate_positions resizes the position axis (-2) only, but {pretrained.shape} '
        f'→ {init.shape} differ elsewhere')
  prefix = pretrained[..., :prefix_tokens, :].astype(init.dtype)
  old = pretrained[..., prefix_tokens:, :].astype(jnp.float32)
  n_old, n_new = old.shape[-2], init.shape[-2] - prefix_tokens
  if grid:
    side_old, side_new = math.isqrt(n_old), math.isqrt(n_new)
    if side_old ** 2 != n_old or side_new ** 2 != n_new:
      raise CheckpointMismatchError(
          f'interpolate_positions(grid=True) needs square grids, got {n_old} → {n_new} '
          f'positions after {prefix_tokens} prefix token(s)')
    lead = old.shape[:-2]
    square = old.reshape(*lead, side_old, side_old, old.shape[-1])
    new = jax.image.resize(square, (*lead, side_new, side_new, old.shape[-1]), 'bicubic')
    new = new.reshape(*lead, n_new, old.shape[-1])
  else:
    new = jax.image.resize(old, (*old.shape[:-2], n_new, old.shape[-1]), 'linear')
  return jnp.concatenate([prefix, new.astype(init.dtype)], axis=-2)


def interpolate_positions(prefix_tokens: int = 0, grid: bool = False) -> Adapter:
  """Interpolates learned position embeddings (positions on axis -2) to a new length.

  Args:
    prefix_tokens: leading positions copied as they are (e.g. 1 for a class token).
    grid: the positions form a square image grid, resized bicubically in 2-D
      (a ViT at a new image size); otherwise a sequence, resized linearly.
  """
  return functools.partial(_interpolate_positions, prefix_tokens=prefix_tokens, grid=grid)


ADAPTERS: dict[str, Callable[..., Adapter]] = {
    'resize_vocab': resize_vocab,
    'interpolate_positions': interpolate_positions,
}


def adapter(spec: str | Adapter, **kwargs) -> Adapter:
  """An adapter given by name (with keyword arguments) or as a function."""
  if callable(spec):
    return spec
  if spec not in ADAPTERS:
    raise CheckpointMismatchError(f'unknown shape adapter {spec!r}; choose one of '
                                  f'{sorted(ADAPTERS)} or pass a function (pretrained, init)')
  return ADAPTERS[spec](**kwargs)
