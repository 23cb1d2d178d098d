"""Training callbacks: atomic checkpoints for resuming, and a TensorBoard image."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from pathlib import Path

import keras
import numpy as np

from data_generators.errors import InputError
from data_generators.fileio import atomic_write_text
from unet3d.artifacts.keras_file import load_model, read_checkpoint_state, save_model
from unet3d.keras_compat import seed_state
from unet3d.models.metrics import predicted_regions, target_regions
from unet3d.training.summaries import EventWriter

STATE_FILE = "state.json"
LAST, PREVIOUS = "last.keras", "previous.keras"

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


class Preempted(Exception):
    """Training stopped on a signal; ``epochs_done`` complete epochs are checkpointed."""

    def __init__(self, signum: int, epochs_done: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.epochs_done = epochs_done


class StopOnSignal(keras.callbacks.Callback):
    """SIGTERM or SIGINT (a cluster's preemption, Ctrl-C): stop after the current step.

    The handlers only note the signal; the step in flight finishes, then
    :class:`Preempted` is raised from the batch end, before the partial
    epoch's validation and checkpoint, so ``last.keras`` and ``state.json``
    stay those of the last complete epoch (written atomically by
    :class:`RunCheckpoint`) and ``--resume`` repeats the partial epoch
    exactly: the resumed curve equals an uninterrupted one. A signal during
    an epoch's end stops right after its checkpoint. Use it as a context
    manager around ``fit`` (it installs and restores the handlers); put it
    after :class:`RunCheckpoint` in the callback list.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        super().__init__()
        self.received: int | None = None
        self.epoch = 0
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc_info):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False

    def _note(self, signum, frame):
        self.received = signum

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.received is not None:
            raise Preempted(self.received, self.epoch)

    def on_epoch_end(self, epoch, logs=None):
        if self.received is not None:
            raise Preempted(self.received, epoch + 1)


def resume_checkpoint(run_dir, warn=None, move_damaged: bool = True):
    """The model and state ``--resume`` continues from: ``last.keras``, or, when that
    cannot be loaded, the ``previous.keras`` kept beside it.

    The damaged ``last.keras`` is renamed ``last.damaged.keras`` (kept, never
    deleted), so the next checkpoint does not push it into ``previous.keras``.

    Args:
        run_dir: the run directory.
        warn: callable taking the one-line message that names the damaged file
            and the checkpoint used instead; default: print to stderr.
        move_damaged: bool, default True. False on the workers of a
            multi-worker run, where only the chief renames files.

    Returns:
        ``(model, state)``; ``state`` holds ``epoch``, ``best_score``, ``best_epoch``.

    Raises:
        InputError: no checkpoint that loads; the message names ``last.keras``.
    """
    run_dir = Path(run_dir)
    last, previous = run_dir / LAST, run_dir / PREVIOUS
    try:
        return load_model(last, compile=True), _checkpoint_state(last, run_dir)
    except InputError as err:
        if not previous.is_file():
            raise InputError(f"{err}; {run_dir} keeps no previous checkpoint to resume from "
                             "instead") from None
        damaged = err
    model = load_model(previous, compile=True)  # InputError here: neither loads
    state = _checkpoint_state(previous, None)
    moved = ""
    if move_damaged and last.exists():
        os.replace(last, run_dir / "last.damaged.keras")
        moved = f"; it is kept as {run_dir / 'last.damaged.keras'}"
    message = (f"{damaged}; resuming from {previous} (epoch {state.get('epoch', '?')}) "
               f"instead{moved}")
    (warn or (lambda text: print(f"warning: {text}", file=sys.stderr)))(message)
    return model, state


def _checkpoint_state(path: Path, run_dir: Path | None) -> dict:
    """The state embedded in a checkpoint; older runs' ``last.keras`` has it in state.json."""
    state = read_checkpoint_state(path)
    if state is None and run_dir is not None:
        state = read_state(run_dir)
    if not state or "epoch" not in state:
        raise InputError(f"{path}: holds no training state (completed epochs); it is not a "
                         "checkpoint of train.py")
    return state
