"""Lesion-wise Dice and HD95 (BraTS 2023 rules): cases worked out by hand, and the real
shared cases against panoptica (in its own venv, .venv-panoptica)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REPO, require_brats
from unet3d.evaluation.lesionwise import LESION_MISS_HD95, lesion_scores
from unet3d.evaluation.scores import hd95

PANOPTICA = REPO / ".venv-panoptica" / "bin" / "python"
REGIONS = {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}


def cube(mask, corner, size):
    mask[tuple(slice(c, c + size) for c in corner)] = True


def blank():
    return np.zeros((40, 40, 40), bool)


def test_missed_lesion_and_false_positive_each_count_as_a_lesion_scoring_zero():
    truth, pred = blank(), blank()
    cube(truth, (2, 2, 2), 4)  # 64 mm^3: counted
    cube(truth, (20, 20, 20), 4)  # missed
    cube(pred, (2, 2, 2), 4)  # found exactly
    cube(pred, (30, 2, 30), 3)  # a false positive far from both
    got = lesion_scores(pred, truth)
    assert got["lesions"] == 2 and got["missed"] == 1 and got["false_positives"] == 1
    assert got["dice"] == pytest.approx((1 + 0 + 0) / 3)
    assert got["hd95"] == pytest.approx((0 + 2 * LESION_MISS_HD95) / 3)


def test_small_lesions_are_left_out_and_their_matches_are_not_false_positives():
    truth, pred = blank(), blank()
    cube(truth, (2, 2, 2), 5)  # 125 mm^3
    cube(truth, (25, 25, 25), 3)  # 27 mm^3 <= 50: left out
    pred[2:7, 2:7, 2:6] = True  # 100 of the 125 voxels
    cube(pred, (25, 25, 25), 3)
    got = lesion_scores(pred, truth)
    assert got["lesions"] == 1 and got["false_positives"] == 0
    assert got["dice"] == pytest.approx(2 * 100 / (100 + 125))
    assert got["hd95"] == pytest.approx(hd95(pred[:20], truth[:20]))
    # on 2 mm voxels the small lesion holds 27 * 8 = 216 mm^3 and counts
    assert lesion_scores(pred, truth, spacing=(2, 2, 2))["lesions"] == 2


def test_lesions_within_the_dilation_merge_and_near_predictions_match():
    truth, pred = blank(), blank()
    cube(truth, (5, 5, 5), 4)
    cube(truth, (5, 5, 11), 4)  # 2 voxels apart: the 3-voxel dilations touch
    cube(pred, (5, 5, 5), 4)
    cube(pred, (15, 5, 5), 4)  # 6 voxels from the first lesion: outside its dilation
    cube(pred, (5, 11, 5), 4)  # 2 voxels away, not touching: inside the dilation
    merged = lesion_scores(pred, truth)
    assert merged["lesions"] == 1 and merged["false_positives"] == 1
    found = np.zeros_like(pred)
    cube(found, (5, 5, 5), 4)
    cube(found, (5, 11, 5), 4)
    assert merged["dice"] == pytest.approx(
        2 * (found & truth).sum() / (found.sum() + truth.sum()) / 2)
    separate = lesion_scores(pred, truth, dilation=0)
    assert separate["lesions"] == 2 and separate["missed"] == 1
    assert separate["false_positives"] == 2


@pytest.mark.parametrize(("has_pred", "has_truth", "dice", "distance"), [
    (False, False, 1.0, 0.0), (True, False, 0.0, LESION_MISS_HD95),
    (False, True, 0.0, LESION_MISS_HD95)])
def test_empty_maps(has_pred, has_truth, dice, distance):
    truth, pred = blank(), blank()
    if has_truth:
        cube(truth, (2, 2, 2), 5)
    if has_pred:
        cube(pred, (2, 2, 2), 5)
    got = lesion_scores(pred, truth)
    assert (got["dice"], got["hd95"]) == (dice, distance)


@pytest.fixture(scope="module")
def predictions(tmp_path_factory) -> Path:
    """The shipped model's segmentations of three real cases."""
    root = tmp_path_factory.mktemp("lesionwise")
    cases = root / "cases"
    cases.mkdir()
    for name in sorted(p.name for p in require_brats().iterdir() if p.is_dir())[:3]:
        (cases / name).symlink_to(require_brats() / name, target_is_directory=True)
    done = subprocess.run([sys.executable, str(REPO / "predict.py"), "--input", str(cases),
                           "--out", str(root / "preds")], capture_output=True, text=True,
                          cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    return root


@pytest.mark.slow
def test_equal_to_panoptica_on_real_cases_without_the_dilation(predictions, tmp_path):
    """panoptica matches lesions by overlap alone; without the challenge's 3-voxel
    dilation (docs/lesionwise.md) our scores equal its to 1e-3 on every region."""
    if not PANOPTICA.is_file():
        pytest.fail(f"{PANOPTICA} missing: make test builds the panoptica venv")
    arrays, ours = {}, {}
    for pred_path in sorted((predictions / "preds").glob("*.nii.gz")):
        case = pred_path.name.removesuffix(".nii.gz")
        image = nib.load(pred_path)
        pred = np.asarray(image.dataobj)
        truth = np.asarray(nib.load(require_brats() / case / f"{case}_seg.nii.gz").dataobj)
        spacing = np.array(image.header.get_zooms()[:3], float)
        for region, values in REGIONS.items():
            name = f"{case}:{region}"
            arrays[f"{name}/pred"], arrays[f"{name}/truth"] = (np.isin(pred, values),
                                                              np.isin(truth, values))
            arrays[f"{name}/spacing"] = spacing
            ours[name] = lesion_scores(arrays[f"{name}/pred"], arrays[f"{name}/truth"],
                                       spacing, dilation=0)
    np.savez_compressed(tmp_path / "cases.npz", **arrays)
    done = subprocess.run([str(PANOPTICA), str(REPO / "tests" / "panoptica_worker.py"),
                           str(tmp_path / "cases.npz"), str(tmp_path / "panoptica.json")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads((tmp_path / "panoptica.json").read_text())
    assert sorted(theirs) == sorted(ours) and len(ours) == 9
    for name, scores in ours.items():
        for key in ("dice", "hd95"):
            assert scores[key] == pytest.approx(theirs[name][key], abs=1e-3), (name, key)
        assert scores["lesions"] == theirs[name]["lesions"], name
        assert scores["false_positives"] == theirs[name]["false_positives"], name


@pytest.mark.slow
def test_evaluate_cli_adds_the_lesion_columns(predictions):
    done = subprocess.run([sys.executable, "-m", "unet3d.cli.evaluate", "--pred",
                           str(predictions / "preds"), "--gt", str(predictions / "cases"),
                           "--lesionwise"], capture_output=True, text=True, cwd=REPO,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((predictions / "preds" / "evaluation.csv").open()))
    lesion_columns = [k for k in rows[0] if "Lesion" in k]
    assert len(lesion_columns) == 15 and "LesionDice_ET" in lesion_columns
    assert "LesionDice_WT" in done.stdout
    for row in rows:  # the CSV holds the module's own numbers at the challenge's settings
        case = row["case"]
        pred = np.asarray(nib.load(predictions / "preds" / f"{case}.nii.gz").dataobj)
        truth = np.asarray(nib.load(require_brats() / case / f"{case}_seg.nii.gz").dataobj)
        got = lesion_scores(np.isin(pred, REGIONS["WT"]), np.isin(truth, REGIONS["WT"]))
        assert float(row["LesionDice_WT"]) == pytest.approx(got["dice"])
