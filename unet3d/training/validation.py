"""Validation of whole preprocessed volumes at the end of a run."""

from __future__ import annotations

import numpy as np

from data_generators.labels import REGIONS, classes_to_regions
from unet3d.evaluation.scores import region_dice
from unet3d.inference.predictor import predict_whole, slice_predict_fn
from unet3d.models.forward import keras_predict_fn


def evaluate_volumes(model, cases, stride: int, output_mode: str,
                     spatial_dims: int = 3) -> dict[str, dict[str, float]]:
    """Dice per region of whole preprocessed volumes (slice by slice for a 2D network):
    ``{case_id: {"WT": ..}}``."""
    scores, predict_fn, multiple = {}, keras_predict_fn(model), (stride,) * 3
    if spatial_dims == 2:
        predict_fn, multiple = slice_predict_fn(predict_fn), (stride, stride, 1)
    for case in cases:
        probs = predict_whole(predict_fn, np.asarray(case.image), multiple)
        if output_mode == "regions":
            pred = probs > 0.5
        else:
            pred = classes_to_regions(np.argmax(probs, axis=-1)).astype(bool)
        truth = classes_to_regions(np.asarray(case.label)).astype(bool)
        scores[case.case_id] = dict(zip(REGIONS, region_dice(pred, truth), strict=True))
    return scores
