"""Drivers that wire data, model, objective, parallel step and checkpoints into runs.

`train` pre-trains or fine-tunes as its config says, logging to the work
directory and resuming from its checkpoints; `evaluate` scores a checkpoint on a
split. Nothing below this module imports it.
"""

from collections.abc import Callable, Iterable, Sequence
import dataclasses
import json
import logging
import time
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxpretrain import build, checkpoint, convert, ema, parallel, paths
from jaxpretrain import config as config_lib
from jaxpretrain import data as data_lib
from jaxpretrain import tree as tree_lib
from jaxpretrain.data import text_runs
from jaxpretrain.finetune import create_state
from jaxpretrain.metrics import MeanAccumulator, macro_f1, perplexity
from jaxpretrain.models import sync_batch_norm
from jaxpretrain.objectives.common import Objective, example_weights
from jaxpretrain.state import TrainState
from jaxpretrain.step import apply_model, make_eval_step, make_train_step

Config = ml_collections.ConfigDict


class MetricsLog:
  """Appends metrics to `metrics.jsonl` and TensorBoard event files in a work directory."""

  def __init__(self, workdir: paths.PathLike):
    workdir = paths.as_path(workdir)
    self.path = workdir / 'metrics.jsonl'
    self._tb = paths.summary_writer(workdir / 'tensorboard')

  def write(self, step: int, split: str, metrics: dict[str, float]) -> None:
    record = {'step': step, 'split': split, **{k: float(v) for k, v in metrics.items()}}
    paths.append_text(self.path, json.dumps(record) + '\n')
    if self._tb is not None:
      for k, v in metrics.items():
        self._tb.add_scalar(f'{split}/{k}', float(v), step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: paths.PathLike) -> list[dict[str, Any]]:
  """The records of a work directory's `metrics.jsonl`."""
  path = paths.as_path(workdir) / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@dataclasses.dataclass
class Engine:
  """One way of running steps (mesh, pmap or one device), behind one interface."""
  place_state: Callable[[TrainState], Any]
  host_state: Callable[[Any], TrainState]
  place_batch: Callable[[dict], Any]
  train_step: Callable
  eval_step: Callable
  unbatch_metrics: Callable[[dict], dict]
  predict: Callable[[Any, Any], tuple[dict, dict]]  # -> (outputs, batch), batch first


def _predict(state: TrainState, batch: dict) -> tuple[dict[str, Any], dict]:
  """The model's outputs (but `model_state`) beside the batch itself.

  Returned together, so that outputs and labels line up batch first however the
  batch was split over devices or processes.
  """
  return {k: v for k, v in apply_model(state, batch).items() if k != 'model_state'}, batch


def axis_name(config: Config) -> str | None:
  """The device axis a run's objective sees: under pmap each device holds a share of the batch.

  SimCLR gathers its negatives and MAE numbers its masks over it, so that a pmap
  run computes what a mesh or single-device run does.
  """
  return parallel.PMAP_AXIS if config.parallel.get('mode') == 'pmap' else None


def sharding_options(config: Config) -> dict[str, Any]:
  """How a run shards its state over the mesh: `parallel.state_shardings`'s options, checked.

  `parallel.fsdp` and `parallel.rules` of the config (see docs/sharding.md).
  """
  cfg = config.parallel
  config_lib.check_parallel(cfg)
  return dict(rules=config_lib.sharding_rules(cfg.get('rules', ())),
              fsdp=bool(cfg.get('fsdp', False)),
              fsdp_min_bytes=cfg.get('fsdp_min_bytes', parallel.FSDP_MIN_BYTES))


