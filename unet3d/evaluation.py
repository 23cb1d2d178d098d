"""Segmentation scores in numpy, with the BraTS conventions for empty masks."""

from __future__ import annotations

import numpy as np


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (BraTS convention)."""
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    total = prediction.sum() + truth.sum()
    if total == 0:
        return 1.0
    return float(2.0 * np.logical_and(prediction, truth).sum() / total)


def region_dice(pred_regions: np.ndarray, true_regions: np.ndarray) -> list[float]:
    """Dice per region channel of `(..., R)` binary region maps."""
    return [dice(pred_regions[..., r], true_regions[..., r]) for r in range(true_regions.shape[-1])]
