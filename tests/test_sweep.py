"""Sweeps: parsing, grid and random budgets, resumption, refusals and the report."""

import json

import pytest

from jaxpretrain import checkpoint, cli, config as config_lib, loop, sweep
from jaxpretrain.errors import ConfigError

FINETUNE = 'configs/fashion_mnist_finetune.py:tiny'


def _config(*overrides):
  return config_lib.override(config_lib.load(FINETUNE), ['parallel.mode=single', *overrides])


def _axes(*texts):
  return [sweep.parse_axis(t) for t in texts]


@pytest.fixture
def fake_train(monkeypatch):
  """Replaces training with a summary whose accuracy is the trial's learning rate."""
  calls = []

  def train(config, workdir, *, kind, progress):
    del progress
    calls.append((config, workdir.name, kind))
    workdir.mkdir(parents=True, exist_ok=True)
    return {'workdir': str(workdir), 'best_step': 4, 'steps_per_epoch': 2, 'wall_time_s': 0.5,
            'best_validation': {'accuracy': config.optimizer.lr, 'loss': 1.0 - config.optimizer.lr,
                                'examples': 20.0}}

  monkeypatch.setattr(loop, 'train', train)
  return calls


def test_parse_axis_splits_top_level_values():
  assert sweep.parse_axis('optimizer.lr=[1e-4,3e-4,1e-3]') == (
      'optimizer.lr', ['1e-4', '3e-4', '1e-3'])
  assert sweep.parse_axis(' augment.name = [ none , standard ] ') == (
      'augment.name', ['none', 'standard'])
  assert sweep.parse_axis('model.encoder.stages=[[[2],[4]], ((4,), (8,))]') == (
      'model.encoder.stages', ['[[2],[4]]', '((4,), (8,))'])
  assert sweep.parse_axis("finetune.freeze=['a,b', '']") == ('finetune.freeze', ["'a,b'", "''"])


@pytest.mark.parametrize('text, message', [
    ('optimizer.lr', 'needs the form key=\\[value1,value2,...\\]'),
    ('=[1e-4]', 'needs the form key=\\[value1'),
    ('optimizer.lr=1e-4', 'must be a \\[...\\] list; use key=\\[value1'),
    ('optimizer.lr=[1e-4', 'must be a \\[...\\] list'),
    ('optimizer.lr=[]', 'has an empty value'),
    ('optimizer.lr=[1e-4,,1e-3]', 'has an empty value'),
    ('optimizer.lr=[1e-4,1e-4]', 'repeats a value'),
])
def test_parse_axis_rejects_malformed_text(text, message):
  with pytest.raises(ConfigError, match=message):
    sweep.parse_axis(text)


def test_grid_is_the_cartesian_product_in_order():
  grid = sweep.trials([('a', [1, 2, 3]), ('b', ['x', 'y'])])
  assert grid == [{'a': a, 'b': b} for a in (1, 2, 3) for b in ('x', 'y')]
  assert sweep.trials([('a', [1])]) == [{'a': 1}]


def test_random_budget_is_a_deterministic_distinct_subset_of_the_grid():
  axes = [('a', [1, 2, 3, 4]), ('b', ['x', 'y', 'z'])]
  grid = sweep.trials(axes)
  drawn = sweep.trials(axes, random=5, seed=3)
  assert len(drawn) == 5 and all(t in grid for t in drawn)
  assert len({json.dumps(t) for t in drawn}) == 5
  assert drawn == sorted(drawn, key=grid.index)  # Kept in grid order.
  assert sweep.trials(axes, random=5, seed=3) == drawn
  assert any(sweep.trials(axes, random=5, seed=s) != drawn for s in range(4, 8))


def test_random_budget_beyond_the_grid_runs_the_grid_and_zero_is_refused():
  axes = [('a', [1, 2]), ('b', ['x', 'y'])]
  assert sweep.trials(axes, random=99, seed=0) == sweep.trials(axes)
  with pytest.raises(ConfigError, match='positive number of trials'):
    sweep.trials(axes, random=0)