def make_engine(mode: str, objective: Objective, eval_objective: Objective, state: TrainState,
                *, sharding: dict[str, Any] | None = None, **step_options: Any) -> Engine:
  """The jitted train, eval and predict steps of `parallel.mode` ('mesh', 'pmap' or 'single').

  `state` (or its shapes) fixes the shardings, with `sharding` (from
  `sharding_options`) on a mesh; `step_options` (`grad_accum`, `clip`,
  `ema_decay`) configure the train step (`step.make_train_step`).
  """
  if mode == 'mesh':
    mesh = parallel.make_mesh()
    layout = sharding or {}
    return Engine(
        place_state=lambda s: parallel.place_state(s, mesh, **layout), host_state=lambda s: s,
        place_batch=lambda b: parallel.shard_batch(b, mesh),
        train_step=parallel.jit(make_train_step(objective, **step_options),
                                mesh, state, **layout),
        eval_step=parallel.jit(make_eval_step(eval_objective), mesh, state, donate=False,
                               **layout),
        unbatch_metrics=lambda m: m,
        predict=parallel.jit(_predict, mesh, state, donate=False, **layout))
  if mode == 'pmap':
    axis = parallel.PMAP_AXIS
    predict = parallel.pmap(_predict, donate=False)
    return Engine(
        place_state=parallel.replicate, host_state=parallel.unreplicate,
        place_batch=parallel.split_for_pmap,
        train_step=parallel.pmap(make_train_step(objective, **step_options, axis_name=axis)),
        eval_step=parallel.pmap(make_eval_step(eval_objective, axis_name=axis), donate=False),
        unbatch_metrics=parallel.unreplicate,
        predict=lambda s, b: jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), predict(s, b)))
  if mode == 'single':
    return Engine(
        place_state=lambda s: jax.tree.map(jax.numpy.copy, s), host_state=lambda s: s,
        place_batch=lambda b: b,
        train_step=jax.jit(make_train_step(objective, **step_options),
                           donate_argnums=0),
        eval_step=jax.jit(make_eval_step(eval_objective)), unbatch_metrics=lambda m: m,
        predict=jax.jit(_predict))
  raise build.ConfigError(f"unknown parallel.mode {mode!r}; choose 'mesh', 'pmap' or 'single'")


def split_source(cfg: Config, split: str, tokenizer: Any = None) -> data_lib.Source:
  """One split of the data section `cfg`: text tokenized by `tokenizer`, or TFDS records."""
  if text_runs.is_text(cfg):
    return text_runs.text_source(cfg, split, tokenizer)
  data_dir = cfg.get('data_dir') or None
  if cfg.get('in_memory', False):
    return data_lib.in_memory_source(cfg.name, split, data_dir=data_dir)
  return data_lib.data_source(cfg.name, split, data_dir=data_dir)


def with_tokenizer(config: Config, workdir: paths.PathLike) -> tuple[Config, Any]:
  """For a text dataset: the run's tokenizer, and the model sized to its vocabulary."""
  if not text_runs.is_text(config.data):
    return config, None
  tokenizer = text_runs.run_tokenizer(config.data, workdir)
  config = config.copy_and_resolve_references()
  if 'transformer' in config.model:
    with config.unlocked():
      config.model.transformer.vocab_size = tokenizer.get_vocab_size()
      config.model.transformer.pad_token_id = data_lib.tokenizers.special_ids(tokenizer).get(
          'pad', 0)
  return config, tokenizer


def run_splits(config: Config, tokenizer: Any = None
               ) -> tuple[data_lib.Source, data_lib.Source | None]:
  """Training and validation sources, as the data section describes.

  With `data.unlabelled`, training reads every example of the training split
  but the held-out validation ones (`validation_per_class`), without labels.
  With `data.unlabelled_ratio`, it reads those as well, labelled `UNLABELLED`,
  beside the labelled subset repeated to about one labelled example in
  `1 + unlabelled_ratio` (semi-supervised training).
  """
  cfg = config.data
  _check_unlabelled(cfg)
  train = split_source(cfg, cfg.train_split, tokenizer)
  if cfg.get('labelled_per_class', 0):
    train_idx, val_idx = data_lib.labelled_subset(
        train, cfg.labelled_per_class, seed=cfg.get('subset_seed', 0),
        validation_per_class=cfg.get('validation_per_class', 0))
    rest = data_lib.subset(train, np.setdiff1d(np.arange(len(train)), val_idx))
    if cfg.get('unlabelled'):
      training = rest
    elif cfg.get('unlabelled_ratio', 0):
      repeats = max(1, round(len(rest) / (cfg.unlabelled_ratio * len(train_idx))))
      training = data_lib.mixed(data_lib.subset(train, train_idx), rest,
                                labelled_repeats=repeats)
    else:
      training = data_lib.subset(train, train_idx)
    if len(val_idx):
      return _training(cfg, training), data_lib.subset(train, val_idx)
    # No labels held out of the subset: the validation split, if any, validates it.
    train = training
  train = _training(cfg, train)
  if cfg.get('validation_split'):
    return train, split_source(cfg, cfg.validation_split, tokenizer)
  return train, None


