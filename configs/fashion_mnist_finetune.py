"""Fine-tuning a classifier on 600 labelled Fashion-MNIST images (1%).

Set `finetune.pretrained` to a pre-training work directory; leave it empty to
train the same classifier from scratch. 60 labelled images per class: 48 train,
12 held out for choosing the best epoch. Variants: `:tiny` for tests.
"""

from jaxpretrain.config import run_config


def get_config(variant=None):
  c = run_config()
  c.data.labelled_per_class = 48
  c.data.validation_per_class = 12
  c.data.batch_size = 32
  c.data.eval_batch_size = 120
  c.model.dropout = 0.2
  c.augment = dict(name='standard', max_shift=2, flip=True)
  c.optimizer.lr = 1e-3
  c.train.epochs = 40
  c.checkpoint.keep_best = 1
  c.checkpoint.best_metric = 'accuracy'
  if variant == 'tiny':
    c.model.encoder.widths = (4, 8)
    c.model.encoder.convs_per_stage = 1
    c.data.labelled_per_class = 4
    c.data.validation_per_class = 2
    c.data.batch_size = 8
    c.data.eval_batch_size = 8
    c.train.epochs = 2
    c.train.log_every = 2
  return c
