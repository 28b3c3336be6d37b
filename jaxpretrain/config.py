"""Loading Python config files and applying `--config.key=value` overrides."""

import ast
import dataclasses
import difflib
import importlib.util
import pathlib
import re
import types
from collections.abc import Sequence

from jax.sharding import PartitionSpec
import ml_collections

from jaxpretrain import parallel, paths
from jaxpretrain.errors import ConfigError

Config = ml_collections.ConfigDict


def import_file(path: str | pathlib.Path) -> types.ModuleType:
  """Imports a local Python file by path (config files use it to share pieces)."""
  file = pathlib.Path(paths.local(path, 'a config file'))
  module_spec = importlib.util.spec_from_file_location(f'_jaxpretrain_config_{file.stem}', file)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def load(spec: str) -> Config:
  """Loads `path/to/config.py` or `path/to/config.py:variant` (e.g. `:tiny`).

  The file defines `get_config(variant=None)` returning a `ConfigDict`.
  """
  path, _, variant = paths.local(spec, 'a config file').partition(':')
  file = pathlib.Path(path)
  if not file.is_file():
    raise ConfigError(f'config file {path!r} not found; pass e.g. '
                      '--config configs/fashion_mnist_pretrain.py')
  module = import_file(file)
  if not hasattr(module, 'get_config'):
    raise ConfigError(f'{path} defines no get_config()')
  config = module.get_config(variant or None)
  add_model_switches(config)
  config.lock()  # Unknown keys are errors, not silently new fields.
  return config


# Keys of every model section, whatever the family: how the model computes, not what it
# is (`build.model` applies them; checkpoints load into any of their values).
MODEL_SWITCHES = {'dtype': 'float32', 'layers': 'fast', 'remat': 'none', 'scan_layers': False}


def add_model_switches(config: Config) -> None:
  """Adds `MODEL_SWITCHES` to every model section (a `model` with a `name`) lacking them.

  Config files replace the whole section (`c.model = dict(name=...)`); this
  keeps `--config.model.dtype=bfloat16` settable in each, recipes' runs too.
  """
  for key, value in config.items():
    if not isinstance(value, ml_collections.ConfigDict):
      continue
    if key == 'model' and 'name' in value:
      for switch, default in MODEL_SWITCHES.items():
        if switch not in value:
          value[switch] = default
    add_model_switches(value)


def _valid_keys(config: Config, prefix: str = '') -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys += _valid_keys(v, prefix + k + '.')
  return keys