def _training(cfg: Config, train: data_lib.Source) -> data_lib.Source:
  """The training source, without its labels for a `data.unlabelled` run."""
  return data_lib.without(train, ('label',)) if cfg.get('unlabelled') else train


def _check_unlabelled(cfg: Config) -> None:
  """Unlabelled images come without labels or beside labelled ones, not both."""
  ratio = cfg.get('unlabelled_ratio', 0)
  if ratio < 0:
    raise build.ConfigError(f'data.unlabelled_ratio={ratio} must be 0 (labelled images only) or '
                            'the number of unlabelled images per labelled one, e.g. 7')
  if ratio and cfg.get('unlabelled'):
    raise build.ConfigError('data.unlabelled=True reads no label at all, and '
                            f'data.unlabelled_ratio={ratio} mixes unlabelled images into '
                            'labelled batches; set one of them')
  if ratio and not cfg.get('labelled_per_class', 0):
    raise build.ConfigError(f'data.unlabelled_ratio={ratio} mixes the labelled subset with the '
                            'rest of the training split, but there is no labelled subset; set '
                            'data.labelled_per_class')


# What to do instead of `data.unlabelled`, for the objectives that learn from labels.
_INSTEAD_OF_NO_LABELS = {
    'classification': "distil a teacher's predictions instead (objective.name='distillation', "
                      "task='classification', as configs/fashion_mnist_distil.py), or set "
                      'data.unlabelled=False',
    'fixmatch': 'set data.unlabelled=False and data.unlabelled_ratio (e.g. 7) to mix unlabelled '
                'images into the labelled batches, as configs/fashion_mnist_fixmatch.py',
}


def _declared_classes(cfg: Config) -> int | None:
  """How many classes the TFDS metadata of the data section's dataset gives its labels."""
  if text_runs.is_text(cfg):
    return None
  features = data_lib.dataset_info(cfg.name, data_dir=cfg.get('data_dir') or None).features
  return getattr(features['label'], 'num_classes', None) if 'label' in features else None


def _check_labels(config: Config, *sources: data_lib.Source | None) -> None:
  """A classifier's labels must be there (not `data.unlabelled`) and index its outputs.

  Out-of-range labels would not fail: the loss would quietly read a wrong logit.
  The labels of the sources held in memory are checked (FixMatch's `UNLABELLED`
  marks aside), then the classes the dataset declares, which covers a lazy
  source without decoding it whole.
  """
  if config.data.get('unlabelled') and config.objective.name in _INSTEAD_OF_NO_LABELS:
    raise build.ConfigError(f'data.unlabelled=True drops the training labels the '
                            f'{config.objective.name} objective learns from; '
                            f'{_INSTEAD_OF_NO_LABELS[config.objective.name]}')
  classes = config.model.get('num_classes')
  if config.objective.name not in _INSTEAD_OF_NO_LABELS or not classes:
    return
  for source in sources:
    labels = getattr(source, 'arrays', {}).get('label')
    if labels is None or labels.ndim != 1:
      continue
    if config.objective.name == 'fixmatch':
      labels = labels[labels != data_lib.UNLABELLED]
    if not len(labels):
      continue
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
      raise build.ConfigError(
          f'the labels of {config.data.name!r} run from {low} to {high}, but the model has '
          f'model.num_classes={classes} outputs; set --config.model.num_classes={high + 1}')
  declared = _declared_classes(config.data)
  if declared and declared > classes:
    raise build.ConfigError(
        f'{config.data.name!r} has {declared} classes, but the model has '
        f'model.num_classes={classes} outputs; set --config.model.num_classes={declared}')


