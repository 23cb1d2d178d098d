"""How closely an exported model follows the Keras one: probability differences and WT Dice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def whole_tumor(probabilities: np.ndarray, output_mode: str) -> np.ndarray:
    """WT mask: channel 0 > 0.5 (regions) or argmax > 0 (labels), `(..., K)` -> `(...)`."""
    if output_mode == "regions":
        return probabilities[..., 0] > 0.5
    return np.argmax(probabilities, axis=-1) > 0


def agreement(reference: Sequence[np.ndarray], exported: Sequence[np.ndarray],
              output_mode: str) -> dict[str, float]:
    """Differences between two models' probabilities on the same patches.

    Args:
        reference, exported: float32 `(1, D, H, W, K)` per patch.
        output_mode: ``regions`` or ``labels``.

    Returns:
        max / mean absolute difference, WT Dice pooled over the patches, the
        lowest per-patch WT Dice, and the share of voxels whose WT call differs.
    """
    ref = np.concatenate(reference)
    out = np.concatenate(exported)
    wt_ref, wt_out = whole_tumor(ref, output_mode), whole_tumor(out, output_mode)
    per_patch = [dice(a, b) for a, b in zip(wt_ref, wt_out, strict=True)]
    return {
        "max_abs_diff": float(np.abs(ref - out).max()),
        "mean_abs_diff": float(np.abs(ref - out).mean()),
        "dice_wt": dice(wt_ref, wt_out),
        "dice_wt_min": float(min(per_patch)),
        "wt_voxels_differ": float(np.mean(wt_ref != wt_out)),
        "wt_voxels_keras": float(wt_ref.mean()),
    }


def output_mode_of(model) -> str:
    """``labels`` for a softmax output layer, else ``regions``."""
    activation = model.layers[-1].get_config().get("activation") if model.layers else None
    return "labels" if activation == "softmax" else "regions"
