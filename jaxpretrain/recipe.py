"""A whole pre-train → fine-tune recipe, with a from-scratch baseline and a report.

The recipe config has two run configs, `pretrain` and `finetune`, and a
learning-rate grid for each classifier. The fine-tuned classifier starts from
the pre-training checkpoint, optionally after a linear probe (`probe.epochs` > 0:
a new head trained on the frozen encoder, then everything fine-tuned, as in
LP-FT); the baseline is the same fine-tuning config with no pre-trained weights
and no fine-tuning transforms: same architecture, augmentation, tokenizer (the
pre-training run's, for text) and epochs. Each classifier's learning rate and
epoch are chosen on the validation split alone; only the chosen model is scored
on the test split.

An optional `lm` section is a causal language model's run config: it is
pre-trained in `workdir/lm`, scored by perplexity on its validation split and
the test split, and continues the prompt of the `generate` section.
"""

import time
from typing import Any

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections

from jaxpretrain import generate, loop, paths, report
from jaxpretrain.data import tokenizers
from jaxpretrain.errors import ConfigError

Config = ml_collections.ConfigDict
_GENERATE_KEYS = ('prompt', 'max_new_tokens', 'temperature', 'top_k', 'seed')


def _with_pretraining_tokenizer(cfg: Config, pretrain_dir: epath.Path) -> Config:
  """A text run reads the pre-training run's tokenizer, so token ids mean the same."""
  if 'tokenizer' in cfg.data:
    cfg.data.tokenizer.path = str(pretrain_dir)
  return cfg


def _probe_config(config: Config, pretrain_dir: epath.Path) -> Config:
  """Linear probe: a new head trained on the frozen pre-trained encoder, no augmentation."""
  probe = config.finetune.copy_and_resolve_references()
  probe.finetune.pretrained = str(pretrain_dir)
  probe.finetune.new_head = 'head/.*'
  probe.finetune.freeze = 'encoder/.*'
  probe.finetune.lr_multipliers = ()
  probe.augment = ml_collections.ConfigDict({'name': 'none'})
  probe.optimizer.lr = config.probe.lr
  probe.optimizer.weight_decay = config.probe.weight_decay
  probe.optimizer.schedule = 'constant'
  probe.optimizer.warmup_steps = 0
  probe.train.epochs = config.probe.epochs
  return _with_pretraining_tokenizer(probe, pretrain_dir)


def _classifier_configs(config: Config, pretrain_dir: epath.Path, start_dir: epath.Path,
                        probed: bool) -> dict[str, Config]:
  finetuned = config.finetune.copy_and_resolve_references()
  finetuned.finetune.pretrained = str(start_dir)
  if probed:
    # LP-FT (Kumar et al., 2022): start from the probed head and train all of it together.
    finetuned.finetune.select = '.*'
    finetuned.finetune.new_head = ''
    finetuned.finetune.lr_multipliers = ()
  scratch = config.finetune.copy_and_resolve_references()
  for key, default in scratch.finetune.items():
    if key not in ('select', 'step', 'strict'):
      scratch.finetune[key] = type(default)()
  return {name: _with_pretraining_tokenizer(cfg, pretrain_dir)
          for name, cfg in (('finetune', finetuned), ('scratch', scratch))}


def _choose(trials: dict[str, dict[str, Any]]) -> str:
  """The trial with the best validation accuracy; lower validation loss breaks ties."""
  return max(trials, key=lambda t: (trials[t]['best_validation']['accuracy'],
                                    -trials[t]['best_validation']['loss']))


def _check_lm(config: Config) -> None:
  """Refuses an `lm` section that could not be sampled, before anything trains."""
  if config.lm.objective.name != 'causal_lm':
    raise ConfigError(f"the recipe's lm section trains objective {config.lm.objective.name!r}; "
                      "it must be a causal LM (objective 'causal_lm', e.g. "
                      'configs/shakespeare_gpt_clm.py) to generate text')
  missing = [k for k in _GENERATE_KEYS if k not in config.get('generate', {})]
  if missing:
    raise ConfigError(f'a recipe with an lm section needs a generate section with '
                      f'{", ".join(_GENERATE_KEYS)}; missing: {", ".join(missing)}')


def _check_splits(config: Config) -> None:
  """Refuses runs that split one corpus differently, so no held-out text is pre-trained on."""
  sections = [k for k in ('pretrain', 'finetune', 'lm') if k in config]
  split_by = {k: config[k].data.get('split_by') for k in sections}
  if len({v for v in split_by.values() if v is not None}) > 1:
    given = ', '.join(f'{k}.data.split_by={v!r}' for k, v in split_by.items())
    raise ConfigError(f'the recipe\'s runs split the corpus differently ({given}), so one '
                      "run's held-out text could be another's training text; give them the "
                      "same split_by, e.g. --config.pretrain.data.split_by=play "
                      '--config.finetune.data.split_by=play --config.lm.data.split_by=play')


