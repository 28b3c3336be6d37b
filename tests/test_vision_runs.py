"""Vision runs from config files: SimCLR, MAE and autoencoder pre-training, then fine-tuning."""

import json

import numpy as np
import pytest

from jaxpretrain import build, checkpoint, cli, config, loop
from jaxpretrain import tree as tree_lib
from jaxpretrain.errors import ConfigError
from tests.helpers import assert_trees_close

# A hundred real Fashion-MNIST images and no validation pass keep these runs to seconds.
SPLITS = ['--config.data.train_split=train[:128]', '--config.data.validation_split=']


def _run(command, cfg, workdir, *overrides):
  assert cli.main([command, '--config', cfg, '--workdir', str(workdir), '--no-progress',
                   *overrides]) == 0


@pytest.fixture(scope='module')
def simclr_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('simclr')
  _run('pretrain', 'configs/fashion_mnist_simclr.py:tiny', workdir, *SPLITS)
  return workdir


@pytest.fixture(scope='module')
def mae_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('mae')
  _run('pretrain', 'configs/fashion_mnist_mae.py:tiny', workdir, *SPLITS)
  return workdir


def _classifier_state(variant, pretrained):
  cfg = config.load(f'configs/fashion_mnist_finetune.py:{variant}')
  cfg.finetune.pretrained = str(pretrained)
  example = {'image': np.zeros((2, 28, 28, 1), np.float32), 'label': np.zeros((2,), np.int32)}
  return loop.initial_state(cfg, cfg.finetune, 1, example)


def _encoder_leaves(tree):
  return {p: v for p, v in tree_lib.flatten(tree).items() if p.startswith('encoder/')}


def _assert_encoder_is_the_runs(state, run):
  """Every encoder parameter of `state` is the pre-training run's, and nothing else is."""
  pretrained = _encoder_leaves(checkpoint.restore_params(run))
  ours = _encoder_leaves(state.all_params())
  assert set(ours) == set(pretrained)
  for path, value in pretrained.items():
    np.testing.assert_array_equal(ours[path], value)


def test_simclr_encoder_and_its_batch_norm_statistics_start_the_classifier(simclr_run):
  metrics = [json.loads(line) for line in (simclr_run / 'metrics.jsonl').read_text().splitlines()]
  assert all(np.isfinite(m['loss']) for m in metrics if 'loss' in m)
  state = _classifier_state('resnet_tiny', simclr_run)
  _assert_encoder_is_the_runs(state, simclr_run)
  stats = _encoder_leaves(checkpoint.restore_model_state(simclr_run)['batch_stats'])
  assert stats and stats.keys() == _encoder_leaves(state.model_state['batch_stats']).keys()
  for path, value in stats.items():
    np.testing.assert_array_equal(tree_lib.flatten(state.model_state['batch_stats'])[path], value)


def test_mae_encoder_starts_the_vit_classifier(mae_run):
  _assert_encoder_is_the_runs(_classifier_state('vit_tiny', mae_run), mae_run)


def test_vit_autoencoder_rebuilds_images_and_starts_the_vit_classifier(tmp_path):
  _run('pretrain', 'configs/fashion_mnist_autoencoder.py:vit_tiny', tmp_path, *SPLITS)
  metrics = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert all(np.isfinite(m['loss']) for m in metrics if 'loss' in m)
  _assert_encoder_is_the_runs(_classifier_state('vit_tiny', tmp_path), tmp_path)


def test_linear_probe_of_the_simclr_encoder_through_the_cli(simclr_run, tmp_path):
  _run('evaluate', 'configs/fashion_mnist_finetune.py:resnet_tiny', tmp_path,
       f'--config.finetune.pretrained={simclr_run}', '--protocol', 'linear_probe',
       '--split', 'test[:64]')
  result = json.loads((tmp_path / 'transfer_linear_probe.json').read_text())
  assert result['pretrained'] == str(simclr_run)
  assert 0.0 <= result['accuracy'] <= 1.0 and 0.0 <= result['macro_f1'] <= 1.0


def test_a_pmap_simclr_run_draws_its_negatives_from_every_device(tmp_path):
  # Two images per device: negatives from one device alone would train another model.
  # No augmentation: under pmap each device draws its own.
  for mode in ('mesh', 'pmap'):
    _run('pretrain', 'configs/fashion_mnist_simclr.py:tiny', tmp_path / mode, *SPLITS,
         f'--config.parallel.mode={mode}', '--config.augment.name=none')
  for restore in (checkpoint.restore_params, checkpoint.restore_model_state):
    assert_trees_close(restore(tmp_path / 'mesh'), restore(tmp_path / 'pmap'), atol=1e-4,
                       rtol=1e-4)


def test_a_pmap_evaluation_of_mae_masks_the_patches_a_mesh_one_does(mae_run):
  cfg = config.load('configs/fashion_mnist_mae.py:tiny')
  losses = {}
  for mode in ('mesh', 'pmap'):
    cfg.parallel.mode = mode
    losses[mode] = loop.evaluate_splits(cfg, mae_run, ['test[:64]'], step='latest')['test[:64]']
  np.testing.assert_allclose(losses['pmap']['loss'], losses['mesh']['loss'], rtol=1e-5)


def test_fine_tuning_with_mixup_trains(tmp_path):
  _run('finetune', 'configs/fashion_mnist_finetune.py:tiny', tmp_path, '--config.mix.name=mixup',
       '--config.mix.mixup_alpha=0.4')
  metrics = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert any('loss' in m and np.isfinite(m['loss']) for m in metrics)


def test_bad_vision_configs_name_the_fix():
  cfg = config.load('configs/fashion_mnist_finetune.py:resnet_tiny')
  cfg.model.encoder = {'name': 'resnet'}
  with pytest.raises(ConfigError, match='preset'):
    build.model(cfg.model)
  cfg.model.encoder = {'name': 'alexnet'}
  with pytest.raises(ConfigError, match='resnet'):
    build.model(cfg.model)
  mae = config.load('configs/fashion_mnist_mae.py:tiny')
  mae.mix.name = 'cutmix'
  with pytest.raises(ConfigError, match='classifier'):
    build.objective(mae.objective, mix_cfg=mae.mix, num_classes=10)
