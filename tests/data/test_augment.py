"""Augmentations: shapes, value ranges, determinism, identity at zero strength."""

import jax
import numpy as np
import pytest

from jaxpretrain.data import augment
from tests.helpers import run_augment

IMAGES = np.random.default_rng(0).uniform(size=(6, 8, 8, 1)).astype(np.float32)
KEY = jax.random.PRNGKey(3)


def test_shapes_ranges_and_determinism():
  aug = augment.compose(augment.random_translate(2), augment.random_flip_left_right(),
                        augment.random_erase(prob=1.0, max_size=3))
  a = augment.apply_to_batch(aug, IMAGES, KEY)
  b = augment.apply_to_batch(aug, IMAGES, KEY)
  assert a.shape == IMAGES.shape and a.dtype == IMAGES.dtype
  assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, augment.apply_to_batch(aug, IMAGES, jax.random.PRNGKey(4)))


def test_zero_strength_is_identity():
  aug = augment.compose(augment.random_translate(0), augment.random_flip_left_right(0.0),
                        augment.random_erase(prob=0.0))
  np.testing.assert_array_equal(augment.apply_to_batch(aug, IMAGES, KEY), IMAGES)


def test_translation_moves_content_and_fills_zeros():
  image = np.zeros((5, 5, 1), np.float32)
  image[2, 2] = 1.0
  out = np.asarray(augment.random_translate(1)(image, KEY))
  assert out.sum() == 1.0 and abs(np.argwhere(out)[0][:2] - 2).max() <= 1


def test_flip_mirrors_columns():
  np.testing.assert_array_equal(augment.random_flip_left_right(1.0)(IMAGES[0], KEY),
                                IMAGES[0][:, ::-1])


def test_full_scale_resized_crop_and_zero_jitter_are_identity():
  crop = augment.random_resized_crop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(augment.apply_to_batch(crop, IMAGES, KEY), IMAGES, atol=1e-5)
  still = augment.brightness_contrast(brightness=0.0, contrast=0.0)
  np.testing.assert_allclose(augment.apply_to_batch(still, IMAGES, KEY), IMAGES, atol=1e-6)


def test_resized_crop_zooms_in():
  image = np.zeros((16, 16, 1), np.float32)
  image[6:10, 6:10] = 1.0
  crop = augment.random_resized_crop(scale=(0.25, 0.25), ratio=(1.0, 1.0))
  out = np.asarray(crop(image, KEY))
  assert out.shape == image.shape and out.sum() > image.sum()  # the square got bigger


def test_jitter_changes_contrast_but_keeps_shape():
  out = augment.brightness_contrast(0.1, 0.5)(IMAGES[0], KEY)
  assert out.shape == IMAGES[0].shape and not np.allclose(out, IMAGES[0])


def test_resized_crop_fused_flip_mirrors():
  crop = augment.random_resized_crop(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_prob=1.0)
  np.testing.assert_allclose(crop(IMAGES[0], KEY), IMAGES[0][:, ::-1], atol=1e-5)


# The deterministic ops, jitted: run eagerly, each of their many primitives would compile alone.
rotate = jax.jit(augment.rotate, static_argnames='fill')
blur = jax.jit(augment.blur, static_argnames='kernel_size')
adjust_brightness = jax.jit(augment.adjust_brightness)
adjust_contrast = jax.jit(augment.adjust_contrast)
adjust_saturation = jax.jit(augment.adjust_saturation)
adjust_hue = jax.jit(augment.adjust_hue)
to_grayscale = jax.jit(augment.to_grayscale)
SIMCLR = augment.simclr()
RANDOM_AUGMENTS = {
    'rotation_zero_fill': augment.random_rotation(30.0),
    'rotation_edge_fill': augment.random_rotation(30.0, fill='edge'),
    'flip_up_down': augment.random_flip_up_down(),
    'brightness': augment.brightness(0.5),
    'contrast': augment.contrast(0.5),
    'saturation': augment.saturation(0.8),
    'hue': augment.hue(0.3),
    'color_jitter': augment.color_jitter(0.4, 0.4, 0.4, 0.1, prob=0.8),
    'color_jitter_fixed_order': augment.color_jitter(0.4, 0.4, 0.4, 0.1, random_order=False),
    'grayscale': augment.random_grayscale(0.5),
    'gaussian_blur': augment.gaussian_blur((0.3, 1.5), prob=0.7),
    'random_apply': augment.random_apply(augment.random_rotation(20.0), 0.5),
    'simclr': SIMCLR,
}


