"""Scores of whole cases: every metric of :mod:`unet3d.evaluation.scores` per BraTS region
of one case (:func:`score_case`), and their summary over cases (:func:`summarize`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_generators.labels import REGIONS, labels_to_regions
from unet3d.evaluation.scores import dice, hd95, iou, sensitivity, specificity

# the metrics scored per region by score_case, in column order
METRICS: tuple[str, ...] = ("Dice", "HD95", "Sensitivity", "Specificity", "IoU")

# the keys of a score_case result, metric-major: Dice_WT, Dice_TC, Dice_ET, HD95_WT, ...
SCORE_KEYS: tuple[str, ...] = tuple(f"{m}_{r}" for m in METRICS for r in REGIONS)

# the statistics summarize gives per metric
STATISTICS: tuple[str, ...] = ("mean", "std", "median")


def score_case(
    pred_labels: np.ndarray,
    true_labels: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    convention: str = "brats2017",
) -> dict[str, float]:
    """Scores one case per BraTS region.

    Args:
        pred_labels: predicted label map ``(X, Y, Z)`` in ``convention``.
        true_labels: ground-truth label map of the same shape and convention.
        spacing: voxel size (mm) per axis, for HD95.
        convention: label convention (:mod:`data_generators.labels`), e.g.
            ``"brats2017"`` (ET = 4) or ``"brats2023"`` (ET = 3).

    Returns:
        ``{"Dice_WT": ..., "Dice_TC": ..., "Dice_ET": ..., "HD95_WT": ...}``:
        one float for each of ``METRICS`` x ``REGIONS``, in ``SCORE_KEYS`` order.

    Raises:
        ValueError: if the shapes differ, a map holds a value outside
            ``convention``, or ``spacing`` is invalid.
    """
    pred_labels, true_labels = np.asarray(pred_labels), np.asarray(true_labels)
    if pred_labels.shape != true_labels.shape:
        raise ValueError(
            f"prediction shape {pred_labels.shape} differs from truth {true_labels.shape}"
        )
    pred_regions = labels_to_regions(pred_labels, convention).astype(bool)
    true_regions = labels_to_regions(true_labels, convention).astype(bool)
    functions = {
        "Dice": dice,
        "HD95": lambda p, t: hd95(p, t, spacing),
        "Sensitivity": sensitivity,
        "Specificity": specificity,
        "IoU": iou,
    }
    scores = {}
    for metric in METRICS:
        for channel, region in enumerate(REGIONS):
            pred, true = pred_regions[..., channel], true_regions[..., channel]
            scores[f"{metric}_{region}"] = float(functions[metric](pred, true))
    return scores


def summarize(rows: Sequence[Mapping[str, object]]) -> dict[str, dict[str, float]]:
    """Mean, standard deviation and median of each metric over cases.

    The standard deviation is the population one (``ddof=0``, numpy's
    default): the evaluated cases are taken as the whole set being described.

    Args:
        rows: one mapping per case, e.g. from :func:`score_case`; keys with
            non-numeric values (such as ``"case"``) are ignored. Metrics are
            taken from the first row, in its order.

    Returns:
        ``{metric: {"mean": ..., "std": ..., "median": ...}}``.

    Raises:
        ValueError: if ``rows`` is empty or a row lacks a metric of the first.
    """
    if not rows:
        raise ValueError("no cases to summarize")
    keys = [
        k
        for k, v in rows[0].items()
        if isinstance(v, int | float | np.number) and not isinstance(v, bool)
    ]
    summary = {}
    for key in keys:
        try:
            values = np.array([float(row[key]) for row in rows], dtype=np.float64)
        except KeyError:
            raise ValueError(f"a case has no {key} score") from None
        summary[key] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values, ddof=0)),
            "median": float(np.median(values)),
        }
    return summary
