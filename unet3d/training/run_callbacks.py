"""The callbacks of a training run, in the order their writes must happen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras

from unet3d.config import TrainConfig
from unet3d.training.callbacks import EpochSeeds, RunCheckpoint, ValidationImage
from unet3d.training.finetune import FreezeEncoder
from unet3d.training.summaries import CsvLog, EpochScalars


def run_callbacks(config: TrainConfig, write_dir: Path, state: dict[str, Any], resume: bool,
                  val_data) -> tuple[list[keras.callbacks.Callback], RunCheckpoint]:
    """The run's own callbacks for ``fit`` and its checkpoint callback among them.

    Args:
        config: the run's TrainConfig.
        write_dir: where logs and checkpoints go.
        state: the resumed checkpoint's state (best score and epoch), or {}.
        resume: bool. Whether ``log.csv`` is continued.
        val_data: the validation dataset, or None (best = last epoch).
    """
    lr0, decay = config.learning_rate, config.lr_decay
    tensorboard_dir = write_dir / "tensorboard"
    checkpoint = RunCheckpoint(write_dir, best_score=state.get("best_score") or float("-inf"),
                               config=config.recipe_dict(),
                               monitor=config.monitor if val_data else None)
    checkpoint.best_epoch = state.get("best_epoch")
    image = []
    if val_data is not None:
        shown = config.modalities.index("flair") if "flair" in config.modalities else 0
        image = [ValidationImage(tensorboard_dir, val_data.patch(0),
                                 output_mode=config.model.output_mode, channel=shown,
                                 spatial_dims=config.model.spatial_dims)]
    callbacks = [
        # the encoder is frozen before the checkpoint, which saves at epoch end
        *([FreezeEncoder(config.freeze_encoder_epochs)] if config.freeze_encoder_epochs else []),
        EpochSeeds(config.seed),  # dropout masks depend on (seed, epoch): exact resume
        keras.callbacks.LearningRateScheduler(lambda epoch: lr0 * decay**epoch),
        # TensorBoard first: a write the storage refuses there stops the run before the
        # epoch's row and checkpoint, so every file stays as the previous epoch left it
        EpochScalars(tensorboard_dir),  # keras.callbacks.TensorBoard needs TensorFlow
        *image,
        CsvLog(write_dir / "log.csv", append=resume),
        checkpoint,
    ]
    return callbacks, checkpoint