@pytest.mark.parametrize('name', RANDOM_AUGMENTS)
def test_jitted_vmapped_shape_dtype_range_and_keys(name, rgb):
  aug = RANDOM_AUGMENTS[name]
  out = run_augment(aug, rgb)
  assert out.shape == rgb.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out, run_augment(aug, rgb))  # same key, same images
  assert not np.allclose(out, run_augment(aug, rgb, seed=1))  # another key, other images
  assert not np.allclose(out, rgb)


def test_zero_strength_is_identity_on_real_images(rgb, gray):
  identities = [
      augment.random_rotation(0.0), augment.brightness(0.0), augment.contrast(0.0),
      augment.saturation(0.0), augment.hue(0.0), augment.color_jitter(0.0, 0.0, 0.0, 0.0),
      augment.color_jitter(0.5, 0.5, 0.5, 0.2, prob=0.0), augment.random_grayscale(0.0),
      augment.gaussian_blur((0.0, 0.0), kernel_size=5, prob=1.0),
      augment.gaussian_blur((0.5, 2.0), prob=0.0),
      augment.random_apply(augment.random_flip_up_down(1.0), 0.0),
      augment.random_flip_up_down(0.0)]
  for images in (rgb, gray):
    for aug in identities:
      np.testing.assert_array_equal(run_augment(aug, images), images)
    # The deterministic ops at zero strength, through the arithmetic rather than a shortcut.
    image = images[0]
    np.testing.assert_allclose(rotate(image, 0.0), image, atol=1e-6)
    np.testing.assert_array_equal(blur(image, 0.0, 7), image)
    for adjust in (adjust_brightness, adjust_contrast, adjust_saturation):
      np.testing.assert_allclose(adjust(image, 1.0), image, atol=1e-6)
    np.testing.assert_allclose(adjust_hue(image, 0.0), image, atol=1e-6)


def test_grayscale_has_equal_channels_and_luma_weights(rgb, gray):
  out = run_augment(augment.random_grayscale(1.0), rgb)
  assert out.shape == rgb.shape
  np.testing.assert_array_equal(out[..., 0], out[..., 1])
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  np.testing.assert_allclose(out[..., 0], rgb @ np.array([0.299, 0.587, 0.114]), atol=1e-6)
  primaries = np.eye(3, dtype=np.float32)[:, None, :]  # red, green, blue pixels
  np.testing.assert_allclose(to_grayscale(primaries)[:, 0, 0], [0.299, 0.587, 0.114],
                             atol=1e-7)
  # One channel is already gray: grayscale, saturation and hue leave it alone.
  for aug in (augment.random_grayscale(1.0), augment.saturation(0.9), augment.hue(0.5)):
    np.testing.assert_array_equal(run_augment(aug, gray), gray)
  with pytest.raises(ValueError, match='1 or 3 channels'):
    adjust_saturation(np.zeros((4, 4, 2), np.float32), 0.5)


def test_hue_turns_around_the_colour_wheel(rgb):
  image = rgb[2]  # a corner of the flag: red, white and blue
  for turn in (1.0, -1.0, 2.0):
    np.testing.assert_allclose(adjust_hue(image, turn), image, atol=1e-5)
  shifted = np.asarray(adjust_hue(image, 0.25))
  assert np.abs(shifted - image).mean() > 0.02
  # A rotation of the chroma plane keeps luma wherever clipping did not step in.
  unclipped = np.all((shifted > 0) & (shifted < 1), axis=-1)
  assert unclipped.mean() > 0.3
  luma = np.array([0.299, 0.587, 0.114])
  np.testing.assert_allclose((shifted @ luma)[unclipped], (image @ luma)[unclipped], atol=1e-5)
  # Grays have no hue.
  grayed = np.asarray(to_grayscale(image))
  np.testing.assert_allclose(adjust_hue(grayed, 0.3), grayed, atol=1e-6)


def test_colour_adjustments_at_their_extremes(rgb):
  image = rgb[0]
  np.testing.assert_allclose(adjust_saturation(image, 0.0), to_grayscale(image),
                             atol=1e-6)
  flat = np.asarray(adjust_contrast(image, 0.0))
  np.testing.assert_allclose(flat, np.full_like(image, (image @ [0.299, 0.587, 0.114]).mean()),
                             atol=1e-6)
  np.testing.assert_array_equal(adjust_brightness(image, 0.0), np.zeros_like(image))
  np.testing.assert_allclose(adjust_brightness(image, 2.0), np.minimum(2 * image, 1.0),
                             atol=1e-6)
  vivid = np.asarray(adjust_saturation(image, 2.0))
  assert vivid.min() >= 0.0 and vivid.max() <= 1.0 and vivid.std(-1).mean() > image.std(-1).mean()


