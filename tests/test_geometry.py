"""Scans in another geometry: a real case flipped to RAS, with permuted axes, at 2 mm,
anisotropic or oblique. Its segmentation must land on the equally transformed ground
truth, on exactly the input's own grid, or the scan is refused in one line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

import unet3d.cli.predict as predict_cli
from data_generators.cache import PreprocessedCache
from data_generators.geometry import plan_geometry, resample_labels
from data_generators.io import find_case
from data_generators.labels import labels_to_regions
from tests.conftest import require_brats
from unet3d.artifacts import load_artifact, shipped_path
from unet3d.evaluation.scores import dice
from unet3d.inference.pipeline import PredictSettings, predict_case
from unet3d_base.errors import InputError

CASE = "Brats18_CBICA_AOZ_1"
KEYS = ("t1", "t1ce", "t2", "flair", "seg")
LPS = np.array([[-1.0, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]])


# ---- transforms of a case: each returns (new array, new affine) for one volume ----------

def flip_xy(data, affine):
    """The same scan stored RAS: x and y reversed, the affine following them."""
    index = np.diag([-1.0, -1.0, 1.0, 1.0])  # new voxel -> old voxel
    index[:2, 3] = [data.shape[0] - 1, data.shape[1] - 1]
    return data[::-1, ::-1, :], affine @ index


def permute(data, affine, order=(2, 0, 1)):
    """Array axes permuted: new axis k is old axis order[k]."""
    index = np.zeros((4, 4))
    index[3, 3] = 1
    for new, old in enumerate(order):
        index[old, new] = 1
    return np.transpose(data, order), affine @ index


def resample(data, affine, spacing, label=False):
    """Resampled to ``spacing`` mm (scipy.ndimage.zoom, independent of the code under test):
    linear for images, nearest for label maps; the affine scaled so voxel edges stay put."""
    old = np.array(data.shape, dtype=float)
    new = np.maximum(1, np.round(old / np.asarray(spacing))).astype(int)
    out = ndimage.zoom(data.astype(np.float32), new / old, order=0 if label else 1,
                       grid_mode=True, mode="grid-constant")
    assert out.shape == tuple(new)
    scale = old / new  # old voxels per new voxel
    index = np.diag([*scale, 1.0])
    index[:3, 3] = 0.5 * scale - 0.5  # new voxel centre j -> old index (j + 0.5) * s - 0.5
    return np.round(out) if not label else out.astype(np.uint8), affine @ index


def rotate_world(data, affine, degrees):
    """The same voxels, with axes turned ``degrees`` about the scanner's z: an oblique grid."""
    a = np.radians(degrees)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return data, rotation @ affine


def write_case(root: Path, name: str, volumes: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for key, (data, affine) in volumes.items():
        dtype = np.uint8 if key == "seg" else np.int16
        img = nib.Nifti1Image(np.asarray(data).astype(dtype), None)
        img.header.set_sform(affine, code=1)
        try:
            img.header.set_qform(affine, code=1)
        except nib.spatialimages.HeaderDataError:  # a singular affine: in the sform alone
            img.header.set_qform(None, code=0)
        nib.save(img, str(folder / f"{name}_{key}.nii"))
    return folder


@pytest.fixture(scope="module")
def source():
    folder = require_brats() / CASE
    volumes = {}
    for key in KEYS:
        img = nib.load(folder / f"{CASE}_{key}.nii.gz")
        volumes[key] = (np.asarray(img.dataobj), img.affine)
    np.testing.assert_allclose(volumes["t1"][1], LPS)  # the BraTS grid the tests start from
    return volumes


@pytest.fixture(scope="module")
def shipped():
    return load_artifact(shipped_path())


@pytest.fixture(scope="module")
def reference(source, shipped, tmp_path_factory):
    """The shipped model's labels on the untouched case, and their Dice with the truth."""
    root = tmp_path_factory.mktemp("geometry")
    folder = write_case(root / "in", "Ref", source)
    labels = segment(folder, shipped, root / "out")
    return labels, wt_dice(labels, source["seg"][0])


def segment(folder: Path, model, out: Path) -> np.ndarray:
    """Runs the prediction and checks the output sits on exactly the input's grid."""
    report = predict_case(folder, out, model, PredictSettings(postprocess=False))
    written = nib.load(report["segmentation"])
    t1 = nib.load(next(folder.glob("*_t1.nii")))
    assert written.shape == t1.shape
    np.testing.assert_array_equal(written.affine, t1.affine)
    np.testing.assert_allclose(written.get_qform(), t1.get_qform(), atol=1e-6)
    return np.asarray(written.dataobj)


def wt_dice(labels, truth) -> float:
    return dice(labels_to_regions(labels)[..., 0], labels_to_regions(truth)[..., 0])


@pytest.mark.slow
@pytest.mark.parametrize("transform", [flip_xy, permute], ids=["RAS", "permuted-axes"])
def test_reoriented_scan_gives_the_same_labels_reoriented(transform, source, shipped,
                                                          reference, tmp_path):
    """Reorientation is exact (no interpolation): the labels are the reference's,
    transformed the same way, voxel for voxel."""
    moved = {key: transform(data, affine) for key, (data, affine) in source.items()}
    labels = segment(write_case(tmp_path / "in", "Moved", moved), shipped, tmp_path / "out")
    expected = transform(reference[0], LPS)[0]
    np.testing.assert_array_equal(labels, expected)
    assert wt_dice(labels, moved["seg"][0]) == pytest.approx(reference[1], abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (1.0, 1.0, 2.5), (0.7, 0.7, 2.0)],
                         ids=["2mm", "1x1x2.5mm", "0.7x0.7x2mm"])
