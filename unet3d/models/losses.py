"""Soft Dice losses for multi-class / multi-label 3D segmentation.

Tensors are channels-last: ``y_true`` and ``y_pred`` are `(B, D, H, W, K)`;
``y_true`` is one-hot (softmax outputs) or multi-hot regions (sigmoid outputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops


def _check_switches(multilabel: bool, include_background: bool, smooth: float) -> None:
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0, got {smooth}")
    if multilabel and not include_background:
        raise ValueError(
            "include_background=False needs softmax outputs whose channel 0 is "
            "background; multilabel (sigmoid region) outputs have no background channel"
        )


def _probabilities(y_pred, from_logits: bool, multilabel: bool):
    if not from_logits:
        return y_pred
    return ops.sigmoid(y_pred) if multilabel else ops.softmax(y_pred, axis=-1)


@keras.saving.register_keras_serializable(package="unet3d")
class SoftDiceLoss(keras.losses.Loss):
    """Weighted multi-class soft Dice loss of Isensee et al. 2017.

    ``loss = 1 - sum_k w_k * dice_k / sum_k w_k`` with
    ``dice_k = (2 * sum(u_k * v_k) + smooth) / (sum(u_k) + sum(v_k) + smooth)``,
    the sums running over the voxels of each sample (``batch_dice=False``, the
    paper's per-sample Dice, averaged over the batch) or over the whole batch
    (``batch_dice=True``, nnU-Net's batch Dice). The paper minimises ``-mean
    dice``; the constant 1 keeps the loss non-negative and does not change the
    gradients.

    Args:
        from_logits: bool, default False. Apply sigmoid (``multilabel``) or
            softmax to ``y_pred`` first.
        multilabel: bool, default True. Channels are independent regions
            (sigmoid); False: mutually exclusive classes (softmax).
        include_background: bool, default True. False drops channel 0 (only
            valid for softmax outputs, whose channel 0 is background).
        smooth: float, default 1e-5. Added to numerator and denominator; an
            empty prediction of an empty target then scores 1.
        batch_dice: bool, default False. Pool the sums over the batch.
        class_weights: sequence of float or None. Weight per (kept) channel.
    """

    def __init__(
        self,
        from_logits: bool = False,
        multilabel: bool = True,
        include_background: bool = True,
        smooth: float = 1e-5,
        batch_dice: bool = False,
        class_weights: Sequence[float] | None = None,
        name: str = "soft_dice",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        _check_switches(multilabel, include_background, smooth)
        if class_weights is not None and any(w < 0 for w in class_weights):
            raise ValueError("class_weights must be non-negative")
        self.from_logits = from_logits
        self.multilabel = multilabel
        self.include_background = include_background
        self.smooth = smooth
        self.batch_dice = batch_dice
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def dice_per_class(self, y_true, y_pred):
        """Soft Dice per class: `(B, K)`, or `(1, K)` with ``batch_dice``."""
        y_pred = _probabilities(ops.cast(y_pred, "float32"), self.from_logits, self.multilabel)
        y_true = ops.cast(y_true, "float32")
        if not self.include_background:
            y_true, y_pred = y_true[..., 1:], y_pred[..., 1:]
        rank = len(y_pred.shape)
        axes = tuple(range(0 if self.batch_dice else 1, rank - 1))
        intersection = ops.sum(y_true * y_pred, axis=axes)
        denominator = ops.sum(y_true, axis=axes) + ops.sum(y_pred, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (denominator + self.smooth)
        return ops.reshape(dice, (-1, dice.shape[-1]))

    def call(self, y_true, y_pred):
        dice = self.dice_per_class(y_true, y_pred)
        if self.class_weights is None:
            mean_dice = ops.mean(dice, axis=-1)
        else:
            if len(self.class_weights) != dice.shape[-1]:
                raise ValueError(
                    f"{len(self.class_weights)} class_weights for {dice.shape[-1]} channels"
                )
            weights = ops.convert_to_tensor(self.class_weights, dtype="float32")
            mean_dice = ops.sum(dice * weights, axis=-1) / ops.sum(weights)
        loss = 1.0 - mean_dice
        if self.batch_dice:
            # one value for the batch; broadcast so the reduction still averages
            loss = ops.broadcast_to(loss, (ops.shape(y_true)[0],))
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            from_logits=self.from_logits,
            multilabel=self.multilabel,
            include_background=self.include_background,
            smooth=self.smooth,
            batch_dice=self.batch_dice,
            class_weights=self.class_weights,
        )
        return config


@keras.saving.register_keras_serializable(package="unet3d")
class DiceCELoss(SoftDiceLoss):
    """Soft Dice plus cross-entropy: BCE for regions, categorical CE for classes.

    ``loss = dice_weight * soft_dice + ce_weight * cross_entropy``, the
    cross-entropy averaged over voxels and channels (BCE) or voxels (CE).

    Args:
        dice_weight: float, default 1.0.
        ce_weight: float, default 1.0.
        **kwargs: the switches of :class:`SoftDiceLoss`.
    """

    def __init__(self, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 name: str = "dice_ce", **kwargs):
        super().__init__(name=name, **kwargs)
        if dice_weight < 0 or ce_weight < 0 or dice_weight + ce_weight == 0:
            raise ValueError("dice_weight and ce_weight must be >= 0 and not both 0")
        self.dice_weight = dice_weight
        self.ce_weight = ce_weight

    def call(self, y_true, y_pred):
        dice_loss = super().call(y_true, y_pred)
        y_true32 = ops.cast(y_true, "float32")
        y_pred32 = ops.cast(y_pred, "float32")
        if self.multilabel:
            ce = ops.binary_crossentropy(y_true32, y_pred32, from_logits=self.from_logits)
        else:
            ce = ops.categorical_crossentropy(y_true32, y_pred32, from_logits=self.from_logits)
        ce = ops.mean(ops.reshape(ce, (ops.shape(y_true)[0], -1)), axis=-1)
        return self.dice_weight * dice_loss + self.ce_weight * ce

    def get_config(self):
        config = super().get_config()
        config.update(dice_weight=self.dice_weight, ce_weight=self.ce_weight)
        return config


def make_loss(name: str, output_mode: str, batch_dice: bool = False) -> keras.losses.Loss:
    """The loss named in a TrainConfig (``dice`` or ``dice_ce``) for an output mode."""
    multilabel = output_mode == "regions"
    kwargs = {"multilabel": multilabel, "include_background": multilabel,
              "batch_dice": batch_dice}
    if name == "dice":
        return SoftDiceLoss(**kwargs)
    if name == "dice_ce":
        return DiceCELoss(**kwargs)
    raise ValueError(f"unknown loss {name!r}")