def test_rotation_matches_quarter_turns_and_fills(gray):
  image = gray[0]
  np.testing.assert_allclose(rotate(image, 90.0), np.rot90(image), atol=1e-5)
  np.testing.assert_allclose(rotate(image, 180.0), image[::-1, ::-1], atol=1e-5)
  np.testing.assert_allclose(rotate(image, 360.0), image, atol=1e-5)
  ones = np.ones((9, 9, 1), np.float32)
  zero_fill = np.asarray(rotate(ones, 45.0))
  assert zero_fill[0, 0, 0] == 0.0 and zero_fill[4, 4, 0] == 1.0  # corners came from outside
  np.testing.assert_allclose(rotate(ones, 45.0, fill='edge'), ones, atol=1e-6)
  with pytest.raises(ValueError, match='unknown fill'):
    augment.random_rotation(10.0, fill='wrap')


def test_flip_up_down_mirrors_rows(gray):
  np.testing.assert_array_equal(augment.random_flip_up_down(1.0)(gray[0], KEY), gray[0][::-1])


def test_blur_is_the_2d_gaussian_convolution(rgb):
  image, sigma, size = rgb[1], 1.2, 7
  taps = np.exp(-0.5 * (np.arange(size) - size // 2) ** 2 / sigma ** 2)
  kernel = np.outer(taps, taps) / taps.sum() ** 2
  padded = np.pad(image, ((3, 3), (3, 3), (0, 0)), mode='edge')
  expected = np.zeros_like(image)
  for dy in range(size):
    for dx in range(size):
      expected += kernel[dy, dx] * padded[dy:dy + 32, dx:dx + 32]
  blurred = np.asarray(blur(image, sigma, size))
  np.testing.assert_allclose(blurred, expected, atol=1e-5)
  # Smoother: smaller differences between neighbours; the borders are not darkened.
  assert np.abs(np.diff(blurred, axis=0)).mean() < 0.7 * np.abs(np.diff(image, axis=0)).mean()
  np.testing.assert_allclose(blur(np.full((8, 8, 3), 0.7, np.float32), 2.0, 9), 0.7,
                             atol=1e-6)
  with pytest.raises(ValueError, match='odd'):
    augment.gaussian_blur((0.1, 1.0), kernel_size=4)


def test_normalize_and_resize(rgb, gray):
  mean, std = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)
  normalized = np.asarray(augment.normalize(mean, std)(rgb[0], KEY))
  np.testing.assert_allclose(normalized, (rgb[0] - mean) / std, rtol=1e-5, atol=1e-5)
  assert normalized.dtype == np.float32
  up = np.asarray(augment.resize(56, 56, 'nearest')(gray[0], KEY))
  np.testing.assert_array_equal(up, gray[0].repeat(2, axis=0).repeat(2, axis=1))
  np.testing.assert_allclose(augment.resize(28, 28)(gray[0], KEY), gray[0], atol=1e-6)
  for method in ('bilinear', 'bicubic', 'lanczos3'):
    small = run_augment(augment.resize(12, 20, method), rgb)
    assert small.shape == (8, 12, 20, 3) and small.dtype == np.float32
    assert small.min() >= 0.0 and small.max() <= 1.0
  with pytest.raises(ValueError, match='unknown resize method'):
    augment.resize(8, 8, 'area')


def test_random_apply_applies_with_its_probability(gray):
  flip = augment.random_flip_up_down(1.0)
  np.testing.assert_array_equal(augment.random_apply(flip, 1.0)(gray[0], KEY), gray[0][::-1])
  flipped = run_augment(augment.random_apply(flip, 0.5), gray)
  is_flipped = [np.array_equal(f, g[::-1]) for f, g in zip(flipped, gray)]
  is_same = [np.array_equal(f, g) for f, g in zip(flipped, gray)]
  assert all(a or b for a, b in zip(is_flipped, is_same)) and any(is_flipped) and any(is_same)


def test_simclr_views(rgb, gray):
  for images in (rgb, gray):
    first, second = run_augment(SIMCLR, images, seed=0), run_augment(SIMCLR, images, seed=1)
    assert first.shape == images.shape and first.dtype == np.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    assert not np.allclose(first, second) and not np.allclose(first, images)
  # About a fifth of the views are gray (equal channels), as SimCLR's grayscale probability.
  many = np.concatenate([run_augment(SIMCLR, rgb, seed) for seed in range(2, 10)])
  gray_share = np.mean(np.all(np.ptp(many, axis=-1) < 1e-6, axis=(1, 2)))
  assert 0.05 < gray_share < 0.4
