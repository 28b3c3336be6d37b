"""Building a fine-tuning train state from a model and a transform."""

from typing import Any

import flax.linen as nn
import jax
import optax

from jaxpretrain import tree as tree_lib
from jaxpretrain.finetune.base import Transform
from jaxpretrain.models.core import init_variables, make_apply_fn
from jaxpretrain.state import TrainState


def split_trainable(params: Any, mask: Any) -> tuple[dict, dict]:
  """Splits parameters into (trainable, frozen) by a tree of bools."""
  flat_mask = tree_lib.flatten(mask)
  return tree_lib.partition(params, lambda p: bool(flat_mask[p]))


def create_state(model: nn.Module, transform: Transform, *, tx: optax.GradientTransformation,
                 rng: jax.Array, example_batch: Any) -> TrainState:
  """Initialises `model`, applies `transform`, and returns the train state.

  Args:
    model: a Linen module following the library's model contract.
    transform: a fine-tuning transform (or `chain` of them).
    tx: the optimizer, before the transform's `wrap_tx`.
    rng: key for initialisation, the transform's `init`, and training.
    example_batch: a batch (or one of the same shapes) to initialise with.

  Returns:
    A state whose `params` are the trainable parameters and `frozen` the rest.
  """
  init_rng, transform_rng, train_rng = jax.random.split(rng, 3)
  variables = init_variables(model, init_rng, example_batch)
  params = transform.init(variables.pop('params'), transform_rng)
  trainable, frozen = split_trainable(params, transform.trainable(params))
  if not tree_lib.flatten(trainable):
    raise ValueError('the transform leaves no parameter trainable')
  return TrainState.create(apply_fn=transform.wrap_apply(make_apply_fn(model)),
                           params=trainable, frozen=frozen,
                           tx=transform.wrap_tx(tx, trainable), rng=train_rng,
                           model_state=transform.init_state(variables))
