"""Self-distillation of a Fashion-MNIST classifier on the unlabelled training images.

The third stage of SimCLRv2 (Chen et al., 2020): a classifier fine-tuned on
the 1% of labelled images (the teacher, frozen) labels the other 59,880
training images with its predicted probabilities, and a student of the same
architecture, started from the teacher, learns them (soft cross-entropy at
temperature 1; no label is read in training). The same 120 validation images as
the teacher's choose the student's epoch.

Name the teacher, a `fashion_mnist_finetune` work directory, in
`finetune.teacher` and `finetune.pretrained`. `:tiny` for tests.
"""

import pathlib

from jaxpretrain.config import import_file

_HERE = pathlib.Path(__file__).parent
common = import_file(_HERE / 'fashion_mnist_common.py')
finetune = import_file(_HERE / 'fashion_mnist_finetune.py')


def get_config(variant=None):
  c = finetune.get_config(variant)
  c.data.unlabelled = True
  c.data.batch_size = 256
  c.objective = dict(name='distillation', task='classification', temperature=1.0, alpha=1.0)
  c.optimizer.lr = 3e-4
  c.optimizer.warmup_steps = 50
  c.train.epochs = 5
  c.train.log_every = 50
  # The student starts as the teacher, head included, and is distilled from its best epoch.
  c.finetune.teacher = ''
  c.finetune.teacher_step = 'best'
  c.finetune.select = '.*'
  c.finetune.step = 'best'
  c.finetune.new_head = ''
  c.finetune.lr_multipliers = ()
  if common.is_tiny(variant):
    c.data.batch_size = 16
    c.train.epochs = 1
    c.optimizer.warmup_steps = 1
    c.data.train_split = 'train[:256]'
  return c
