import keras
import numpy as np
import pytest

from unet3d.models.metrics import RegionDice, region_metrics


def volume(rows):
    """(B, N, 3) lists -> (B, N, 1, 1, 3) float32."""
    return np.asarray(rows, dtype=np.float32)[:, :, None, None, :]


def test_region_dice_values():
    # sample 0: WT truth 2 voxels, prediction hits 1 of them plus 1 false -> 2*1/(2+2) = 0.5
    # sample 1: WT both empty -> 1 (BraTS convention)
    y_true = volume([[[1, 0, 0], [1, 0, 0], [0, 0, 0]], [[0, 0, 0]] * 3])
    y_pred = volume([[[0.9, 0, 0], [0.2, 0, 0], [0.7, 0, 0]], [[0.1, 0, 0]] * 3])
    metric = RegionDice("WT")
    metric.update_state(y_true, y_pred)
    assert float(metric.result()) == pytest.approx(0.75)
    # accumulates over batches: a perfect sample brings the mean to (0.5+1+1)/3
    metric.update_state(y_true[:1], y_true[:1])
    assert float(metric.result()) == pytest.approx(2.5 / 3)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_labels_mode_uses_argmax_regions():
    # classes per voxel: truth [3, 2], prediction argmax [1, 2]
    y_true = np.eye(4, dtype=np.float32)[[3, 2]][None, :, None, None, :]
    y_pred = np.eye(4, dtype=np.float32)[[1, 2]][None, :, None, None, :] * 0.9
    dice = {m.name: m for m in region_metrics("labels")}
    for metric in dice.values():
        metric.update_state(y_true, y_pred)
    assert float(dice["dice_wt"].result()) == pytest.approx(1.0)  # both voxels tumor
    assert float(dice["dice_tc"].result()) == pytest.approx(1.0)  # {3} vs {1}: both core
    assert float(dice["dice_et"].result()) == pytest.approx(0.0)  # ET only in truth
    assert float(dice["dice_mean"].result()) == pytest.approx(2 / 3)


def test_bad_region_raises_and_config_round_trips():
    with pytest.raises(ValueError):
        RegionDice("NCR")
    metric = RegionDice("ET", output_mode="labels")
    clone = keras.metrics.deserialize(keras.metrics.serialize(metric))
    assert clone.get_config() == metric.get_config()
