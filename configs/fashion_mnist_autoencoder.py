"""Denoising-autoencoder pre-training of a Fashion-MNIST encoder on its 60,000 unlabelled images.

Each augmented image is corrupted (Gaussian noise, a quarter of its pixels set
to zero) and a decoder rebuilds the clean image from the encoder's feature map,
scored by mean squared error: an MLP at each of the map's locations predicts
its block of pixels (`PixelShuffleDecoder`, many times cheaper to train on a CPU
than transposed convolutions). The encoder family is the
variant's (`fashion_mnist_common.py`): the conv net by default, `:resnet`,
`:vit` (its patch tokens on their 7x7 grid are the map), and `_tiny` sizes for tests.
"""

import pathlib

from jaxpretrain.config import import_file, run_config

common = import_file(pathlib.Path(__file__).with_name('fashion_mnist_common.py'))


def get_config(variant=None):
  tiny = common.is_tiny(variant)
  c = run_config()
  c.model = dict(name='autoencoder', encoder=common.encoder(variant),
                 decoder=dict(name='pixel_shuffle', hidden=8 if tiny else 256, out_channels=1,
                              out_size=28))
  c.objective = dict(name='denoising', noise_std=0.3, drop_prob=0.25)
  c.augment = dict(name='standard', max_shift=2, flip=True)
  return common.pretrain_schedule(c, variant, steps=2000, lr=1.5e-3, warmup_steps=100,
                                  weight_decay=0.05)
