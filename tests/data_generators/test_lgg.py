"""Tests for data_generators.lgg: the Kaggle LGG MRI segmentation layout (RGB TIFF slices)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

from data_generators.lgg import (
    LGG_MODALITIES,
    LggPatient,
    find_lgg_patient,
    find_lgg_patients,
    is_lgg_patient,
    is_lgg_root,
    load_lgg_patient,
)
from data_generators.lgg_predictions import save_lgg_predictions
from data_generators.lgg_synthetic import write_synthetic_lgg
from unet3d_base.errors import InputError

PID = "TCGA_AB_1234_19990101"
H, W = 5, 7  # not square, so a transposed read shows
NUMBERS = (10, 2, 1, 3)  # written out of order; slice 10 must come last


def _rgb(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(data, np.uint8), photometric="rgb")
    return path


def _gray(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.asarray(data, np.uint8), photometric="minisblack")
    return path


def _constant_slice(n: int, shape=(H, W)) -> np.ndarray:
    """Channel 0 (t1) holds 10 + n, channel 1 (flair) 100 + n, channel 2 (t1ce) 200 + n."""
    data = np.empty((*shape, 3), np.uint8)
    data[..., 0], data[..., 1], data[..., 2] = 10 + n, 100 + n, 200 + n
    return data


def _mask(n: int) -> np.ndarray:
    """Slice n's mask: 255 at (0, n % W), 128 at (1, 1), 127 at (2, 2), 0 elsewhere."""
    mask = np.zeros((H, W), np.uint8)
    mask[0, n % W] = 255
    mask[1, 1] = 128
    mask[2, 2] = 127
    return mask


def _patient(root: Path, pid: str = PID, masks: bool = True, numbers=NUMBERS) -> Path:
    folder = root / pid
    for n in numbers:
        _rgb(folder / f"{pid}_{n}.tif", _constant_slice(n))
        if masks:
            _gray(folder / f"{pid}_{n}_mask.tif", _mask(n))
    return folder


