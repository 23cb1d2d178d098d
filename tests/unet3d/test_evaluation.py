"""Segmentation scores: values worked out by hand and checked by brute force."""

from __future__ import annotations

import itertools
import math

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import BRATS_DIR, require_brats
from unet3d.evaluation.case_scores import SCORE_KEYS, score_case, summarize
from unet3d.evaluation.scores import (
    HD95_EMPTY,
    dice,
    hd95,
    iou,
    region_dice,
    sensitivity,
    specificity,
    surface_distances,
)


def line(values) -> np.ndarray:
    """A 1D list -> a (1, 1, N) volume, so scores run on real 3D arrays."""
    return np.asarray(values)[None, None, :]


# truth 1111000000, pred 1100100000: TP=2 (voxels 0,1), FN=2 (2,3), FP=1 (4), TN=5 (5..9)
TRUTH = line([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
PRED = line([1, 1, 0, 0, 1, 0, 0, 0, 0, 0])
ZERO, ONE = np.zeros((1, 1, 4)), np.ones((1, 1, 4))
HALF = line([1, 1, 0, 0])


@pytest.mark.parametrize(
    ("function", "pred", "truth", "expected"),
    [
        # Dice 2TP/(2TP+FP+FN) = 4/(4+1+2)
        (dice, PRED, TRUTH, 4 / 7),
        # IoU TP/(TP+FP+FN) = 2/(2+1+2)
        (iou, PRED, TRUTH, 2 / 5),
        # sensitivity TP/(TP+FN) = 2/4
        (sensitivity, PRED, TRUTH, 0.5),
        # specificity TN/(TN+FP) = 5/6
        (specificity, PRED, TRUTH, 5 / 6),
        # swapping roles: TP=2, FP=2, FN=1, TN=5
        (sensitivity, TRUTH, PRED, 2 / 3),
        (specificity, TRUTH, PRED, 5 / 7),
        (dice, TRUTH, PRED, 4 / 7),
        # identical masks
        (dice, TRUTH, TRUTH, 1.0),
        (iou, TRUTH, TRUTH, 1.0),
        (sensitivity, TRUTH, TRUTH, 1.0),
        (specificity, TRUTH, TRUTH, 1.0),
        # disjoint masks: TP=0
        (dice, HALF, 1 - HALF, 0.0),
        (iou, HALF, 1 - HALF, 0.0),
        (sensitivity, HALF, 1 - HALF, 0.0),
        (specificity, HALF, 1 - HALF, 0.0),
        # any non-zero value is foreground: labels 4 and 2 count as 1
        (dice, PRED * 4, TRUTH * 2, 4 / 7),
    ],
)
def test_overlap_scores(function, pred, truth, expected):
    assert function(pred, truth) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("pred", "truth", "expected"),
    [
        # both empty: everything perfect
        (ZERO, ZERO, {"dice": 1, "iou": 1, "sens": 1, "spec": 1, "hd95": 0}),
        # empty truth, false detection of 2 of 4 voxels: TN=2, FP=2
        (HALF, ZERO, {"dice": 0, "iou": 0, "sens": 0, "spec": 0.5, "hd95": HD95_EMPTY}),
        # missed tumour: TP=0, FN=2, TN=2, FP=0
        (ZERO, HALF, {"dice": 0, "iou": 0, "sens": 0, "spec": 1, "hd95": HD95_EMPTY}),
        # truth fills the volume: no negatives -> specificity 1. HD95: every voxel of a
        # 1x1xN mask is surface; pred -> truth 0, 0; truth -> pred 0, 0, 1, 2. Sorted
        # 0,0,0,0,1,2: position 0.95 * 5 = 4.75 -> 1 + 0.75 * (2 - 1) = 1.75
        (HALF, ONE, {"dice": 2 / 3, "iou": 0.5, "sens": 0.5, "spec": 1, "hd95": 1.75}),
    ],
)
def test_empty_mask_conventions(pred, truth, expected):
    got = {
        "dice": dice(pred, truth),
        "iou": iou(pred, truth),
        "sens": sensitivity(pred, truth),
        "spec": specificity(pred, truth),
        "hd95": hd95(pred, truth),
    }
    assert got == pytest.approx(expected)


def test_hd95_empty_constant_is_the_brats_diagonal():
    assert HD95_EMPTY == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=0.01)


def cube_pair(gap: int, offset=(0, 0)) -> tuple[np.ndarray, np.ndarray]:
    """Two solid 3x3x3 cubes whose facing x faces are ``gap`` voxels apart.

    Cube A spans x 1..3, cube B x (3+gap)..(5+gap); B is shifted by ``offset`` in (y, z).
    """
    shape = (8 + gap, 8, 8)
    a, b = np.zeros(shape, bool), np.zeros(shape, bool)
    a[1:4, 2:5, 2:5] = True
    dy, dz = offset
    b[3 + gap : 6 + gap, 2 + dy : 5 + dy, 2 + dz : 5 + dz] = True
    return a, b


