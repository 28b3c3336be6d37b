"""Mixup and cutmix: mixing weights, soft targets, padding, and the training wrapper."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain.data import data_source, read_all
from jaxpretrain.objectives import classification
from jaxpretrain.objectives import mixing
from tests.helpers import TinyMLP

NUM_CLASSES = 10
MIXUP, CUTMIX = mixing.mixup(0.4), mixing.cutmix(1.0)
ALL_REAL = np.ones(8, np.float32)


@pytest.fixture(scope='module')
def fashion():
  """The first 8 Fashion-MNIST test images (28x28x1 in [0, 1]) and their labels."""
  batch = read_all(data_source('fashion_mnist', 'test[:8]'))
  return (batch['image'] / 255.0).astype(np.float32), batch['label'].astype(np.int32)


@pytest.fixture(scope='module')
def tagged(fashion):
  """The images with their one-hot labels as 10 more channels at every pixel.

  Channel 0 is the photograph; channels 1-10 say which examples each pixel came
  from, so a mixed image's own class weights can be read off it.
  """
  images, labels = fashion
  tags = np.broadcast_to(np.eye(NUM_CLASSES, dtype=np.float32)[labels][:, None, None, :],
                         images.shape[:3] + (NUM_CLASSES,))
  return np.concatenate([images, tags], axis=-1), labels


_JITTED = {}


def _mix(mix, images, labels, seed=0, mask=ALL_REAL):
  """Runs `mix` jitted (compiled once per mix) on one-hot targets; returns numpy arrays."""
  if mix not in _JITTED:
    _JITTED[mix] = jax.jit(lambda x, t, rng, m: mix(x, t, rng, mask_B=m))
  targets = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
  out = _JITTED[mix](images, targets, jax.random.PRNGKey(seed), mask)
  return tuple(np.asarray(a) for a in out)


def test_mixup_targets_sum_to_one_and_are_the_image_weights(tagged):
  images, labels = tagged
  mixed_any = False
  for seed in range(4):
    out, targets = _mix(MIXUP, images, labels, seed)
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    assert targets.min() >= 0.0
    # Every pixel is lam * own + (1 - lam) * partner, and so are the targets.
    np.testing.assert_allclose(out[..., 1:], np.broadcast_to(targets[:, None, None],
                                                              out[..., 1:].shape), atol=1e-6)
    mixed_any |= bool(np.any(targets.max(-1) < 0.99))
  assert mixed_any


def test_cutmix_target_weight_is_the_pasted_area(tagged):
  images, labels = tagged
  pasted_any = False
  for seed in range(4):
    out, targets = _mix(CUTMIX, images, labels, seed)
    np.testing.assert_allclose(targets.sum(-1), 1.0, atol=1e-6)
    # Each pixel is its own or its partner's: the class shares of the pixels are the targets.
    assert set(np.unique(out[..., 1:])) <= {0.0, 1.0}
    np.testing.assert_allclose(out[..., 1:].mean(axis=(1, 2)), targets, atol=1e-6)
    # One box, the same in every image (where the partner is of another class).
    replaced_BxHxW = np.any(out[..., 1:] != images[..., 1:], axis=-1)
    box = replaced_BxHxW.any(0)
    rows, cols = box.any(1), box.any(0)
    np.testing.assert_array_equal(box, np.outer(rows, cols))
    for replaced, weights, label in zip(replaced_BxHxW, targets, labels):
      if replaced.any():
        np.testing.assert_array_equal(replaced, box)
        np.testing.assert_allclose(1.0 - weights[label], box.mean(), atol=1e-6)
        pasted_any = True
  assert pasted_any


def test_real_images_keep_shape_dtype_range_and_depend_on_the_key(tagged):
  images, labels = tagged
  for mix in (MIXUP, CUTMIX):
    out, targets = _mix(mix, images, labels, seed=0)
    assert out.shape == images.shape and out.dtype == np.float32
    assert targets.shape == (8, NUM_CLASSES) and targets.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, _mix(mix, images, labels, seed=0)[0])
    assert not np.array_equal(out[..., 0], _mix(mix, images, labels, seed=1)[0][..., 0])
    assert not np.array_equal(out[..., 0], images[..., 0])


def test_alpha_zero_is_lambda_one_identity(tagged):
  images, labels = tagged
  for mix in (mixing.mixup(0.0), mixing.cutmix(0.0)):
    out, targets = _mix(mix, images, labels)
    np.testing.assert_array_equal(out, images)
    np.testing.assert_array_equal(targets, np.eye(NUM_CLASSES)[labels])
  with pytest.raises(ValueError, match='alpha'):
    mixing.mixup(-1.0)


@pytest.mark.parametrize('mask', [[1, 1, 1, 1, 1, 0, 0, 0], [1, 0, 1, 1, 0, 1, 0, 1]])
def test_partners_pair_real_with_real_and_padding_with_itself(mask):
  mask = np.array(mask, np.float32)
  real = np.flatnonzero(mask)
  pairings = set()
  for seed in range(6):
    perm = np.asarray(jax.jit(mixing.partners, static_argnums=1)(jax.random.PRNGKey(seed), 8,
                                                                 mask))
    assert perm.dtype == np.int32 and sorted(perm) == list(range(8))
    assert set(perm[real]) == set(real)
    np.testing.assert_array_equal(perm[mask == 0], np.flatnonzero(mask == 0))
    pairings.add(tuple(perm))
  assert len(pairings) > 1
  assert sorted(np.asarray(mixing.partners(jax.random.PRNGKey(0), 8))) == list(range(8))


def test_padding_never_leaks_into_real_examples(tagged):
  images, labels = tagged
  mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
  poisoned = images.copy()
  poisoned[mask == 0] = np.nan  # anything read from padding would show
  for mix in (MIXUP, CUTMIX):
    for seed in range(3):
      out, targets = _mix(mix, poisoned, labels, seed, mask)
      assert np.all(np.isfinite(out[mask == 1])) and np.all(np.isfinite(targets))
      np.testing.assert_array_equal(targets[mask == 0], np.eye(NUM_CLASSES)[labels[mask == 0]])


def test_either_picks_one_mix_per_batch(tagged):
  images, labels = tagged
  either = mixing.either(mixing.mixup(0.0), CUTMIX, prob=0.5)
  picks = set()
  for seed in range(6):
    out, targets = _mix(either, images, labels, seed)
    if np.array_equal(out, images):  # the first: alpha 0 leaves the batch alone
      np.testing.assert_array_equal(targets, np.eye(NUM_CLASSES)[labels])
      picks.add('first')
    else:  # the second: cutmix
      np.testing.assert_allclose(out[..., 1:].mean(axis=(1, 2)), targets, atol=1e-6)
      picks.add('second')
  assert picks == {'first', 'second'}


@pytest.fixture(scope='module')
def model(fashion):
  images, labels = fashion
  net = TinyMLP(num_classes=NUM_CLASSES)
  params = net.init(jax.random.PRNGKey(0), {'image': images})['params']
  return net.apply, params, {'image': images, 'label': labels, 'mask': ALL_REAL}


def test_classification_reads_soft_labels(model):
  apply_fn, params, batch = model
  rng = jax.random.PRNGKey(1)

  @jax.jit
  def loss_and_accuracy(batch, smoothing_batch):
    smooth, plain = classification(label_smoothing=0.1), classification()
    ignoring = classification(soft_label_key=None)
    return {name: (loss, metrics['accuracy']) for name, (loss, metrics) in {
        'smooth': smooth(apply_fn, params, smoothing_batch, rng),
        'plain': plain(apply_fn, params, batch, rng),
        'ignoring': ignoring(apply_fn, params, batch, rng)}.items()}

  labels = batch['label']
  one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
  shifted = np.eye(NUM_CLASSES, dtype=np.float32)[(labels + 3) % NUM_CLASSES]
  hard = loss_and_accuracy(batch, batch)
  # One-hot soft labels are the integer labels, with or without label smoothing.
  as_soft = loss_and_accuracy({**batch, 'soft_label': one_hot}, {**batch, 'soft_label': one_hot})
  for name in ('smooth', 'plain'):
    np.testing.assert_allclose(as_soft[name], hard[name], rtol=1e-6)
  # Cross-entropy is linear in the targets: a 0.3 / 0.7 blend of two labelings costs
  # the same blend of their losses; accuracy counts the dominant (shifted) class.
  shifted_loss = loss_and_accuracy({**batch, 'soft_label': shifted}, batch)['plain'][0]
  blend = loss_and_accuracy({**batch, 'soft_label': 0.3 * one_hot + 0.7 * shifted}, batch)
  np.testing.assert_allclose(blend['plain'][0], 0.3 * hard['plain'][0] + 0.7 * shifted_loss,
                             rtol=1e-5)
  top = np.argmax(np.asarray(apply_fn({'params': params}, batch)['logits']), -1)
  np.testing.assert_allclose(blend['plain'][1], np.mean(top == (labels + 3) % NUM_CLASSES))
  # soft_label_key=None keeps to the integer labels.
  np.testing.assert_allclose(blend['ignoring'], hard['plain'], rtol=1e-6)


def test_with_mixing_mixes_in_training_only(model):
  apply_fn, params, batch = model
  rng = jax.random.PRNGKey(2)
  plain = classification()
  mixed = mixing.with_mixing(plain, MIXUP, NUM_CLASSES)

  @jax.jit
  def losses(params, batch):
    loss, grads = jax.value_and_grad(lambda p: mixed(apply_fn, p, batch, rng)[0])(params)
    # The same keys by hand: the classification of the mixed batch.
    mix_rng, model_rng = jax.random.split(rng)
    images, targets = MIXUP(batch['image'], jax.nn.one_hot(batch['label'], NUM_CLASSES),
                            mix_rng, mask_B=batch['mask'])
    by_hand, _ = plain(apply_fn, params, {**batch, 'image': images, 'soft_label': targets},
                       model_rng)
    return loss, by_hand, grads, plain(apply_fn, params, batch, rng)[0]

  loss, by_hand, grads, unmixed = losses(params, batch)
  np.testing.assert_allclose(loss, by_hand, rtol=1e-5)
  assert not np.isclose(loss, unmixed)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  # Evaluation sees the batch as it is.
  eval_loss, eval_metrics = mixed(apply_fn, params, batch, rng, train=False)
  ref_loss, ref_metrics = plain(apply_fn, params, batch, rng, train=False)
  np.testing.assert_allclose(eval_loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(eval_metrics['accuracy'], ref_metrics['accuracy'])
  # Padded examples weigh nothing and reach no real example, whatever they hold.
  padded = {**batch, 'mask': np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)}
  changed = {**padded, 'image': padded['image'].copy()}
  changed['image'][6:] = 1.0 - changed['image'][6:]
  np.testing.assert_allclose(losses(params, padded)[0], losses(params, changed)[0], rtol=1e-6)