def _parse(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text  # A bare word is a string.


def _as_tuples(value):
  """Lists (nested too) as tuples, the form config files use for shapes and widths."""
  return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def override(config: Config, assignments: Sequence[str]) -> Config:
  """Applies `key.sub=value` assignments; an unknown key is an error listing valid ones."""
  config = config.copy_and_resolve_references()
  for assignment in assignments:
    key, sep, text = assignment.partition('=')
    if not sep:
      raise ConfigError(f'override {assignment!r} needs the form key=value')
    parts = key.split('.')
    leaf = parts[-1]
    node = config
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        valid = _valid_keys(config)
        close = difflib.get_close_matches(key, valid, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise ConfigError(f'unknown config key {key!r}.{hint} Valid keys: {", ".join(valid)}')
      if i < len(parts) - 1:
        node = node[part]
    value = _parse(text)
    old = node[leaf]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
      value = _as_tuples(value)
    try:
      with node.unlocked():
        node[leaf] = value
    except TypeError as e:
      raise ConfigError(f'config key {key!r} holds a {type(old).__name__}, got {text!r}: '
                        f'{e}') from e
  return config


# Fields of `TransformerConfig` that describe the run's computation, not the model: the
# model section's switches (`MODEL_SWITCHES`) set them for every family.
_RUNTIME_FIELDS = ('dtype', 'layers', 'remat', 'scan_layers', 'decode')


def transformer_section(preset: str, **fields) -> Config:
  """A `model.transformer` section: a preset of `models.PRESETS` and any fields to change.

  Every other field of `TransformerConfig` is present as None (the preset's value),
  so `--config.model.transformer.<field>=...` can set any of them from the command line.
  """
  from jaxpretrain.models import transformer  # pylint: disable=g-import-not-at-top
  names = [f.name for f in dataclasses.fields(transformer.TransformerConfig)
           if f.name not in _RUNTIME_FIELDS]
  transformer.check_fields(fields, names)
  return Config({'preset': preset, **{n: fields.get(n) for n in names}})


def run_config() -> Config:
  """Every section a run config has, with defaults; config files fill them in."""
  c = Config()
  c.seed = 0
  c.data = Config(dict(name='fashion_mnist', train_split='train', validation_split='',
                       labelled_per_class=0, validation_per_class=0, subset_seed=0,
                       unlabelled=False, unlabelled_ratio=0, batch_size=256,
                       eval_batch_size=500, data_dir='', in_memory=True))
  c.model = Config(dict(name='conv_classifier', num_classes=10, dropout=0.0,
                        encoder=dict(stages=((32, 32), (64, 64), (128, 128)), norm='batch',
                                     stem='none', downsample='max', pool='mean',
                                     features=0, input_mean=0.0, input_std=1.0),
                        **MODEL_SWITCHES))
  c.objective = Config(dict(name='classification'))
  c.augment = Config(dict(name='none'))
  # Mixup or cutmix of a classifier's training batches (`build.MIXES`).
  c.mix = Config(dict(name='none', mixup_alpha=0.2, cutmix_alpha=1.0, prob=0.5))
  c.optimizer = Config(dict(name='adamw', lr=1e-3, weight_decay=1e-4, schedule='cosine',
                            warmup_steps=0))
  c.train = Config(dict(epochs=1, steps=0, eval_every_steps=0, log_every=50, grad_accum=1,
                        clip=0.0, ema_decay=0.0))
  c.checkpoint = Config(dict(save_every=0, keep_last=1, keep_best=0, best_metric='',
                             best_mode='max'))
  c.finetune = Config(dict(
      pretrained='', select='encoder/.*', rename=(), strict=False, step='latest', reshape=(),
      head='head/.*', new_head='', reinit='',
      lora=dict(rank=0, alpha=0.0, targets='encoder/.*kernel', dropout=0.0),
      freeze='', linear_probe=False, bitfit=False, weight_decay=0.0, weight_decay_mask='',
      l2sp=0.0, unfreeze_schedule=(), lr_multipliers=(), layerwise_lr_decay=0.0, stacked=''))
  # fsdp: shard every state leaf of at least fsdp_min_bytes over the data axis; rules:
  # ((regex, spec), ...) with spec a tuple of mesh axes or None per dimension, e.g.
  # (('.*embedding', ('data', None)),), taking precedence (docs/sharding.md).
  c.parallel = Config(dict(mode='mesh', fsdp=False, fsdp_min_bytes=parallel.FSDP_MIN_BYTES,
                           rules=()))
  return c


def sharding_rules(rules: Sequence) -> list[tuple[str, PartitionSpec]]:
  """A config's `parallel.rules` as `(regex, PartitionSpec)` pairs, each checked.

  Raises:
    ConfigError: naming the first rule that is not `(regex, spec)` with a valid
      regex and a spec of mesh axis names (or None) per dimension.
  """
  out = []
  for rule in rules:
    problem = _rule_problem(rule)
    if problem:
      raise ConfigError(f'parallel.rules: {rule!r} {problem}; write each rule as (regex, spec), '
                        f"e.g. ('.*embedding', ('{parallel.DATA_AXIS}', None))")
    out.append((rule[0], PartitionSpec(*rule[1])))
  return out


def _rule_problem(rule) -> str | None:
  """What is wrong with one sharding rule of a config, or None."""
  if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
    return 'is not a pair of a regex and a spec'
  try:
    re.compile(rule[0])
  except re.error as e:
    return f'has an invalid regex ({e})'
  if not isinstance(rule[1], (tuple, list)):
    return 'has a spec that is not a tuple with one entry per dimension'
  for entry in rule[1]:
    axes = entry if isinstance(entry, (tuple, list)) else (entry,)
    if entry is not None and any(a != parallel.DATA_AXIS for a in axes):
      return (f'names a mesh axis other than {parallel.DATA_AXIS!r} (the run mesh has only '
              f'that one) in {entry!r}; use {parallel.DATA_AXIS!r} or None')
  return None


def check_parallel(cfg: Config) -> None:
  """Refuses a `parallel` section whose sharding its mode cannot do."""
  sharded = cfg.get('fsdp', False) or cfg.get('rules', ())
  mode = cfg.get('mode', 'mesh')
  if sharded and mode != 'mesh':
    what = 'parallel.fsdp=True' if cfg.get('fsdp', False) else 'parallel.rules'
    raise ConfigError(f'{what} shards the state over a mesh, and parallel.mode={mode!r} keeps '
                      "a whole copy on every device; set parallel.mode='mesh'")
  sharding_rules(cfg.get('rules', ()))


# The least value each numeric key of a run config can take; below it a run would
# fail deep inside (a zero batch, `step % log_every`) or quietly do nothing useful
# (negative epochs train no step; keep_last=0 keeps no checkpoint).
_LEAST = {
    'data.batch_size': 1, 'data.eval_batch_size': 1, 'data.labelled_per_class': 0,
    'data.validation_per_class': 0, 'train.steps': 0, 'train.eval_every_steps': 0,
    'train.log_every': 1, 'train.grad_accum': 1, 'train.clip': 0.0,
    'optimizer.weight_decay': 0.0, 'optimizer.warmup_steps': 0, 'checkpoint.save_every': 0,
    'checkpoint.keep_last': 1, 'checkpoint.keep_best': 0, 'parallel.fsdp_min_bytes': 0,
}


def check_values(config: Config) -> None:
  """Refuses numeric keys of a run config outside the range a run can use."""

  def get(key):
    section, name = key.split('.')
    return config.get(section, {}).get(name)

  for key, least in _LEAST.items():
    value = get(key)
    if value is not None and value < least:
      raise ConfigError(f'{key}={value} must be at least {least}; set --config.{key}=...')
  if (lr := get('optimizer.lr')) is not None and lr <= 0:
    raise ConfigError(f'optimizer.lr={lr} must be positive')
  if not get('train.steps') and (get('train.epochs') or 0) < 1:
    raise ConfigError(f'train.epochs={get("train.epochs")} trains no step; set it to at least '
                      '1, or set train.steps')
  check_parallel(config.get('parallel', Config()))