def _evaluate(engine: Engine, placed_state: Any, batches: Iterable[dict]) -> dict[str, float]:
  acc = MeanAccumulator()
  for batch in batches:
    acc.update(jax.device_get(engine.unbatch_metrics(engine.eval_step(
        placed_state, engine.place_batch(batch)))))
  return acc.result()


def _without_pretrained(config: Config) -> Config | None:
  """The fine-tuning section minus its pre-trained source.

  A run restoring its own checkpoint needs the transform's parameter structure
  (which parameters are frozen), not the pre-trained weights it started from.
  """
  ft_cfg = config.get('finetune')
  if ft_cfg is not None:
    ft_cfg = ft_cfg.copy_and_resolve_references()
    ft_cfg.pretrained = ''
  return ft_cfg


def _teacher(config: Config) -> str:
  """A distillation run's teacher: its `finetune.teacher` (empty for other runs)."""
  return config.get('finetune', {}).get('teacher', '')


def initial_state(config: Config, ft_cfg: Config | None, total_steps: int,
                  example: dict) -> TrainState:
  """The run's model, fine-tuning chain and optimizer, as a train state at step 0.

  Under `parallel.mode='pmap'` its BatchNorm layers average over all devices. With
  `train.ema_decay` it keeps an average of its parameters for evaluation (`ema`).
  A run that shards its state (`parallel.fsdp`, `parallel.rules`) initialises it
  straight into its shardings on the mesh (`parallel.init_state`).
  """
  schedule = build.learning_rate(config.optimizer, total_steps)
  build.check_position_encoding(config.model, (ft_cfg or {}).get('pretrained', ''))
  model = build.model(config.model)
  if config.parallel.get('mode') == 'pmap':
    model = sync_batch_norm(model, parallel.PMAP_AXIS)
  transform = build.transform(ft_cfg, schedule)
  tx = build.optimizer(config.optimizer, total_steps)
  decay = ema_decay(config)

  def init() -> TrainState:
    state = create_state(model, transform, tx=tx, rng=jax.random.PRNGKey(config.seed),
                         example_batch=example)
    return ema.init(state) if decay else state

  layout = sharding_options(config)
  if layout['fsdp'] or layout['rules']:
    return parallel.init_state(init, parallel.make_mesh(), **layout)
  return init()


def ema_decay(config: Config) -> float:
  """The run's `train.ema_decay` (0: no average of the parameters), checked."""
  decay = config.train.get('ema_decay', 0.0)
  try:
    ema.check_decay(decay)
  except ValueError as e:
    raise build.ConfigError(f'train.ema_decay: {e}') from None
  return decay


def _check_average_kept(ckpt: checkpoint.Checkpointer, decay: float) -> None:
  """Refuses to resume a run with or without an average of its weights unlike it was saved."""
  kept = ckpt.has(ema.PATH)
  if kept != bool(decay):
    raise build.ConfigError(
        f'the checkpoints in {ckpt.directory} were saved {"with" if kept else "without"} an '
        f'average of the weights, and this config sets train.ema_decay={decay}: resume with '
        f'{"the train.ema_decay it was trained with" if kept else "train.ema_decay=0"}, or '
        'train in a new work directory. Nothing was changed on disk.')


def _check_pretrained(ft_cfg: Config | None) -> None:
  """`finetune.pretrained` must name a run or a Hugging Face directory before a run writes."""
  source = (ft_cfg or {}).get('pretrained', '')
  if source and not convert.is_hf_directory(source):
    checkpoint.open_checkpoints(source).close()


def _checkpointer(config: Config, workdir: epath.Path, kind: str, *,
                  save_every: int) -> checkpoint.Checkpointer:
  cfg = config.checkpoint
  return checkpoint.Checkpointer(
      workdir / 'checkpoints', save_every=cfg.get('save_every', 0) or save_every,
      keep_last=cfg.get('keep_last', 1), keep_best=cfg.get('keep_best', 0),
      best_metric=cfg.get('best_metric') or None, best_mode=cfg.get('best_mode', 'max'),
      manifest={'config': json.loads(config.to_json_best_effort()), 'kind': kind,
                'finetune': list(build.transform(config.get('finetune')).spec)},
      # Checkpoints of a different model, objective or kind of run never mix with these;
      # its compute dtype, layers and remat may change (a float32 run resumed in bfloat16),
      # not the scanned layout of its parameters.
      run_identity={'kind': kind, 'model': {k: v for k, v in config.model.to_dict().items()
                                            if k not in config_lib.MODEL_SWITCHES},
                    'objective': config.objective.name,
                    **({'scan_layers': True} if config.model.get('scan_layers') else {})})


