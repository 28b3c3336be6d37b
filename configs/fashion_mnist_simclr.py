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
  c.model = dict(name='contrastive', encoder=common.encoder(variant),
                 projection=dict(projection_hidden=256, projection_dim=64))
  if common.is_tiny(variant):
    c.model.projection = dict(projection_hidden=8, projection_dim=4)
  c.objective = dict(name='simclr', temperature=0.5)
  c.augment = dict(name='simclr', scale=(0.3, 1.0), strength=0.5, grayscale_prob=0.0,
                   blur_prob=0.0)
  return common.pretrain_schedule(c, variant, steps=2000, lr=2e-3, warmup_steps=100,
                                  weight_decay=1e-4)
