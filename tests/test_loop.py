"""Runs from configs: CLI, resumption, bad input, the recipe's report (tiny variants)."""

import shutil

import jax
import numpy as np
import pytest

from jaxpretrain import checkpoint, cli, config as config_lib, loop, report
from jaxpretrain.errors import ConfigError
from tests.helpers import assert_trees_close

PRETRAIN = 'configs/fashion_mnist_pretrain.py:tiny'
FINETUNE = 'configs/fashion_mnist_finetune.py:tiny'
FIXMATCH = 'configs/fashion_mnist_fixmatch.py:tiny'


def _config(spec, *overrides):
  return config_lib.override(config_lib.load(spec), overrides)


def test_unknown_config_key_lists_valid_keys():
  with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.learning_rate'.*"
                                        r"Did you mean optimizer.*Valid keys:.*optimizer.lr"):
    _config(PRETRAIN, 'optimizer.learning_rate=0.1')


@pytest.mark.parametrize('override, message', [
    ('data.batch_size=0', 'data.batch_size=0 must be at least 1'),
    ('train.log_every=0', 'train.log_every=0 must be at least 1'),
    ('checkpoint.keep_last=0', 'checkpoint.keep_last=0 must be at least 1'),
    ('data.labelled_per_class=-3', 'data.labelled_per_class=-3 must be at least 0'),
    ('optimizer.lr=-0.001', 'optimizer.lr=-0.001 must be positive'),
    ('train.epochs=-1', 'train.epochs=-1 trains no step'),
])
def test_values_a_run_cannot_use_are_refused_before_it_writes(tmp_path, override, message):
  with pytest.raises(ConfigError, match=message):
    loop.train(_config(FINETUNE, override), tmp_path / 'run', progress=False)
  assert not (tmp_path / 'run').exists()


def test_override_types_are_checked_and_converted():
  c = _config(PRETRAIN, 'optimizer.lr=1', 'model.encoder.stages=[[2],[4]]', 'parallel.mode=pmap')
  assert c.optimizer.lr == 1.0 and c.model.encoder.stages == ((2,), (4,))
  assert c.parallel.mode == 'pmap'
  with pytest.raises(ConfigError, match="'train.epochs' holds a int"):
    _config(PRETRAIN, 'train.epochs=many')


@pytest.mark.parametrize('spec', [FINETUNE, FIXMATCH])
def test_labels_beyond_num_classes_are_refused_before_training(tmp_path, spec):
  config = _config(spec, 'model.num_classes=7')
  with pytest.raises(ConfigError, match=r'labels of .fashion_mnist. run from 0 to 9.*'
                                        r'model.num_classes=7.*model.num_classes=10'):
    loop.train(config, tmp_path, progress=False)
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('spec', [FINETUNE, FIXMATCH])
def test_a_dataset_with_more_classes_than_outputs_is_refused_without_reading_its_labels(
    tmp_path, spec):
  config = _config(spec, 'model.num_classes=7', 'data.in_memory=False')
  with pytest.raises(ConfigError, match=r"'fashion_mnist' has 10 classes.*"
                                        r'model.num_classes=7.*model.num_classes=10'):
    loop.train(config, tmp_path, progress=False)
  assert not (tmp_path / 'checkpoints').exists()


def test_a_pmap_run_synchronises_batch_norm_and_trains_as_the_mesh_run_does(tmp_path):
  spec = 'configs/fashion_mnist_finetune.py:resnet_tiny'
  # One example per device, where unsynchronised BatchNorm would differ most. No
  # augmentation: under pmap each device draws its own.
  for mode in ('mesh', 'pmap'):
    loop.train(_config(spec, f'parallel.mode={mode}', 'train.epochs=1', 'augment.name=none'),
               tmp_path / mode, progress=False)
  for restore in (checkpoint.restore_params, checkpoint.restore_model_state):
    assert_trees_close(restore(tmp_path / 'mesh'), restore(tmp_path / 'pmap'), atol=1e-4,
                       rtol=1e-4)


def test_cli_unknown_key_exits_with_message(tmp_path, capsys):
  code = cli.main(['pretrain', '--config', PRETRAIN, '--config.train.epoch=3',
                   '--workdir', str(tmp_path)])
  assert code == 2
  assert "unknown config key 'train.epoch'" in capsys.readouterr().err


def test_cli_a_missing_pretrained_run_exits_with_message(tmp_path, capsys):
  code = cli.main(['finetune', '--config', FINETUNE, '--workdir', str(tmp_path / 'ft'),
                   f'--config.finetune.pretrained={tmp_path / "nowhere"}', '--no-progress'])
  assert code == 2
  assert f'no checkpoint folder at {tmp_path / "nowhere"}' in capsys.readouterr().err
  assert not (tmp_path / 'ft' / 'checkpoints').exists()


