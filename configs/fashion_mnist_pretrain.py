"""Self-supervised pre-training of a convolutional encoder on the 60,000 Fashion-MNIST images.

Labels are never read. Variants: `:tiny` for tests.
"""

from jaxpretrain.config import run_config


def get_config(variant=None):
  c = run_config()
  c.data.batch_size = 256
  c.model.name = 'conv_autoencoder'
  c.model.decoder = dict(widths=(64, 32), out_channels=1, out_size=28)
  c.objective = dict(name='denoising', noise_std=0.3, drop_prob=0.25)
  c.optimizer.lr = 2e-3
  c.train.epochs = 3
  c.checkpoint.keep_last = 1
  if variant == 'tiny':
    c.model.encoder.widths = (4, 8)
    c.model.encoder.convs_per_stage = 1
    c.model.decoder.widths = (4,)
    c.data.batch_size = 16
    c.train.steps = 6
    c.train.eval_every_steps = 3
    c.train.log_every = 2
  return c
