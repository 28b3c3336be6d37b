"""The main job: pre-train on 60,000 unlabelled Fashion-MNIST images, fine-tune on 600 labels.

Compares the fine-tuned classifier with the same classifier trained from scratch
on the same 600 labels (each with its own learning-rate grid, chosen on the
validation split), on the 10,000 test images. The pre-training predicts
rotations; `:simclr` pre-trains the same encoder by SimCLR for 8,000 steps
instead (about an hour here, against five minutes). `:tiny` and
`:simclr_tiny` for tests.
"""

import pathlib

import ml_collections

from jaxpretrain.config import import_file
from jaxpretrain.errors import ConfigError

VARIANTS = ('tiny', 'simclr', 'simclr_tiny')


def _load(name, variant):
  return import_file(pathlib.Path(__file__).with_name(name)).get_config(variant)


def _simclr(variant):
  """SimCLR pre-training of the recipe's conv encoder, twice the SimCLR config's steps."""
  c = _load('fashion_mnist_simclr.py', 'conv_tiny' if variant == 'tiny' else 'conv')
  if variant != 'tiny':
    c.train.steps = 8000
    c.optimizer.warmup_steps = 200
  return c


def get_config(variant=None):
  if variant and variant not in VARIANTS:
    raise ConfigError(f'fashion_mnist_recipe.py has no variant {variant!r}; its variants are '
                      f'{", ".join(":" + v for v in VARIANTS)}, or none for the main job')
  simclr = (variant or '').startswith('simclr')
  variant = 'tiny' if variant in ('tiny', 'simclr_tiny') else None
  c = ml_collections.ConfigDict()
  c.title = 'Fashion-MNIST: pre-training on unlabelled images, fine-tuning on 1% of labels'
  c.description = (f'{"SimCLR" if simclr else "Rotation-prediction"} pre-training on the 60,000 '
                   'training images without labels, then fine-tuning on 600 labelled ones, '
                   'against the same classifier trained from scratch.')
  c.units = 'images'  # What a test example is, in the report's words.
  c.shared = 'architecture, augmentation and optimizer'  # What both classifiers have in common.
  c.test_split = 'test'
  c.pretrain = _simclr(variant) if simclr else _load('fashion_mnist_pretrain.py', variant)
  c.finetune = _load('fashion_mnist_finetune.py', variant)
  # Linear probe first (LP-FT): the head is fitted on frozen features, then all is fine-tuned.
  c.probe = dict(epochs=30, lr=1e-2, weight_decay=1e-3)
  c.finetune_lrs = (1e-4, 3e-4)
  c.scratch_lrs = (1e-3, 3e-3)
  if variant == 'tiny':
    c.test_split = 'test[:64]'
    c.finetune_lrs = (3e-4,)
    c.scratch_lrs = (1e-3,)
    c.probe.epochs = 2
  return c