def brute_force_hd95(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """HD95 from all pairwise distances between surface voxels, without scipy.

    A surface voxel is a mask voxel with at least one of its 6 face neighbours
    outside the mask (outside the array counts as outside).
    """

    def surface(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis, step in itertools.product(range(3), (-1, 1)):
            inner &= np.roll(padded, step, axis=axis)[1:-1, 1:-1, 1:-1]
        return mask & ~inner

    pa = np.argwhere(surface(a)) * np.asarray(spacing, float)
    pb = np.argwhere(surface(b)) * np.asarray(spacing, float)
    pairwise = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(np.concatenate([pairwise.min(1), pairwise.min(0)]), 95))


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        # A surface: 26 voxels (the 3x3x3 cube minus its centre): 9 at x=1, 8 at x=2,
        # 9 at x=3; nearest B surface voxel is straight ahead on B's face at x=13,
        # distances 12, 11, 10. B is the mirror image. Pooled: 18x10, 16x11, 18x12;
        # sorted positions 34..51 hold 12, and 0.95 * 51 = 48.45 -> 12.
        ((1.0, 1.0, 1.0), 12.0),
        # 2 mm along x doubles every distance
        ((2.0, 1.0, 1.0), 24.0),
        # spacing along y and z does not matter: the nearest points share y and z
        ((1.0, 3.0, 0.5), 12.0),
    ],
)
def test_hd95_of_two_cubes_ten_voxels_apart(spacing, expected):
    a, b = cube_pair(gap=10)
    assert hd95(a, b, spacing) == pytest.approx(expected)
    assert hd95(b, a, spacing) == pytest.approx(expected)
    assert brute_force_hd95(a, b, spacing) == pytest.approx(expected)
    distances = surface_distances(a, b, spacing)
    assert distances.shape == (52,)
    assert sorted(np.unique(distances / spacing[0]).tolist()) == [10.0, 11.0, 12.0]


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [
        # single voxels at (0,0,0) and (3,4,0): both distances 5
        ((1.0, 1.0, 1.0), 5.0),
        # x at 2 mm: sqrt(6**2 + 4**2)
        ((2.0, 1.0, 1.0), math.sqrt(52)),
        ((1.0, 1.0, 7.0), 5.0),
    ],
)
def test_hd95_single_voxels_anisotropic(spacing, expected):
    a, b = np.zeros((5, 5, 2), bool), np.zeros((5, 5, 2), bool)
    a[0, 0, 0] = True
    b[3, 4, 0] = True
    assert hd95(a, b, spacing) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("offset", "spacing"),
    [((0, 0), (1.0, 1.0, 1.0)), ((1, 2), (1.0, 1.0, 1.0)), ((2, -1), (1.2, 0.7, 2.5))],
)
def test_hd95_matches_brute_force_for_shifted_cubes(offset, spacing):
    a, b = cube_pair(gap=3, offset=offset)
    assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_matches_brute_force_for_random_blobs(seed):
    rng = np.random.default_rng(seed)
    a = rng.random((9, 8, 7)) < 0.3
    b = rng.random((9, 8, 7)) < 0.2
    spacing = (0.9, 1.5, 3.0)
    assert hd95(a, b, spacing) == pytest.approx(brute_force_hd95(a, b, spacing))


def test_hd95_of_overlapping_masks_interpolates():
    # pred 1110, truth 1100 on a 1x1x4 line (all voxels are surface):
    # pred -> truth 0, 0, 1; truth -> pred 0, 0. Sorted 0,0,0,0,1:
    # position 0.95 * 4 = 3.8 -> 0 + 0.8 * (1 - 0) = 0.8
    assert hd95(line([1, 1, 1, 0]), line([1, 1, 0, 0])) == pytest.approx(0.8)
    assert hd95(line([1, 1, 1, 0]), line([1, 1, 0, 0]), (1, 1, 2.5)) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("function", "kwargs"),
    [(iou, {}), (sensitivity, {}), (specificity, {}), (hd95, {})],
)
def test_shape_mismatch_raises(function, kwargs):
    with pytest.raises(ValueError, match="shape"):
        function(np.ones((2, 2, 2)), np.ones((2, 2, 3)), **kwargs)


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0)])
def test_hd95_bad_spacing_raises(spacing):
    with pytest.raises(ValueError, match="spacing"):
        hd95(np.ones((2, 2, 2)), np.ones((2, 2, 2)), spacing)


def test_region_dice_unchanged():
    truth = np.stack([TRUTH, np.zeros_like(TRUTH)], axis=-1)
    pred = np.stack([PRED, np.zeros_like(PRED)], axis=-1)
    assert region_dice(pred, truth) == pytest.approx([4 / 7, 1.0])