class _TrainWindow:
  """Training metrics since the last log line, and the throughput over them."""

  def __init__(self):
    self.metrics, self.examples, self.start = [], 0, time.perf_counter()

  def add(self, metrics: dict, examples: int) -> None:
    self.metrics.append(metrics)
    self.examples += examples

  def flush(self, unbatch: Callable[[dict], dict]) -> dict[str, float]:
    host = [jax.device_get(unbatch(m)) for m in self.metrics]
    means = {k: float(np.mean([m[k] for m in host])) for k in host[0] if k != 'model_state'}
    means['examples_per_sec'] = self.examples / max(time.perf_counter() - self.start, 1e-9)
    self.__init__()
    return means


def train(config: Config, workdir: paths.PathLike, *, kind: str = 'pretrain',
          progress: bool = True) -> dict[str, Any]:
  """Trains as `config` says, in `workdir`; resumes from its latest checkpoint.

  Args:
    config: a run config (see `configs/`).
    workdir: where checkpoints, `metrics.jsonl`, TensorBoard events go.
    kind: 'pretrain' or 'finetune', recorded in the manifests.
    progress: show a progress bar with loss and examples/s.

  Returns:
    A summary: steps, best validation metrics and step, wall time.
  """
  start_time = time.time()
  config_lib.check_values(config)
  workdir = paths.checkpoint_path(workdir)  # Refused before anything is written if need be.
  workdir.mkdir(parents=True, exist_ok=True)
  config, tokenizer = with_tokenizer(config, workdir)
  train_src, val_src = run_splits(config, tokenizer)
  _check_labels(config, train_src, val_src)
  decay = ema_decay(config)
  objective = build.objective(config.objective, config.get('augment'), tokenizer=tokenizer,
                              teacher=_teacher(config), mix_cfg=config.get('mix'),
                              num_classes=config.model.get('num_classes'),
                              axis_name=axis_name(config))
  # Augmentation and mixing act in training only; SimCLR's evaluation views need it too.
  eval_objective = build.objective(config.objective, config.get('augment'), tokenizer=tokenizer,
                                   teacher=_teacher(config), axis_name=axis_name(config))
  build.model(config.model)  # A bad model section fails here, before the checkpoints exist.
  cfg_t = config.train
  batch_size = config.data.batch_size
  steps_per_epoch = len(train_src) // batch_size
  if steps_per_epoch == 0:
    raise build.ConfigError(f'data.batch_size={batch_size} exceeds the {len(train_src)} '
                            'training examples; lower it.')
  total = cfg_t.get('steps', 0) or cfg_t.epochs * steps_per_epoch
  eval_every = cfg_t.get('eval_every_steps', 0) or steps_per_epoch
  if not (workdir / 'checkpoints').is_dir():  # A resumed run reads its own checkpoint instead.
    _check_pretrained(config.get('finetune'))
  ckpt = _checkpointer(config, workdir, kind, save_every=eval_every)
  resuming = ckpt.latest_step() is not None
  if resuming:
    _check_average_kept(ckpt, decay)
  # When resuming, the run's own checkpoint replaces any pre-trained weights.
  ft_cfg = _without_pretrained(config) if resuming else config.get('finetune')
  loader = data_lib.train_loader(train_src, batch_size=batch_size, seed=config.seed)
  example = data_lib.load_split(data_lib.subset(train_src, np.arange(batch_size)))
  state = initial_state(config, ft_cfg, total, example)
  counts = {'trainable_params': tree_lib.size(state.params),
            'frozen_params': tree_lib.size(state.frozen)}
  logging.info('%s: %d trainable and %d frozen parameters', workdir.name,
               counts['trainable_params'], counts['frozen_params'])
  if resuming:
    state, data_state = ckpt.restore(state)
    loader.set_state(data_state)
    logging.info('resuming %s from step %d', workdir, int(state.step))
  engine = make_engine(config.parallel.mode, objective, eval_objective, state,
                       sharding=sharding_options(config),
                       grad_accum=cfg_t.get('grad_accum', 1), clip=cfg_t.get('clip') or None,
                       ema_decay=decay)
  placed = engine.place_state(state)
  log = MetricsLog(workdir)
  step = int(state.step)
  bar = tqdm.tqdm(total=total, initial=step, disable=not progress, dynamic_ncols=True,
                  desc=f'{kind} {workdir.name}')
  window = _TrainWindow()
  while step < total:
    placed, metrics = engine.train_step(placed, engine.place_batch(next(loader)))
    step += 1
    window.add(metrics, batch_size)
    bar.update(1)
    at_eval = step % eval_every == 0 or step == total
    if step % cfg_t.get('log_every', 50) == 0 or at_eval:
      means = window.flush(engine.unbatch_metrics) | {'epoch': step / steps_per_epoch}
      log.write(step, 'train', means)
      bar.set_postfix(loss=f"{means['loss']:.4f}", ex_s=f"{means['examples_per_sec']:.0f}")
    if at_eval:
      val = {}
      if val_src is not None:
        val = _evaluate(engine, placed,
                        data_lib.eval_batches(val_src, batch_size=config.data.eval_batch_size))
        log.write(step, 'validation', val)
      ckpt.save(engine.host_state(placed), data_state=loader.get_state(), metrics=val,
                force=step == total)
      window = _TrainWindow()  # Throughput counts training steps only.
  bar.close()
  ckpt.wait()
  log.close()
  summary = {'workdir': str(workdir), 'steps': total, 'steps_per_epoch': steps_per_epoch,
             **counts,
             'best_step': ckpt.best_step(), 'wall_time_s': time.time() - start_time}
  if ckpt.best_metric and summary['best_step'] is not None:
    summary['best_validation'] = ckpt.read_manifest(summary['best_step'])['metrics']
  ckpt.close()
  return summary


