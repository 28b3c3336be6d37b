"""The text recipe end to end (tiny): both classifiers' accuracy and F1, perplexity, a sample."""

import math
import re

import jax
import numpy as np
import pytest

from jaxpretrain import checkpoint, config as config_lib, loop, metrics, recipe
from jaxpretrain import data as data_lib
from jaxpretrain.data import text_runs
from jaxpretrain.errors import ConfigError

RECIPE = 'configs/shakespeare_recipe.py:tiny'
CLASSIFIERS = ('fine-tuned from pre-training', 'from scratch (same budget)')


@pytest.fixture(scope='module')
def recipe_run(text_recipe_run):
  return text_recipe_run


def _table_rows(report, first_cells):
  """Cells after the first of each markdown table row whose first cell is in `first_cells`."""
  rows = {}
  for line in report.splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if cells[0] in first_cells:
      rows[cells[0]] = cells[1:]
  return rows


def _batches_of(config, workdir, split):
  """The run's model and parameters, and the split's batches as `evaluate` reads them."""
  model, params, tokenizer = loop.restore_model(config, workdir)
  source = text_runs.text_source(config.data, split, tokenizer)
  apply = jax.jit(lambda b: model.apply({'params': params}, b, train=False)['logits'])
  return apply, list(data_lib.eval_batches(source, batch_size=config.data.eval_batch_size))


def test_report_has_both_classifiers_perplexity_and_a_sample(recipe_run):
  report = (recipe_run / 'report.md').read_text()
  rows = _table_rows(report, CLASSIFIERS)
  assert set(rows) == set(CLASSIFIERS)
  for accuracy, f1, loss, _ in rows.values():
    assert 0.0 <= float(accuracy.rstrip('%')) <= 100.0 and 0.0 <= float(f1) <= 1.0
    assert math.isfinite(float(loss))
  assert 'macro-F1** on 1210 test passages' in report
  prose = report[:report.index('## Configuration')]
  assert 'image' not in prose and 'augmentation' not in prose
  perplexity = _table_rows(report, ('validation (`validation`)', 'test (`test`)'))
  assert len(perplexity) == 2
  for ppl, nll, tokens in perplexity.values():
    assert 1.0 < float(ppl) < math.inf and float(ppl) == pytest.approx(math.exp(float(nll)),
                                                                        rel=1e-2)
    assert int(tokens.replace(',', '')) > 0
  sample = re.search(r'<pre><b>(.*?)</b>(.*?)</pre>', report, re.S)
  assert sample.group(1) == config_lib.load(RECIPE).generate.prompt
  assert sample.group(2).strip()
  assert (recipe_run / 'curves.png').stat().st_size > 1000
  stages = ('pretrain', 'finetune', 'scratch', 'language model')
  assert set(_table_rows(report, stages)) == set(stages)  # wall time of every stage


def test_both_classifiers_read_the_pretraining_tokenizer(recipe_run):
  for run in ('finetune/lr=0.0003', 'scratch/lr=0.001'):
    manifest = checkpoint.read_manifest(recipe_run / run)
    assert manifest['config']['data']['tokenizer']['path'] == str(recipe_run / 'pretrain')
    assert not (recipe_run / run / 'tokenizer.json').exists()
  assert (recipe_run / 'lm' / 'tokenizer.json').exists()  # the GPT trains its own BPE


@pytest.fixture(scope='module')
def direct_nll(recipe_run):
  """The validation split's summed NLL, predicted tokens and rows, from the model's logits."""
  config = config_lib.load(RECIPE).lm
  apply, batches = _batches_of(config, recipe_run / 'lm', 'validation')
  nll_sum = tokens = rows = 0.0
  for batch in batches:
    ids, real, seg = batch['input_ids'], batch['attention_mask'] > 0, batch['segment_ids']
    # Token t predicts token t + 1 of the same play; padding rows (mask 0) count nothing.
    valid = real[:, :-1] & real[:, 1:] & (seg[:, :-1] == seg[:, 1:]) & (batch['mask'][:, None] > 0)
    logits = np.asarray(apply(batch), np.float64)[:, :-1]
    top = logits.max(-1)
    log_z = top + np.log(np.sum(np.exp(logits - top[..., None]), -1))
    nll = log_z - np.take_along_axis(logits, ids[:, 1:, None], -1)[..., 0]
    nll_sum += float(np.sum(nll * valid))
    tokens += float(np.sum(valid))
    rows += float(np.sum(batch['mask']))
  return nll_sum, tokens, rows


