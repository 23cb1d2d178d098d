"""Tests for data_generators.augmentation.extract_patch."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from data_generators.augmentation import AugmentationConfig, _elastic_field, extract_patch

NO_AUG = AugmentationConfig(p_rotation=0, p_scale=0, p_elastic=0, p_mirror=0, p_gamma=0,
                            p_brightness=0, p_contrast=0)
SPATIAL_ONLY = AugmentationConfig(p_rotation=1, p_scale=1, p_elastic=1, p_gamma=0,
                                  p_brightness=0, p_contrast=0)


@pytest.fixture(scope="module")
def volume():
    """Blobby label 0..3 and an image whose channels are functions of it."""
    rng = np.random.default_rng(1)
    smooth = ndimage.gaussian_filter(rng.standard_normal((40, 44, 36)), 3)
    label = np.digitize(smooth, np.quantile(smooth, [0.4, 0.6, 0.8])).astype(np.uint8)
    image = np.stack([label * 10.0, label * 10.0 + 1.0], axis=-1).astype(np.float32)
    return image, label


def test_plain_patch_is_a_slice(volume):
    image, label = volume
    img, lbl = extract_patch(image, label, (20, 21, 18), (8, 10, 6))
    assert img.dtype == np.float32 and lbl.dtype == np.uint8
    assert img.shape == (8, 10, 6, 2) and lbl.shape == (8, 10, 6)
    assert np.array_equal(img, image[16:24, 16:26, 15:21])
    assert np.array_equal(lbl, label[16:24, 16:26, 15:21])
    # a config that draws nothing gives the same patch
    img2, lbl2 = extract_patch(image, label, (20, 21, 18), (8, 10, 6),
                               np.random.default_rng(0), NO_AUG)
    assert np.array_equal(img2, img) and np.array_equal(lbl2, lbl)


def test_padding_at_borders(volume):
    image, label = volume
    img, lbl = extract_patch(image, label + 1, (0, 43, 2), (6, 6, 6))
    # covers x -3..2, y 40..45, z -1..4
    assert np.all(img[:3] == 0) and np.all(lbl[:3] == 0)
    assert np.all(img[:, 4:] == 0) and np.all(lbl[:, 4:] == 0)
    assert np.all(img[:, :, :1] == 0) and np.all(lbl[:, :, :1] == 0)
    assert np.array_equal(img[3:, :4, 1:], image[0:3, 40:44, 0:5])
    assert np.all(lbl[3:, :4, 1:] >= 1)
    far, far_lbl = extract_patch(image, label, (200, 200, 200), (4, 4, 4))
    assert not far.any() and not far_lbl.any()


def test_spatial_transform_keeps_image_and_label_aligned(volume):
    image, label = volume
    for seed in range(4):
        img, lbl = extract_patch(image, label, (20, 22, 18), (24, 24, 24),
                                 np.random.default_rng(seed), SPATIAL_ONLY, order=0)
        assert np.array_equal(img[..., 0], lbl * 10.0)
        assert np.array_equal(img[..., 1][lbl > 0], lbl[lbl > 0] * 10.0 + 1.0)
        plain, _ = extract_patch(image, label, (20, 22, 18), (24, 24, 24))
        assert not np.array_equal(img, plain)  # it did transform


def test_linear_interpolation_mostly_agrees_with_label(volume):
    image, label = volume
    img, lbl = extract_patch(image, label, (20, 22, 18), (24, 24, 24),
                             np.random.default_rng(3), SPATIAL_ONLY, order=1)
    agree = np.mean(np.round(img[..., 0] / 10.0) == lbl)
    assert agree > 0.9


def test_rotation_keeps_centre_and_scale_sets_step():
    ramp = np.broadcast_to(np.arange(64, dtype=np.float32)[:, None, None, None],
                           (64, 64, 64, 1)).copy()
    rotate = AugmentationConfig(p_rotation=1, p_scale=0, p_elastic=0, p_mirror=0, p_gamma=0,
                                p_brightness=0, p_contrast=0)
    img, _ = extract_patch(ramp, None, (30, 32, 31), (9, 9, 9), np.random.default_rng(0), rotate)
    assert img[4, 4, 4, 0] == pytest.approx(30.0, abs=1e-4)
    scale = AugmentationConfig(p_rotation=0, p_scale=1, p_elastic=0, p_mirror=0, p_gamma=0,
                               p_brightness=0, p_contrast=0)
    steps = []
    for seed in range(3):
        img, _ = extract_patch(ramp, None, (30, 32, 31), (9, 9, 9),
                               np.random.default_rng(seed), scale)
        step = np.diff(img[:, 4, 4, 0])
        assert np.allclose(step, step[0], atol=1e-3)  # a uniform zoom along x
        assert 0.75 <= step[0] <= 1.25
        steps.append(step[0])
    assert max(abs(s - 1.0) for s in steps) > 1e-3


def test_mirroring_flips_image_and_label(volume):
    image, label = volume
    mirror = AugmentationConfig(p_rotation=0, p_scale=0, p_elastic=0, p_mirror=1.0,
                                mirror_axes=(0, 2), p_gamma=0, p_brightness=0, p_contrast=0)
    img, lbl = extract_patch(image, label, (20, 22, 18), (8, 9, 10),
                             np.random.default_rng(0), mirror)
    plain, plain_lbl = extract_patch(image, label, (20, 22, 18), (8, 9, 10))
    assert np.array_equal(img, plain[::-1, :, ::-1])
    assert np.array_equal(lbl, plain_lbl[::-1, :, ::-1])


def test_same_seed_same_patch_different_seed_differs(volume):
    image, label = volume
    cfg = AugmentationConfig(p_rotation=1.0)
    a = extract_patch(image, label, (20, 22, 18), (16, 16, 16), np.random.default_rng(7), cfg)
    b = extract_patch(image, label, (20, 22, 18), (16, 16, 16), np.random.default_rng(7), cfg)
    c = extract_patch(image, label, (20, 22, 18), (16, 16, 16), np.random.default_rng(8), cfg)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_intensity_transforms():
    rng = np.random.default_rng(0)
    image = rng.uniform(-2, 3, (10, 10, 10, 3)).astype(np.float32)
    gamma = AugmentationConfig(p_rotation=0, p_scale=0, p_elastic=0, p_mirror=0, p_gamma=1,
                               p_brightness=0, p_contrast=0)
    img, _ = extract_patch(image, None, (5, 5, 5), (10, 10, 10), np.random.default_rng(1), gamma)
    for c in range(3):  # gamma keeps the range and the order of values
        assert img[..., c].min() == pytest.approx(image[..., c].min(), abs=1e-5)
        assert img[..., c].max() == pytest.approx(image[..., c].max(), abs=1e-5)
        flat, ref = img[..., c].ravel(), image[..., c].ravel()
        assert np.array_equal(np.argsort(flat, kind="stable"), np.argsort(ref, kind="stable"))
    assert not np.allclose(img, image)
    bright = AugmentationConfig(p_rotation=0, p_scale=0, p_elastic=0, p_mirror=0, p_gamma=0,
                                p_brightness=1, p_contrast=0)
    img, _ = extract_patch(image, None, (5, 5, 5), (10, 10, 10), np.random.default_rng(2), bright)
    for c in range(3):
        ratio = img[..., c] / image[..., c]
        assert np.allclose(ratio, ratio.flat[0], rtol=1e-5)
        assert 0.75 <= ratio.flat[0] <= 1.25


def test_elastic_field_magnitude():
    field = _elastic_field((32, 32, 32), 3.0, 10.0, np.random.default_rng(0))
    assert field.shape == (3, 32, 32, 32)
    assert 1.5 < field.std() < 4.5
    # smooth: neighbouring voxels move almost together
    assert np.abs(np.diff(field, axis=1)).mean() < 0.2 * np.abs(field).mean()


def test_scaled_strength_multiplies_probabilities_but_mirroring():
    base = AugmentationConfig()
    strong = base.scaled(2.0)
    assert (strong.p_rotation, strong.p_scale, strong.p_elastic) == (0.4, 0.4, 0.4)
    assert (strong.p_gamma, strong.p_brightness, strong.p_contrast) == (0.6, 0.3, 0.3)
    assert strong.p_mirror == base.p_mirror == 0.5
    assert strong.scale_range == base.scale_range  # ranges are not widened
    assert base.scaled(10.0).p_gamma == 1.0  # capped
    none = base.scaled(0.0)
    assert none.p_rotation == none.p_gamma == 0.0 and none.p_mirror == 0.5


def test_stronger_augmentation_changes_more_patches(volume):
    """Over 200 seeded draws, the share of patches that any transform changed (mirroring
    off) matches 1 - P(no transform drawn) at strength 1 and 2."""
    image, label = volume
    plain = dict(p_mirror=0.0, p_gamma=0.3, p_brightness=0.15, p_contrast=0.15)
    changed = {}
    for strength in (1.0, 2.0):
        config = AugmentationConfig(**plain).scaled(strength)
        count = 0
        for seed in range(200):
            rng = np.random.default_rng(seed)
            patch, _ = extract_patch(image, label, np.array([20, 22, 18]), (16, 16, 16), rng,
                                     config)
            reference, _ = extract_patch(image, label, np.array([20, 22, 18]), (16, 16, 16),
                                         np.random.default_rng(seed), NO_AUG)
            count += not np.allclose(patch, reference)
        changed[strength] = count / 200
    # P(no transform) per patch with 2 channels: 0.8^3 * (0.7 * 0.85 * 0.85)^2 = 0.130 at
    # strength 1 and 0.6^3 * (0.4 * 0.7 * 0.7)^2 = 0.0083 at strength 2
    assert changed[1.0] == pytest.approx(1 - 0.130, abs=0.07)
    assert changed[2.0] == pytest.approx(1 - 0.0083, abs=0.03)



@pytest.mark.parametrize("order", [1, 3])
def test_in_plane_slice_equals_the_3d_spline(order):
    """A slice patch (H, W, 1) whose transform keeps the slice axis is sampled in 2D;
    its values must be those of the 3D spline at the same points."""
    from data_generators.augmentation import _sample, _sample_volume

    rng = np.random.default_rng(4)
    image = ndimage.gaussian_filter(rng.standard_normal((30, 34, 7, 2)), (2, 2, 1, 0))
    image = image.astype(np.float32)
    label = (image[..., 0] > 0).astype(np.uint8)
    patch = (24, 20, 1)
    angle = 0.4
    matrix = 1.1 * np.array([[np.cos(angle), -np.sin(angle), 0],
                             [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    field = _elastic_field(patch, 3.0, 4.0, rng)
    field[2] = 0.0
    center = np.array([12, 20, 5])
    img, lbl = _sample(image, label, center, patch, matrix, field, order)

    grid = np.stack(np.meshgrid(*[np.arange(p, dtype=np.float64) for p in patch],
                                indexing="ij")).reshape(3, -1)
    coords = matrix @ (grid - np.array([12, 10, 0])[:, None]) + field.reshape(3, -1)
    coords = (coords + center[:, None]).astype(np.float32)
    assert coords[0].min() < 0 or coords[1].max() > 33  # the patch leaves the volume
    want_img, want_lbl = _sample_volume(image, label, coords.copy(), patch, order)
    np.testing.assert_allclose(img, want_img, atol=1e-4)
    assert np.mean(lbl == want_lbl) > 0.99  # nearest neighbour: float32 ties may differ
    # away from the border the 3D spline over the whole volume agrees too
    inner = ((coords[0] > 6) & (coords[0] < 23) & (coords[1] > 6) & (coords[1] < 27))
    inner = inner.reshape(patch)
    want = ndimage.map_coordinates(image[..., 0].astype(np.float64), coords, order=order,
                                   mode="constant").reshape(patch)
    np.testing.assert_allclose(img[..., 0][inner], want[inner], atol=2e-3)
    assert inner.sum() > 100
