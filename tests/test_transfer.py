"""Transfer evaluation: each protocol end to end from the CLI, the feature cache, the solvers."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxpretrain import build, checkpoint, cli, loop, transfer
from jaxpretrain import config as config_lib
from jaxpretrain import data as data_lib
from jaxpretrain.errors import ConfigError
from jaxpretrain.models import init_variables
from jaxpretrain.state import TrainState
from tests.helpers import image_batch

PRETRAIN = 'configs/fashion_mnist_pretrain.py:tiny'
FINETUNE = 'configs/fashion_mnist_finetune.py:tiny'
TEST = 'test[:64]'
# The labelled subset (4 + 2 per class) is drawn from the first 1,000 training images: less to read.
DATA = ('data.train_split=train[:1000]',)


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A pre-training run's work directory, holding one checkpoint of the tiny pretext model."""
  workdir = tmp_path_factory.mktemp('pretrained')
  model = build.model(config_lib.load(PRETRAIN).model)
  # Initialised as the classifier will be (op by op, batch of 8), sharing its compilations.
  params = init_variables(model, jax.random.PRNGKey(7), image_batch(8, size=28))['params']
  state = TrainState.create(apply_fn=model.apply, params=params, tx=optax.sgd(0.1),
                            rng=jax.random.PRNGKey(0))
  with checkpoint.Checkpointer(workdir / 'checkpoints', async_save=False) as ckpt:
    ckpt.save(state.replace(step=jnp.ones((), jnp.int32)), force=True)
  return workdir


def _config(pretrained, *overrides):
  return config_lib.override(config_lib.load(FINETUNE),
                             (*DATA, f'finetune.pretrained={pretrained or ""}', *overrides))


def _evaluate(workdir, pretrained, protocol, *options):
  argv = ['evaluate', '--config', FINETUNE, *(f'--config.{o}' for o in DATA),
          f'--config.finetune.pretrained={pretrained or ""}', '--workdir', str(workdir),
          '--split', TEST, '--no-progress', '--protocol', protocol, *options]
  assert cli.main(argv) == 0
  return json.loads((workdir / f'transfer_{protocol}.json').read_text())


def _check_scores(result, pretrained):
  assert result['pretrained'] == (str(pretrained) if pretrained else None)
  assert result['split'] == TEST and result['examples'] == 64
  for key in ('accuracy', 'macro_f1', 'validation_accuracy'):
    assert 0.0 <= result[key] <= 1.0, key


@pytest.fixture(scope='module')
def probed(pretrained, tmp_path_factory):
  """The work directory of a linear probe (holding the cached features) and its result."""
  workdir = tmp_path_factory.mktemp('transfer')
  return workdir, _evaluate(workdir, pretrained, 'linear_probe')


def test_linear_probe_runs_from_the_cli_and_chooses_l2_on_validation(probed, pretrained):
  workdir, result = probed
  _check_scores(result, pretrained)
  assert result['protocol'] == 'linear_probe' and 'note' not in result
  assert result['chosen']['l2'] in transfer.L2_GRID
  assert result['validation_accuracy'] == max(result['validation_grid'].values())
  assert result['train_examples'] == 40


def test_cached_features_are_the_pretrained_encoders_features(probed, pretrained, monkeypatch):
  workdir, _ = probed
  config = _config(pretrained)
  images = {'train': data_lib.load_split(loop.run_splits(config)[0]),
            'test': data_lib.load_split(data_lib.data_source('fashion_mnist', TEST))}
  both = {k: np.concatenate([images['train'][k], images['test'][k]]) for k in ('image', 'label')}
  model = build.model(config.model)
  # The head does not touch the features: zeros do; the encoder is the pre-trained one.
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), both)['params']
  params = {**jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
            'encoder': checkpoint.restore_params(pretrained)['encoder']}
  features = np.asarray(jax.jit(model.apply)({'params': params}, both)['features'])
  expected = {'train': features[:40], 'test': features[40:]}
  for role, batch in images.items():
    np.testing.assert_allclose(np.load(workdir / 'features' / f'{role}_features.npy'),
                               expected[role], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.load(workdir / 'features' / f'{role}_labels.npy'),
                                  batch['label'])
  # The same encoder, data and splits read the cache: the encoder does not run again.
  monkeypatch.setattr(transfer, '_extract', lambda *a, **k: pytest.fail('encoder ran again'))
  cached = transfer.cached_features(config, workdir, split=TEST)
  np.testing.assert_array_equal(cached['test'].features,
                                np.load(workdir / 'features' / 'test_features.npy'))
  assert cached['validation'].features.shape == (20, cached['test'].features.shape[1])


