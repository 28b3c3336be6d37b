"""RandAugment: every output is one of its listed ops; the ops themselves; FixMatch's strong view."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpretrain.data import augment
from jaxpretrain.data import rand_augment as ra
from tests.helpers import run_augment


def _candidates(image, m):
  """Every image one RandAugment op at magnitude `m` can make, written from the module's table."""
  out = [image, ra.autocontrast(image), ra.equalize(image),
         ra.solarize(image, np.float32(1.0) - np.float32(m)), ra.posterize(image, 8 - round(4 * m))]
  for s in (m, -m):
    factor = 1.0 + 0.9 * s
    out += [augment.adjust_brightness(image, factor), augment.adjust_contrast(image, factor),
            ra.sharpen(image, factor),
            augment.rotate(image, 30.0 * s),
            augment.affine_transform(image, [[1.0, 0.0], [0.3 * s, 1.0]]),
            augment.affine_transform(image, [[1.0, 0.3 * s], [0.0, 1.0]]),
            augment.affine_transform(image, np.eye(2), (0.0, -0.3 * s * image.shape[1])),
            augment.affine_transform(image, np.eye(2), (-0.3 * s * image.shape[0], 0.0))]
    if image.shape[-1] == 3:
      out.append(augment.adjust_saturation(image, factor))
  return np.stack([np.asarray(c) for c in out])


def test_each_image_gets_one_listed_op_and_all_ops_are_drawn(gray, rgb):
  for images in (gray, rgb):
    image = images[1]
    batch = np.repeat(image[None], 96, axis=0)
    out = run_augment(ra.rand_augment(num_ops=1, magnitude=0.8), batch)
    candidates = _candidates(image, 0.8)
    # How much of every output differs from every candidate: each output is one of
    # them. A few values may not match where a sampling point falls exactly on a
    # pixel, which the compiled resampling can round to the neighbouring row.
    differs = (np.abs(out[:, None] - candidates[None]) > 1e-4).mean(axis=(2, 3, 4))
    assert differs.min(axis=1).max() < 0.01
    assert len(set(differs.argmin(axis=1))) >= 0.8 * len(candidates)


def test_shapes_ranges_determinism_and_keys(gray, rgb):
  for aug in (ra.rand_augment(), ra.rand_augment(num_ops=3, magnitude=1.0, fill='edge'),
              ra.fixmatch_strong()):
    for images in (gray, rgb):
      out = run_augment(aug, images)
      assert out.shape == images.shape and out.dtype == np.float32
      assert out.min() >= 0.0 and out.max() <= 1.0
      np.testing.assert_array_equal(out, run_augment(aug, images))
      assert not np.allclose(out, run_augment(aug, images, seed=1))


def test_no_ops_or_zero_strength_is_identity(gray, rgb):
  for images in (gray, rgb):
    np.testing.assert_array_equal(run_augment(ra.rand_augment(num_ops=0), images), images)
    strong = ra.fixmatch_strong(num_ops=0, max_shift=0, erase_prob=0.0)
    flipped = run_augment(strong, images)
    for image, out in zip(images, flipped):
      assert np.array_equal(out, image) or np.array_equal(out, image[:, ::-1])
    image = images[0]  # 8-bit values, as loaded
    for same in (ra.solarize(image, 1.0), ra.posterize(image, 8), ra.sharpen(image, 1.0),
                 augment.affine_transform(image, np.eye(2))):
      np.testing.assert_allclose(same, image, atol=1e-6)
    # Magnitude 0 leaves only autocontrast and equalize able to change an image.
    candidates = _candidates(image, 0.0)
    changed = [i for i, c in enumerate(candidates) if not np.allclose(c, image, atol=1e-6)]
    assert 2 in changed and set(changed) <= {1, 2}


def test_colour_ops_on_known_values():
  ramp = jnp.linspace(0.2, 0.6, 16).reshape(4, 4, 1)
  stretched = np.asarray(ra.autocontrast(ramp))
  assert stretched.min() == 0.0 and np.isclose(stretched.max(), 1.0)
  np.testing.assert_array_equal(ra.autocontrast(jnp.full((3, 3, 1), 0.4)), np.float32(0.4))
  # Two levels, a quarter dark: equalised to 0 and 1. A ramp stays in order and spans [0, 1].
  two = jnp.where(jnp.arange(16).reshape(4, 4, 1) < 4, 0.1, 0.3)
  np.testing.assert_allclose(ra.equalize(two), jnp.where(two > 0.2, 1.0, 0.0))
  equalised = np.asarray(ra.equalize(ramp)).ravel()
  assert np.all(np.diff(equalised) > 0) and equalised[0] == 0.0 and equalised[-1] == 1.0
  np.testing.assert_allclose(ra.solarize(jnp.array([0.2, 0.7, 1.0]), 0.5), [0.2, 0.3, 0.0])
  np.testing.assert_allclose(ra.posterize(jnp.array([0.2, 0.7, 1.0]), 1),
                             [0.0, 128 / 255, 128 / 255])
  sharp = np.asarray(ra.sharpen(ramp, 2.0))
  assert 0.0 <= sharp.min() and sharp.max() <= 1.0


def test_shear_and_translate_move_content():
  line = np.zeros((9, 9, 1), np.float32)
  line[:, 4] = 1.0  # a vertical line
  sheared = np.asarray(augment.affine_transform(line, [[1.0, 0.0], [0.5, 1.0]]))
  # Input column = x + 0.5 y: the top row reads from 2 columns left, the bottom from 2 right.
  assert sheared[0, 6, 0] == 1.0 and sheared[8, 2, 0] == 1.0 and sheared[4, 4, 0] == 1.0
  moved = np.asarray(augment.affine_transform(line, np.eye(2), (0.0, -2.0)))
  np.testing.assert_array_equal(moved[:, 6], 1.0)
  assert moved.sum() == 9.0


def test_refuses_bad_settings():
  with pytest.raises(ValueError, match='num_ops'):
    ra.rand_augment(num_ops=-1)
  with pytest.raises(ValueError, match='magnitude'):
    ra.rand_augment(magnitude=1.5)
  with pytest.raises(ValueError, match='unknown fill'):
    ra.rand_augment(fill='wrap')
