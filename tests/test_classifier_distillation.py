"""A classifier's distillation from a frozen teacher on unlabelled images."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain import build, checkpoint, cli, config, loop, objectives
from jaxpretrain import tree as tree_lib
from jaxpretrain.data import InMemory, read_all, without
from jaxpretrain.errors import ConfigError
from jaxpretrain.models import make_apply_fn

B, P, K = 6, 4, 3
IMAGES = np.random.default_rng(0).normal(size=(B, 2, 2, 1)).astype(np.float32)
LABELS = np.array([0, 1, 2, 0, 1, 2], np.int32)


def linear_apply(variables, batch, train=False, rngs=None):
  """A stand-in classifier: logits are the flattened image times a (P, K) kernel."""
  del train, rngs
  return {'logits': batch['image'].reshape(len(batch['image']), -1) @ variables['params']['w']}


def _params(seed_student, seed_teacher):
  w = lambda seed: jax.random.normal(jax.random.PRNGKey(seed), (P, K))
  return {'w': w(seed_student), 'teacher': {'w': w(seed_teacher)}}


def _kl(teacher_BxK, student_BxK):
  t, s = jax.nn.log_softmax(teacher_BxK), jax.nn.log_softmax(student_BxK)
  return np.mean(np.sum(np.exp(t) * (t - s), -1))


def test_a_student_equal_to_its_teacher_has_no_soft_loss_and_agrees():
  obj = objectives.classifier_distillation(linear_apply)
  loss, metrics = obj(linear_apply, _params(1, 1), {'image': IMAGES}, jax.random.PRNGKey(0),
                      train=True)
  assert abs(float(loss)) < 1e-6 and float(metrics['agreement']) == 1.0
  assert 'accuracy' not in metrics  # No label in the batch, none read.


def test_soft_loss_is_the_kl_to_the_teacher_and_alpha_mixes_in_the_labels():
  params = _params(1, 2)
  student, teacher = (linear_apply({'params': p}, {'image': IMAGES})['logits']
                      for p in (params, params['teacher']))
  hard = np.mean(-np.take_along_axis(jax.nn.log_softmax(student), LABELS[:, None], -1))
  obj = objectives.classifier_distillation(linear_apply, alpha=0.25)
  loss, metrics = obj(linear_apply, params, {'image': IMAGES, 'label': LABELS},
                      jax.random.PRNGKey(0), train=True)
  np.testing.assert_allclose(metrics['soft_loss'], _kl(teacher, student), rtol=1e-5)
  np.testing.assert_allclose(metrics['hard_loss'], hard, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.25 * _kl(teacher, student) + 0.75 * hard, rtol=1e-5)
  with pytest.raises(ConfigError, match='alpha=1.0'):
    obj(linear_apply, params, {'image': IMAGES}, jax.random.PRNGKey(0), train=True)


def test_the_teacher_sees_the_image_unaugmented_and_evaluation_augments_nothing():
  blank = lambda image, rng: jnp.zeros_like(image)  # The student sees nothing in training.
  obj = objectives.classifier_distillation(linear_apply, augment=blank)
  params = _params(1, 2)
  teacher = linear_apply({'params': params['teacher']}, {'image': IMAGES})['logits']
  _, trained = obj(linear_apply, params, {'image': IMAGES}, jax.random.PRNGKey(0), train=True)
  np.testing.assert_allclose(trained['soft_loss'], _kl(teacher, jnp.zeros((B, K))), rtol=1e-5)
  student = linear_apply({'params': params}, {'image': IMAGES})['logits']
  _, evaluated = obj(linear_apply, params, {'image': IMAGES}, jax.random.PRNGKey(0), train=False)
  np.testing.assert_allclose(evaluated['soft_loss'], _kl(teacher, student), rtol=1e-5)


class _BatchNormTeacher(nn.Module):
  @nn.compact
  def __call__(self, batch, train=False):
    x = nn.BatchNorm(use_running_average=not train)(batch['image'].reshape(B, -1))
    return {'logits': nn.Dense(K)(x)}


def _batch_norm_teacher():
  """A teacher whose BatchNorm statistics are those of a shifted, scaled batch, not the init's."""
  teacher = _BatchNormTeacher()
  variables = teacher.init(jax.random.PRNGKey(0), {'image': IMAGES})
  for _ in range(5):
    _, updates = teacher.apply(variables, {'image': 3.0 * IMAGES + 1.0}, train=True,
                               mutable=['batch_stats'])
    variables = {**variables, **updates}
  return teacher, variables


def test_a_batch_norm_teacher_predicts_on_its_statistics_in_inference_mode():
  teacher, variables = _batch_norm_teacher()
  obj = objectives.classifier_distillation(make_apply_fn(teacher))
  params = {'w': jnp.zeros((P, K)), objectives.TEACHER: variables['params'],
            objectives.TEACHER_STATE: {'batch_stats': variables['batch_stats']}}
  _, metrics = obj(linear_apply, params, {'image': IMAGES}, jax.random.PRNGKey(0), train=True)
  expected = teacher.apply(variables, {'image': IMAGES}, train=False)['logits']
  without_statistics = teacher.apply({**variables, 'batch_stats': jax.tree.map(
      jnp.zeros_like, variables['batch_stats'])}, {'image': IMAGES}, train=False)['logits']
  assert not np.allclose(expected, without_statistics, atol=1e-3)  # The statistics matter.
  np.testing.assert_allclose(metrics['soft_loss'], _kl(expected, jnp.zeros((B, K))), rtol=1e-5)