def test_linear_probe_is_the_regularised_optimum_on_the_cached_features(probed, pretrained):
  workdir, result = probed
  feats = transfer.cached_features(_config(pretrained), workdir, split=TEST)
  standardise = transfer._standardiser(feats['train'].features)
  x, labels = standardise(feats['train'].features), feats['train'].labels
  model = transfer.fit_logistic(x, labels, transfer.L2_GRID, num_classes=10)
  i = transfer.L2_GRID.index(result['chosen']['l2'])
  params, l2 = (model.w_LxDxC[i], model.b_LxC[i]), result['chosen']['l2']
  grad = jax.jit(jax.grad(transfer._logistic_loss))(params, jnp.asarray(x), jnp.asarray(labels), l2)
  assert float(optax.tree.norm(grad)) < 1e-4  # Stationary: the convex problem's minimum.
  logits = standardise(feats['test'].features) @ np.asarray(params[0]) + np.asarray(params[1])
  assert result['accuracy'] == pytest.approx(
      np.mean(np.argmax(logits, -1) == feats['test'].labels))


def test_knn_with_one_neighbour_classifies_its_own_training_set_perfectly(probed, pretrained):
  workdir, _ = probed
  train = transfer.cached_features(_config(pretrained), workdir, split=TEST)['train']
  scores = transfer.knn_scores(train.features, train.labels, train.features, k=1,
                               num_classes=10)
  np.testing.assert_array_equal(np.argmax(scores, -1), train.labels)


def test_knn_votes_are_temperature_weighted_cosine_similarities():
  rng = np.random.default_rng(0)
  train, labels, query = rng.normal(size=(30, 6)), rng.integers(0, 3, 30), rng.normal(size=(7, 6))
  scores = transfer.knn_scores(train, labels, query, k=4, num_classes=3, temperature=0.5,
                               chunk=3)
  unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = unit(query) @ unit(train).T
  expected = np.zeros((7, 3))
  for q in range(7):
    for j in np.argsort(-sim[q])[:4]:
      expected[q, labels[j]] += np.exp(sim[q, j] / 0.5)
  np.testing.assert_allclose(scores, expected, rtol=1e-4)
  with pytest.raises(ConfigError, match='k=31 nearest neighbours of 30'):
    transfer.knn_scores(train, labels, query, k=31, num_classes=3)


def test_knn_runs_from_the_cli_and_prints_what_it_writes(probed, pretrained, capsys):
  workdir, _ = probed
  capsys.readouterr()
  result = _evaluate(workdir, pretrained, 'knn', '--k', '1', '5')
  assert json.loads(capsys.readouterr().out) == result
  _check_scores(result, pretrained)
  assert result['chosen']['k'] in (1, 5) and result['chosen']['k_by'] == 'validation accuracy'
  fixed = _evaluate(workdir, pretrained, 'knn', '--k', '5')
  assert fixed['chosen'] == {'k': 5, 'k_by': 'fixed', 'temperature': 0.07}


@pytest.mark.parametrize('n,d', [(40, 6), (5, 12)])
def test_ridge_is_the_exact_regularised_least_squares_solution(n, d):
  rng = np.random.default_rng(n)
  x, y = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
  for l2 in (0.5, 3.0):
    augmented = np.concatenate([x, np.sqrt(l2) * np.eye(d)]), np.concatenate([y, np.zeros((d, 3))])
    expected = np.linalg.lstsq(*augmented, rcond=None)[0]
    np.testing.assert_allclose(transfer.ridge_fit(x, y, l2), expected, rtol=1e-4, atol=1e-5)
  if n > d:  # No penalty: ordinary least squares.
    np.testing.assert_allclose(transfer.ridge_fit(x, y, 0.0), np.linalg.lstsq(x, y, rcond=None)[0],
                               rtol=1e-4, atol=1e-5)


