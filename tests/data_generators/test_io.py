"""Tests for data_generators.io: finding, loading and saving cases."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from dg_helpers import save_nifti

from data_generators.io import CaseFiles, find_case, find_cases
from data_generators.nifti import load_case, save_segmentation
from unet3d_base.errors import InputError


def _one_line_error(excinfo, *parts: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)
    return message


def test_find_cases_brats2018_naming(make_case, tmp_path):
    make_case("B_002")
    make_case("A_001")
    (tmp_path / "data" / "notes").mkdir()  # no NIfTI: ignored
    cases = find_cases(tmp_path / "data")
    assert [c.case_id for c in cases] == ["A_001", "B_002"]
    names = [p.name for p in cases[0].images]
    assert names == [f"A_001_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair")]
    assert cases[0].label.name == "A_001_seg.nii.gz"


def test_find_case_brats2023_naming_and_order(make_case):
    folder = make_case("BraTS-GLI-00000-000", naming="2023")
    case = find_case(folder)
    assert [p.name for p in case.images] == [
        f"BraTS-GLI-00000-000-{k}.nii.gz" for k in ("t1n", "t1c", "t2w", "t2f")
    ]
    assert case.label.name == "BraTS-GLI-00000-000-seg.nii.gz"
    flair_first = find_case(folder, modalities=("flair", "t1"))
    assert [p.name[-10:] for p in flair_first.images] == ["t2f.nii.gz", "t1n.nii.gz"]


def test_find_case_is_case_insensitive_and_ignores_prefix(tmp_path):
    folder = tmp_path / "case7"
    for key in ("T1", "T1CE", "T2", "FLAIR", "Seg"):
        save_nifti(folder / f"other_name_{key}.NII", np.zeros((4, 4, 4), np.int16))
    case = find_case(folder, require_label=True)
    assert case.case_id == "case7"
    assert case.images[1].name == "other_name_T1CE.NII"
    assert case.label.name == "other_name_Seg.NII"


def test_find_case_without_label(make_case):
    folder = make_case(with_label=False)
    assert find_case(folder).label is None
    with pytest.raises(InputError) as excinfo:
        find_case(folder, require_label=True)
    _one_line_error(excinfo, str(folder), "segmentation")


def test_missing_modality(make_case):
    folder = make_case()
    (folder / "Case_001_flair.nii.gz").unlink()
    with pytest.raises(InputError) as excinfo:
        find_case(folder)
    _one_line_error(excinfo, str(folder), "flair")


def test_two_files_for_one_modality(make_case):
    folder = make_case()
    save_nifti(folder / "Case_001_t1.nii", np.zeros((8, 9, 10), np.int16))
    with pytest.raises(InputError) as excinfo:
        find_case(folder)
    _one_line_error(excinfo, "Case_001_t1.nii,", "Case_001_t1.nii.gz", "t1")


def test_find_cases_bad_roots(tmp_path, make_case):
    with pytest.raises(InputError, match="not found"):
        find_cases(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        find_cases(tmp_path / "file.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no case folders"):
        find_cases(tmp_path / "empty")
    make_case("X", with_label=False)
    with pytest.raises(InputError, match="segmentation"):
        find_cases(tmp_path / "data", require_label=True)


def test_load_case_values_and_properties(tmp_path):
    folder = tmp_path / "P1"
    shape = (5, 6, 7)
    affine = np.array([[-1.0, 0, 0, 3], [0, -1.5, 0, 200], [0, 0, 2.0, -5], [0, 0, 0, 1]])
    for c, key in enumerate(("t1", "t1ce", "t2", "flair")):
        save_nifti(folder / f"P1_{key}.nii.gz", np.full(shape, c + 1, np.int16), affine)
    seg = np.zeros(shape, np.uint8)
    seg[0, 0, 0], seg[1, 1, 1], seg[2, 2, 2] = 1, 2, 4
    save_nifti(folder / "P1_seg.nii.gz", seg, affine)
    image, label, props = load_case(find_case(folder))
    assert image.dtype == np.float32 and image.shape == shape + (4,)
    assert [float(image[0, 0, 0, c]) for c in range(4)] == [1.0, 2.0, 3.0, 4.0]
    assert label.dtype == np.uint8
    assert (label[0, 0, 0], label[1, 1, 1], label[2, 2, 2], label[3, 3, 3]) == (1, 2, 3, 0)
    assert props["original_shape"] == [5, 6, 7]
    assert props["spacing"] == [1.0, 1.5, 2.0]
    assert np.allclose(props["affine"], affine)
    assert props["reference_file"].endswith("P1_t1.nii.gz")
    assert props["modalities"] == ["t1", "t1ce", "t2", "flair"]
    assert props["case_id"] == "P1"
    json.dumps(props)  # serialisable


def test_truncated_file(make_case):
    folder = make_case(shape=(30, 30, 30))
    path = folder / "Case_001_t2.nii.gz"
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path))


def test_text_file_named_nifti(make_case):
    folder = make_case()
    path = folder / "Case_001_t1ce.nii.gz"
    path.write_text("this is not an image\n")
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path))


def test_gzip_of_garbage(make_case):
    folder = make_case()
    path = folder / "Case_001_t1ce.nii.gz"
    path.write_bytes(gzip.compress(b"\x00" * 1000))
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path))


def test_4d_image(make_case):
    folder = make_case()
    path = folder / "Case_001_flair.nii.gz"
    save_nifti(path, np.zeros((8, 9, 10, 2), np.int16))
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path), "is 4D, expected a 3D image")


def test_trailing_singleton_dimension_is_squeezed(make_case):
    folder = make_case()
    path = folder / "Case_001_flair.nii.gz"
    save_nifti(path, np.full((8, 9, 10, 1), 7, np.int16))
    image, _, _ = load_case(find_case(folder))
    assert image.shape == (8, 9, 10, 4)
    assert np.all(image[..., 3] == 7)


def test_different_shapes(make_case):
    folder = make_case()
    path = folder / "Case_001_t2.nii.gz"
    save_nifti(path, np.zeros((8, 9, 9), np.int16))
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path), "8x9x9", "8x9x10", "Case_001_t1.nii.gz")


def test_label_with_different_shape(make_case):
    folder = make_case()
    path = folder / "Case_001_seg.nii.gz"
    save_nifti(path, np.zeros((8, 9, 11), np.int16))
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path), "8x9x11")


def test_different_affines(make_case):
    folder = make_case()
    path = folder / "Case_001_t1ce.nii.gz"
    shifted = np.diag([-1.0, -1.0, 1.0, 1.0])
    shifted[0, 3] = 0.5
    save_nifti(path, np.ones((8, 9, 10), np.int16), shifted)
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path), "affine")


def test_affine_within_tolerance_is_accepted(make_case):
    folder = make_case()
    nudged = np.diag([-1.0, -1.0, 1.0, 1.0])
    nudged[0, 3] = 1e-4
    save_nifti(folder / "Case_001_t1ce.nii.gz", np.ones((8, 9, 10), np.int16), nudged)
    image, _, _ = load_case(find_case(folder))
    assert image.shape == (8, 9, 10, 4)


@pytest.mark.parametrize("modality, dtype, value, word", [
    ("t2", np.float32, np.nan, "NaN"),
    # finite in the file, infinite once cast to the float32 the network reads
    ("flair", np.float64, 1e300, "infinite"),
], ids=["nan", "float64_beyond_float32"])
def test_non_finite_voxels(make_case, modality, dtype, value, word):
    folder = make_case()
    path = folder / f"Case_001_{modality}.nii.gz"
    data = np.ones((8, 9, 10), dtype)
    data[2, 3, 4] = value
    save_nifti(path, data)
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path), word)


def test_channels_of_mixed_dtypes_are_copied_exactly(tmp_path):
    folder = tmp_path / "P2"
    shape = (4, 5, 6)
    rng = np.random.default_rng(3)
    volumes = {"t1": rng.integers(-32768, 32767, shape, dtype=np.int16),
               "t1ce": rng.integers(0, 255, shape, dtype=np.uint8),
               "t2": rng.normal(size=shape).astype(np.float32),
               "flair": rng.normal(size=shape)}  # float64: rounded to float32
    for key, data in volumes.items():
        save_nifti(folder / f"P2_{key}.nii.gz", data)
    image, _, _ = load_case(find_case(folder, require_label=False))
    assert image.dtype == np.float32 and image.flags.c_contiguous
    for c, data in enumerate(volumes.values()):
        np.testing.assert_array_equal(image[..., c], data.astype(np.float32))


def test_label_value_3_under_brats2017(make_case):
    folder = make_case()
    path = folder / "Case_001_seg.nii.gz"
    seg = np.zeros((8, 9, 10), np.int16)
    seg[1, 1, 1] = 3
    save_nifti(path, seg)
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path), "3")
    # the same file is valid under the 2023 convention (3 = enhancing)
    _, label, _ = load_case(find_case(folder), label_convention="brats2023")
    assert label[1, 1, 1] == 3 and label.sum() == 3


def test_non_integer_float_label(make_case):
    folder = make_case()
    path = folder / "Case_001_seg.nii.gz"
    seg = np.zeros((8, 9, 10), np.float32)
    seg[1, 1, 1] = 1.5
    save_nifti(path, seg)
    with pytest.raises(InputError) as excinfo:
        load_case(find_case(folder))
    _one_line_error(excinfo, str(path), "non-integer")


def test_integer_valued_float_label_is_accepted(make_case):
    folder = make_case()
    seg = np.zeros((8, 9, 10), np.float32)
    seg[1, 1, 1] = 4.0
    save_nifti(folder / "Case_001_seg.nii.gz", seg)
    _, label, _ = load_case(find_case(folder))
    assert label[1, 1, 1] == 3 and label.sum() == 3


def test_missing_file():
    case = CaseFiles("ghost", (Path("/nonexistent/ghost_t1.nii.gz"),), None)
    with pytest.raises(InputError) as excinfo:
        load_case(case)
    _one_line_error(excinfo, "ghost_t1.nii.gz", "not found")


def test_save_segmentation_round_trip(tmp_path):
    folder = tmp_path / "R1"
    shape = (6, 7, 8)
    affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    for key in ("t1", "t1ce", "t2", "flair"):
        save_nifti(folder / f"R1_{key}.nii.gz", np.ones(shape, np.int16), affine)
    ref = nib.load(str(folder / "R1_t1.nii.gz"))
    _, _, props = load_case(find_case(folder))
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 2:4, 3:5] = 4
    labels[0, 0, 0] = 2
    out = save_segmentation(labels, props, tmp_path / "pred" / "R1.nii.gz")
    assert out == tmp_path / "pred" / "R1.nii.gz"
    assert sorted(p.name for p in out.parent.iterdir()) == ["R1.nii.gz"]  # no temp left
    back = nib.load(str(out))
    data = np.asanyarray(back.dataobj)
    assert back.get_data_dtype() == np.uint8
    assert np.array_equal(data, labels)
    assert np.allclose(back.affine, affine)
    assert back.header.get_zooms() == ref.header.get_zooms()
    assert int(back.header["qform_code"]) == int(ref.header["qform_code"])
    assert int(back.header["sform_code"]) == int(ref.header["sform_code"])
    with pytest.raises(ValueError, match="6x7x9"):
        save_segmentation(np.zeros((6, 7, 9), np.uint8), props, tmp_path / "bad.nii.gz")