def test_cli_evaluating_where_no_run_saved_a_checkpoint_exits_with_message(tmp_path, capsys):
  args = ['evaluate', '--config', FINETUNE, '--split', 'test[:8]']
  assert cli.main([*args, '--workdir', str(tmp_path / 'nowhere')]) == 2
  assert f'no checkpoint folder at {tmp_path / "nowhere"}' in capsys.readouterr().err
  (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
  assert cli.main([*args, '--workdir', str(tmp_path / 'empty')]) == 2
  assert 'empty/checkpoints holds no checkpoint yet' in capsys.readouterr().err


@pytest.mark.parametrize('mode', ['mesh', 'pmap', 'single'])
def test_pretrain_runs_logs_and_checkpoints(tmp_path, mode):
  summary = loop.train(_config(PRETRAIN, f'parallel.mode={mode}'), tmp_path, progress=False)
  records = loop.read_metrics(tmp_path)
  train_records = [r for r in records if r['split'] == 'train']
  assert [r['step'] for r in train_records] == [2, 3, 4, 6]
  assert all(np.isfinite(r['loss']) and r['examples_per_sec'] > 0 for r in train_records)
  assert summary['steps'] == 6
  assert checkpoint.open_checkpoints(tmp_path).latest_step() == 6
  manifest = checkpoint.read_manifest(tmp_path)
  assert manifest['kind'] == 'pretrain' and manifest['config']['model']['name']
  assert list((tmp_path / 'tensorboard').iterdir())


def test_resumed_run_equals_uninterrupted_run(tmp_path):
  config = _config(PRETRAIN, 'checkpoint.keep_last=2')
  loop.train(config, tmp_path / 'a', progress=False)
  final = checkpoint.restore_params(tmp_path / 'a', step=6)
  # Interrupt after step 3: drop the later checkpoint, then rerun in the same workdir.
  shutil.rmtree(tmp_path / 'a' / 'checkpoints' / '6')
  loop.train(config, tmp_path / 'a', progress=False)
  resumed = checkpoint.restore_params(tmp_path / 'a', step=6)
  for x, y in zip(jax.tree.leaves(final), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(x, y)


def test_rerun_of_finished_run_trains_no_more(tmp_path):
  config = _config(PRETRAIN)
  loop.train(config, tmp_path, progress=False)
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  loop.train(config, tmp_path, progress=False)
  assert (tmp_path / 'metrics.jsonl').read_text().splitlines() == lines


def test_workdir_of_another_run_is_refused_and_kept(tmp_path, capsys):
  assert cli.main(['pretrain', '--config', PRETRAIN, '--workdir', str(tmp_path),
                   '--no-progress']) == 0
  before = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir())
  assert cli.main(['finetune', '--config', FINETUNE, '--workdir', str(tmp_path),
                   '--no-progress']) == 2
  assert 'holds checkpoints of another run' in capsys.readouterr().err
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == before


def test_finetune_from_pretrained_selects_best_epoch_and_evaluates(tmp_path):
  loop.train(_config(PRETRAIN), tmp_path / 'pre', progress=False)
  config = _config(FINETUNE, f'finetune.pretrained={tmp_path / "pre"}')
  summary = loop.train(config, tmp_path / 'ft', kind='finetune', progress=False)
  assert 0.0 <= summary['best_validation']['accuracy'] <= 1.0
  manifest = checkpoint.read_manifest(tmp_path / 'ft')
  assert manifest['finetune'][0]['name'] == 'from_pretrained'
  result = loop.evaluate(config, tmp_path / 'ft', split='test[:40]')
  assert result['examples'] == 40 and 0.0 <= result['accuracy'] <= 1.0


def test_labelled_subset_is_validated_on_held_out_labels_or_else_the_validation_split():
  held_out = _config(FINETUNE, 'data.validation_split=test[:30]')
  train, validation = loop.run_splits(held_out)
  assert len(train) == 40 and len(validation) == 20  # 4 and 2 per class, from train
  from_split = _config(FINETUNE, 'data.validation_per_class=0', 'data.validation_split=test[:30]')
  train, validation = loop.run_splits(from_split)
  assert len(train) == 40 and len(validation) == 30
  labels = np.asarray([train[i]['label'] for i in range(len(train))])
  np.testing.assert_array_equal(np.bincount(labels), [4] * 10)


def test_an_unknown_recipe_variant_names_the_known_ones(capsys):
  assert cli.main(['recipe', '--config', 'configs/fashion_mnist_recipe.py:simcrl',
                   '--workdir', 'unused']) == 2
  assert "no variant 'simcrl'; its variants are :tiny, :simclr" in capsys.readouterr().err


def test_report_says_where_a_labelled_subset_is_validated():
  recipe = config_lib.load('configs/fashion_mnist_recipe.py:tiny')
  assert '4 training + 2 validation images per class' in report._budget(recipe, 'images')
  recipe.finetune.data.validation_per_class = 0
  recipe.finetune.data.validation_split = 'test[:30]'
  assert ('4 training images per class of the `train` split, with those of `test[:30]`'
          in report._budget(recipe, 'images'))


def test_lora_finetune_resumes_bitwise_and_its_manifest_names_source_and_chain(tmp_path):
  loop.train(_config(PRETRAIN), tmp_path / 'pre', progress=False)
  config = _config(FINETUNE, f'finetune.pretrained={tmp_path / "pre"}', 'finetune.lora.rank=2',
                   'finetune.layerwise_lr_decay=0.8', 'checkpoint.keep_last=2')
  loop.train(config, tmp_path / 'ft', kind='finetune', progress=False)
  reader = checkpoint.open_checkpoints(tmp_path / 'ft')
  last, first = reader.latest_step(), min(reader.all_steps())
  reader.close()
  final = checkpoint.restore_params(tmp_path / 'ft', step=last)
  assert set(final) == {'encoder', 'head', 'lora'}
  shutil.rmtree(tmp_path / 'ft' / 'checkpoints' / str(last))
  loop.train(config, tmp_path / 'ft', kind='finetune', progress=False)
  resumed = checkpoint.restore_params(tmp_path / 'ft', step=last)
  assert first < last
  for x, y in zip(jax.tree.leaves(final), jax.tree.leaves(resumed), strict=True):
    np.testing.assert_array_equal(x, y)
  manifest = checkpoint.read_manifest(tmp_path / 'ft')
  assert [t['name'] for t in manifest['finetune']] == [
      'from_pretrained', 'new_head', 'lora', 'lr_multipliers', 'layerwise_lr_decay']
  assert manifest['finetune'][0]['source'] == str(tmp_path / 'pre')
  assert manifest['finetune'][2]['rank'] == 2


@pytest.mark.parametrize('variant, pretraining', [('tiny', 'Rotation-prediction'),
                                                  ('simclr_tiny', 'SimCLR')])
def test_recipe_writes_report_with_both_accuracies(tmp_path, variant, pretraining):
  assert cli.main(['recipe', '--config', f'configs/fashion_mnist_recipe.py:{variant}',
                   '--workdir', str(tmp_path), '--no-progress']) == 0
  written = (tmp_path / 'report.md').read_text()
  assert f'{pretraining} pre-training on the 60,000 training images' in written
  objective = checkpoint.read_manifest(tmp_path / 'pretrain')['config']['objective']['name']
  assert objective == {'tiny': 'rotation_prediction', 'simclr_tiny': 'simclr'}[variant]
  assert 'fine-tuned from pre-training' in written and 'from scratch' in written
  assert (tmp_path / 'curves.png').stat().st_size > 1000
  assert '| finetune/lr=0.0003 (chosen) |' in written and '| scratch/lr=0.001 (chosen) |' in written
  for run in ('pretrain', 'finetune/lr=0.0003', 'scratch/lr=0.001'):
    assert (tmp_path / run / 'metrics.jsonl').exists()
  probe = checkpoint.read_manifest(tmp_path / 'probe')['finetune']
  assert [t['name'] for t in probe] == ['from_pretrained', 'new_head', 'freeze']
  chain = checkpoint.read_manifest(tmp_path / 'finetune/lr=0.0003')['finetune']
  assert [t['name'] for t in chain] == ['from_pretrained']
  assert chain[0]['source'].endswith('probe') and chain[0]['select'] == '.*'
  assert 'linear probe' in written
  assert checkpoint.read_manifest(tmp_path / 'scratch/lr=0.001')['finetune'] == []


@pytest.mark.parametrize('section, bad, message', [
    ('c.objective', "dict(name='classification', label_smothing=0.1)",
     r'objective.label_smothing for classification; valid keys: .*label_smoothing'),
    ('c.augment', "dict(name='standard', max_shfit=1)",
     r'augment.max_shfit for standard; valid keys: flip, max_shift'),
    ('c.model.encoder', "dict(stages=((4,),), widths=(4,))",
     r'model.encoder.widths for ConvEncoder; valid keys: .*stages'),
])
def test_a_key_no_builder_takes_in_a_config_file_is_named_before_anything_is_written(
    tmp_path, section, bad, message):
  spec = tmp_path / 'typo.py'
  spec.write_text('from jaxpretrain.config import load\n\n\ndef get_config(variant=None):\n'
                  f"  c = load('{FINETUNE}')\n  c.unlock()\n  {section} = {bad}\n  return c\n")
  with pytest.raises(ConfigError, match='unknown config key ' + message):
    loop.train(config_lib.load(str(spec)), tmp_path / 'run', kind='finetune', progress=False)
  assert not (tmp_path / 'run' / 'checkpoints').exists()