def test_few_shot_runs_from_the_cli_with_mean_and_sd_over_draws(probed, pretrained, capsys):
  workdir, _ = probed
  result = _evaluate(workdir, pretrained, 'few_shot', '--shots', '1', '2', '--seeds', '3')
  _check_scores(result, pretrained)
  assert set(result['shots']) == {'1', '2'} and result['chosen']['shots'] == 2
  for shot in result['shots'].values():
    assert 0.0 <= shot['accuracy'] <= 1.0 and shot['accuracy_sd'] >= 0.0
    assert shot['l2'] in transfer.RIDGE_GRID
  assert result['accuracy'] == result['shots']['2']['accuracy']
  capsys.readouterr()
  assert cli.main(['evaluate', '--config', FINETUNE, *(f'--config.{o}' for o in DATA),
                   f'--config.finetune.pretrained={pretrained}', '--workdir', str(workdir),
                   '--split', TEST, '--protocol', 'few_shot', '--shots', '5']) == 2
  assert '5-shot needs 5 training images of class 0, which has 4' in capsys.readouterr().err


def test_finetune_scores_the_best_epoch_as_plain_evaluate_does(pretrained, tmp_path, capsys):
  result = _evaluate(tmp_path, pretrained, 'finetune')
  _check_scores(result, pretrained)
  assert result['chosen']['by'] == 'validation accuracy'
  assert checkpoint.read_manifest(tmp_path / 'finetune')['finetune'][0]['source'] == str(pretrained)
  capsys.readouterr()
  # Without --protocol, evaluate scores the run's best checkpoint as before.
  assert cli.main(['evaluate', '--config', FINETUNE, *(f'--config.{o}' for o in DATA),
                   f'--config.finetune.pretrained={pretrained}', '--workdir',
                   str(tmp_path / 'finetune'), '--split', TEST]) == 0
  plain = json.loads(capsys.readouterr().out)
  assert plain['accuracy'] == result['accuracy'] and plain['macro_f1'] == result['macro_f1']


def test_lora_trains_adapters_of_the_given_rank_on_a_frozen_encoder(pretrained, tmp_path):
  result = _evaluate(tmp_path, pretrained, 'lora', '--lora-rank', '2')
  _check_scores(result, pretrained)
  manifest = checkpoint.read_manifest(tmp_path / 'lora_rank2')
  lora = next(t for t in manifest['finetune'] if t['name'] == 'lora')
  assert lora['rank'] == 2 and result['lora_rank'] == 2
  encoder = checkpoint.restore_params(pretrained)['encoder']
  assert result['frozen_params'] == sum(np.size(v) for v in jax.tree.leaves(encoder))


def test_a_config_without_pretrained_weights_is_a_random_encoder_baseline(tmp_path):
  result = _evaluate(tmp_path, None, 'knn')
  _check_scores(result, None)
  assert 'random initialisation' in result['note'] and result['chosen']['k'] == 20


class _NoFeatures(nn.Module):
  @nn.compact
  def __call__(self, batch, *, train=False):
    image = batch['image']
    return {'logits': nn.Dense(10, name='head')(image.reshape(image.shape[0], -1))}


def test_a_model_without_features_is_refused_with_the_fix(monkeypatch, tmp_path):
  monkeypatch.setitem(build.MODELS, 'no_features', lambda c: _NoFeatures())
  config = _config(None, 'model.name=no_features')
  with pytest.raises(ConfigError, match=r"returns \['logits'\] and no features.*"
                                        r"outputs\['features'\]"):
    transfer.run(config, tmp_path, 'linear_probe', split=TEST, progress=False)


def test_configs_that_cannot_be_evaluated_are_refused(tmp_path):
  with pytest.raises(ConfigError, match='validation_per_class'):
    transfer.run(_config(None, 'data.validation_per_class=0'), tmp_path, 'knn')
  with pytest.raises(ConfigError, match='unknown protocol'):
    transfer.run(_config(None), tmp_path, 'svm')


def test_bad_protocol_or_misplaced_option_is_an_argparse_error(capsys):
  base = ['evaluate', '--config', FINETUNE, '--workdir', 'unused']
  with pytest.raises(SystemExit) as e:
    cli.main([*base, '--protocol', 'svm'])
  assert e.value.code == 2 and "invalid choice: 'svm'" in capsys.readouterr().err
  with pytest.raises(SystemExit) as e:
    cli.main([*base, '--protocol', 'linear_probe', '--k', '5'])
  assert e.value.code == 2 and '--k needs --protocol knn' in capsys.readouterr().err
  assert set(cli._PROTOCOLS) == set(transfer.PROTOCOLS)
