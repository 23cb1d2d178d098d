import math

import keras
import numpy as np
import pytest

from unet3d.models.losses import DiceCELoss, SoftDiceLoss, make_loss


def as_volume(values):
    """(B, N) or (B, N, K) lists -> (B, N, 1, 1, K) float32 volumes."""
    arr = np.asarray(values, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    return arr[:, :, None, None, :]


def loss_value(loss, y_true, y_pred):
    return float(loss(as_volume(y_true), as_volume(y_pred)))


def test_half_overlap_is_half():
    # dice = 2*(0.5+0.5) / (2 + 2) = 0.5
    assert loss_value(SoftDiceLoss(smooth=0), [[1, 1, 0, 0]], [[.5, .5, .5, .5]]) \
        == pytest.approx(0.5)


def test_class_weights():
    # channel 0: dice 0.5, channel 1: dice 1; weights 1 and 3 -> (0.5 + 3) / 4
    y_true = [[[1, 0], [1, 0], [0, 1], [0, 1]]]
    y_pred = [[[.5, 0], [.5, 0], [.5, 1], [.5, 1]]]
    loss = SoftDiceLoss(smooth=0, class_weights=[1, 3])
    assert loss_value(loss, y_true, y_pred) == pytest.approx(1 - 3.5 / 4)


def test_per_sample_versus_batch_dice():
    y_true = [[1, 0], [1, 1]]
    y_pred = [[1, 0], [1, 0]]
    # per sample: dice 1 and 2/3 -> mean 5/6; batch: 2*2 / (3 + 2) = 0.8
    assert loss_value(SoftDiceLoss(smooth=0), y_true, y_pred) == pytest.approx(1 / 6)
    assert loss_value(SoftDiceLoss(smooth=0, batch_dice=True), y_true, y_pred) \
        == pytest.approx(0.2)


def test_from_logits_sigmoid_and_softmax():
    assert loss_value(SoftDiceLoss(smooth=0, from_logits=True), [[1, 1, 0, 0]],
                      [[0, 0, 0, 0]]) == pytest.approx(0.5)
    # softmax of equal logits over 2 classes is 0.5 everywhere
    y_true = [[[0, 1], [0, 1], [1, 0], [1, 0]]]
    logits = [[[0, 0]] * 4]
    loss = SoftDiceLoss(smooth=0, from_logits=True, multilabel=False, include_background=False)
    assert loss_value(loss, y_true, logits) == pytest.approx(0.5)


def test_include_background_false_drops_channel_zero():
    y_true = [[[1, 0], [1, 0], [0, 1], [0, 1]]]
    y_pred = [[[0, 1], [0, 1], [0, 1], [0, 1]]]  # background wholly wrong
    kept = SoftDiceLoss(smooth=0, multilabel=False, include_background=False)
    # foreground: 2*2 / (2 + 4) = 2/3
    assert loss_value(kept, y_true, y_pred) == pytest.approx(1 / 3)
    both = SoftDiceLoss(smooth=0, multilabel=False)
    assert loss_value(both, y_true, y_pred) == pytest.approx(1 - (0 + 2 / 3) / 2)


def test_empty_target_and_prediction_scores_perfect_with_smooth():
    assert loss_value(SoftDiceLoss(smooth=1e-5), [[0, 0]], [[0, 0]]) == pytest.approx(0.0)


def test_dice_ce_adds_bce():
    # dice 0.5 and BCE of 0.5 everywhere is ln 2
    value = loss_value(DiceCELoss(smooth=0), [[1, 1, 0, 0]], [[.5, .5, .5, .5]])
    assert value == pytest.approx(0.5 + math.log(2), rel=1e-4)


@pytest.mark.parametrize("kwargs", [
    {"multilabel": True, "include_background": False},
    {"smooth": -1.0},
    {"class_weights": [1, -1]},
])
def test_contradictory_switches_raise(kwargs):
    with pytest.raises(ValueError):
        SoftDiceLoss(**kwargs)


def test_dice_ce_weights_must_not_both_be_zero():
    with pytest.raises(ValueError, match="not both 0"):
        DiceCELoss(dice_weight=0, ce_weight=0)


def test_wrong_number_of_class_weights_raises():
    with pytest.raises(ValueError, match="class_weights"):
        loss_value(SoftDiceLoss(class_weights=[1, 2, 3]), [[1, 0]], [[1, 0]])


@pytest.mark.parametrize("loss", [SoftDiceLoss(smooth=0.5, batch_dice=True),
                                  DiceCELoss(ce_weight=0.3, multilabel=False)])
def test_serialization_round_trip(loss):
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(clone) is type(loss)
    assert clone.get_config() == loss.get_config()


def test_make_loss_modes():
    assert make_loss("dice", "regions").multilabel
    labels_loss = make_loss("dice_ce", "labels")
    assert isinstance(labels_loss, DiceCELoss) and not labels_loss.multilabel
    with pytest.raises(ValueError):
        make_loss("focal", "regions")


def test_make_loss_batch_dice_switch():
    assert not make_loss("dice_ce", "regions").batch_dice
    assert make_loss("dice_ce", "regions", batch_dice=True).batch_dice
    assert make_loss("dice", "labels", batch_dice=True).batch_dice