def test_resampled_scan_lands_on_its_resampled_truth(spacing, source, shipped, reference,
                                                     tmp_path):
    moved = {key: resample(data, affine, spacing, label=key == "seg")
             for key, (data, affine) in source.items()}
    labels = segment(write_case(tmp_path / "in", "Moved", moved), shipped, tmp_path / "out")
    got = wt_dice(labels, moved["seg"][0])
    print(f"WT Dice at {spacing} mm: {got:.4f} (1 mm reference {reference[1]:.4f})")
    # measured with the previous default: 0.867 / 0.882 / 0.879 against 0.873 at 1 mm,
    # and fed the grids as they are (no resampling) 0.805 / 0.822 / 0.855; with
    # brats_unet3d_cv5, 2 mm scored 0.855 against 0.889 at 1 mm
    assert got >= reference[1] - 0.04, (got, reference[1])


@pytest.mark.slow
def test_slightly_oblique_scan_is_segmented_on_its_own_grid(source, shipped, reference,
                                                            tmp_path):
    moved = {key: rotate_world(data, affine, 15) for key, (data, affine) in source.items()}
    labels = segment(write_case(tmp_path / "in", "Oblique", moved), shipped, tmp_path / "out")
    np.testing.assert_array_equal(labels, reference[0])  # same voxels, same labels


@pytest.mark.parametrize("change, message", [
    (lambda d, a: rotate_world(d, a, 40), "40 degrees off the scanner's"),
    (lambda d, a: (d, a @ np.diag([5.0, 1, 1, 1])), "voxels of 5 x 1 x 1 mm are coarser"),
    (lambda d, a: (d, a @ np.diag([1.0, 1, 0, 1])), "not a valid voxel-to-world transform"),
], ids=["oblique-40", "5mm", "singular"])
def test_grids_the_model_cannot_be_trusted_on_are_refused(change, message, tmp_path, capsys):
    rng = np.random.default_rng(0)
    volumes = {key: change(rng.integers(0, 100, (12, 12, 10)).astype(np.int16), LPS)
               for key in KEYS[:4]}
    folder = write_case(tmp_path / "in", "Odd", volumes)
    out = tmp_path / "out"
    code = predict_cli.main(["--model", str(shipped_path()), "--input", str(folder),
                             "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "Odd_t1.nii" in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(out.glob("Odd*"))


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1), (1, 2, 0), (0, 2, 1)])
@pytest.mark.parametrize("flip", [(), (0,), (0, 1), (2,)])
def test_labels_make_the_round_trip_exactly(order, flip):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, (5, 6, 7)).astype(np.uint8)
    data, affine = permute(labels, np.eye(4), order)
    for axis in flip:  # flip array axis and affine together
        index = np.eye(4)
        index[axis, axis], index[axis, 3] = -1, data.shape[axis] - 1
        data, affine = np.flip(data, axis), affine @ index
    geometry = plan_geometry(data.shape, affine, "x.nii")
    model_space = geometry.labels_to_model(data)
    np.testing.assert_array_equal(model_space, labels[::-1, ::-1, :])  # LPS from identity
    np.testing.assert_array_equal(geometry.labels_from_model(model_space), data)


def test_resampled_labels_keep_their_shapes():
    """A 2 mm ball upsampled to 1 mm and back: each class keeps its voxels, and the 1 mm
    ball's volume is the 2 mm one's times 8, within the boundary's partial voxels."""
    grid = np.indices((20, 20, 20)).astype(float) - 9.5
    ball = (np.sqrt((grid ** 2).sum(axis=0)) < 6).astype(np.uint8) * 2
    fine = resample_labels(ball, (40, 40, 40))
    assert set(np.unique(fine)) == {0, 2}
    assert abs((fine == 2).sum() / (ball == 2).sum() / 8 - 1) < 0.05
    np.testing.assert_array_equal(resample_labels(fine, (20, 20, 20)), ball)


def test_bad_affines_name_the_file():
    with pytest.raises(InputError, match="scan.nii: its affine"):
        plan_geometry((4, 4, 4), np.full((4, 4), np.nan), "scan.nii")


@pytest.mark.slow
def test_training_sees_a_reoriented_case_as_the_original(source, tmp_path):
    """The preprocessed cache that training reads holds the model's space: a case stored
    RAS with permuted axes caches the same arrays, voxel for voxel, as the BraTS original."""
    original = write_case(tmp_path / "a", "Ref", source)
    moved = write_case(tmp_path / "b", "Moved",
                       {key: permute(*flip_xy(data, affine)) for key, (data, affine)
                        in source.items()})
    cache = PreprocessedCache(tmp_path / "cache")
    a = cache.get(find_case(original, require_label=True))
    b = cache.get(find_case(moved, require_label=True))
    assert b.properties["geometry"]["axes"] != a.properties["geometry"]["axes"]
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
