"""Tests for data_generators.preprocessing: cropping, z-scoring and the cache."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from dg_helpers import save_nifti

from data_generators.cache import PreprocessedCache
from data_generators.io import find_case
from data_generators.nifti import load_case
from data_generators.normalization import clip_percentiles, n4_correct
from data_generators.preprocessing import (
    MAX_FOREGROUND,
    brain_bbox,
    crop,
    foreground_coords,
    nonzero_voxels,
    preprocess_case,
    uncrop,
    zscore_in_mask,
)
from unet3d_base.errors import InputError


@pytest.fixture(scope="module")
def loaded(real_case):
    return load_case(real_case)


def test_real_case_loads(loaded):
    image, label, props = loaded
    assert image.shape == (240, 240, 155, 4) and image.dtype == np.float32
    assert label.dtype == np.uint8 and set(np.unique(label).tolist()) <= {0, 1, 2, 3}
    assert props["original_shape"] == [240, 240, 155]
    assert props["spacing"] == [1.0, 1.0, 1.0]


def test_crop_box_contains_brain_and_tumor(loaded):
    image, label, _ = loaded
    box = brain_bbox(image)
    inside = np.zeros(label.shape, bool)
    inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    assert not label[~inside].any()
    assert not image[~inside].any()
    nonzero = (image != 0).any(axis=-1)
    for axis, (lo, hi) in enumerate(box):  # tight: first and last slices hold brain
        assert np.take(nonzero, lo, axis=axis).any()
        assert np.take(nonzero, hi - 1, axis=axis).any()
    assert box[0][1] - box[0][0] < 240  # it does crop something


def test_uncrop_restores_raw_volume(loaded):
    image, label, _ = loaded
    box = brain_bbox(image)
    assert np.array_equal(uncrop(crop(image, box), box, image.shape[:3]), image)
    assert np.array_equal(uncrop(crop(label, box), box, label.shape), label)


def test_preprocess_real_case_zscores_brain(loaded):
    image, label, _ = loaded
    out, lab, box = preprocess_case(image, label)
    assert out.dtype == np.float32 and lab.dtype == np.uint8
    assert out.shape[:3] == tuple(hi - lo for lo, hi in box)
    mask = (crop(image, box) != 0).any(axis=-1)
    for c in range(4):
        values = out[..., c][mask].astype(np.float64)
        assert abs(values.mean()) < 1e-3
        assert abs(values.std() - 1.0) < 1e-3
        assert np.all(out[..., c][~mask] == 0)
    assert int((lab > 0).sum()) == int((label > 0).sum())


def test_brain_bbox_small():
    image = np.zeros((6, 7, 8, 2))
    image[1, 2, 3, 0] = 1
    image[4, 5, 6, 1] = -2
    assert brain_bbox(image) == ((1, 5), (2, 6), (3, 7))
    assert brain_bbox(image[..., 0]) == ((1, 2), (2, 3), (3, 4))
    with pytest.raises(ValueError, match="all zero"):
        brain_bbox(np.zeros((3, 3, 3, 1)))


@pytest.mark.parametrize("channels", [1, 2, 3, 4, 5, 8])
def test_nonzero_voxels_is_any_channel_nonzero(channels):
    """Every channel count, a view with gaps, and -0.0 (zero) against NaN and
    subnormals (not zero): the voxels ``(image != 0).any(-1)`` keeps."""
    rng = np.random.default_rng(channels)
    image = rng.choice(np.array([0.0, -0.0, 1.5, -2.0, 1e-40, np.nan], np.float32),
                       size=(7, 6, 9, channels), p=[0.5, 0.3, 0.05, 0.05, 0.05, 0.05])
    for array in (image, image[1:6, ::2, 2:], image[..., 0]):
        expected = array != 0
        expected = expected.any(axis=-1) if array.ndim == 4 else expected
        got = nonzero_voxels(array)
        assert got.dtype == bool and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    assert 0 < nonzero_voxels(image).sum() < image.shape[0] * image.shape[1] * image.shape[2]


def test_uncrop_fill_and_channels():
    box = ((1, 3), (0, 2), (2, 3))
    out = uncrop(np.ones((2, 2, 1, 3)), box, (4, 2, 5), fill=-1)
    assert out.shape == (4, 2, 5, 3)
    assert out.sum() == 2 * 2 * 1 * 3 - (4 * 2 * 5 - 4) * 3


def test_zscore_in_mask_known_numbers():
    image = np.zeros((2, 2, 1, 2), np.float32)
    image[..., 0] = np.array([[1, 2], [3, 100]]).reshape(2, 2, 1)
    image[..., 1] = 5.0
    mask = np.array([[True, True], [True, False]]).reshape(2, 2, 1)
    out = zscore_in_mask(image, mask)
    # mask values 1, 2, 3: mean 2, population std sqrt(2/3)
    expected = np.array([-1.0, 0.0, 1.0]) / np.sqrt(2.0 / 3.0)
    assert np.allclose(out[..., 0][mask], expected, atol=1e-6)
    assert out[1, 1, 0, 0] == 0  # outside the mask
    assert np.all(out[..., 1] == 0)  # constant channel: only centred


def test_foreground_coords_subsample():
    label = np.zeros((40, 40, 40), np.uint8)
    label[:30] = 2
    coords = foreground_coords(label)
    assert coords.shape == (MAX_FOREGROUND, 3) and coords.dtype == np.int32
    assert np.all(label[tuple(coords.T)] > 0)
    assert np.array_equal(coords, foreground_coords(label))  # fixed seed
    assert foreground_coords(None).shape == (0, 3)


def test_cache_real_case(tmp_path, real_case, loaded):
    messages = []
    cache = PreprocessedCache(tmp_path / "cache", log=messages.append)
    case = cache.get(real_case)
    assert cache.builds == 1 and messages == [f"caching case {real_case.case_id}"]
    assert isinstance(case.image, np.memmap) and isinstance(case.label, np.memmap)
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8
    image, label, _ = loaded
    box = brain_bbox(image)
    assert [tuple(b) for b in case.properties["crop_box"]] == list(box)
    assert np.array_equal(case.label, crop(label, box))
    assert np.all(case.label[tuple(case.foreground.T)] > 0)
    assert len(case.foreground) == min(MAX_FOREGROUND, int((label > 0).sum()))
    json.dumps(case.properties)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [real_case.case_id]


def test_cache_reuse_and_rebuild(tmp_path, make_case):
    folder = make_case(shape=(12, 12, 12))
    seg = np.zeros((12, 12, 12), np.int16)
    seg[3:6, 3:6, 3:6] = 2
    seg[4, 4, 4] = 1  # valid in both the 2017 and 2023 conventions
    save_nifti(folder / "Case_001_seg.nii.gz", seg)
    source = find_case(folder)
    root = tmp_path / "cache"
    first = PreprocessedCache(root)
    case = first.get(source)
    props_file = root / source.case_id / "properties.json"
    stamp = props_file.stat().st_mtime_ns
    second = PreprocessedCache(root)
    again = second.get(source)
    assert second.builds == 0 and props_file.stat().st_mtime_ns == stamp
    assert isinstance(again.image, np.memmap)
    assert np.array_equal(np.asarray(again.image), np.asarray(case.image))

    # a touched source file invalidates the cache
    path = source.images[2]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = PreprocessedCache(root)
    third.get(source)
    assert third.builds == 1
    # so does another label convention
    third.get(source, label_convention="brats2023")
    assert third.builds == 2
    third.get(source, label_convention="2024")  # alias of the same convention
    assert third.builds == 2
    # and a damaged cache folder
    (root / source.case_id / "image.npy").unlink()
    third.get(source, label_convention="brats2023")
    assert third.builds == 3
    assert sorted(p.name for p in root.iterdir()) == [source.case_id]  # no temp folders


@pytest.mark.parametrize("damage", ["flip", "truncate", "label"])
def test_corrupt_cache_file_is_rebuilt_not_read(damage, tmp_path, make_case):
    """A cache file of the recorded name but other bytes (same size) or cut short."""
    folder = make_case(shape=(12, 12, 12))
    seg = np.zeros((12, 12, 12), np.int16)
    seg[3:6, 3:6, 3:6] = 2
    save_nifti(folder / "Case_001_seg.nii.gz", seg)
    source = find_case(folder)
    root = tmp_path / "cache"
    built = PreprocessedCache(root).get(source)
    image, label = np.array(built.image), np.array(built.label)
    target = root / source.case_id / ("label.npy" if damage == "label" else "image.npy")
    data = bytearray(target.read_bytes())
    if damage == "truncate":
        del data[len(data) // 2:]
    else:  # the same size, a few bytes changed: np.load alone would not notice
        data[-8:] = bytes(255 - b for b in data[-8:])
    target.write_bytes(bytes(data))
    messages = []
    cache = PreprocessedCache(root, log=messages.append)
    again = cache.get(source)
    assert cache.builds == 1
    assert any("checksum" in m for m in messages), messages
    np.testing.assert_array_equal(np.asarray(again.image), image)
    np.testing.assert_array_equal(np.asarray(again.label), label)


def test_cache_case_without_label(tmp_path, make_case):
    source = find_case(make_case(shape=(10, 10, 10), with_label=False))
    case = PreprocessedCache(tmp_path / "cache").get(source)
    assert case.label is None and case.foreground.shape == (0, 3)
    assert case.image.shape == (8, 8, 8, 4)


def test_clip_percentiles_known_numbers():
    """Values 0..99 inside the mask: the 0.5 / 99.5 percentiles (linear interpolation) are
    0.495 and 98.505; outside the mask stays 0 whatever it held."""
    image = np.zeros((10, 10, 2, 1), np.float32)
    image[..., 0, 0] = np.arange(100).reshape(10, 10)
    image[..., 1, 0] = 1000.0  # outside the mask
    mask = np.zeros((10, 10, 2), bool)
    mask[..., 0] = True
    out = clip_percentiles(image, mask)
    inside = out[..., 0, 0].ravel()
    assert inside.min() == pytest.approx(0.495) and inside.max() == pytest.approx(98.505)
    np.testing.assert_array_equal(inside[1:99], np.arange(1, 99))
    assert not out[..., 1, 0].any()


def test_percentile_normalisation_tames_outliers():
    """A handful of hot voxels dominate a z-score's scale; clipped first, they do not."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (20, 20, 20, 1)).astype(np.float32)
    image[0, 0, :5, 0] = 5000.0  # 5 of 8000 voxels
    plain = preprocess_case(image, None, "zscore")[0]
    clipped = preprocess_case(image, None, "percentile")[0]
    # z-score: mean 103.06, std 122.8 -> a hot voxel at (5000 - 103) / 122.8 = 39.9
    assert plain[..., 0].max() > 39 and clipped[..., 0].max() < 3.5
    # ordinary voxels keep their spread near 1 only after clipping
    body = np.s_[5:, 5:, 5:, 0]
    assert clipped[body].std() == pytest.approx(1.0, abs=0.05)
    assert plain[body].std() < 0.3


