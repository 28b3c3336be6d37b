"""From config sections to library objects, through explicit name → factory dicts."""

from collections.abc import Callable, Mapping
import dataclasses
import inspect
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import optax

from jaxpretrain import checkpoint, convert, finetune, paths
from jaxpretrain.data import augment as augment_lib
from jaxpretrain.data import rand_augment
from jaxpretrain.data import tokenizers
from jaxpretrain.errors import ConfigError
from jaxpretrain.models import (INCEPTION_PRESETS, PRESETS, RESNET_PRESETS, VGG_PRESETS,
                                VIT_PRESETS, Autoencoder, BertForMaskedLM, Classifier,
                                ContrastiveModel, ConvDecoder, ConvEncoder, GPTForCausalLM,
                                MaskedAutoencoder, PixelShuffleDecoder, PretextClassifier,
                                SequenceClassifier, TransformerConfig, inception, make_apply_fn,
                                resnet, set_fields, vgg, vit)
from jaxpretrain.models.layers import layer_set
from jaxpretrain.models.memory import check_remat
from jaxpretrain.models.transformer import check_fields as check_transformer_fields
from jaxpretrain import objectives
from jaxpretrain.objectives import mixing

Config = ml_collections.ConfigDict


def _pick(registry: Mapping[str, Callable], name: str, what: str) -> Callable:
  if name not in registry:
    raise ConfigError(f'unknown {what} {name!r}; choose one of {sorted(registry)}')
  return registry[name]


def _kwargs(section: Config, *skip: str) -> dict[str, Any]:
  return {k: v for k, v in section.to_dict().items() if k not in ('name', *skip)}


def _call(factory: Callable, section: str, kwargs: Mapping[str, Any], **given: Any) -> Any:
  """`factory(**kwargs, **given)`; a key of `kwargs` it does not take is a ConfigError.

  `section` is where the keys come from in the run config, e.g. 'objective'.
  """
  params = inspect.signature(factory).parameters
  if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
      valid = sorted(k for k, p in params.items()
                     if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
                     and k not in given and k not in ('parent', 'name'))
      raise ConfigError(f'unknown config key {", ".join(f"{section}.{k}" for k in unknown)} '
                        f'for {getattr(factory, "__name__", section)}; valid keys: '
                        f'{", ".join(valid) or "none"}')
  return factory(**kwargs, **given)


# Image encoders by `model.encoder.name`; the families with presets take `preset` and
# any of their fields as overrides, e.g. dict(name='resnet', preset='resnet18', stem='small').
_PRESET_ENCODERS: dict[str, Callable[..., nn.Module]] = {
    'resnet': resnet, 'vgg': vgg, 'inception': inception, 'vit': vit,
}
_ENCODER_PRESETS = {'resnet': RESNET_PRESETS, 'vgg': VGG_PRESETS, 'inception': INCEPTION_PRESETS,
                    'vit': VIT_PRESETS}


def _encoder(cfg: Config) -> nn.Module:
  """The image encoder of a `model.encoder` section (`name` 'conv' when it has none)."""
  fields = cfg.to_dict()
  name = fields.pop('name', 'conv')
  if name == 'conv':
    return _call(ConvEncoder, 'model.encoder', fields)
  family = _pick(_PRESET_ENCODERS, name, 'encoder')
  if 'preset' not in fields:
    raise ConfigError(f'the {name} encoder needs a preset: set model.encoder.preset to one of '
                      f'{sorted(_ENCODER_PRESETS[name])}')
  return family(fields.pop('preset'), **fields)


def _transformer(cfg: Config) -> TransformerConfig:
  """A preset of `models.PRESETS` with the section's other keys replacing its fields.

  Keys set to None keep the preset's value (see `config.transformer_section`).
  """
  fields = {k: v for k, v in cfg.to_dict().items() if v is not None}
  preset = fields.pop('preset')
  if preset not in PRESETS:
    raise ConfigError(f'unknown transformer preset {preset!r}; choose one of {sorted(PRESETS)}')
  check_transformer_fields(fields)
  return dataclasses.replace(PRESETS[preset], **fields)


_DECODERS: dict[str, Callable[..., nn.Module]] = {
    'conv': ConvDecoder, 'pixel_shuffle': PixelShuffleDecoder,
}


