"""Self-supervised pre-training of the Fashion-MNIST encoder on its 60,000 training images.

Rotation prediction: each augmented image is turned by a random multiple of 90
degrees and the model names the turn. Labels are never read. `:tiny` for tests.
"""

import pathlib

from jaxpretrain.config import import_file, run_config

common = import_file(pathlib.Path(__file__).with_name('fashion_mnist_common.py'))


def get_config(variant=None):
  c = run_config()
  c.data.batch_size = 256
  c.model.name = 'conv_pretext'
  c.model.encoder = common.encoder(variant)
  c.model.pretext_head = dict(hidden=256, num_outputs=4)
  c.objective = dict(name='rotation_prediction')
  c.augment = dict(name='crop_flip_jitter', scale=(0.6, 1.0), brightness=0.14, contrast=0.4)
  c.optimizer.lr = 2e-3
  c.optimizer.warmup_steps = 110
  c.train.steps = 2200
  c.train.eval_every_steps = 550
  if common.is_tiny(variant):
    c.model.pretext_head.hidden = 8
    c.data.batch_size = 16
    c.optimizer.warmup_steps = 1
    c.train.steps = 6
    c.train.eval_every_steps = 3
    c.train.log_every = 2
  return c