# brats2017 labels along a 1x1x10 line (spacing 2 mm along z):
#   truth 4 4 1 1 2 2 0 0 0 0   WT z0..5, TC z0..3, ET z0..1
#   pred  4 1 1 1 2 2 2 0 0 0   WT z0..6, TC z0..3, ET z0
HAND_TRUTH = line([4, 4, 1, 1, 2, 2, 0, 0, 0, 0])
HAND_PRED = line([4, 1, 1, 1, 2, 2, 2, 0, 0, 0])
HAND_SCORES = {
    # WT: TP=6, FP=1, FN=0, TN=3
    "Dice_WT": 12 / 13,
    "IoU_WT": 6 / 7,
    "Sensitivity_WT": 1.0,
    "Specificity_WT": 3 / 4,
    # truth -> pred: six 0s; pred -> truth: six 0s and 1 voxel (2 mm); 13 values,
    # position 0.95 * 12 = 11.4 -> 0 + 0.4 * 2 mm
    "HD95_WT": 0.8,
    # TC: identical
    "Dice_TC": 1.0,
    "IoU_TC": 1.0,
    "Sensitivity_TC": 1.0,
    "Specificity_TC": 1.0,
    "HD95_TC": 0.0,
    # ET: TP=1, FN=1, FP=0, TN=8
    "Dice_ET": 2 / 3,
    "IoU_ET": 1 / 2,
    "Sensitivity_ET": 1 / 2,
    "Specificity_ET": 1.0,
    # distances 0 (pred z0), 0 and 2 mm (truth z0, z1): position 0.95 * 2 = 1.9 -> 1.8 mm
    "HD95_ET": 1.8,
}


def test_score_case_by_hand():
    scores = score_case(HAND_PRED, HAND_TRUTH, spacing=(1.0, 1.0, 2.0))
    assert list(scores) == list(SCORE_KEYS)
    assert scores == pytest.approx(HAND_SCORES)


def test_score_case_brats2023_and_empty_regions():
    # ET is 3 in brats2023; the truth has no ET, the prediction has one ET voxel
    truth = line([2, 2, 1, 0])
    pred = line([2, 2, 1, 3])
    scores = score_case(pred, truth, convention="brats2023")
    assert scores["Dice_ET"] == 0.0
    assert scores["HD95_ET"] == HD95_EMPTY
    assert scores["Sensitivity_ET"] == 0.0
    # both without ET: perfect
    scores = score_case(truth, truth, convention="brats2023")
    assert scores["Dice_ET"] == 1.0
    assert scores["HD95_ET"] == 0.0
    assert scores["IoU_ET"] == 1.0
    # the same map under brats2017 has an unknown value 3
    with pytest.raises(ValueError, match="3"):
        score_case(pred, truth, convention="brats2017")


def test_score_case_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        score_case(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def test_summarize_mean_std_median():
    rows = [
        {"case": "a", "Dice_WT": 0.0, "HD95_WT": 10.0},
        {"case": "b", "Dice_WT": 0.5, "HD95_WT": 2.0},
        {"case": "c", "Dice_WT": 1.0, "HD95_WT": 0.0},
    ]
    summary = summarize(rows)
    assert list(summary) == ["Dice_WT", "HD95_WT"]
    # population std: sqrt(((0-.5)^2 + 0 + (1-.5)^2) / 3) = sqrt(1/6)
    assert summary["Dice_WT"] == pytest.approx(
        {"mean": 0.5, "std": math.sqrt(1 / 6), "median": 0.5}
    )
    # mean 4, deviations 6, -2, -4 -> var (36+4+16)/3; median 2
    assert summary["HD95_WT"] == pytest.approx(
        {"mean": 4.0, "std": math.sqrt(56 / 3), "median": 2.0}
    )
    with pytest.raises(ValueError):
        summarize([])


def test_real_ground_truth_scored_against_itself():
    require_brats()
    seg = sorted(BRATS_DIR.glob("*/*_seg.nii.gz"))[0]
    img = nib.load(str(seg))
    labels = np.asarray(img.dataobj).astype(np.uint8)
    spacing = img.header.get_zooms()[:3]
    scores = score_case(labels, labels, spacing)
    for region in ("WT", "TC", "ET"):
        assert scores[f"Dice_{region}"] == 1.0
        assert scores[f"HD95_{region}"] == 0.0
        assert scores[f"IoU_{region}"] == 1.0
        assert scores[f"Sensitivity_{region}"] == 1.0
        assert scores[f"Specificity_{region}"] == 1.0
    # and a shifted copy scores worse, with a finite HD95 of a few voxels
    shifted = np.roll(labels, 2, axis=0)
    worse = score_case(shifted, labels, spacing)
    assert worse["Dice_WT"] < 1.0
    assert 0.0 < worse["HD95_WT"] <= 2.0 * float(spacing[0]) + 1e-6