def _autoencoder(cfg: Config) -> nn.Module:
  """An image encoder and a decoder of its `feature_map` (`decoder.name`, 'conv' by default)."""
  fields = cfg.decoder.to_dict()
  decoder = _pick(_DECODERS, fields.pop('name', 'conv'), 'decoder')
  return Autoencoder(_encoder(cfg.encoder), _call(decoder, 'model.decoder', fields))


MODELS: dict[str, Callable[[Config], nn.Module]] = {
    'conv_classifier': lambda c: Classifier(_encoder(c.encoder), c.num_classes,
                                            c.get('dropout', 0.0)),
    'conv_autoencoder': _autoencoder,
    'conv_pretext': lambda c: PretextClassifier(_encoder(c.encoder), **_kwargs(c.pretext_head)),
    # Any image encoder of `_encoder`: the names above predate the other families.
    'classifier': lambda c: Classifier(_encoder(c.encoder), c.num_classes, c.get('dropout', 0.0)),
    'autoencoder': _autoencoder,
    'contrastive': lambda c: ContrastiveModel(_encoder(c.encoder), **_kwargs(c.projection)),
    'mae': lambda c: MaskedAutoencoder(_encoder(c.encoder), **_kwargs(c.decoder)),
    'bert_mlm': lambda c: BertForMaskedLM(_transformer(c.transformer)),
    'gpt_clm': lambda c: GPTForCausalLM(_transformer(c.transformer)),
    'text_classifier': lambda c: SequenceClassifier(
        _transformer(c.transformer), c.num_classes, pooling=c.get('pooling') or None,
        dropout=c.get('dropout') or None),
}

# Distillation: what the student learns, and the teacher models that predict it.
TASKS: dict[str, Callable[..., objectives.TokenTask]] = {'masked_lm': objectives.mlm_task}
_TEACHER_MODELS: dict[str, tuple[type[nn.Module], ...]] = {
    'masked_lm': (BertForMaskedLM,), 'classification': (Classifier, SequenceClassifier)}
_TEACHER_HINTS = {
    'masked_lm': ("set --config.finetune.teacher to a masked-LM run's work directory (e.g. of "
                  "configs/shakespeare_bert_mlm.py) or a Hugging Face *ForMaskedLM directory, "
                  "and --config.data.tokenizer.path to it too"),
    'classification': ("set --config.finetune.teacher to a classifier's work directory (e.g. "
                       "of configs/fashion_mnist_finetune.py) with the same classes"),
}


def _teacher_model(source: str, hint: str) -> nn.Module:
  """The teacher's model, as its run's checkpoint manifest or its `config.json` describes it."""
  if convert.is_hf_directory(source):  # Its weights are read again by with_teacher.
    return convert.load_hf(source)[0]
  try:
    manifest = checkpoint.read_manifest(source)
  except FileNotFoundError as e:
    raise ConfigError(f'teacher {source!r} is neither a run with checkpoints nor a Hugging Face '
                      f'model directory ({e}); {hint}') from e
  return model(Config(manifest['config']['model']))


def check_position_encoding(model_cfg: Config, source: str) -> None:
  """Refuses to start a Transformer from weights trained with another position encoding.

  Its layers would read word order they never learned (an ALiBi model has no
  position table; a learned table would be dropped or left random), which
  `from_pretrained` cannot see from the parameter names alone.
  """
  if not source or 'transformer' not in model_cfg:
    return
  ours = model_cfg.transformer.get('position_encoding', 'learned')
  if convert.is_hf_directory(source):
    theirs = 'learned'  # BERT, RoBERTa, DistilBERT and GPT-2 all learn a position table.
  else:
    try:
      theirs = (checkpoint.read_manifest(source)['config']['model'].get('transformer', {})
                .get('position_encoding', 'learned'))
    except FileNotFoundError:
      return  # from_pretrained says what is missing.
  if theirs != ours:
    raise ConfigError(f'finetune.pretrained={source!r} was trained with position_encoding='
                      f'{theirs!r}, but this model has {ours!r}; set '
                      f'--config.model.transformer.position_encoding={theirs}')


def _check_vocabulary(source: str, teacher: nn.Module, tokenizer: Any) -> None:
  """The student's tokenizer must be the teacher's: the soft loss compares the same token ids."""
  theirs, ours = teacher.config.vocab_size, tokenizer.get_vocab_size()
  same = theirs == ours
  saved = paths.as_path(source) / tokenizers.FILENAME
  if same and saved.is_file():  # Equal sizes: compare the tokens too, where the teacher has them.
    same = tokenizers.load(saved).get_vocab() == tokenizer.get_vocab()
  if not same:
    raise ConfigError(f"teacher {source!r} predicts another vocabulary than this run's tokenizer "
                      f"({theirs} and {ours} token ids); distil with the teacher's tokenizer: "
                      f'--config.data.tokenizer.path={source}')


