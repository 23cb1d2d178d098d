"""The validation metric that picks best.keras: the recipe's ``monitor``."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from unet3d.config import TrainConfig
from unet3d.config.checks import ConfigError
from unet3d.training.run_callbacks import run_callbacks

# three epochs where the mean of the regions and the whole tumour disagree on the best
LOGS = [{"val_dice_mean": 0.50, "val_dice_wt": 0.70},
        {"val_dice_mean": 0.60, "val_dice_wt": 0.65},
        {"val_dice_mean": 0.55, "val_dice_wt": 0.80}]


class OnePatch:
    """A validation set of one empty patch (the run's TensorBoard image shows it)."""

    def patch(self, index):
        return np.zeros((8, 8, 8, 4), np.float32), np.zeros((8, 8, 8, 3), np.float32)


def fit_logs(config: TrainConfig, run_dir) -> tuple[int, list[float]]:
    """Plays LOGS through the run's checkpoint callback on a one-weight model."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    _, checkpoint = run_callbacks(config, run_dir, {}, False, val_data=OnePatch())
    checkpoint.set_model(model)
    saved = []
    for epoch, logs in enumerate(LOGS):
        model.layers[0].kernel.assign(np.full((1, 1), float(epoch), np.float32))
        checkpoint.on_epoch_end(epoch, logs)
        best = keras.models.load_model(run_dir / "best.keras", compile=False)
        saved.append(float(best.layers[0].kernel.numpy()[0, 0]))
    return checkpoint.best_epoch, saved


@pytest.mark.parametrize(("monitor", "best_epoch"), [("val_dice_mean", 2), ("val_dice_wt", 3)])
def test_best_keras_follows_the_monitor(tmp_path, monitor, best_epoch):
    config = TrainConfig.from_dict({"monitor": monitor, "out": str(tmp_path)})
    epoch, saved = fit_logs(config, tmp_path)
    assert epoch == best_epoch
    assert saved[-1] == best_epoch - 1  # best.keras holds that epoch's weights


def test_default_and_unknown_monitor():
    assert TrainConfig.from_dict({}).monitor == "val_dice_mean"
    with pytest.raises(ConfigError, match="monitor must be one of"):
        TrainConfig.from_dict({"monitor": "val_loss"})