def test_a_batch_norm_teacher_without_its_statistics_is_a_clear_error():
  teacher, variables = _batch_norm_teacher()
  obj = objectives.classifier_distillation(make_apply_fn(teacher))
  params = {'w': jnp.zeros((P, K)), objectives.TEACHER: variables['params']}
  with pytest.raises(ConfigError, match="BatchNorm.*under 'teacher_state'"):
    obj(linear_apply, params, {'image': IMAGES}, jax.random.PRNGKey(0), train=True)


def test_without_drops_features_of_every_kind_of_source():
  arrays = {'image': IMAGES, 'label': LABELS}
  lazy = [{'image': i, 'label': l} for i, l in zip(IMAGES, LABELS)]
  for source in (InMemory(arrays), lazy):
    unlabelled = without(source, ('label',))
    assert len(unlabelled) == B and set(unlabelled[3]) == {'image'}
    np.testing.assert_array_equal(unlabelled[3]['image'], IMAGES[3])


def test_unlabelled_training_reads_every_image_but_the_validation_ones_without_labels():
  cfg = config.load('configs/fashion_mnist_distil.py:tiny')
  train, val = loop.run_splits(cfg)
  teacher_cfg = config.load('configs/fashion_mnist_finetune.py:tiny')
  teacher_cfg.data.train_split = cfg.data.train_split
  _, labelled_val = loop.run_splits(teacher_cfg)  # The teacher's validation images.
  assert len(train) + len(val) == 256 and len(val) == len(labelled_val) == 20
  assert 'label' not in train[0] and 'label' in val[0]
  np.testing.assert_array_equal(read_all(val)['image'], read_all(labelled_val)['image'])
  held_out = {bytes(image) for image in read_all(val)['image']}
  assert not held_out & {bytes(image) for image in read_all(train)['image']}


def _run(command, cfg, workdir, *overrides):
  assert cli.main([command, '--config', cfg, '--workdir', str(workdir), '--no-progress',
                   *overrides]) == 0


@pytest.fixture(scope='module')
def teacher(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('teacher')
  _run('finetune', 'configs/fashion_mnist_finetune.py:tiny', workdir,
       '--config.data.train_split=train[:256]')
  return workdir


def test_a_distilled_student_trains_from_its_frozen_teacher(teacher, tmp_path):
  _run('finetune', 'configs/fashion_mnist_distil.py:tiny', tmp_path,
       f'--config.finetune.teacher={teacher}', f'--config.finetune.pretrained={teacher}')
  records = loop.read_metrics(tmp_path)
  train = [r for r in records if r['split'] == 'train']
  val = [r for r in records if r['split'] == 'validation']
  assert train and val and 'accuracy' not in train[0] and 'accuracy' in val[0]
  assert all(np.isfinite(r['soft_loss']) and 0 <= r['agreement'] <= 1 for r in train + val)
  saved = checkpoint.restore_params(tmp_path)
  theirs = tree_lib.flatten(checkpoint.restore_params(teacher, step='best'))
  ours = tree_lib.flatten(saved['teacher'])
  assert sorted(theirs) == sorted(ours)
  for path, value in theirs.items():
    np.testing.assert_array_equal(ours[path], value, err_msg=path)
  moved = [p for p, v in tree_lib.flatten({k: v for k, v in saved.items() if k != 'teacher'}).items()
           if not np.array_equal(v, theirs[p])]
  assert moved  # The student started as the teacher and learned.


def test_a_resnet_teacher_is_distilled_on_its_own_batch_norm_statistics(tmp_path):
  _run('finetune', 'configs/fashion_mnist_finetune.py:resnet_tiny', tmp_path / 'teacher',
       '--config.data.train_split=train[:256]')
  teacher = tmp_path / 'teacher'
  _run('finetune', 'configs/fashion_mnist_distil.py:resnet_tiny', tmp_path / 'student',
       f'--config.finetune.teacher={teacher}', f'--config.finetune.pretrained={teacher}')
  params = checkpoint.restore_params(tmp_path / 'student')
  theirs = tree_lib.flatten(checkpoint.restore_model_state(teacher, step='best')['batch_stats'])
  ours = tree_lib.flatten(params[objectives.TEACHER_STATE]['batch_stats'])
  assert theirs.keys() == ours.keys()
  for path, value in theirs.items():
    np.testing.assert_array_equal(ours[path], value, err_msg=path)
  records = loop.read_metrics(tmp_path / 'student')
  assert all(np.isfinite(r['soft_loss']) for r in records)


def test_unlabelled_data_for_a_classification_objective_is_refused(tmp_path):
  cfg = config.load('configs/fashion_mnist_finetune.py:tiny')
  cfg.data.unlabelled = True
  with pytest.raises(ConfigError, match="objective.name='distillation'"):
    loop.train(cfg, tmp_path, kind='finetune', progress=False)


def test_a_classifier_teacher_is_checked_and_named():
  cfg = config.load('configs/fashion_mnist_distil.py:tiny')
  with pytest.raises(ConfigError, match="classifier's work directory"):
    build.objective(cfg.objective, cfg.augment, teacher='')


def test_a_key_the_distillation_task_does_not_take_is_named(teacher):
  cfg = config.load('configs/fashion_mnist_distil.py:tiny')
  cfg.unlock()
  cfg.objective.lable_key = 'label'
  with pytest.raises(ConfigError, match=r'unknown config key objective.lable_key for '
                                        r'classifier_distillation; valid keys: .*label_key'):
    build.objective(cfg.objective, cfg.augment, teacher=str(teacher))