def _sample(lm: Config, lm_dir: epath.Path, gen: Config) -> dict[str, Any]:
  """The language model's continuation of `gen.prompt`, in its own tokenizer's tokens."""
  model, params, tokenizer = loop.restore_model(lm, lm_dir, step='best')
  prompt = tokenizer.encode(gen.prompt, add_special_tokens=False).ids
  if not prompt:
    raise ConfigError(f'generate.prompt={gen.prompt!r} encodes to no tokens; give it some text')
  eos = tokenizers.special_ids(tokenizer).get('eos')
  tokens = generate.generate(model, params, jnp.asarray([prompt], jnp.int32),
                             max_new_tokens=gen.max_new_tokens, rng=jax.random.key(gen.seed),
                             temperature=gen.temperature, top_k=gen.top_k or None, eos_id=eos)
  new = [int(t) for t in jax.device_get(tokens)[0, len(prompt):]]
  if eos in new:  # Everything after the first end of text is padding.
    new = new[:new.index(eos)]
  return {'prompt': gen.prompt, 'continuation': tokenizer.decode(new), 'new_tokens': len(new),
          'prompt_tokens': len(prompt)}


def _language_model(config: Config, lm_dir: epath.Path, progress: bool) -> dict[str, Any]:
  """Pre-trains the `lm` run, scores its perplexity and samples from it."""
  summary = loop.train(config.lm, lm_dir, kind='pretrain', progress=progress)
  splits = {'validation': config.lm.data.validation_split, 'test': config.test_split}
  by_split = loop.evaluate_splits(config.lm, lm_dir, list(splits.values()), step='best')
  scores = {name: by_split[split] for name, split in splits.items()}
  return {'workdir': str(lm_dir), 'steps': summary['steps'], 'best_step': summary['best_step'],
          'splits': splits, **scores, 'sample': _sample(config.lm, lm_dir, config.generate)}


def run(config: Config, workdir: paths.PathLike, *, progress: bool = True) -> dict[str, Any]:
  """Runs pre-training, both classifiers' learning-rate grids, and writes `report.md`.

  With an `lm` section, a causal language model is pre-trained after the
  classifiers and scored by perplexity, and samples the `generate` prompt.
  Each run resumes (or is skipped if finished) when rerun in the same workdir.
  """
  if 'lm' in config:
    _check_lm(config)
  _check_splits(config)
  start = time.time()
  workdir = paths.as_path(workdir)
  timings = {}
  t0 = time.time()
  loop.train(config.pretrain, workdir / 'pretrain', kind='pretrain', progress=progress)
  timings['pretrain'] = time.time() - t0
  start_dir, probed = workdir / 'pretrain', config.get('probe', {}).get('epochs', 0) > 0
  if probed:
    t0 = time.time()
    start_dir = workdir / 'probe'
    loop.train(_probe_config(config, workdir / 'pretrain'), start_dir, kind='finetune',
               progress=progress)
    timings['linear probe'] = time.time() - t0
  grids = {'finetune': config.finetune_lrs, 'scratch': config.scratch_lrs}
  results, trials = {}, {}
  for name, cfg in _classifier_configs(config, workdir / 'pretrain', start_dir,
                                        probed).items():
    t0 = time.time()
    runs = {}
    for lr in grids[name]:
      trial = cfg.copy_and_resolve_references()
      trial.optimizer.lr = lr
      runs[f'{name}/lr={lr:g}'] = (trial, loop.train(trial, workdir / name / f'lr={lr:g}',
                                                      kind='finetune', progress=progress))
    trials[name] = {k: summary for k, (_, summary) in runs.items()}
    chosen = _choose(trials[name])
    trial, summary = runs[chosen]
    results[name] = loop.evaluate(trial, summary['workdir'], split=config.test_split,
                                  step='best')
    results[name].update(run=chosen, workdir=summary['workdir'],
                         best_epoch=summary['best_step'] / summary['steps_per_epoch'],
                         validation_accuracy=summary['best_validation']['accuracy'])
    timings[name] = time.time() - t0
  lm = None
  if 'lm' in config:
    t0 = time.time()
    lm = _language_model(config, workdir / 'lm', progress)
    timings['language model'] = time.time() - t0
  wall = time.time() - start
  path = report.write(workdir, config, results, trials, timings, wall, lm=lm)
  return {'report': str(path), 'test': results, **({'lm': lm} if lm else {}),
          'wall_time_s': wall, 'timings_s': timings}
