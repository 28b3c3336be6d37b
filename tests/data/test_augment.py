"""Augmentations: shapes, value ranges, determinism, identity at zero strength."""

import jax
import numpy as np

from jaxpretrain.data import augment

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
