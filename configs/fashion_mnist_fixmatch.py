"""FixMatch on Fashion-MNIST: the 600 labels and the 59,880 other training images together.

Each batch holds about one labelled image in eight (`data.unlabelled_ratio=7`):
the labelled ones learn their label from a weakly augmented view (shifts and
flips), the unlabelled ones the model's own confident prediction on a weak view,
from a strongly augmented one (`fixmatch_strong`: flip and shift, two
RandAugment ops, Cutout). The same 48 labelled images per class to train on
and 12 to choose the epoch as `fashion_mnist_finetune.py`. Set
`finetune.pretrained` to start from a pre-trained encoder; leave it empty to
start from scratch. `:tiny` for tests.
"""

import pathlib

from jaxpretrain.config import import_file

_HERE = pathlib.Path(__file__).parent
common = import_file(_HERE / 'fashion_mnist_common.py')
finetune = import_file(_HERE / 'fashion_mnist_finetune.py')


def get_config(variant=None):
  c = finetune.get_config(variant)
  c.data.unlabelled_ratio = 7
  c.data.batch_size = 8 * 48
  c.objective = dict(name='fixmatch', threshold=0.95, unlabelled_weight=1.0,
                     strong_augment=dict(name='fixmatch_strong'))
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 50
  c.train.epochs = 14
  c.train.eval_every_steps = 100
  c.train.log_every = 50
  if common.is_tiny(variant):
    c.data.train_split = 'train[:256]'
    c.data.unlabelled_ratio = 3
    c.data.batch_size = 16
    c.train.epochs = 1
    c.train.eval_every_steps = 0
    c.optimizer.warmup_steps = 1
  return c
