"""The link between Flax modules and the library's pure `apply_fn` contract."""

from collections.abc import Mapping
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax


def make_apply_fn(module: nn.Module):
  """Wraps a Linen module's `apply` in the library's `apply_fn` contract.

  `apply_fn(variables, batch, *, train, rngs)` returns the module's dict of
  named outputs. In training, collections other than `params` (such as
  `batch_stats`) are mutable, and their new values come back under the
  `model_state` key of the outputs.
  """

  def apply_fn(variables: Mapping[str, Any], batch: Any, *, train: bool = False,
               rngs: Mapping[str, jax.Array] | None = None) -> dict[str, Any]:
    mutable = [c for c in variables if c != 'params'] if train else False
    if mutable:
      outputs, model_state = module.apply(variables, batch, train=train, rngs=rngs,
                                          mutable=mutable)
      return {**outputs, 'model_state': model_state}
    return module.apply(variables, batch, train=train, rngs=rngs)

  return apply_fn


def _init(module: nn.Module, rng: jax.Array, batch: Any) -> Any:
  params_rng, dropout_rng = jax.random.split(rng)
  return module.init({'params': params_rng, 'dropout': dropout_rng}, batch, train=False)


# The module is a static argument: modules equal in every field (two builds of one
# config) share one compiled program for each batch shape.
_init_by_module = jax.jit(_init, static_argnums=0)


def init_variables(module: nn.Module, rng: jax.Array, example_batch: Any) -> dict[str, Any]:
  """Initialises a module's variables from an example batch (eval mode, no dropout).

  One jitted program: run op by op, every initialiser and layer of the first
  forward pass would compile on its own, which takes longer than the whole.
  It compiles once per module configuration and batch shape, unless a field of
  the module is unhashable (a list, say): then once per call.
  """
  try:
    hash(module)
  except TypeError:
    return dict(jax.jit(functools.partial(_init, module))(rng, example_batch))
  return dict(_init_by_module(module, rng, example_batch))


def set_fields(module: nn.Module, **values: Any) -> nn.Module:
  """`module` with each of `values` set wherever the field exists, all the way down.

  Sets the fields on the module, on every sub-module (an encoder inside a
  classifier) and on every dataclass configuration (a `TransformerConfig`)
  that has them; the others are left as they are, and so are the parameters.
  `set_fields(model, dtype=jnp.bfloat16)` makes a whole model compute in
  bfloat16.
  """
  updates = {}
  for field in dataclasses.fields(module):
    if field.name in ('parent', 'name'):
      continue
    value = getattr(module, field.name)
    if field.name in values:
      updates[field.name] = values[field.name]
    elif isinstance(value, nn.Module):
      changed = set_fields(value, **values)
      if changed is not value:
        updates[field.name] = changed
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
      names = {f.name for f in dataclasses.fields(value)}
      known = {k: v for k, v in values.items() if k in names}
      if known:
        updates[field.name] = dataclasses.replace(value, **known)
  return module.clone(**updates) if updates else module


def sync_batch_norm(module: nn.Module, axis_name: str) -> nn.Module:
  """`module` with every BatchNorm averaging its batch statistics over `axis_name`.

  Under `pmap` each device sees only its share of the batch; without this its
  BatchNorm layers would normalise by that share's statistics, and training
  would differ from one device or a mesh. Sets `bn_axis_name` on the module
  and on every sub-module (an encoder inside a classifier) that has the field;
  the parameters are unchanged.
  """
  return set_fields(module, bn_axis_name=axis_name)
