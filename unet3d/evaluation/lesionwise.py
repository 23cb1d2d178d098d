"""Lesion-wise Dice and HD95, as the BraTS 2023 challenge scores glioma segmentations.

Voxel Dice hides a missed small lesion behind a large one found; the lesion-wise scores
average over lesions instead, per region (WT, TC, ET), following the challenge's own
code (``rachitsaluja/BraTS-2023-Metrics``, ``get_LesionWiseScores``):

1. Ground-truth lesions are the 26-connected components of the region; lesions whose
   dilations (``dilation`` iterations of the 18-connected structure, 3 for gliomas)
   touch are merged into one lesion (their own voxels only).
2. Each lesion is matched with every predicted component (26-connected, whole) that
   touches its dilation; a predicted component may serve several lesions.
3. A lesion scores the Dice and HD95 of its matched components against it; a lesion
   nothing touches scores Dice 0 and HD95 374 mm. Lesions of ``min_volume_mm3`` (50)
   or less are left out of the average (their matched components are not false
   positives either).
4. Each predicted component that touches no lesion is a false positive: Dice 0 and
   HD95 374 mm. The case's score is the mean over lesions and false positives; with
   neither (both maps empty), Dice 1 and HD95 0.

HD95 is :func:`unet3d.evaluation.scores.hd95` (both directions' surface distances
pooled, their 95th percentile), which is also what panoptica computes; the
challenge's code weights the surface elements by their area (DeepMind's
``surface_distance``), which gives slightly different values on the same masks.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from data_generators.labels import REGIONS, labels_to_regions
from unet3d.evaluation.scores import dice, hd95

LESION_MISS_HD95 = 374.0  # the 2023 rules' HD95 of a missed lesion or a false positive
LESION_KEYS = tuple(f"{m}_{r}" for m in ("LesionDice", "LesionHD95", "LesionCount",
                                         "LesionMissed", "LesionFalsePositives")
                    for r in REGIONS)
_CONNECTIVITY_26 = np.ones((3, 3, 3), bool)


def lesion_scores(prediction: np.ndarray, truth: np.ndarray,
                  spacing: Sequence[float] = (1.0, 1.0, 1.0), dilation: int = 3,
                  min_volume_mm3: float = 50.0) -> dict[str, float]:
    """Lesion-wise scores of one region's binary masks.

    Returns:
        ``{"dice", "hd95", "lesions" (counted), "missed", "false_positives"}``.
    """
    prediction, truth = np.asarray(prediction, bool), np.asarray(truth, bool)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth "
                         f"{truth.shape}")
    spacing = tuple(float(s) for s in spacing)
    structure = ndimage.generate_binary_structure(truth.ndim, 2)  # 18-connected in 3D
    pred_components, n_pred = ndimage.label(prediction, structure=_CONNECTIVITY_26)
    if dilation:  # lesions closer than their dilations are one lesion
        grown = ndimage.binary_dilation(truth, structure=structure, iterations=dilation)
        lesions = ndimage.label(grown, structure=_CONNECTIVITY_26)[0] * truth
    else:
        lesions = ndimage.label(truth, structure=_CONNECTIVITY_26)[0]
    voxel_mm3 = float(np.prod(spacing))
    matched: set[int] = set()
    dices, distances, missed = [], [], 0
    margin = dilation + 1
    for index, box in enumerate(ndimage.find_objects(lesions), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - margin, 0), s.stop + margin) for s in box)
        lesion = lesions[box] == index
        reach = ndimage.binary_dilation(lesion, structure=structure,
                                        iterations=dilation) if dilation else lesion
        hits = np.unique(pred_components[box][reach])
        hits = hits[hits != 0]
        matched.update(int(h) for h in hits)
        if lesion.sum() * voxel_mm3 <= min_volume_mm3:
            continue
        if hits.size == 0:
            dices.append(0.0)
            distances.append(LESION_MISS_HD95)
            missed += 1
            continue
        found = np.isin(pred_components, hits)
        whole = lesions == index
        dices.append(dice(found, whole))
        distances.append(hd95(found, whole, spacing))
    false_positives = n_pred - len(matched)
    count = len(dices) + false_positives
    if count == 0:
        return {"dice": 1.0, "hd95": 0.0, "lesions": 0, "missed": 0, "false_positives": 0}
    return {"dice": float(sum(dices) / count),
            "hd95": float((sum(distances) + LESION_MISS_HD95 * false_positives) / count),
            "lesions": len(dices), "missed": missed, "false_positives": int(false_positives)}


def lesionwise_case(pred_labels: np.ndarray, true_labels: np.ndarray,
                    spacing: Sequence[float] = (1.0, 1.0, 1.0),
                    convention: str = "brats2017", dilation: int = 3,
                    min_volume_mm3: float = 50.0) -> dict[str, float]:
    """The lesion-wise columns of one case, in :data:`LESION_KEYS` order."""
    pred_regions = labels_to_regions(np.asarray(pred_labels), convention).astype(bool)
    true_regions = labels_to_regions(np.asarray(true_labels), convention).astype(bool)
    scores = {}
    for channel, region in enumerate(REGIONS):
        found = lesion_scores(pred_regions[..., channel], true_regions[..., channel],
                              spacing, dilation, min_volume_mm3)
        scores[f"LesionDice_{region}"] = found["dice"]
        scores[f"LesionHD95_{region}"] = found["hd95"]
        scores[f"LesionCount_{region}"] = float(found["lesions"])
        scores[f"LesionMissed_{region}"] = float(found["missed"])
        scores[f"LesionFalsePositives_{region}"] = float(found["false_positives"])
    return {key: scores[key] for key in LESION_KEYS}
