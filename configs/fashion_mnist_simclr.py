"""SimCLR pre-training of a Fashion-MNIST encoder on its 60,000 unlabelled training images.

Two augmented views of every image (resized crop, flip, brightness and
contrast; colour and hue do nothing to grey images), NT-Xent over the batch's
2 × 256 views at temperature 0.5. The encoder family is the variant's
(`fashion_mnist_common.py`): ResNet by default here, `:conv`, `:vit`, and
`_tiny` sizes for tests (`:tiny` is the tiny ResNet).
"""

import pathlib

from jaxpretrain.config import import_file, run_config

common = import_file(pathlib.Path(__file__).with_name('fashion_mnist_common.py'))


def get_config(variant=None):
  if variant in (None, '', 'tiny'):
    variant = 'resnet' + ('_tiny' if variant == 'tiny' else '')
  c = run_config()
  c.data.batch_size = 256
  c.model = dict(name='contrastive', encoder=common.encoder(variant),
                 projection=dict(projection_hidden=256, projection_dim=64))
  c.objective = dict(name='simclr', temperature=0.5)
  c.augment = dict(name='simclr', scale=(0.3, 1.0), strength=0.5, grayscale_prob=0.0,
                   blur_prob=0.0)
  c.optimizer.lr = 2e-3
  c.optimizer.weight_decay = 1e-4
  c.optimizer.warmup_steps = 100
  c.train.steps = 2000
  c.train.eval_every_steps = 500
  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'
  if common.is_tiny(variant):
    c.model.projection = dict(projection_hidden=8, projection_dim=4)
    c.data.batch_size = 16
    c.data.eval_batch_size = 64
    c.optimizer.warmup_steps = 1
    c.train.steps = 4
    c.train.eval_every_steps = 4
    c.train.log_every = 2
  return c