def _per_token_totals(objective: Objective) -> Objective:
  """Makes an objective that counts `tokens` report each batch's totals per real example.

  Such an objective's metrics are means over predicted tokens, but an eval step
  averages its metrics over real examples (rows), in every parallel mode.
  Scaled by tokens / rows, a batch's average times its rows is the batch's
  exact total, so the split's totals over its tokens are exact per-token means
  (`_per_token_means`). Objectives without `tokens` are returned unchanged.
  """

  def wrapped(apply_fn, params, batch, rng, *, model_state=None, train=True):
    loss, out = objective(apply_fn, params, batch, rng, model_state=model_state, train=train)
    if 'tokens' not in out:
      return loss, out
    per_row = out['tokens'] / jnp.maximum(jnp.sum(example_weights(batch)), 1.0)
    scaled = {k: v if k == 'model_state' else v * per_row for k, v in out.items()}
    return loss * per_row, {**scaled, 'tokens': per_row}

  return wrapped


def _per_token_means(result: dict[str, float]) -> dict[str, float]:
  """Per-token means, the split's `tokens` and `perplexity`, from `_per_token_totals` metrics."""
  rows = result['examples']
  tokens = result['tokens'] * rows
  means = {k: v * rows / max(tokens, 1.0) for k, v in result.items()
           if k not in ('tokens', 'examples')}
  # Each batch's tokens come back as a float32 product; the split's count is a whole number.
  return {**means, 'perplexity': perplexity(means['loss']), 'tokens': float(round(tokens)),
          'examples': rows}


