"""Segmentation scores of one pair of masks in numpy, with the BraTS conventions for empty
masks (:mod:`unet3d.evaluation.case_scores` scores whole cases per region with them).

Every score compares a binary ``prediction`` mask with a binary ``truth`` mask
of the same shape. Counts are taken over the whole volume: TP (in both), FP
(prediction only), FN (truth only), TN (in neither).

Conventions for empty masks, as in the BraTS challenge:

* Dice ``2TP / (2TP + FP + FN)`` and IoU ``TP / (TP + FP + FN)``: 1 when both
  masks are empty, 0 when exactly one is.
* HD95 (:func:`hd95`): 0 when both are empty, ``HD95_EMPTY`` (373.13 mm) when
  exactly one is.
* Sensitivity ``TP / (TP + FN)`` is undefined when the truth is empty (no
  positives); it is then 1 if the prediction is empty too and 0 if the
  prediction has any voxel, so a false detection is penalised.
* Specificity ``TN / (TN + FP)`` is undefined when there are no negatives (the
  truth fills the volume); it is then 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# the HD95 given when exactly one mask is empty: the diagonal of the 240x240x155
# BraTS volume at 1 mm, sqrt(240**2 + 240**2 + 155**2), as the challenge scores it
HD95_EMPTY = 373.13


def _masks(prediction: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth {truth.shape}")
    return prediction, truth


def _counts(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, int, int]:
    """(TP, FP, FN, TN) of two boolean masks of the same shape."""
    tp = int(np.count_nonzero(prediction & truth))
    n_pred = int(np.count_nonzero(prediction))
    n_true = int(np.count_nonzero(truth))
    fp, fn = n_pred - tp, n_true - tp
    tn = int(truth.size) - tp - fp - fn
    return tp, fp, fn, tn


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (BraTS convention).

    Args:
        prediction: binary mask (any non-zero value is foreground).
        truth: binary mask of the same shape.

    Returns:
        ``2 TP / (|prediction| + |truth|)``, in [0, 1].
    """
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(prediction, truth).sum() / total)


def region_dice(pred_regions: np.ndarray, true_regions: np.ndarray) -> list[float]:
    """Dice per region channel of `(..., R)` binary region maps."""
    return [dice(pred_regions[..., r], true_regions[..., r]) for r in range(true_regions.shape[-1])]


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union (Jaccard index); 1.0 when both masks are empty.

    Args:
        prediction: binary mask.
        truth: binary mask of the same shape.

    Returns:
        ``TP / (TP + FP + FN)``, in [0, 1].

    Raises:
        ValueError: if the shapes differ.
    """
    tp, fp, fn, _ = _counts(*_masks(prediction, truth))
    union = tp + fp + fn
    return 1.0 if union == 0 else tp / union


def sensitivity(prediction: np.ndarray, truth: np.ndarray) -> float:
    """True-positive rate (recall).

    Args:
        prediction: binary mask.
        truth: binary mask of the same shape.

    Returns:
        ``TP / (TP + FN)``. With an empty truth it is undefined; then 1.0 if
        the prediction is empty too, else 0.0.

    Raises:
        ValueError: if the shapes differ.
    """
    tp, fp, fn, _ = _counts(*_masks(prediction, truth))
    if tp + fn == 0:
        return 1.0 if fp == 0 else 0.0
    return tp / (tp + fn)


def specificity(prediction: np.ndarray, truth: np.ndarray) -> float:
    """True-negative rate over the whole volume.

    Args:
        prediction: binary mask.
        truth: binary mask of the same shape.

    Returns:
        ``TN / (TN + FP)``; 1.0 when the truth has no negatives (fills the
        volume) or the volume is empty.

    Raises:
        ValueError: if the shapes differ.
    """
    _, fp, _, tn = _counts(*_masks(prediction, truth))
    return 1.0 if tn + fp == 0 else tn / (tn + fp)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a 6-connected (face) neighbour outside the mask or the array."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask ^ ndimage.binary_erosion(mask, structure=structure, iterations=1)


def surface_distances(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Distances from each surface voxel of one mask to the other mask's surface.

    Surfaces as in medpy: ``mask XOR binary_erosion(mask)`` with the
    face-connectivity structure (voxels on the array border count as surface).
    Both masks must be non-empty.

    Args:
        prediction: binary mask.
        truth: binary mask of the same shape.
        spacing: voxel size along each axis (mm), e.g. the NIfTI zooms.

    Returns:
        1D float array: prediction-to-truth distances followed by
        truth-to-prediction distances, in the units of ``spacing``.

    Raises:
        ValueError: if the shapes differ, ``spacing`` does not give one
            positive size per axis, or a mask is empty.
    """
    prediction, truth = _masks(prediction, truth)
    spacing = _check_spacing(spacing, prediction.ndim)
    if not prediction.any() or not truth.any():
        raise ValueError("surface distances need two non-empty masks")
    # crop to the bounding box of both masks: exact, since every surface voxel
    # lies inside it and everything outside it is background for both masks
    coords = np.argwhere(prediction | truth)
    box = tuple(
        slice(int(lo), int(hi) + 1) for lo, hi in zip(coords.min(0), coords.max(0), strict=True)
    )
    pred_surface, true_surface = _surface(prediction[box]), _surface(truth[box])
    to_truth = ndimage.distance_transform_edt(~true_surface, sampling=spacing)[pred_surface]
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=spacing)[true_surface]
    return np.concatenate([to_truth, to_pred])


def hd95(
    prediction: np.ndarray, truth: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> float:
    """95th percentile of the symmetric surface distances (BraTS / medpy HD95).

    The distances from every surface voxel of each mask to the nearest surface
    voxel of the other (:func:`surface_distances`), both directions pooled,
    and their 95th percentile with ``np.percentile``'s linear interpolation.

    Args:
        prediction: binary mask.
        truth: binary mask of the same shape.
        spacing: voxel size along each axis (mm), honoured for anisotropic voxels.

    Returns:
        The distance in the units of ``spacing``: 0.0 when both masks are empty,
        ``HD95_EMPTY`` when exactly one is.

    Raises:
        ValueError: if the shapes differ or ``spacing`` is not one positive
            size per axis.
    """
    prediction, truth = _masks(prediction, truth)
    _check_spacing(spacing, prediction.ndim)
    has_pred, has_truth = bool(prediction.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return HD95_EMPTY
    return float(np.percentile(surface_distances(prediction, truth, spacing), 95))


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(np.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be {ndim} positive sizes, got {tuple(spacing)}")
    return values