def _distillation(*, task: str, teacher: str = '', temperature: float = 2.0, alpha: float = 0.5,
                  tokenizer: Any = None, augment: augment_lib.Augment | None = None,
                  **task_kwargs: Any) -> objectives.Objective:
  """Distillation of `task` from the teacher model found at `teacher`.

  'classification' distils a classifier (`objectives.classifier_distillation`);
  a token task (`TASKS`) a language model (`objectives.distillation`).
  """
  kinds = _pick(_TEACHER_MODELS, task, 'distillation task')
  hint = _TEACHER_HINTS[task]
  if not teacher:
    raise ConfigError(f'the distillation objective has no teacher: {hint}.')
  module = _teacher_model(teacher, hint)
  if not isinstance(module, kinds):
    raise ConfigError(f'teacher {teacher!r} is a {type(module).__name__}, which does not predict '
                      f'the {task} task; {hint}.')
  if tokenizer is not None:
    _check_vocabulary(teacher, module, tokenizer)
  if task == 'classification':
    return _call(objectives.classifier_distillation, 'objective', task_kwargs,
                 teacher_apply_fn=make_apply_fn(module), augment=augment,
                 temperature=temperature, alpha=alpha)
  if augment is not None:
    raise ConfigError(f'the run augments images, but distilling the {task} task reads tokens: '
                      "set --config.augment.name=none")
  token_task = _call(TASKS[task], 'objective', task_kwargs, **token_kwargs(task, tokenizer))
  return objectives.distillation(token_task, make_apply_fn(module), temperature=temperature,
                                 alpha=alpha)


OBJECTIVES: dict[str, Callable[..., objectives.Objective]] = {
    'classification': objectives.classification,
    'denoising': objectives.denoising,
    'rotation_prediction': objectives.rotation_prediction,
    'masked_lm': objectives.masked_lm,
    'causal_lm': objectives.causal_lm,
    'distillation': _distillation,
    'simclr': objectives.simclr,
    'masked_image_modeling': objectives.masked_image_modeling,
    'fixmatch': objectives.fixmatch,
}


def _takes(builder: Callable[..., objectives.Objective], name: str) -> bool:
  """Whether an objective's builder has a parameter `name`."""
  return name in inspect.signature(builder).parameters


def token_kwargs(name: str, tokenizer: Any) -> dict[str, Any]:
  """What an objective needs to know of the run's tokenizer (masked LM: its special ids)."""
  if name == 'distillation':  # For its task's ids, and to check the teacher's vocabulary.
    return {'tokenizer': tokenizer}
  if name != 'masked_lm':
    return {}
  if tokenizer is None:
    raise ConfigError('the masked_lm objective needs a text dataset with a tokenizer')
  ids = tokenizers.special_ids(tokenizer)
  if 'mask' not in ids:
    raise ConfigError(f'masked_lm needs a tokenizer with a mask token; this one has {ids}: '
                      "use data.tokenizer.kind='wordpiece'")
  return dict(mask_id=ids['mask'], vocab_size=tokenizer.get_vocab_size(),
              special_ids=sorted(ids.values()))

AUGMENTS: dict[str, Callable[..., augment_lib.Augment]] = {
    'standard': augment_lib.standard,
    'crop_flip_jitter': augment_lib.crop_flip_jitter,
    'simclr': augment_lib.simclr,
    'color_jitter': augment_lib.color_jitter,
    'rand_augment': rand_augment.rand_augment,
    'fixmatch_strong': rand_augment.fixmatch_strong,
}

MIXES: dict[str, Callable[[Config], mixing.Mix]] = {
    'mixup': lambda c: mixing.mixup(c.get('mixup_alpha', 0.2)),
    'cutmix': lambda c: mixing.cutmix(c.get('cutmix_alpha', 1.0)),
    'mixup_or_cutmix': lambda c: mixing.either(mixing.mixup(c.get('mixup_alpha', 0.2)),
                                               mixing.cutmix(c.get('cutmix_alpha', 1.0)),
                                               c.get('prob', 0.5)),
}