@pytest.fixture(scope='module')
def test_logits(recipe_run):
  """The fine-tuned classifier's logits, labels and masks on the test split, batch by batch."""
  config = config_lib.override(config_lib.load(RECIPE).finetune,
                               [f'data.tokenizer.path={recipe_run / "pretrain"}'])
  apply, batches = _batches_of(config, recipe_run / 'finetune' / 'lr=0.0003', 'test')
  return ([np.asarray(apply(b)) for b in batches], [b['label'] for b in batches],
          [b['mask'] for b in batches])


@pytest.mark.parametrize('mode', ['mesh', 'pmap'])
def test_perplexity_is_exp_of_the_exact_mean_nll_over_the_split(recipe_run, direct_nll, mode):
  config = config_lib.override(config_lib.load(RECIPE).lm, [f'parallel.mode={mode}'])
  result = loop.evaluate(config, recipe_run / 'lm', split='validation')
  nll_sum, tokens, rows = direct_nll
  assert result['tokens'] == tokens and result['examples'] == rows
  assert result['loss'] == pytest.approx(nll_sum / tokens, rel=1e-5)
  assert result['perplexity'] == pytest.approx(math.exp(nll_sum / tokens), rel=1e-5)


@pytest.mark.parametrize('mode', ['mesh', 'pmap'])
def test_macro_f1_is_over_the_whole_split(recipe_run, test_logits, mode):
  config = config_lib.override(config_lib.load(RECIPE).finetune, [
      f'data.tokenizer.path={recipe_run / "pretrain"}', f'parallel.mode={mode}'])
  result = loop.evaluate(config, recipe_run / 'finetune' / 'lr=0.0003', split='test')
  logits, labels, where = test_logits
  whole = metrics.macro_f1(logits=np.concatenate(logits), labels=np.concatenate(labels),
                           where=np.concatenate(where))
  assert result['macro_f1'] == pytest.approx(whole, abs=1e-12)
  per_batch = np.mean([metrics.macro_f1(logits=x, labels=y, where=w)
                       for x, y, w in zip(logits, labels, where)])
  # The mean of per-batch F1s is another number, farther from the whole-split F1 than both
  # tolerances here (1e-12 above, 5e-5 for the report's four decimals below) can hide.
  assert abs(per_batch - whole) > 1e-4
  report_f1 = _table_rows((recipe_run / 'report.md').read_text(), CLASSIFIERS)[CLASSIFIERS[0]][1]
  assert float(report_f1) == pytest.approx(whole, abs=5e-5)


def test_an_lm_section_that_cannot_generate_is_refused_before_training(tmp_path):
  config = config_lib.override(config_lib.load(RECIPE), ['lm.objective.name=masked_lm'])
  with pytest.raises(ConfigError, match="must be a causal LM.*causal_lm"):
    recipe.run(config, tmp_path, progress=False)
  config = config_lib.load(RECIPE)
  with config.unlocked():
    del config.generate['top_k']
  with pytest.raises(ConfigError, match='needs a generate section.*missing: top_k'):
    recipe.run(config, tmp_path, progress=False)
  assert not list(tmp_path.iterdir())


def test_runs_that_split_the_plays_differently_are_refused_before_training(tmp_path):
  config = config_lib.override(config_lib.load(RECIPE), ['pretrain.data.split_by=play'])
  with pytest.raises(ConfigError, match="pretrain.data.split_by='play', "
                                        "finetune.data.split_by='section'.*same split_by"):
    recipe.run(config, tmp_path, progress=False)
  assert not list(tmp_path.iterdir())