def split_outputs(engine: Engine, placed_state: Any, batches: Iterable[dict], *,
                  output_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
  """One model output and the labels of every real example of a split, in order."""
  values, labels = [], []
  for batch in batches:
    outputs, placed = jax.device_get(engine.predict(placed_state, engine.place_batch(batch)))
    real = np.asarray(placed['mask']) > 0
    values.append(np.asarray(outputs[output_key])[real])
    labels.append(np.asarray(placed[label_key])[real])
  return np.concatenate(values), np.concatenate(labels)


def _split_macro_f1(engine: Engine, placed_state: Any, batches: Iterable[dict], *,
                    label_key: str, logits_key: str) -> float:
  """Macro-F1 of a whole split, from every example's prediction (not a mean over batches)."""
  logits, labels = split_outputs(engine, placed_state, batches, output_key=logits_key,
                                 label_key=label_key)
  return macro_f1(logits=logits, labels=labels)


def restore_model(config: Config, workdir: paths.PathLike, *,
                  step: checkpoint.StepSpec = 'best') -> tuple[nn.Module, Any, Any]:
  """A run's model, the parameters of one of its checkpoints, and its tokenizer.

  For inference outside the loop, e.g. `generate.generate(model, params, ...)`.

  Args:
    config: the run's config.
    workdir: the run's work directory.
    step: checkpoint to read: an int, 'latest' or 'best' (by validation metric).

  Returns:
    `(model, params, tokenizer)`; the model is sized to the tokenizer's
    vocabulary, and the tokenizer is None for runs without text data.
  """
  config, tokenizer = with_tokenizer(config, paths.as_path(workdir))
  return build.model(config.model), checkpoint.restore_params(workdir, step=step), tokenizer


def evaluate(config: Config, workdir: paths.PathLike, *, split: str,
             step: checkpoint.StepSpec = 'best') -> dict[str, float]:
  """Scores a run's checkpoint on a split with the run's objective (no augmentation).

  Args:
    config: the run's config.
    workdir: the run's work directory.
    split: split of `config.data.name` to score, e.g. 'test'.
    step: checkpoint to score: an int, 'latest' or 'best' (by validation metric).

  Returns:
    Mean metrics over the split's examples, and `examples`. A classification
    run adds `macro_f1` over the whole split. A language model (an objective
    counting `tokens`) gives means per predicted token instead, each batch
    weighted by its tokens: `loss` is the split's exact mean negative
    log-likelihood, with its `perplexity` and the split's `tokens`.
  """
  return evaluate_splits(config, workdir, [split], step=step)[split]


def evaluate_splits(config: Config, workdir: paths.PathLike, splits: Sequence[str], *,
                    step: checkpoint.StepSpec = 'best') -> dict[str, dict[str, float]]:
  """`evaluate` on several splits, restoring and compiling once: split → its metrics."""
  ft_cfg = _without_pretrained(config)
  config, tokenizer = with_tokenizer(config, paths.as_path(workdir))
  sources = {split: split_source(config.data, split, tokenizer) for split in splits}
  first = next(iter(sources.values()))
  example = data_lib.load_split(data_lib.subset(first, np.arange(config.data.eval_batch_size)))
  objective = _per_token_totals(build.objective(config.objective, config.get('augment'),
                                                tokenizer=tokenizer, teacher=_teacher(config),
                                                axis_name=axis_name(config)))
  state = initial_state(config, ft_cfg, 1, example)
  with checkpoint.open_checkpoints(workdir) as ckpt:
    kept = ckpt.has(ema.PATH, step)
    if ema.KEY in state.extra and not kept:
      raise build.ConfigError(
          f'the checkpoint in {ckpt.directory} was saved without an average of the weights, '
          f'and this config sets train.ema_decay={ema_decay(config)}: evaluate it with '
          'train.ema_decay=0.')
    # Without train.ema_decay, a run that kept an average is scored on its raw parameters.
    raw = ema.KEY not in state.extra and kept
    state, _ = ckpt.restore(ema.init(state) if raw else state, step=step)
  if raw:
    state = state.replace(extra={k: v for k, v in state.extra.items() if k != ema.KEY})
  engine = make_engine(config.parallel.mode, objective, objective, state,
                       sharding=sharding_options(config))
  placed = engine.place_state(state)
  results = {}
  for split, source in sources.items():
    batches = data_lib.eval_batches(source, batch_size=config.data.eval_batch_size)
    result = _evaluate(engine, placed, batches)
    if 'tokens' in result:
      result = _per_token_means(result)
    if config.objective.name == 'classification':
      result['macro_f1'] = _split_macro_f1(
          engine, placed, batches, label_key=config.objective.get('label_key', 'label'),
          logits_key=config.objective.get('logits_key', 'logits'))
    results[split] = result
  return results
