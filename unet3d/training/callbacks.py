"""Training callbacks: atomic checkpoints for resuming, and a TensorBoard image."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np

from unet3d.artifacts.keras_file import save_model
from unet3d.keras_compat import seed_state
from unet3d.models.metrics import predicted_regions, target_regions
from unet3d.training.summaries import EventWriter
from unet3d_base.fileio import atomic_write_text

STATE_FILE = "state.json"
LAST, PREVIOUS, STEP = "last.keras", "previous.keras", "step.keras"

# RGB colours of the overlay for WT-only (edema), TC-only (core) and ET
_REGION_COLOURS = np.array([[0.1, 0.8, 0.1], [0.9, 0.1, 0.1], [1.0, 0.9, 0.0]], dtype=np.float32)


class RunCheckpoint(keras.callbacks.Callback):
    """Saves ``last.keras`` and ``state.json`` every epoch, ``best.keras`` on improvement.

    Every file is written to a temporary name and renamed, so a kill at any
    moment leaves the previous complete file. ``last.keras`` holds the
    optimizer state and, embedded, its own state (completed epochs, best
    score): all ``train.py --resume`` needs. The checkpoint it replaces is
    kept as ``previous.keras``, which ``--resume`` falls back to when
    ``last.keras`` cannot be read; ``state.json`` repeats the newest state
    for people and scripts.

    Args:
        run_dir: str or Path. The run directory.
        monitor: str or None, default "val_dice_mean". Higher is better. None
            (no validation): ``best.keras`` is the last epoch's model.
        best_score: float, default -inf. Best score so far (when resuming).
        config: dict or None. The run's TrainConfig, embedded in each file.
    """

    def __init__(self, run_dir, monitor: str | None = "val_dice_mean",
                 best_score: float = -math.inf,
                 config: dict | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.config = config
        self.monitor = monitor
        self.best_score = best_score
        self.best_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get(self.monitor) if self.monitor else None
        if self.monitor is None or (score is not None and float(score) > self.best_score):
            self.best_score = float(score) if score is not None else self.best_score
            self.best_epoch = epoch + 1
            save_model(self.model, self.run_dir / "best.keras", self.config)
        state = {"epoch": epoch + 1, "monitor": self.monitor, "best_score": self.best_score,
                 "best_epoch": self.best_epoch}
        # the checkpoint carries its own state; the one it replaces is kept as previous.keras
        save_model(self.model, self.run_dir / LAST, self.config, state=state,
                   backup=self.run_dir / PREVIOUS)
        atomic_write_text(self.run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")
        (self.run_dir / STEP).unlink(missing_ok=True)  # the epoch is whole: no step to resume


def read_state(run_dir) -> dict:
    """The ``state.json`` of a run, or an empty dict if it has none."""
    path = Path(run_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def overlay(image_slice: np.ndarray, regions_slice: np.ndarray) -> np.ndarray:
    """Grey image `(H, W)` with regions `(H, W, 3)` painted on, as RGB floats in [0, 1]."""
    lo, hi = np.percentile(image_slice, [1, 99])
    grey = np.clip((image_slice - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for channel in range(3):  # ET painted last, on top
        mask = regions_slice[..., channel] > 0.5
        rgb[mask] = 0.4 * rgb[mask] + 0.6 * _REGION_COLOURS[channel]
    return rgb


class ValidationImage(keras.callbacks.Callback):
    """Writes one validation slice (image | ground truth | prediction) to TensorBoard.

    Args:
        log_dir: str or Path. Summaries go to ``<log_dir>/images``.
        patch: tuple (x, y) of one validation patch, `(D, H, W, C)` and its
            target `(D, H, W, K)` (or a slice, `(H, W, C)`), with or without a
            batch axis of 1.
        output_mode: str. How to turn predictions into regions.
        channel: int, default -1. The modality shown (training shows FLAIR, or the first).
        spatial_dims: int, default 3. 2: the patch is a slice.
    """

    def __init__(self, log_dir, patch, output_mode: str = "regions", channel: int = -1,
                 spatial_dims: int = 3):
        super().__init__()
        self.log_dir = Path(log_dir)
        x, y = patch
        # a single patch `(D, H, W, C)` (or slice `(H, W, C)`) gets its batch axis
        self.x = x[None] if x.ndim == spatial_dims + 1 else x
        self.y = y[None] if y.ndim == spatial_dims + 1 else y
        self.spatial_dims = spatial_dims
        self.output_mode = output_mode
        self.channel = channel
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = EventWriter(self.log_dir / "images")
        pred = self.model(self.x, training=False)
        pred = keras.ops.convert_to_numpy(predicted_regions(pred, self.output_mode))[0]
        true = keras.ops.convert_to_numpy(target_regions(self.y, self.output_mode))[0]
        x = self.x
        if self.spatial_dims == 2:  # a slice is a volume of depth 1
            pred, true, x = pred[:, :, None], true[:, :, None], x[:, :, :, None]
        z = int(np.argmax(true[..., 0].sum(axis=(0, 1)))) if true[..., 0].any() \
            else true.shape[2] // 2
        image = x[0, :, :, z, self.channel]
        panels = [overlay(image, np.zeros_like(true[:, :, z])),
                  overlay(image, true[:, :, z]), overlay(image, pred[:, :, z])]
        picture = np.concatenate(panels, axis=1)
        self._writer.image("validation/image_truth_prediction", picture, epoch)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None  # a next fit (a resumed epoch's rest, then the others) opens one


class EpochSeeds(keras.callbacks.Callback):
    """Reseeds every random layer (dropout) at the start of each epoch from ``(seed, epoch)``.

    Keras does not restore the state of a layer's ``SeedGenerator`` from a
    ``.keras`` file, so after ``--resume`` dropout would draw other masks
    than the uninterrupted run. Seeding each epoch from its number makes the
    draws of epoch ``e`` the same whether or not the run was interrupted.

    Args:
        seed: int. The run's seed.
    """

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        generators = [layer.seed_generator for layer in self.model.layers
                      if getattr(layer, "seed_generator", None) is not None]
        for index, generator in enumerate(generators):
            state = seed_state(generator)
            draw = np.random.default_rng([self.seed, int(epoch), index]).integers(
                1, 2**31 - 1, size=tuple(state.shape))
            state.assign(keras.ops.cast(draw, state.dtype))
