"""Small models and batches shared by the tests."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file, save_file

from jaxpretrain import parallel
from jaxpretrain.models import Classifier, ConvEncoder
from jaxpretrain.objectives import classification
from jaxpretrain.step import make_train_step


class TinyMLP(nn.Module):
  """A two-layer classifier on flattened images, cheap to compile."""
  num_classes: int = 3
  batch_norm: bool = False

  @nn.compact
  def __call__(self, batch, *, train=False):
    x = batch['image'].reshape(batch['image'].shape[0], -1)
    x = nn.Dense(16, name='encoder')(x)
    if self.batch_norm:
      x = nn.BatchNorm(use_running_average=not train, name='norm')(x)
    x = nn.relu(x)
    return {'features': x, 'logits': nn.Dense(self.num_classes, name='head')(x)}


def tiny_classifier(norm=None, num_classes=3):
  return Classifier(encoder=ConvEncoder(stages=((4,), (8,)), norm=norm),
                    num_classes=num_classes)


def image_batch(n=16, size=8, num_classes=3, seed=0):
  """Structured images whose class is recoverable (bright quadrant), as numpy."""
  rng = np.random.default_rng(seed)
  label = rng.integers(0, num_classes, n).astype(np.int32)
  image = rng.uniform(0, 0.2, (n, size, size, 1)).astype(np.float32)
  h = size // 2
  for i, c in enumerate(label):
    image[i, (c // 2) * h:(c // 2 + 1) * h, (c % 2) * h:(c % 2 + 1) * h] += 0.8
  return {'image': image, 'label': label}


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


def to_numpy(tree):
  return jax.tree.map(lambda x: np.array(jnp.asarray(x)), tree)


# The same training run on one device, jit over a mesh of all devices, and pmap.

def run_single(state, batches, objective=None, **options):
  step = jax.jit(make_train_step(objective or classification(), **options))
  for b in batches:
    state, metrics = step(state, b)
  return state, metrics


def run_mesh(state, batches, objective=None, **options):
  mesh = parallel.make_mesh()
  step = parallel.jit(make_train_step(objective or classification(), **options), mesh, state)
  state = parallel.place_state(state, mesh)
  for b in batches:
    state, metrics = step(state, parallel.shard_batch(b, mesh))
  return state, metrics


def run_pmap(state, batches, objective=None, **options):
  step = parallel.pmap(make_train_step(objective or classification(), **options,
                                       axis_name='batch'))
  state = parallel.replicate(state)
  for b in batches:
    state, metrics = step(state, parallel.split_for_pmap(b))
  return parallel.unreplicate(state), parallel.unreplicate(metrics)


def copy_of(directory, tmp_path, *, config=None, weights=None, preprocessor=None):
  """A saved Hugging Face `directory` in `tmp_path`, with config.json keys and weights
  replaced (None deletes), and with `preprocessor` as its preprocessor_config.json if given."""
  hf = json.loads((directory / 'config.json').read_text())
  for key, value in (config or {}).items():
    hf.pop(key) if value is None else hf.__setitem__(key, value)
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  state_dict = load_file(directory / 'model.safetensors')
  for key, value in (weights or {}).items():
    state_dict.pop(key) if value is None else state_dict.__setitem__(key, value)
  save_file(state_dict, tmp_path / 'model.safetensors')
  (tmp_path / 'preprocessor_config.json').unlink(missing_ok=True)
  if preprocessor is not None:
    (tmp_path / 'preprocessor_config.json').write_text(json.dumps(preprocessor))
  return tmp_path


@functools.cache
def _batched(augment):
  """`jax.jit(jax.vmap(augment))`, built once per augmentation so that each compiles once."""
  return jax.jit(jax.vmap(augment))


def run_augment(augment, images_BxHxWxC, seed=0):
  """Runs an augmentation on every image, jitted and vmapped, a key per image from `seed`."""
  keys = jax.random.split(jax.random.PRNGKey(seed), len(images_BxHxWxC))
  return np.asarray(_batched(augment)(images_BxHxWxC, keys))
