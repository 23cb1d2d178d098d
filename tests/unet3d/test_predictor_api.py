"""The prediction API (unet3d.inference.Predictor): arrays in memory give the label map
predict.py writes for the same scans, on any grid; bad arrays are refused in one line."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import unet3d.cli.predict as predict_cli
from unet3d.artifacts import Artifact
from unet3d.inference import Predictor, PredictSettings
from unet3d_base.errors import InputError

MODALITIES = ("t1", "t1ce", "t2", "flair")


def threshold_fn(batch: np.ndarray) -> np.ndarray:
    """A voxelwise 'network': regions WT, TC, ET where the z-scored T1 exceeds 1, 2, 3."""
    z = batch[..., :1]
    return np.concatenate([z > 1, z > 2, z > 3], axis=-1).astype(np.float32)


def threshold_model() -> Artifact:
    return Artifact(path=Path("threshold.keras"), predict_fn=threshold_fn,
                    modalities=MODALITIES, output_mode="regions", stride=4, base_filters=4,
                    patch_size=(16, 16, 16), label_convention="brats2017")


def scan(shape=(30, 28, 26), seed=0) -> np.ndarray:
    """Four channels of smooth noise inside an ellipsoid 'brain', 0 outside."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1)[:, None, None, None] / 2
    radius = np.array(shape, dtype=np.float32)[:, None, None, None] * 0.4
    brain = (((grid - centre) / radius) ** 2).sum(axis=0) <= 1
    image = rng.normal(100, 20, (*shape, 4)).astype(np.float32)
    image[..., 0] += 60 * np.exp(-(((grid - centre) / 4) ** 2).sum(axis=0))  # a bright 'tumour'
    image[~brain] = 0
    return image


def test_known_labels_on_the_model_grid():
    # an LPS 1 mm grid: no reorientation, no resampling; labels worked out by hand
    image = scan()
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    predictor = Predictor(threshold_model(), PredictSettings(postprocess=False, mode="whole"))
    labels = predictor.predict_arrays(image, affine)
    brain = (image != 0).any(axis=-1)
    t1 = image[..., 0][brain].astype(np.float64)
    z = np.zeros(image.shape[:3])
    z[brain] = (t1 - t1.mean()) / t1.std()
    expected = np.select([z > 3, z > 2, z > 1], [4, 1, 2], 0)
    assert labels.shape == image.shape[:3] and labels.dtype == np.uint8
    assert {1, 2, 4} <= set(np.unique(expected))  # the case exercises every label
    np.testing.assert_array_equal(labels, expected)


@pytest.mark.parametrize("affine", [
    np.diag([1.0, 1.0, 1.0, 1.0]),  # RAS: flipped onto LPS and back
    np.array([[0.0, 0.0, 1.5, -20.0], [-1.0, 0.0, 0.0, 10.0],
              [0.0, 1.2, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]]),  # permuted axes, resampled
], ids=["ras", "permuted_anisotropic"])
def test_arrays_equal_the_file_predict_py_writes(affine, tmp_path, monkeypatch):
    image = scan(seed=1)
    case = tmp_path / "in" / "Case_7"
    case.mkdir(parents=True)
    for channel, name in enumerate(MODALITIES):
        nib.save(nib.Nifti1Image(image[..., channel], affine), case / f"Case_7_{name}.nii.gz")
    monkeypatch.setattr(predict_cli, "load_artifact", lambda *a, **k: threshold_model())
    code = predict_cli.main(["--model", "threshold.keras", "--input", str(case),
                             "--out", str(tmp_path / "out")])
    assert code == 0
    written = nib.load(tmp_path / "out" / "Case_7.nii.gz")
    # what a notebook does: read the four files, stack them, pass the arrays in
    files = [nib.load(case / f"Case_7_{name}.nii.gz") for name in MODALITIES]
    stacked = np.stack([f.get_fdata(dtype=np.float32) for f in files], axis=-1)
    labels = Predictor(threshold_model()).predict_arrays(stacked, files[0].affine)
    assert labels.shape == written.shape
    assert (labels > 0).sum() > 50  # a tumour was found, not two empty maps
    np.testing.assert_array_equal(labels, np.asarray(written.dataobj))


@pytest.mark.parametrize("shape, affine, message", [
    ((30, 28, 26, 3), None, r"^predict_arrays: image of shape \(30, 28, 26, 3\); expected "
                            r"\(X, Y, Z, 4\), channels t1, t1ce, t2, flair$"),
    ((30, 28, 26), None, r"^predict_arrays: image of shape \(30, 28, 26\); expected"),
    ((30, 28, 26, 4), np.eye(3), r"^predict_arrays: affine of shape \(3, 3\); expected \(4, 4\)$"),
])
def test_bad_arrays_are_refused_in_one_line(shape, affine, message):
    with pytest.raises(InputError, match=message):
        Predictor(threshold_model()).predict_arrays(np.ones(shape, np.float32), affine)


def test_an_empty_image_names_the_array():
    with pytest.raises(InputError, match=r"^predict_arrays image: "):
        Predictor(threshold_model()).predict_arrays(np.zeros((20, 20, 20, 4), np.float32))


def test_from_artifact_refuses_unknown_settings():
    with pytest.raises(InputError, match=r"unknown settings overlapp$"):
        Predictor.from_artifact("threshold.keras", overlapp=0.5)