@pytest.mark.parametrize('texts, message', [
    (('optimizer.lr=[1e-3]', 'optimizer.lrr=[1,2]'),
     "unknown config key 'optimizer.lrr'.*Did you mean optimizer.lr"),
    (('train.epochs=[1,many]',), "'train.epochs' holds a int"),
    (('optimizer.lr=[1e-3]', 'optimizer.lr=[1e-4]'), 'names optimizer.lr more than once'),
])
def test_bad_keys_and_values_fail_before_any_trial(tmp_path, fake_train, texts, message):
  with pytest.raises(ConfigError, match=message):
    sweep.run(_config(), tmp_path / 'sw', _axes(*texts), progress=False)
  assert not fake_train and not (tmp_path / 'sw').exists()


def test_trials_get_typed_values_and_a_best_metric(tmp_path, fake_train):
  config = _config('checkpoint.best_metric=""', 'checkpoint.keep_best=0')
  result = sweep.run(config, tmp_path, _axes('optimizer.lr=[1,0.5]', 'train.epochs=[1,3]'),
                     metric='loss', mode='min', progress=False)
  configs = {name: c for c, name, _ in fake_train}
  assert sorted(configs) == ['trial_000', 'trial_001', 'trial_002', 'trial_003']
  lr = configs['trial_001'].optimizer.lr
  assert isinstance(lr, float) and lr == 1.0 and configs['trial_001'].train.epochs == 3
  assert configs['trial_002'].optimizer.lr == 0.5 and configs['trial_002'].train.epochs == 1
  assert all(c.checkpoint.best_metric == 'loss' and c.checkpoint.keep_best == 1
             for c in configs.values())
  # Lowest loss is the highest learning rate here; the first of the tied trials wins.
  assert result['best']['name'] == 'trial_000' and result['trained'] == 4
  assert json.loads((tmp_path / 'trial_002' / 'trial.json').read_text())['assignment'] == {
      'optimizer.lr': 0.5, 'train.epochs': 1}


def test_random_sweep_resumes_only_unfinished_trials(tmp_path, fake_train):
  axes = _axes('optimizer.lr=[0.1,0.2,0.3,0.4]')
  first = sweep.run(_config(), tmp_path, axes, random=2, seed=1, progress=False)
  trial_json = tmp_path / 'trial_001' / 'trial.json'
  record = json.loads(trial_json.read_text())
  del record['result']  # As if interrupted while training.
  trial_json.write_text(json.dumps(record))
  fake_train.clear()
  again = sweep.run(_config(), tmp_path, axes, random=2, seed=1, progress=False)
  assert [name for _, name, _ in fake_train] == ['trial_001'] and again['trained'] == 1
  assert again['best'] == first['best']


def test_workdir_of_another_sweep_is_refused(tmp_path, fake_train):
  sweep.run(_config(), tmp_path, _axes('optimizer.lr=[0.1,0.2]'), progress=False)
  before = (tmp_path / 'sweep.json').read_text()
  fake_train.clear()
  with pytest.raises(ConfigError, match='holds another sweep \\(its axes; trials differ\\)'):
    sweep.run(_config(), tmp_path, _axes('optimizer.lr=[0.1,0.3]'), progress=False)
  with pytest.raises(ConfigError, match='trials differ'):
    sweep.run(_config(), tmp_path, _axes('optimizer.lr=[0.1,0.2]'), random=1, progress=False)
  with pytest.raises(ConfigError, match='config \\(optimizer.weight_decay, train.epochs\\)'):
    sweep.run(_config('train.epochs=5', 'optimizer.weight_decay=0'), tmp_path,
              _axes('optimizer.lr=[0.1,0.2]'), progress=False)
  assert not fake_train and (tmp_path / 'sweep.json').read_text() == before


def test_sweep_resumes_across_parallel_modes_and_added_config_keys(tmp_path, fake_train):
  axes = _axes('optimizer.lr=[0.1,0.2]')
  sweep.run(_config(), tmp_path, axes, progress=False)
  saved = json.loads((tmp_path / 'sweep.json').read_text())
  del saved['config']['finetune']['new_head']  # As written by a version without the key.
  (tmp_path / 'sweep.json').write_text(json.dumps(saved))
  fake_train.clear()
  again = sweep.run(_config('parallel.mode=mesh'), tmp_path, axes, progress=False)
  assert again['trained'] == 0 and not fake_train