def _one_line(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


def test_slices_sort_numerically_and_masks_pair_up(tmp_path):
    folder = _patient(tmp_path)
    patient = find_lgg_patient(folder)
    assert patient.patient_id == PID
    assert [p.name for p in patient.slices] == [f"{PID}_{n}.tif" for n in (1, 2, 3, 10)]
    assert [p.name for p in patient.masks] == [f"{PID}_{n}_mask.tif" for n in (1, 2, 3, 10)]
    assert all(p.parent == folder for p in patient.slices)
    assert is_lgg_patient(folder) and not is_lgg_patient(tmp_path)
    assert is_lgg_root(tmp_path) and not is_lgg_root(folder)


def test_channels_map_to_t1_flair_t1ce_in_the_requested_order(tmp_path):
    folder = _patient(tmp_path)
    marked = _constant_slice(10)
    marked[1, 4, 0] = 250  # row 1, column 4 of slice 10's t1 channel
    _rgb(folder / f"{PID}_10.tif", marked)
    patient = find_lgg_patient(folder)

    image, _, properties = load_lgg_patient(patient)
    assert LGG_MODALITIES == ("t1", "flair", "t1ce")
    assert image.shape == (H, W, 4, 3) and image.dtype == np.float32
    for k, n in enumerate((1, 2, 3, 10)):
        expected = np.array([10 + n, 100 + n, 200 + n], np.float32)
        plane = image[:, :, k, :].copy()
        if n == 10:
            assert plane[1, 4, 0] == 250.0
            plane[1, 4, 0] = 20.0
        assert np.array_equal(plane, np.broadcast_to(expected, (H, W, 3)))
    assert properties["modalities"] == ["t1", "flair", "t1ce"]

    flair, _, properties = load_lgg_patient(patient, ("flair",))
    assert flair.shape == (H, W, 4, 1)
    assert [float(v) for v in flair[0, 0, :, 0]] == [101.0, 102.0, 103.0, 110.0]
    assert properties["modalities"] == ["flair"]

    pair, _, _ = load_lgg_patient(patient, ("t1ce", "t1"))
    assert [float(v) for v in pair[2, 3, 1, :]] == [202.0, 12.0]
    with pytest.raises(InputError, match="not t2; train with --modalities") as excinfo:
        load_lgg_patient(patient, ("t2",))
    assert str(excinfo.value).startswith(f"{folder}: ")


def test_mask_becomes_class_2_above_127_and_properties_are_json(tmp_path):
    patient = find_lgg_patient(_patient(tmp_path))
    _, label, properties = load_lgg_patient(patient)
    assert label is not None and label.dtype == np.uint8 and label.shape == (H, W, 4)
    for k, n in enumerate((1, 2, 3, 10)):
        expected = np.zeros((H, W), np.uint8)
        expected[0, n % W] = 2  # 255
        expected[1, 1] = 2  # 128
        # 127 at (2, 2) stays background
        assert np.array_equal(label[:, :, k], expected), n
    assert set(np.unique(label).tolist()) == {0, 2}
    assert json.loads(json.dumps(properties)) == properties
    assert properties["case_id"] == PID
    assert properties["original_shape"] == [5, 7, 4]
    assert properties["format"] == "kaggle-lgg-tif"
    assert [Path(p).name for p in properties["slices"]] == [
        f"{PID}_1.tif", f"{PID}_2.tif", f"{PID}_3.tif", f"{PID}_10.tif"]


def test_no_masks_gives_no_label_and_partial_masks_are_refused(tmp_path):
    patient = find_lgg_patient(_patient(tmp_path, masks=False))
    assert patient.masks == (None, None, None, None)
    image, label, _ = load_lgg_patient(patient)
    assert label is None and image.shape == (H, W, 4, 3)

    folder = _patient(tmp_path / "partial")
    (folder / f"{PID}_3_mask.tif").unlink()
    patient = find_lgg_patient(folder)
    assert [m is None for m in patient.masks] == [False, False, True, False]
    with pytest.raises(InputError, match=re.escape(f"{PID}_3_mask.tif")) as excinfo:
        load_lgg_patient(patient)
    _one_line(excinfo, str(folder))


def test_find_lgg_patients_ignores_stray_files_and_sorts(tmp_path):
    root = tmp_path / "kaggle_3m"
    for pid in ("TCGA_HT_8018_19970411", "TCGA_CS_4941_19960909", "TCGA_DU_5851_19950428"):
        _patient(root, pid, numbers=(1, 2))
    (root / "data.csv").write_text("Patient,RNASeqCluster\nTCGA_CS_4941,1\n")
    (root / "README.md").write_text("stray\n")
    (root / "empty_folder").mkdir()
    only_masks = root / "TCGA_ZZ_0000_20000101"
    _gray(only_masks / "TCGA_ZZ_0000_20000101_1_mask.tif", _mask(1))
    stray = root / "TCGA_CS_4941_19960909"
    (stray / "notes.txt").write_text("x")
    _gray(stray / "TCGA_CS_4941_19960909_1_pred.tif", _mask(1))
    _rgb(stray / "OTHER_1.tif", _constant_slice(1))  # another patient's prefix
    _rgb(stray / "TCGA_CS_4941_19960909_1.png", _constant_slice(1))

    patients = find_lgg_patients(root)
    assert [p.patient_id for p in patients] == [
        "TCGA_CS_4941_19960909", "TCGA_DU_5851_19950428", "TCGA_HT_8018_19970411"]
    assert [p.name for p in patients[0].slices] == [
        "TCGA_CS_4941_19960909_1.tif", "TCGA_CS_4941_19960909_2.tif"]
    assert [p.name for p in patients[0].masks] == [
        "TCGA_CS_4941_19960909_1_mask.tif", "TCGA_CS_4941_19960909_2_mask.tif"]
    assert not is_lgg_patient(only_masks)
    assert is_lgg_root(root)
    assert not is_lgg_root(tmp_path / "elsewhere")
    masks_only_root = tmp_path / "masks_only"
    _gray(masks_only_root / "P_1" / "P_1_mask.tif", _mask(1))
    assert not is_lgg_root(masks_only_root)
    with pytest.raises(InputError, match="no patient folders"):
        find_lgg_patients(masks_only_root)
    with pytest.raises(InputError, match="not found"):
        find_lgg_patients(tmp_path / "elsewhere")
    # but a slice or mask of another patient (an id of the dataset's form) is refused
    for name in ("TCGA_DU_5851_19950428_2.tif", "TCGA_XX_0001_20010101_1_mask.tif"):
        intruder = _gray(stray / name, _mask(1))
        with pytest.raises(InputError, match=re.escape(f"{intruder}: not a slice of patient "
                                                       "TCGA_CS_4941_19960909")):
            find_lgg_patients(root)
        intruder.unlink()


def test_predictions_round_trip(tmp_path):
    patient = find_lgg_patient(_patient(tmp_path / "data"))
    classes = np.zeros((H, W, 4), np.uint8)
    classes[0, 0, 0] = 1
    classes[1, 2, 1] = 2
    classes[4, 6, 3] = 3  # slice 10, bottom-right corner
    out = tmp_path / "pred"
    written = save_lgg_predictions(classes, patient, out)
    assert [p.name for p in written] == [f"{PID}_{n}_pred.tif" for n in (1, 2, 3, 10)]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    expected = {1: (0, 0), 2: (1, 2), 3: None, 10: (4, 6)}
    for path, n in zip(written, (1, 2, 3, 10), strict=True):
        data = tifffile.imread(path)
        assert data.shape == (5, 7) and data.dtype == np.uint8
        want = np.zeros((5, 7), np.uint8)
        if expected[n] is not None:
            want[expected[n]] = 255
        assert np.array_equal(data, want), n

    # written beside the slices, predictions are not taken for slices
    beside = save_lgg_predictions(classes, patient, patient.slices[0].parent)
    assert all(p.exists() for p in beside)
    assert find_lgg_patient(patient.slices[0].parent).slices == patient.slices

    with pytest.raises(ValueError, match="HxWx4"):
        save_lgg_predictions(classes[:, :, :3], patient, out)
    with pytest.raises(ValueError, match=re.escape(f"{PID}_1.tif")):
        save_lgg_predictions(np.zeros((W, H, 4), np.uint8), patient, out)


def test_synthetic_dataset_is_in_the_kaggle_format(tmp_path):
    root = tmp_path / "synth"
    folders = write_synthetic_lgg(root, patients=2, slices=6, size=32, seed=3)
    assert len(folders) == 2 and folders == sorted(folders)
    assert is_lgg_root(root) and all(is_lgg_patient(f) for f in folders)
    nonempty = 0
    for folder in folders:
        assert re.fullmatch(r"TCGA_[A-Z]{2}_\d{4}_\d{8}", folder.name)
        names = sorted(p.name for p in folder.iterdir())
        assert names == sorted([f"{folder.name}_{n}.tif" for n in range(1, 7)]
                               + [f"{folder.name}_{n}_mask.tif" for n in range(1, 7)])
        for n in range(1, 7):
            with tifffile.TiffFile(folder / f"{folder.name}_{n}.tif") as tif:
                assert tif.pages[0].photometric == tifffile.PHOTOMETRIC.RGB
                rgb = tif.asarray()
            mask = tifffile.imread(folder / f"{folder.name}_{n}_mask.tif")
            assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8
            assert mask.shape == (32, 32) and mask.dtype == np.uint8
            assert set(np.unique(mask).tolist()) <= {0, 255}
            if mask.any():
                nonempty += 1
                brain = rgb[..., 0] > 0
                inside = rgb[..., 1][mask == 255].astype(float)
                outside = rgb[..., 1][brain & (mask == 0)].astype(float)
                assert inside.min() > outside.max()  # the FLAIR blob marks the mask
    assert 0 < nonempty < 12  # some tumor slices, some empty masks

    patients = find_lgg_patients(root)
    image, label, _ = load_lgg_patient(patients[0])
    masks = np.stack([tifffile.imread(p) for p in patients[0].masks], axis=-1)
    assert image.shape == (32, 32, 6, 3)
    assert np.array_equal(label > 0, masks == 255)

    again = write_synthetic_lgg(tmp_path / "again", patients=2, slices=6, size=32, seed=3)
    other = write_synthetic_lgg(tmp_path / "other", patients=2, slices=6, size=32, seed=4)
    first = tifffile.imread(folders[1] / f"{folders[1].name}_3.tif")
    assert np.array_equal(first, tifffile.imread(again[1] / f"{again[1].name}_3.tif"))
    assert not np.array_equal(first, tifffile.imread(other[1] / f"{other[1].name}_3.tif"))


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="not found") as excinfo:
        find_lgg_patient(tmp_path / "missing")
    _one_line(excinfo, "missing")

    only_masks = tmp_path / PID
    _gray(only_masks / f"{PID}_1_mask.tif", _mask(1))
    (only_masks / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no image slices") as excinfo:
        find_lgg_patient(only_masks)
    _one_line(excinfo, str(only_masks))

    folder = _patient(tmp_path / "dup")
    _rgb(folder / f"{PID}_03.tif", _constant_slice(3))
    with pytest.raises(InputError, match="slice 3") as excinfo:
        find_lgg_patient(folder)
    _one_line(excinfo, f"{PID}_03.tif", f"{PID}_3.tif")


def test_missing_mask_with_require_masks(tmp_path):
    folder = _patient(tmp_path / "root")
    (folder / f"{PID}_2_mask.tif").unlink()
    assert find_lgg_patient(folder).masks[1] is None
    with pytest.raises(InputError, match=re.escape(f"{PID}_2_mask.tif")) as excinfo:
        find_lgg_patient(folder, require_masks=True)
    _one_line(excinfo, str(folder / f"{PID}_2_mask.tif"))
    with pytest.raises(InputError, match=re.escape(f"{PID}_2_mask.tif")):
        find_lgg_patients(tmp_path / "root")
    assert len(find_lgg_patients(tmp_path / "root", require_masks=False)) == 1


@pytest.mark.parametrize("content", [b"", b"not a tiff file at all", "truncated"])
def test_unreadable_tiff_is_named(tmp_path, content):
    folder = _patient(tmp_path)
    bad = folder / f"{PID}_2.tif"
    if content == "truncated":
        content = bad.read_bytes()[:-40]
    bad.write_bytes(content)
    patient = find_lgg_patient(folder)
    with pytest.raises(InputError, match=re.escape(f"{PID}_2.tif")) as excinfo:
        load_lgg_patient(patient)
    _one_line(excinfo, "TIFF")


def test_corrupt_mask_is_named(tmp_path):
    folder = _patient(tmp_path)
    (folder / f"{PID}_10_mask.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match=re.escape(f"{PID}_10_mask.tif")):
        load_lgg_patient(find_lgg_patient(folder))


@pytest.mark.parametrize(("data", "shape_text"), [
    (np.zeros((H, W), np.uint8), "5x7"),
    (np.zeros((H, W, 4), np.uint8), "5x7x4"),
])
def test_slice_that_is_not_rgb(tmp_path, data, shape_text):
    folder = _patient(tmp_path)
    bad = folder / f"{PID}_3.tif"
    tifffile.imwrite(bad, data, photometric="minisblack" if data.ndim == 2 else "rgb",
                     extrasamples=None if data.ndim == 2 else ["unassalpha"])
    assert tifffile.imread(bad).shape == data.shape
    with pytest.raises(InputError, match=re.escape(f"{PID}_3.tif")) as excinfo:
        load_lgg_patient(find_lgg_patient(folder))
    _one_line(excinfo, f"shape {shape_text}", "HxWx3")


def test_slices_of_different_size(tmp_path):
    folder = _patient(tmp_path)
    _rgb(folder / f"{PID}_2.tif", _constant_slice(2, shape=(6, 7)))
    with pytest.raises(InputError, match=re.escape(f"{PID}_2.tif")) as excinfo:
        load_lgg_patient(find_lgg_patient(folder, require_masks=False))
    _one_line(excinfo, "6x7", f"{PID}_1.tif", "5x7")


def test_mask_that_is_not_hxw_or_not_the_slice_size(tmp_path):
    folder = _patient(tmp_path)
    _rgb(folder / f"{PID}_2_mask.tif", np.zeros((H, W, 3), np.uint8))
    with pytest.raises(InputError, match=re.escape(f"{PID}_2_mask.tif")) as excinfo:
        load_lgg_patient(find_lgg_patient(folder))
    _one_line(excinfo, "5x7x3")

    _gray(folder / f"{PID}_2_mask.tif", np.zeros((H, W - 1), np.uint8))
    with pytest.raises(InputError, match=re.escape(f"{PID}_2_mask.tif")) as excinfo:
        load_lgg_patient(find_lgg_patient(folder))
    _one_line(excinfo, "5x6", f"{PID}_2.tif", "5x7")


def test_hand_built_patient_dataclass_is_accepted(tmp_path):
    folder = _patient(tmp_path, numbers=(1, 2))
    patient = LggPatient(PID, (folder / f"{PID}_1.tif", folder / f"{PID}_2.tif"), (None, None))
    image, label, _ = load_lgg_patient(patient, ("t1ce",))
    assert label is None and [float(v) for v in image[0, 0, :, 0]] == [201.0, 202.0]


def test_cache_is_rebuilt_when_other_channels_are_read(tmp_path):
    """The patient's files are the same for any --modalities: the cache must not reuse them."""
    from data_generators.cache import PreprocessedCache
    from data_generators.layouts import find_any_case

    folder = write_synthetic_lgg(tmp_path / "lgg", patients=1, slices=6, size=32, seed=1)[0]
    cache = PreprocessedCache(tmp_path / "cache")
    first = np.array(cache.get(find_any_case(folder, ("t1", "flair", "t1ce"))).image)
    swapped = np.array(cache.get(find_any_case(folder, ("t1ce", "t1", "flair"))).image)
    assert cache.builds == 2
    assert np.array_equal(swapped, first[..., [2, 0, 1]])
    assert not np.array_equal(swapped, first)
    again = np.array(cache.get(find_any_case(folder, ("t1ce", "t1", "flair"))).image)
    assert cache.builds == 2 and np.array_equal(again, swapped)