def test_n4_removes_a_smooth_bias_field():
    """Two tissues (100 and 160) in a ball, multiplied by exp(0.4 x / 47): within each tissue
    the coefficient of variation is 0.084 before (0.115 were x uniform over the cube; the
    ball weights its middle); N4 brings it under a third of that."""
    shape = (48, 48, 48)
    x, y, z = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    mask = (x - 23.5) ** 2 + (y - 23.5) ** 2 + (z - 23.5) ** 2 < 22**2
    tissue = np.where((y // 8) % 2 == 0, 100.0, 160.0)
    field = np.exp(0.4 * x / 47)
    image = np.where(mask, tissue * field, 0).astype(np.float32)[..., None]

    def cv(volume):
        values = [volume[mask & (tissue == t)] for t in (100.0, 160.0)]
        return max(float(v.std() / v.mean()) for v in values)

    before = cv(image[..., 0])
    corrected = n4_correct(image, mask)
    assert before == pytest.approx(0.084, abs=0.005)
    assert cv(corrected[..., 0]) < before / 3
    assert not corrected[~mask].any()
    out, _, box = preprocess_case(image, None, "n4")  # cropped, then z-scored in the brain
    inside = crop(mask, box)
    assert out[..., 0][inside].mean() == pytest.approx(0.0, abs=1e-4)
    assert out[..., 0][inside].std() == pytest.approx(1.0, abs=1e-3)


def test_normalisations_keep_separate_caches(tmp_path, make_case):
    """Each normalisation has its own cache folder and fingerprint; z-score keeps the plain
    folder name (and the fingerprint of earlier versions)."""
    from data_generators.cache import cache_for

    folder = make_case(shape=(12, 12, 12))
    source = find_case(folder)
    plain = cache_for(folder, tmp_path, "zscore")
    clipped = cache_for(folder, tmp_path, "percentile")
    assert clipped.root.name == plain.root.name + "-percentile"
    a, b = plain.get(source), clipped.get(source)
    assert "normalization" not in a.properties["fingerprint"]
    assert b.properties["fingerprint"]["normalization"] == {"method": "percentile",
                                                            "percentiles": [0.5, 99.5]}
    np.testing.assert_allclose(np.asarray(b.image),
                               preprocess_case(load_case(source)[0], None, "percentile")[0])
    with pytest.raises(InputError, match="normalization must be one of"):
        PreprocessedCache(tmp_path, normalization="minmax")


def test_no_normalisation_shares_the_default_cache(tmp_path, make_case):
    """``normalization: null`` in a config is the default normalisation: its cache is the
    default's folder (no "-None" suffix) and it preprocesses the same way."""
    from data_generators.cache import cache_for
    from unet3d.config import TrainConfig

    folder = make_case(shape=(12, 12, 12))
    default = TrainConfig().normalization  # what a config without the key trains on
    unset = cache_for(folder, tmp_path, None)
    explicit = cache_for(folder, tmp_path, default)
    assert unset.root == explicit.root
    assert "none" not in unset.root.name.lower()
    assert unset.normalization == explicit.normalization == default
    case = unset.get(find_case(folder))
    np.testing.assert_allclose(np.asarray(case.image),
                               preprocess_case(load_case(find_case(folder))[0], None, default)[0])
    assert explicit.get(find_case(folder)) is not None and explicit.builds == 0  # shared


def test_int8_calibration_with_no_normalisation_uses_the_default_cache(tmp_path, make_case):
    """The int8 export's calibration patches (a run config with ``normalization: null``) come
    from the default normalisation's cache, not a "-None" one."""
    from unet3d.config import TrainConfig
    from unet3d.export.calibration import draw_patches

    make_case("Case_001", shape=(16, 16, 16))
    make_case("Case_002", shape=(16, 16, 16))
    data = tmp_path / "data"
    config = {**TrainConfig().to_dict(), "cache_dir": str(tmp_path / "cache")}
    explicit = draw_patches(data, (8, 8, 8), 2, config)
    unset = draw_patches(data, (8, 8, 8), 2, {**config, "normalization": None})
    folders = [p.name for p in (tmp_path / "cache" / "preprocessed").iterdir()]
    assert len(folders) == 1 and "none" not in folders[0].lower()
    for a, b in zip(explicit, unset, strict=True):
        np.testing.assert_array_equal(a, b)
