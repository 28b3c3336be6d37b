"""Transforms that change how the optimizer treats each parameter."""

from collections.abc import Callable, Sequence
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import ConfigError
from jaxpretrain.finetune.base import Params, Transform, make_transform
from jaxpretrain.models.memory import STACKED_PATHS


def _scale_updates(multipliers) -> optax.GradientTransformation:
  """Multiplies each parameter's update by its own factor (stateless; arrays broadcast)."""

  def update(updates, state, params=None):
    return jax.tree.map(lambda u, m: u * m, updates, multipliers), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def lr_multipliers(rules: Sequence[tuple[str, float]], *, default: float | None = 1.0
                   ) -> Transform:
  """Scales the learning rate of parameters by regex rules, e.g. a head at 10x.

  Args:
    rules: ordered `(regex, multiplier)` over `/`-joined paths; first match wins.
    default: multiplier of the parameters no rule matches; None makes an
      unmatched parameter an error.

  Example:
    >>> finetune.lr_multipliers([('head/.*', 10.0)])
  """
  all_rules = list(rules) + ([('.*', default)] if default is not None else [])

  def wrap_tx(tx, params):
    flat = tree_lib.match_rules(params, all_rules, name='lr_multipliers rules')
    return optax.chain(tx, _scale_updates(tree_lib.unflatten(flat)))

  return make_transform('lr_multipliers', wrap_tx=wrap_tx,
                        rules=[list(r) for r in rules], default=default)


def _base_path(path: str) -> str:
  """The parameter a LoRA factor adapts (`lora/<path>/a` → `<path>`), else the path."""
  m = re.fullmatch(r'lora/(.*)/[ab]', path)
  return m.group(1) if m else path


def layer_ids(params: Params, *, head: str = 'head/.*',
              embeddings: str = r'(.*/)?[^/]*(embed|stem|cls_token)[^/]*(/.*)?',
              stacked: str | None = None) -> tuple[dict[str, Any], int]:
  """Depth of every parameter: embeddings 0, layers 1..L, head and the rest L + 1.

  Layers are told apart by the integers in their path (`layer_3`,
  `stage1_conv0`), ordered numerically. Parameters matching `stacked` hold
  one layer per index of their leading axis (as `nn.scan` stacks them; by
  default those under a `layers/` key, `models.memory.STACKED_PATHS`); they
  come after the indexed layers and get an array of ids. LoRA factors take the
  depth of the parameter they adapt.

  Returns:
    `({path: id or int array}, L)`.
  """
  stacked = STACKED_PATHS if stacked is None else stacked
  flat = tree_lib.flatten(params)
  kinds, keys = {}, set()
  for path, leaf in flat.items():
    base = _base_path(path)
    if re.fullmatch(head, base):
      kinds[path] = 'top'
    elif re.fullmatch(embeddings, base):
      kinds[path] = 'bottom'
    elif stacked and re.fullmatch(stacked, base):
      kinds[path] = 'stacked'
    else:
      key = tuple(int(n) for n in re.findall(r'\d+', base))
      kinds[path] = key if key else 'top'
      if key:
        keys.add(key)
  rank = {k: i + 1 for i, k in enumerate(sorted(keys))}
  depths = {np.shape(flat[p])[0] for p, k in kinds.items() if k == 'stacked'}
  if len(depths) > 1:
    raise ValueError(f'stacked parameters have different numbers of layers {sorted(depths)}; '
                     '`stacked` should match one scanned stack of layers')
  n_stacked = depths.pop() if depths else 0
  num_layers = len(rank) + n_stacked
  ids = {}
  for path, kind in kinds.items():
    if kind == 'top':
      ids[path] = num_layers + 1
    elif kind == 'bottom':
      ids[path] = 0
    elif kind == 'stacked':
      ids[path] = len(rank) + 1 + np.arange(n_stacked)
    else:
      ids[path] = rank[kind]
  return ids, num_layers


def layerwise_lr_decay(decay: float, *, head: str = 'head/.*',
                       embeddings: str = r'(.*/)?[^/]*(embed|stem|cls_token)[^/]*(/.*)?',
                       stacked: str | None = None) -> Transform:
  """Learning rate scaled by `decay ** (L + 1 - depth)`: the head at 1, embeddings lowest.

  Depths come from parameter paths as `layer_ids` describes; layers stacked
  along a leading axis (`stacked` regex) get one rate per layer.

  Args:
    decay: factor per layer, e.g. 0.75.
    head: regex of the head (full rate).
    embeddings: regex of the embeddings or stem (the lowest rate).
    stacked: regex of parameters stacked over layers on their leading axis
      (default: scanned layers, under `layers/`).
  """

  def wrap_tx(tx, params):
    ids, num_layers = layer_ids(params, head=head, embeddings=embeddings, stacked=stacked)
    multipliers = {}
    for path, leaf in tree_lib.flatten(params).items():
      scale = np.power(decay, num_layers + 1 - np.asarray(ids[path]), dtype=np.float32)
      # Per-layer rates broadcast along the stacked axis.
      multipliers[path] = scale.reshape(scale.shape + (1,) * (np.ndim(leaf) - scale.ndim))
    return optax.chain(tx, _scale_updates(tree_lib.unflatten(multipliers)))

  return make_transform('layerwise_lr_decay', wrap_tx=wrap_tx, decay=decay, head=head,
                        embeddings=embeddings, stacked=stacked)


