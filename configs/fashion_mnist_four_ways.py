"""One pre-trained encoder, fine-tuned four ways, at 1% and 10% of Fashion-MNIST's labels.

The ways are overrides of `fashion_mnist_finetune.py` (the same classifier,
augmentation and validation-chosen epoch); each starts from the pre-training
run of `fashion_mnist_pretrain.py`. A from-scratch row gives the baseline.
`:tiny` for tests.
"""

import pathlib

import ml_collections

from jaxpretrain.config import import_file


def _load(name, variant):
  return import_file(pathlib.Path(__file__).with_name(name)).get_config(variant)


def get_config(variant=None):
  c = ml_collections.ConfigDict()
  c.test_split = 'test'
  c.pretrain = _load('fashion_mnist_pretrain.py', variant)
  c.finetune = _load('fashion_mnist_finetune.py', variant)
  # (run folder, name, overrides of the fine-tuning config); the head always starts afresh.
  c.ways = (
      ('linear_probe', 'linear probe', ('finetune.linear_probe=True', 'finetune.lr_multipliers=()',
                                        'optimizer.lr=0.01', 'optimizer.weight_decay=0.001')),
      ('full', 'full fine-tune', ()),
      ('lora', 'LoRA, rank 8 (+ new head)', ('finetune.lora.rank=8', 'finetune.lora.alpha=16.0',
                                             'optimizer.lr=0.001')),
      ('layerwise_decay', 'full, layer-wise LR decay 0.5', ('finetune.layerwise_lr_decay=0.5',
                                                            'finetune.lr_multipliers=()',
                                                            'optimizer.lr=0.001')),
  )
  c.scratch = ('scratch', 'from scratch (baseline)', ('optimizer.lr=0.001',))
  # (label budget, overrides): labels per class (train, validation) and the schedule.
  c.budgets = (
      ('1%', ('data.labelled_per_class=48', 'data.validation_per_class=12')),
      ('10%', ('data.labelled_per_class=480', 'data.validation_per_class=120',
               'data.batch_size=96', 'train.epochs=20')),
  )
  if variant == 'tiny':
    c.test_split = 'test[:64]'
    c.budgets = (('1%', ()),)
  return c
