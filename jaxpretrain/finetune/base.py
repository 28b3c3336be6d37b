"""The fine-tuning `Transform` and its composition, in the style of optax."""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

from jaxpretrain.state import ApplyFn

Params = Any
ModelState = dict[str, Any]


class Transform(NamedTuple):
  """A fine-tuning transform: four pure functions, composed by `chain`.

  Attributes:
    init: `(params, rng) -> params`, parameter surgery before training.
    trainable: `params -> tree of bool`, which leaves train.
    wrap_apply: `apply_fn -> apply_fn`, e.g. adapters added at call time.
    wrap_tx: `(tx, trainable_params) -> tx`, e.g. per-parameter learning rates.
    spec: JSON-able description, written into checkpoint manifests.
    init_state: `model_state -> model_state`, the model's other collections
      (e.g. BatchNorm's `batch_stats`) before training; `from_pretrained` copies
      them with the weights they belong to.
  """
  init: Callable[[Params, jax.Array], Params]
  trainable: Callable[[Params], Any]
  wrap_apply: Callable[[ApplyFn], ApplyFn]
  wrap_tx: Callable[[optax.GradientTransformation, Params], optax.GradientTransformation]
  spec: tuple[dict[str, Any], ...] = ()
  init_state: Callable[[ModelState], ModelState] = lambda model_state: model_state


def _all_true(params: Params) -> Any:
  return jax.tree.map(lambda _: True, params)


def make_transform(name: str, *, init=None, trainable=None, wrap_apply=None, wrap_tx=None,
                   init_state=None, **spec_args: Any) -> Transform:
  """A transform with identity defaults for the functions not given."""
  return Transform(init=init or (lambda params, rng: params),
                   trainable=trainable or _all_true,
                   wrap_apply=wrap_apply or (lambda apply_fn: apply_fn),
                   wrap_tx=wrap_tx or (lambda tx, params: tx),
                   spec=({'name': name, **spec_args},),
                   init_state=init_state or (lambda model_state: model_state))


def identity() -> Transform:
  """The transform that changes nothing."""
  return make_transform('identity')


def chain(*transforms: Transform) -> Transform:
  """Composes transforms left to right.

  `init`s and `init_state`s run in order, each on the previous one's output;
  trainable masks are ANDed; `wrap_apply` and `wrap_tx` wrap in order (the
  first is innermost).
  Every `init` receives the same rng (transforms derive per-parameter keys from
  it), so `chain(a, chain(b, c))` equals `chain(a, b, c)`.
  """

  def init(params, rng):
    for t in transforms:
      params = t.init(params, rng)
    return params

  def trainable(params):
    masks = [t.trainable(params) for t in transforms]
    return jax.tree.map(lambda *m: all(m), _all_true(params), *masks)

  def wrap_apply(apply_fn):
    for t in transforms:
      apply_fn = t.wrap_apply(apply_fn)
    return apply_fn

  def wrap_tx(tx, params):
    for t in transforms:
      tx = t.wrap_tx(tx, params)
    return tx

  def init_state(model_state):
    for t in transforms:
      model_state = t.init_state(model_state)
    return model_state

  spec = tuple(s for t in transforms for s in t.spec if s.get('name') != 'identity')
  return Transform(init, trainable, wrap_apply, wrap_tx, spec, init_state)