# Compute dtypes by `model.dtype`. Parameters and optimizer state stay float32 in each;
# logits, losses and normalisation statistics are float32 too.
DTYPES: dict[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16,
                          'float16': jnp.float16}


def compute_dtype(cfg: Config) -> Any:
  """The JAX dtype a model section's `dtype` names ('float32' where it has none)."""
  return _pick(DTYPES, cfg.get('dtype', 'float32'), 'model.dtype')


def model(cfg: Config) -> nn.Module:
  """The model named by `cfg.name`, computing in `cfg.dtype` with the layers `cfg.layers`.

  Both apply to every part of the model that has the field (encoder,
  decoder, heads, Transformer config); `layers` ('fast' or 'flax', see
  `models.layers.LAYER_SETS`) only changes the Transformer families. So do
  `remat` (Transformer, ViT and ResNet blocks) and `scan_layers` (Transformer
  and ViT), see `models.memory`.
  """
  layers = cfg.get('layers', 'fast')
  layer_set(layers)
  module = set_fields(_pick(MODELS, cfg.name, 'model')(cfg), dtype=compute_dtype(cfg),
                      layers=layers)
  check_remat(cfg.get('remat', 'none'))
  # The memory levers change only the families that have them, and only when asked for,
  # so that an encoder section's own `remat` stands.
  for key, off in (('remat', 'none'), ('scan_layers', False)):
    if (value := cfg.get(key, off)) != off:
      changed = set_fields(module, **{key: value})
      if changed is module:
        raise ConfigError(f'model {cfg.name!r} has no blocks that model.{key} applies to '
                          f'(Transformer, ViT, and for remat ResNet); unset '
                          f'--config.model.{key}')
      module = changed
  return module


def _augment(cfg: Config | None, section: str = 'augment') -> augment_lib.Augment | None:
  if cfg is None or cfg.get('name', 'none') == 'none':
    return None
  return _call(_pick(AUGMENTS, cfg.name, 'augmentation'), section, _kwargs(cfg))


def objective(cfg: Config, augment_cfg: Config | None = None, *, tokenizer: Any = None,
              teacher: str = '', mix_cfg: Config | None = None,
              num_classes: int | None = None,
              axis_name: str | None = None) -> objectives.Objective:
  """The objective named by `cfg.name`, with training augmentation if `augment_cfg.name`.

  Args:
    cfg: the run config's `objective` section.
    augment_cfg: its `augment` section: each training image is augmented before
      any mixing; evaluation sees the images unchanged. SimCLR makes its two
      views with it, in evaluation too (from a fixed key).
    tokenizer: the run's tokenizer, for text objectives.
    teacher: the distillation objective's teacher (a run's work directory or a
      Hugging Face directory: the run config's `finetune.teacher`).
    mix_cfg: the `mix` section (mixup, cutmix), for training a classifier.
    num_classes: the classifier's classes, for mixing.
    axis_name: the pmap axis the step runs over, or None; given to the
      objectives that work across devices (SimCLR's negatives, MAE's masks).
  """
  extra = {'teacher': teacher} if cfg.name == 'distillation' else {}
  if 'strong_augment' in cfg:
    extra['strong_augment'] = _augment(cfg.strong_augment, 'objective.strong_augment')
  builder = _pick(OBJECTIVES, cfg.name, 'objective')
  aug = _augment(augment_cfg)
  # An objective that takes `augment` makes its own views of each image (SimCLR's two,
  # FixMatch's weak one, a classifier distillation's student's): the run's augmentation is
  # its, not applied to the batch beforehand.
  if _takes(builder, 'augment'):
    extra['augment'] = aug
    aug = None
  if axis_name is not None and _takes(builder, 'axis_name'):
    extra['axis_name'] = axis_name
  obj = _call(builder, 'objective', _kwargs(cfg, *extra), **extra,
              **token_kwargs(cfg.name, tokenizer))
  if mix_cfg is not None and mix_cfg.get('name', 'none') != 'none':
    if cfg.name != 'classification' or not num_classes:
      raise ConfigError(f'mix {mix_cfg.name!r} blends the targets of a classifier: it needs '
                        "objective.name='classification' and model.num_classes; set "
                        "mix.name='none' for this run")
    obj = mixing.with_mixing(obj, _pick(MIXES, mix_cfg.name, 'mix')(mix_cfg), num_classes)
  if aug is not None:
    obj = objectives.with_augmentation(obj, aug)
  return obj


