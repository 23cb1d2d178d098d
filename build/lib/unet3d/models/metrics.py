"""Per-region Dice metrics (WT, TC, ET) shown in the progress bar and TensorBoard."""

from __future__ import annotations

import keras
from keras import ops

from data_generators.labels import REGIONS

# class indices (labels output mode) that make up each region
_REGION_CLASSES = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}


def predicted_regions(y_pred, output_mode: str, threshold: float = 0.5):
    """Binary regions `(B, D, H, W, 3)` from model outputs of either mode."""
    if output_mode == "regions":
        return ops.cast(y_pred > threshold, "float32")
    classes = ops.argmax(y_pred, axis=-1)
    return _classes_to_regions(classes)


def target_regions(y_true, output_mode: str):
    """Binary regions `(B, D, H, W, 3)` from regions or one-hot targets."""
    if output_mode == "regions":
        return ops.cast(y_true > 0.5, "float32")
    return _classes_to_regions(ops.argmax(y_true, axis=-1))


def _classes_to_regions(classes):
    channels = []
    for region in REGIONS:
        member = ops.zeros_like(classes, dtype="bool")
        for index in _REGION_CLASSES[region]:
            member = ops.logical_or(member, ops.equal(classes, index))
        channels.append(ops.cast(member, "float32"))
    return ops.stack(channels, axis=-1)


@keras.saving.register_keras_serializable(package="unet3d")
class RegionDice(keras.metrics.Metric):
    """Hard Dice of one tumor region (or their mean), averaged over samples.

    Predictions are binarised (threshold for sigmoid regions, argmax for
    softmax classes). Each sample's Dice is ``2|P & T| / (|P| + |T|)``, and 1
    when both are empty (the BraTS convention); the metric is the mean over
    all samples seen since the last reset.

    Args:
        region: str, default "WT". ``WT``, ``TC``, ``ET`` or ``mean``.
        output_mode: str, default "regions". ``regions`` or ``labels``.
        threshold: float, default 0.5. For sigmoid outputs.
        name: str or None. Default ``dice_<region>`` in lower case.
    """

    def __init__(self, region: str = "WT", output_mode: str = "regions",
                 threshold: float = 0.5, name: str | None = None, **kwargs):
        if region not in (*REGIONS, "mean"):
            raise ValueError(f"region must be one of {REGIONS} or 'mean', got {region!r}")
        if output_mode not in ("regions", "labels"):
            raise ValueError(f"output_mode must be 'regions' or 'labels', got {output_mode!r}")
        super().__init__(name=name or f"dice_{region.lower()}", **kwargs)
        self.region = region
        self.output_mode = output_mode
        self.threshold = threshold
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = predicted_regions(y_pred, self.output_mode, self.threshold)
        true = target_regions(y_true, self.output_mode)
        if self.region != "mean":
            index = REGIONS.index(self.region)
            pred, true = pred[..., index:index + 1], true[..., index:index + 1]
        batch = ops.shape(pred)[0]
        pred = ops.reshape(ops.moveaxis(pred, -1, 1), (batch, pred.shape[-1], -1))
        true = ops.reshape(ops.moveaxis(true, -1, 1), (batch, true.shape[-1], -1))
        intersection = ops.sum(pred * true, axis=-1)
        total = ops.sum(pred, axis=-1) + ops.sum(true, axis=-1)
        dice = ops.where(total > 0, 2.0 * intersection / ops.maximum(total, 1.0), 1.0)
        dice = ops.mean(dice, axis=-1)  # mean over regions (one region: itself)
        self.total.assign_add(ops.sum(dice))
        self.count.assign_add(ops.cast(batch, "float32"))

    def result(self):
        return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), 0.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)

    def get_config(self):
        config = super().get_config()
        config.update(region=self.region, output_mode=self.output_mode, threshold=self.threshold)
        return config


def region_metrics(output_mode: str = "regions") -> list[RegionDice]:
    """Dice of WT, TC, ET and their mean (``dice_mean``, used to pick the best model)."""
    return [RegionDice(region, output_mode) for region in (*REGIONS, "mean")]
