"""Masked-autoencoder pre-training of a ViT on Fashion-MNIST's 60,000 unlabelled images.

Each 28x28 image is 49 patches of 4x4 pixels; 75% are masked, the ViT encoder
(`fashion_mnist_common.py`'s `vit`) sees the 12 visible ones and a two-block
decoder predicts the normalised pixels of the masked ones. `:tiny` for tests.
"""

import pathlib

from jaxpretrain.config import import_file, run_config

common = import_file(pathlib.Path(__file__).with_name('fashion_mnist_common.py'))


def get_config(variant=None):
  tiny = common.is_tiny(variant)
  c = run_config()
  c.model = dict(name='mae', encoder=common.encoder('vit_tiny' if tiny else 'vit'),
                 decoder=dict(decoder_hidden=8 if tiny else 64,
                              decoder_depth=1 if tiny else 2,
                              decoder_heads=2 if tiny else 4))
  c.objective = dict(name='masked_image_modeling', patch_size=4, mask_ratio=0.75,
                     norm_pix_loss=True)
  c.augment = dict(name='standard', max_shift=2, flip=True)
  return common.pretrain_schedule(c, variant, steps=2000, lr=1.5e-3, warmup_steps=100,
                                  weight_decay=0.05)