def learning_rate(cfg: Config, total_steps: int) -> optax.Schedule:
  """Warm-up then cosine decay (or constant) learning rate."""
  warmup = int(cfg.get('warmup_steps', 0))
  if cfg.get('schedule', 'cosine') == 'constant':
    decay = optax.constant_schedule(cfg.lr)
  elif cfg.get('schedule', 'cosine') == 'cosine':
    decay = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1))
  else:
    raise ConfigError(f"unknown schedule {cfg.schedule!r}; choose 'cosine' or 'constant'")
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


OPTIMIZERS: dict[str, Callable[[optax.Schedule, Config], optax.GradientTransformation]] = {
    'adamw': lambda lr, c: optax.adamw(lr, weight_decay=c.get('weight_decay', 0.0)),
    'sgd': lambda lr, c: optax.sgd(lr, momentum=c.get('momentum', 0.9), nesterov=True),
}


def optimizer(cfg: Config, total_steps: int) -> optax.GradientTransformation:
  """The optimizer named by `cfg.name` with its learning-rate schedule."""
  return _pick(OPTIMIZERS, cfg.name, 'optimizer')(learning_rate(cfg, total_steps), cfg)


def _step(value: str | int) -> str | int:
  return int(value) if isinstance(value, str) and value.isdigit() else value


def transform(cfg: Config | None, learning_rate: optax.Schedule | None = None
              ) -> finetune.Transform:
  """The fine-tuning chain described by a `finetune` config section (identity if none).

  The parts apply in a fixed order: weights (pretrained, new_head, reinit,
  lora), a frozen distillation teacher (teacher, teacher_step), what trains
  (freeze, linear_probe, bitfit), penalties (weight_decay, l2sp), gradual
  unfreezing, then per-parameter rates. Unset keys add nothing.

  Args:
    cfg: the `finetune` section of a run config.
    learning_rate: the optimizer's schedule, which `weight_decay` scales by.
  """
  if cfg is None:
    return finetune.identity()
  head = cfg.get('head', 'head/.*') or None
  parts = []
  if cfg.get('pretrained'):
    parts.append(finetune.from_pretrained(
        cfg.pretrained, select=cfg.get('select', '.*'),
        rename=[tuple(r) for r in cfg.get('rename', ())], strict=cfg.get('strict', False),
        step=_step(cfg.get('step', 'latest')), reshape=[tuple(r) for r in cfg.get('reshape', ())]))
  if cfg.get('new_head'):
    parts.append(finetune.new_head(cfg.new_head))
  if cfg.get('reinit'):
    parts.append(finetune.reinit(cfg.reinit))
  lora = cfg.get('lora')
  if lora is not None and lora.get('rank', 0):
    parts.append(finetune.lora(lora.rank, lora.get('alpha') or None, targets=lora.targets,
                               dropout=lora.get('dropout', 0.0), head=head,
                               stacked=cfg.get('stacked') or None))
  if cfg.get('teacher'):  # After the student's weights, so that none of those touch it.
    parts.append(finetune.with_teacher(cfg.teacher, step=_step(cfg.get('teacher_step', 'best'))))
  if cfg.get('freeze'):
    parts.append(finetune.freeze(cfg.freeze))
  if cfg.get('linear_probe'):
    parts.append(finetune.linear_probe(head or '$^'))
  if cfg.get('bitfit'):
    parts.append(finetune.bitfit(head))
  if cfg.get('weight_decay'):
    parts.append(finetune.weight_decay(cfg.weight_decay, learning_rate=learning_rate,
                                       mask=cfg.get('weight_decay_mask') or None))
  if cfg.get('l2sp'):
    parts.append(finetune.l2sp(cfg.l2sp))
  if cfg.get('unfreeze_schedule'):
    parts.append(finetune.unfreeze_schedule([tuple(e) for e in cfg.unfreeze_schedule]))
  if cfg.get('lr_multipliers'):
    parts.append(finetune.lr_multipliers([tuple(r) for r in cfg.lr_multipliers]))
  if cfg.get('layerwise_lr_decay'):
    parts.append(finetune.layerwise_lr_decay(cfg.layerwise_lr_decay, head=head or '$^',
                                             stacked=cfg.get('stacked') or None))
  return finetune.chain(*parts)