def test_metric_missing_from_validation_lists_those_recorded(tmp_path, fake_train):
  with pytest.raises(ConfigError, match="no validation 'f1'.*one of: accuracy, loss$"):
    sweep.run(_config(), tmp_path, _axes('optimizer.lr=[0.1]'), metric='f1', progress=False)


def test_config_without_validation_is_refused(tmp_path, fake_train):
  with pytest.raises(ConfigError, match='no validation split'):
    sweep.run(_config('data.validation_per_class=0'), tmp_path, _axes('optimizer.lr=[0.1]'),
              progress=False)
  assert not fake_train


def _result(name, assignment, accuracy):
  return {'name': name, 'assignment': assignment, 'best_epoch': 2.0, 'wall_time_s': 1.0,
          'best_validation': {'accuracy': accuracy, 'loss': 1 - accuracy, 'examples': 8.0}}


def test_plot_axes_are_log_for_wide_positive_numbers_else_categorical():
  results = [_result(f'trial_00{i}', {'lr': lr, 'rank': r, 'wd': wd}, 0.1 * i)
             for i, (lr, r, wd) in enumerate([(1e-4, 4, 0.0), (1e-2, 8, 0.5), (1e-3, 16, 1.0)])]
  fig = sweep.plot({'metric': 'accuracy', 'axes': {'lr': [1e-4, 1e-2, 1e-3], 'rank': [4, 8, 16],
                                                   'wd': [0.0, 0.5, 1.0]},
                    'trials': results, 'best': 'trial_002'})
  assert [ax.get_xscale() for ax in fig.axes] == ['log', 'linear', 'linear']
  assert [t.get_text() for t in fig.axes[1].get_xticklabels()] == ['4', '8', '16']
  assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == ['0.0', '0.5', '1.0']
  best_point = fig.axes[0].collections[1].get_offsets()[0]
  assert tuple(best_point) == (1e-3, pytest.approx(0.2))


def test_cli_sweep_trains_reports_marks_the_best_and_skips_finished_trials(tmp_path, capsys):
  argv = ['sweep', '--config', FINETUNE, '--workdir', str(tmp_path), '--no-progress',
          '--sweep', 'optimizer.lr=[1e-4,3e-2]', '--config.parallel.mode=single']
  assert cli.main(argv) == 0
  printed = json.loads(capsys.readouterr().out)
  record = json.loads((tmp_path / 'sweep.json').read_text())
  trials = record['trials']
  assert [t['assignment'] for t in trials] == [{'optimizer.lr': 1e-4}, {'optimizer.lr': 3e-2}]
  for t in trials:
    manifest = checkpoint.read_manifest(tmp_path / t['name'])
    assert manifest['config']['optimizer']['lr'] == t['assignment']['optimizer.lr']
    assert manifest['config']['parallel']['mode'] == 'single'
  best = max(trials, key=lambda t: t['best_validation']['accuracy'])
  assert record['best'] == printed['best']['name'] == best['name']
  report = (tmp_path / 'sweep.md').read_text()
  marked = [line for line in report.splitlines() if '(best)' in line]
  assert len(marked) == 1 and marked[0].startswith(f'| {best["name"]} **(best)** |')
  assert f'{best["best_validation"]["accuracy"]:.4f}' in marked[0]
  assert '| trial | optimizer.lr | validation accuracy | validation loss |' in report
  assert '![validation accuracy against each swept value](sweep.png)' in report
  assert "--sweep 'optimizer.lr=[1e-4,3e-2]'" in report
  assert (tmp_path / 'sweep.png').stat().st_size > 1000
  lines = {t['name']: (tmp_path / t['name'] / 'metrics.jsonl').read_text() for t in trials}

  assert cli.main(argv) == 0
  assert json.loads(capsys.readouterr().out)['trained'] == 0
  assert json.loads((tmp_path / 'sweep.json').read_text())['trials'] == trials
  assert all((tmp_path / n / 'metrics.jsonl').read_text() == text for n, text in lines.items())


def test_cli_malformed_sweep_exits_with_the_expected_form(tmp_path, capsys):
  assert cli.main(['sweep', '--config', FINETUNE, '--workdir', str(tmp_path / 'sw'),
                   '--sweep', 'optimizer.lr=1e-4']) == 2
  assert 'must be a [...] list; use key=[value1,value2,...]' in capsys.readouterr().err
  assert not (tmp_path / 'sw').exists()
