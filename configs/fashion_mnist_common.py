"""The encoders shared by the Fashion-MNIST configs (imported by path by the others).

A config's variant names the encoder family and whether it is the tiny test size:
'' or 'tiny' (the small conv net), 'resnet' or 'resnet_tiny', 'vit' or 'vit_tiny'.
"""

FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
FAMILIES = ('conv', 'resnet', 'vit')


def family(variant=None):
  """The encoder family a variant names ('conv' by default)."""
  name = (variant or '').split('_')[0]
  return name if name in FAMILIES else 'conv'


def is_tiny(variant=None):
  """Whether a variant asks for the tiny test size."""
  return (variant or '').endswith('tiny')


def _conv(tiny):
  """Space-to-depth stem, 32 channels at 14x14, 64 and 128 at 7x7, flattened."""
  stages = ((4,), (8,)) if tiny else ((32,), (64, 128))
  return dict(stages=stages, norm='group', stem='space_to_depth', downsample='avg',
              pool='flatten', features=0, input_mean=FASHION_MNIST_MEAN,
              input_std=FASHION_MNIST_STD)


def _resnet(tiny):
  """ResNet-18's blocks on a 3x3 stem at 28x28, at a quarter of its widths (16 to 128)."""
  return dict(name='resnet', preset='resnet18', stem='small', stem_width=4 if tiny else 16,
              widths=(4, 8, 8, 8) if tiny else (16, 32, 64, 128),
              stage_sizes=(1, 1, 1, 1) if tiny else (2, 2, 2, 2),
              input_mean=FASHION_MNIST_MEAN, input_std=FASHION_MNIST_STD)


def _vit(tiny):
  """A ViT on 4x4 patches (49 of them), 6 blocks of width 128, mean-pooled."""
  size = dict(hidden=16, depth=1, heads=2, mlp_size=32) if tiny else dict(
      hidden=128, depth=6, heads=4, mlp_size=512)
  return dict(name='vit', preset='vit_tiny', image_size=28, patch_size=4, channels=1,
              pooling='mean', layer_norm_eps=1e-6, input_mean=FASHION_MNIST_MEAN,
              input_std=FASHION_MNIST_STD, **size)


def encoder(variant=None):
  """The `model.encoder` section of the variant's family and size."""
  return {'conv': _conv, 'resnet': _resnet, 'vit': _vit}[family(variant)](is_tiny(variant))


def pretrain_schedule(c, variant, *, steps, lr, warmup_steps, weight_decay, eval_every_steps=500):
  """The schedule of a pre-training run on the unlabelled images (tiny: 4 steps of 16)."""
  c.data.batch_size = 256
  c.optimizer.lr = lr
  c.optimizer.weight_decay = weight_decay
  c.optimizer.warmup_steps = warmup_steps
  c.train.steps = steps
  c.train.eval_every_steps = eval_every_steps
  c.checkpoint.best_metric = 'loss'
  c.checkpoint.best_mode = 'min'
  if is_tiny(variant):
    c.data.batch_size = 16
    c.data.eval_batch_size = 64
    c.optimizer.warmup_steps = 1
    c.train.steps = 4
    c.train.eval_every_steps = 4
    c.train.log_every = 2
  return c