def _selection(params: Params, pattern: str | None, default: Callable[[str, Any], bool]):
  """A tree of bools: paths matching `pattern`, or chosen by `default(path, leaf)`."""
  flat = tree_lib.flatten(params)
  if pattern is None:
    return tree_lib.unflatten({p: default(p, x) for p, x in flat.items()})
  return tree_lib.unflatten({p: re.fullmatch(pattern, p) is not None for p in flat})


def _pull_toward_start(weight: float) -> optax.GradientTransformation:
  """Adds `weight * (params - params at init)` to the gradient; keeps the start in its state."""

  def init(params):
    return {'anchor': jax.tree.map(lambda x: jnp.array(x, copy=True), params)}

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('l2sp needs the parameters in tx.update(grads, state, params)')
    return jax.tree.map(lambda g, p, a: g + weight * (p - a), updates, params,
                        state['anchor']), state

  return optax.GradientTransformation(init, update)


def l2sp(weight: float, *, pattern: str | None = None) -> Transform:
  """L2-SP (Li et al., 2018): a penalty `weight/2 * |w - w_pretrained|^2` on the weights.

  The starting values are the parameters when the optimizer is initialised,
  i.e. after `from_pretrained`; they live in the optimizer state, so they are
  checkpointed and survive a resume. The penalty's gradient joins the loss's
  before the optimizer (as in the paper), but is not part of the logged loss.

  Args:
    weight: strength of the pull.
    pattern: regex of the parameters pulled; default every trainable one but
      the head (`head/...`) and LoRA factors, which have no pre-trained value.
  """

  def wrap_tx(tx, params):
    mask = _selection(params, pattern,
                      lambda p, _: not re.match(r'(head|lora)/', p))
    return optax.chain(optax.masked(_pull_toward_start(weight), mask), tx)

  return make_transform('l2sp', wrap_tx=wrap_tx, weight=weight, pattern=pattern)


class DecayState(NamedTuple):
  count: jax.Array


def _decoupled_decay(rate: float, learning_rate: float | optax.Schedule
                     ) -> optax.GradientTransformation:
  """Subtracts `learning_rate(step) * rate * params` from the updates."""

  def update(updates, state, params=None):
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    updates = jax.tree.map(lambda u, p: u - lr * rate * p, updates, params)
    return updates, DecayState(state.count + 1)

  return optax.GradientTransformation(lambda _: DecayState(jnp.zeros([], jnp.int32)), update)


def weight_decay(rate: float, *, learning_rate: float | optax.Schedule | None,
                 mask: str | Sequence[tuple[str, bool]] | None = None) -> Transform:
  """Decoupled weight decay (as AdamW's) on chosen parameters.

  `chain(tx(lr), weight_decay(rate, learning_rate=lr))` with `tx` Adam equals
  AdamW. By default matrices (kernels, embeddings, LoRA factors) decay and
  vectors (biases, norm scales) do not.

  Args:
    rate: decay per unit learning rate.
    learning_rate: the optimizer's learning rate or schedule.
    mask: a regex of the parameters that decay, or `(regex, decays?)` rules;
      default: every parameter with two or more dimensions (besides the layer
      axis of scanned layers).
  """

  def wrap_tx(tx, params):
    if learning_rate is None:
      raise ConfigError('weight_decay needs the learning rate (or schedule) it scales with')
    if mask is None or isinstance(mask, str):
      # A scanned stack's leading axis counts layers: its biases are (L, D), not matrices.
      decays = _selection(params, mask, lambda path, x: np.ndim(x) - bool(
          re.fullmatch(STACKED_PATHS, path)) >= 2)
    else:
      decays = tree_lib.unflatten(tree_lib.match_rules(params, mask, name='weight_decay mask'))
    return optax.chain(tx, optax.masked(_decoupled_decay(rate, learning_rate), decays))

  return make_transform('weight_decay', wrap_tx=wrap_tx, rate=rate,
                        mask=mask if mask is None or isinstance(mask, str)
                        else [list(r) for r in mask])
