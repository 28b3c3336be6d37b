"""FixMatch: labelled and unlabelled images in one batch, and the source that mixes them."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain import cli, config, loop, objectives
from jaxpretrain.data import UNLABELLED, InMemory, mixed, read_all
from jaxpretrain.errors import ConfigError
from jaxpretrain.models import make_apply_fn

B, P, K = 8, 4, 3
IMAGES = np.random.default_rng(0).normal(size=(B, 2, 2, 1)).astype(np.float32)
LABELS = np.array([0, 1, 2, 0, UNLABELLED, UNLABELLED, UNLABELLED, UNLABELLED], np.int64)
LABELLED = LABELS != UNLABELLED
PARAMS = {'w': 3.0 * jax.random.normal(jax.random.PRNGKey(1), (P, K))}
KEEP = None  # No augmentation: the image itself.
BLANK = lambda image, rng: jnp.zeros_like(image)


def linear_apply(variables, batch, train=False, rngs=None):
  """A stand-in classifier: logits are the flattened image times a (P, K) kernel."""
  del train, rngs
  return {'logits': batch['image'].reshape(len(batch['image']), -1) @ variables['params']['w']}


def _logits(images):
  return linear_apply({'params': PARAMS}, {'image': images})['logits']


def _ce(logits, labels):
  return np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _run(obj, train=True, labels=LABELS):
  return obj(linear_apply, PARAMS, {'image': IMAGES, 'label': labels}, jax.random.PRNGKey(0),
             train=train)


def test_with_no_confident_guess_only_the_labelled_examples_teach():
  obj = objectives.fixmatch(augment=KEEP, strong_augment=KEEP, threshold=1.01)
  loss, metrics = _run(obj)
  labelled = _ce(_logits(IMAGES[LABELLED]), LABELS[LABELLED]).mean()
  np.testing.assert_allclose(loss, labelled, rtol=1e-5)
  np.testing.assert_allclose(metrics['labelled_loss'], labelled, rtol=1e-5)
  assert float(metrics['unlabelled_loss']) == 0.0 and float(metrics['confident']) == 0.0


def test_confident_guesses_on_the_weak_view_label_the_strong_view():
  obj = objectives.fixmatch(augment=KEEP, strong_augment=BLANK, threshold=0.0,
                            unlabelled_weight=0.5)
  loss, metrics = _run(obj)
  guesses = np.argmax(_logits(IMAGES[~LABELLED]), -1)
  blank = _ce(np.zeros((int((~LABELLED).sum()), K)), guesses).mean()  # log(K): blank logits.
  labelled = _ce(_logits(IMAGES[LABELLED]), LABELS[LABELLED]).mean()
  np.testing.assert_allclose(metrics['unlabelled_loss'], blank, rtol=1e-5)
  np.testing.assert_allclose(loss, labelled + 0.5 * blank, rtol=1e-5)
  assert float(metrics['confident']) == 1.0


def test_the_threshold_picks_the_confident_unlabelled_examples():
  probs = jax.nn.softmax(_logits(IMAGES[~LABELLED]), -1)
  threshold = float(np.median(np.max(probs, -1)))
  obj = objectives.fixmatch(augment=KEEP, strong_augment=KEEP, threshold=threshold)
  _, metrics = _run(obj)
  confident = np.max(probs, -1) >= threshold
  expected = _ce(_logits(IMAGES[~LABELLED]), np.argmax(probs, -1)) * confident
  np.testing.assert_allclose(metrics['confident'], confident.mean(), rtol=1e-6)
  np.testing.assert_allclose(metrics['unlabelled_loss'], expected.mean(), rtol=1e-5)


def test_the_labelled_examples_learn_from_the_weak_view():
  obj = objectives.fixmatch(augment=BLANK, strong_augment=KEEP, threshold=1.01)
  _, metrics = _run(obj)
  np.testing.assert_allclose(metrics['labelled_loss'], np.log(K), rtol=1e-5)


def test_evaluation_is_plain_classification_of_unaugmented_images():
  labels = np.array([0, 1, 2, 0, 1, 2, 0, 1])
  obj = objectives.fixmatch(augment=BLANK, strong_augment=BLANK)
  loss, metrics = _run(obj, train=False, labels=labels)
  plain_loss, plain = objectives.classification()(
      linear_apply, PARAMS, {'image': IMAGES, 'label': labels}, jax.random.PRNGKey(0),
      train=False)
  np.testing.assert_allclose(loss, plain_loss, rtol=1e-6)
  np.testing.assert_allclose(metrics['accuracy'], plain['accuracy'], rtol=1e-6)
  assert 'unlabelled_loss' not in metrics


def test_mixed_repeats_the_labelled_examples_and_hides_the_other_labels():
  labelled = {'image': IMAGES[:2], 'label': np.array([4, 5], np.uint8)}
  unlabelled = {'image': IMAGES[2:5], 'label': np.array([6, 7, 8], np.uint8)}
  lazy = lambda arrays: [dict(zip(arrays, values)) for values in zip(*arrays.values())]
  for l_source, u_source in ((InMemory(labelled), InMemory(unlabelled)),
                             (lazy(labelled), lazy(unlabelled))):
    source = mixed(l_source, u_source, labelled_repeats=3)
    arrays = read_all(source)
    np.testing.assert_array_equal(arrays['label'], [4, 5, 4, 5, 4, 5, -1, -1, -1])
    np.testing.assert_array_equal(arrays['image'], IMAGES[[0, 1, 0, 1, 0, 1, 2, 3, 4]])
  with pytest.raises(ValueError, match='labelled examples at least once'):
    mixed(InMemory(labelled), InMemory(unlabelled), labelled_repeats=0)


def test_semi_supervised_training_reads_the_labelled_images_among_all_others():
  cfg = config.load('configs/fashion_mnist_fixmatch.py:tiny')
  train, val = loop.run_splits(cfg)
  plain_cfg = config.load('configs/fashion_mnist_finetune.py:tiny')
  plain_cfg.data.train_split = cfg.data.train_split
  labelled, plain_val = loop.run_splits(plain_cfg)
  arrays = read_all(train)
  known = arrays['label'] != UNLABELLED
  rest = 256 - len(val)
  repeats = round(rest / (cfg.data.unlabelled_ratio * len(labelled)))
  assert len(train) == repeats * len(labelled) + rest and known.sum() == repeats * len(labelled)
  np.testing.assert_array_equal(read_all(val)['image'], read_all(plain_val)['image'])
  held_out = {bytes(image) for image in read_all(val)['image']}
  assert not held_out & {bytes(image) for image in arrays['image']}
  pairs = {(bytes(i), int(l)) for i, l in zip(arrays['image'][known], arrays['label'][known])}
  assert pairs == {(bytes(i), int(l)) for i, l in zip(*read_all(labelled).values())}


@pytest.mark.parametrize('data, match', [
    (dict(unlabelled=True), 'set one of them'),
    (dict(labelled_per_class=0, validation_per_class=0), 'data.labelled_per_class'),
    (dict(unlabelled_ratio=-1), 'number of unlabelled images per labelled one'),
])
def test_a_mixture_without_labelled_images_is_a_clear_error(data, match, tmp_path):
  cfg = config.load('configs/fashion_mnist_fixmatch.py:tiny')
  cfg.data.update(data)
  with pytest.raises(ConfigError, match=match):
    loop.train(cfg, tmp_path, kind='finetune', progress=False)


def test_fixmatch_without_labels_is_refused(tmp_path):
  cfg = config.load('configs/fashion_mnist_fixmatch.py:tiny')
  cfg.data.unlabelled, cfg.data.unlabelled_ratio = True, 0
  with pytest.raises(ConfigError, match='data.unlabelled_ratio'):
    loop.train(cfg, tmp_path, kind='finetune', progress=False)


def test_a_tiny_fixmatch_run_trains_and_validates(tmp_path):
  assert cli.main(['finetune', '--config', 'configs/fashion_mnist_fixmatch.py:tiny',
                   '--workdir', str(tmp_path), '--no-progress']) == 0
  records = loop.read_metrics(tmp_path)
  train = [r for r in records if r['split'] == 'train']
  val = [r for r in records if r['split'] == 'validation']
  assert train and val and 'unlabelled_loss' not in val[-1]
  assert all(0 <= r['confident'] <= 1 and np.isfinite(r['loss']) for r in train)
  assert 0 <= val[-1]['accuracy'] <= 1 and np.isfinite(val[-1]['loss'])


class _BatchNormClassifier(nn.Module):
  @nn.compact
  def __call__(self, batch, train=False):
    x = batch['image'].reshape(len(batch['image']), -1)
    return {'logits': nn.Dense(K)(nn.BatchNorm(use_running_average=not train)(x))}


def test_batch_statistics_come_from_the_training_pass_alone():
  model = _BatchNormClassifier()
  variables = model.init(jax.random.PRNGKey(0), {'image': IMAGES})
  apply_fn = make_apply_fn(model)
  blank = objectives.fixmatch(augment=KEEP, strong_augment=BLANK, threshold=0.0)
  _, metrics = blank(apply_fn, variables['params'], {'image': IMAGES, 'label': LABELS},
                     jax.random.PRNGKey(0), model_state={'batch_stats': variables['batch_stats']})
  # The pass that learns sees the labelled images and blank strong views: its batch mean.
  seen = np.where(LABELLED[:, None], IMAGES.reshape(B, -1), 0.0)
  np.testing.assert_allclose(metrics['model_state']['batch_stats']['BatchNorm_0']['mean'],
                             0.01 * seen.mean(0), rtol=1e-5, atol=1e-7)
