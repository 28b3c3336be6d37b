"""DistilBERT-style distillation from a BERT MLM run, from configs (tiny variants)."""

import ml_collections
import numpy as np
import pytest

from jaxpretrain import build, checkpoint, config as config_lib, loop
from jaxpretrain import tree as tree_lib
from jaxpretrain.data import text, tokenizers
from jaxpretrain.errors import ConfigError

DISTIL = 'configs/shakespeare_distil.py:tiny'


def _saved_state_shapes(workdir):
  """Shapes of every array of the latest saved train state, by `/`-joined path."""
  with checkpoint.open_checkpoints(workdir) as reader:
    return {path: tuple(m.shape) for path, m in reader.saved_arrays('latest').items()}


def _distil_config(teacher, *overrides):
  return config_lib.override(config_lib.load(DISTIL), [
      f'finetune.teacher={teacher}',
      f'finetune.pretrained={teacher}', f'data.tokenizer.path={teacher}', *overrides])


@pytest.fixture(scope='module')
def teacher(text_recipe_run):
  """The tiny text recipe's BERT MLM run (configs/shakespeare_bert_mlm.py:tiny)."""
  return text_recipe_run / 'pretrain'


@pytest.fixture(scope='module')
def student(teacher, tmp_path_factory):
  workdir = tmp_path_factory.mktemp('distil')
  summary = loop.train(_distil_config(teacher), workdir, progress=False)
  return workdir, summary


def test_distillation_logs_finite_soft_and_hard_losses(student):
  workdir, summary = student
  records = loop.read_metrics(workdir)
  assert {r['split'] for r in records} == {'train', 'validation'}
  alpha = config_lib.load(DISTIL).objective.alpha
  for r in records:
    assert all(np.isfinite(r[k]) for k in ('loss', 'soft_loss', 'hard_loss'))
    np.testing.assert_allclose(r['loss'], alpha * r['soft_loss'] + (1 - alpha) * r['hard_loss'],
                               rtol=1e-4)
  assert summary['best_validation']['soft_loss'] >= 0.0


def test_the_teacher_stays_frozen_bit_for_bit_and_has_no_optimizer_state(teacher, student):
  workdir, summary = student
  saved = checkpoint.restore_params(workdir)
  theirs, ours = tree_lib.flatten(checkpoint.restore_params(teacher)), tree_lib.flatten(
      saved['teacher'])
  assert sorted(theirs) == sorted(ours)
  for path, value in theirs.items():
    np.testing.assert_array_equal(ours[path], value, err_msg=path)
  student_params = {k: v for k, v in saved.items() if k != 'teacher'}
  assert summary['trainable_params'] == tree_lib.size(student_params)
  assert summary['frozen_params'] == tree_lib.size(saved['teacher'])
  shapes = _saved_state_shapes(workdir)
  optimizer = [p for p in shapes if p.startswith('opt_state/')]
  assert optimizer and not [p for p in optimizer if 'teacher' in p]
  first_moments = {p.split('/mu/', 1)[1]: s for p, s in shapes.items()
                   if p.startswith('opt_state/') and '/mu/' in p}
  assert first_moments == {p[len('params/'):]: s for p, s in shapes.items()
                           if p.startswith('params/')}
  assert sum(int(np.prod(s)) for s in first_moments.values()) == summary['trainable_params']


def test_the_student_is_a_half_depth_distilbert_started_from_every_other_teacher_layer(
    teacher, student):
  saved = checkpoint.restore_params(student[0])
  encoder, teacher_encoder = saved['encoder'], checkpoint.restore_params(teacher)['encoder']
  assert sorted(k for k in encoder if k.startswith('layer_')) == ['layer_0']
  assert sorted(k for k in teacher_encoder if k.startswith('layer_')) == ['layer_0', 'layer_1']
  assert 'pooler' not in encoder and 'token_type_embeddings' not in encoder['embeddings']
  # The teacher's word order: both have a position table, or neither.
  assert (encoder['embeddings'].keys() - {'token_type_embeddings'}
          == teacher_encoder['embeddings'].keys() - {'token_type_embeddings'})
  kernel = lambda e, layer: e[layer]['mlp']['input']['kernel']
  # Four small AdamW steps move a weight by a few 1e-3 at most; another layer is far away.
  assert np.max(np.abs(kernel(encoder, 'layer_0') - kernel(teacher_encoder, 'layer_0'))) < 5e-3
  assert np.max(np.abs(kernel(encoder, 'layer_0') - kernel(teacher_encoder, 'layer_1'))) > 5e-2


def test_distillation_without_a_teacher_is_a_clear_error(teacher):
  config = config_lib.load(DISTIL)
  with pytest.raises(ConfigError, match='no teacher.*finetune.teacher'):
    build.objective(config.objective, tokenizer=tokenizers.load(teacher),
                    teacher=config.finetune.teacher)


def test_a_teacher_with_another_vocabulary_is_refused_before_training(teacher, tmp_path):
  other = tokenizers.train_wordpiece(text.pretraining_texts('train')[:2], 300)
  tokenizers.save(other, tmp_path / 'other_tokenizer')
  config = _distil_config(teacher, f'data.tokenizer.path={tmp_path / "other_tokenizer"}')
  with pytest.raises(ConfigError, match=f'data.tokenizer.path={teacher}'):
    loop.train(config, tmp_path / 'run', progress=False)
  assert not loop.read_metrics(tmp_path / 'run')
  assert not list((tmp_path / 'run' / 'checkpoints').glob('[0-9]*'))


def test_image_augmentation_for_a_token_task_is_a_clear_error(teacher):
  config = config_lib.load(DISTIL)
  with pytest.raises(ConfigError, match='reads tokens.*augment.name=none'):
    build.objective(config.objective, ml_collections.ConfigDict(dict(name='standard')),
                    tokenizer=tokenizers.load(teacher), teacher=teacher)
