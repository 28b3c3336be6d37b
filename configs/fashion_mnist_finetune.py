"""A classifier on 600 labelled Fashion-MNIST images (1%), fine-tuned or from scratch.

Set `finetune.pretrained` to a pre-training work directory to graft its encoder
(the head starts afresh and learns 10x faster); leave it empty to train the same
classifier from scratch. 60 labelled images per class: 48 to train on, 12 held
out to choose the epoch. `:tiny` for tests.
"""

import pathlib

from jaxpretrain.config import import_file, run_config

common = import_file(pathlib.Path(__file__).with_name('fashion_mnist_common.py'))


def get_config(variant=None):
  c = run_config()
  c.data.labelled_per_class = 48
  c.data.validation_per_class = 12
  c.data.batch_size = 48
  c.data.eval_batch_size = 120
  c.model.encoder = common.encoder(variant)
  c.augment = dict(name='standard', max_shift=2, flip=True)
  c.optimizer.lr = 3e-4
  c.optimizer.warmup_steps = 20
  c.train.epochs = 60
  c.train.log_every = 10
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = 'accuracy'
  c.finetune.new_head = 'head/.*'
  c.finetune.lr_multipliers = (('head/.*', 10.0),)
  if common.is_tiny(variant):
    c.data.labelled_per_class = 4
    c.data.validation_per_class = 2
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.optimizer.warmup_steps = 1
    c.train.epochs = 2
    c.train.log_every = 2
  return c
