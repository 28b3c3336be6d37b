"""Objectives: rotation prediction's labels and views."""

import jax
import numpy as np
import optax

from jaxpretrain.finetune import create_state, identity
from jaxpretrain.models import ConvEncoder, PretextClassifier
from jaxpretrain.objectives import rotate90, rotation_prediction
from jaxpretrain.step import make_eval_step, make_train_step


def test_rotate90_turns_each_image_its_own_amount():
  images = np.arange(2 * 3 * 3).reshape(2, 3, 3, 1).astype(np.float32)
  out = np.asarray(rotate90(images, np.array([1, 2])))
  np.testing.assert_array_equal(out[0], np.rot90(images[0], 1))
  np.testing.assert_array_equal(out[1], np.rot90(images[1], 2))


def _upright_shapes(n=16, size=8, seed=0):
  """Noisy 'L' shapes, all upright, so that their rotation is recognisable."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 0.2, (n, size, size, 1)).astype(np.float32)
  images[:, 1:7, 2] += 0.8
  images[:, 6, 2:6] += 0.8
  return {'image': images}


def test_rotation_prediction_learns_and_ignores_labels():
  batch = _upright_shapes()
  model = PretextClassifier(ConvEncoder(stages=((4,), (8,)), norm=None, pool='flatten'),
                            hidden=16)
  state = create_state(model, identity(), tx=optax.adam(3e-3), rng=jax.random.PRNGKey(0),
                       example_batch=batch)
  out = state.apply_fn(state.variables(), batch)
  assert out['logits'].shape == (16, 4)
  step = jax.jit(make_train_step(rotation_prediction()))
  evaluate = jax.jit(make_eval_step(rotation_prediction()))
  no_labels = batch
  before = evaluate(state, no_labels)
  for _ in range(40):
    state, metrics = step(state, no_labels)
  after = evaluate(state, no_labels)
  assert np.isfinite(metrics['loss'])
  assert float(after['loss']) < float(before['loss'])
  assert float(after['accuracy']) > 0.5
