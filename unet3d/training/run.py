"""``train()``: a :class:`~unet3d.config.TrainConfig` trained end to end by a
:class:`~unet3d.training.trainer.Trainer` (checks, run directory, split, cache, fit, scoring).
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from unet3d.config import TrainConfig
from unet3d.training.result import TrainResult
from unet3d.training.trainer import Trainer


def train(config: TrainConfig, resume: bool = False, log=print,
          callbacks: Sequence[keras.callbacks.Callback] = ()) -> TrainResult:
    """Trains the U-Net as ``config`` says and returns the validation Dice.

    Args:
        config: TrainConfig. The whole run.
        resume: bool, default False. Continue the run in ``config.out`` from
            its last checkpoint (optimizer state, learning-rate schedule
            position, epoch and step counters, TensorBoard step).
        log: callable, default print. Where progress lines go.
        callbacks: more Keras callbacks for ``fit``, called after the run's own
            (TensorBoard, log, checkpoints) and before the stop on a signal.

    Raises:
        InputError: for unusable data, options or output folder.
    """
    return Trainer(config, resume=resume, log=log, callbacks=callbacks).run()


__all__ = ["TrainResult", "Trainer", "train"]
