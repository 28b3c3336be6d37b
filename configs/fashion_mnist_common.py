"""The encoder shared by the Fashion-MNIST configs (imported by path by the others)."""

FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def encoder(variant=None):
  """Space-to-depth stem, 32 channels at 14x14, 64 and 128 at 7x7, flattened."""
  if variant == 'tiny':
    stages = ((4,), (8,))
  else:
    stages = ((32,), (64, 128))
  return dict(stages=stages, norm='group', stem='space_to_depth', downsample='avg',
              pool='flatten', features=0, input_mean=FASHION_MNIST_MEAN,
              input_std=FASHION_MNIST_STD)
