"""Scratch against three pre-trainings of one encoder, by linear probe and fine-tuning.

The table of `benchmarks/fashion_mnist_transfer.py`: a denoising autoencoder,
SimCLR and a masked autoencoder (MAE), each pre-trained for the same number of
steps on the 60,000 unlabelled images, then evaluated at 1% and 10% of the
labels by a linear probe on frozen features and by full fine-tuning; the same
classifier from random initialisation is the baseline under both protocols.
The variant names the encoder family (`fashion_mnist_common.py`): the ViT by
default, since MAE needs one; `:vit_tiny` for tests.
"""

import pathlib

import ml_collections

from jaxpretrain.config import import_file

_HERE = pathlib.Path(__file__).parent
common = import_file(_HERE / 'fashion_mnist_common.py')


def _load(name, variant):
  return import_file(_HERE / name).get_config(variant)


def get_config(variant=None):
  variant = variant or 'vit'
  tiny = common.is_tiny(variant)
  c = ml_collections.ConfigDict()
  c.test_split = 'test[:64]' if tiny else 'test'
  # (run folder, name, pre-training config): each reads the same encoder section.
  c.pretrainings = (
      ('autoencoder', 'denoising autoencoder', _load('fashion_mnist_autoencoder.py', variant)),
      ('simclr', 'SimCLR', _load('fashion_mnist_simclr.py', variant)),
      ('mae', 'MAE', _load('fashion_mnist_mae.py', variant)),
  )
  # The compute budget: every pre-training runs these steps of 256 images.
  c.pretrain_steps = 4 if tiny else 600
  c.finetune = _load('fashion_mnist_finetune.py', variant)
  c.protocols = ('linear_probe', 'finetune')
  # Fine-tuning learning rates: a pre-trained encoder keeps its features at a lower one.
  c.scratch_lr = 1e-3
  c.pretrained_lr = 3e-4
  # (label budget, overrides of the fine-tuning config), as `fashion_mnist_four_ways.py`.
  c.budgets = (
      ('1%', ('data.labelled_per_class=48', 'data.validation_per_class=12')),
      ('10%', ('data.labelled_per_class=480', 'data.validation_per_class=120',
               'data.batch_size=96', 'train.epochs=20')),
  )
  if tiny:
    c.budgets = (('1%', ()),)
  return c
