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

from unet3d.artifacts.keras_file import load_model, read_checkpoint_state, save_model
from unet3d.keras_compat import seed_state
from unet3d.models.metrics import predicted_regions, target_regions
from unet3d.training.summaries import EventWriter
from unet3d_base.errors import InputError
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


class Preempted(Exception):
    """Training stopped on a signal.

    Attributes:
        signum: int. The signal.
        epochs_done: int. Complete epochs checkpointed (``last.keras``).
        step: int. Steps of the next epoch saved in ``step.keras`` (0: none,
            the run continues from the epoch boundary).
    """

    def __init__(self, signum: int, epochs_done: int, step: int = 0):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum
        self.epochs_done = epochs_done
        self.step = step


def _random_layers(model) -> list:
    return [layer.seed_generator for layer in model.layers
            if getattr(layer, "seed_generator", None) is not None]


def mid_epoch_state(model) -> dict:
    """What a step checkpoint needs beyond weights and optimizer: the epoch's running metric
    totals (the epoch's logged means continue from them) and the dropout seed states."""
    return {"metrics": [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                        for v in model.metrics_variables],
            "seeds": [np.asarray(keras.ops.convert_to_numpy(seed_state(g))).tolist()
                      for g in _random_layers(model)]}


def restore_mid_epoch_state(model, state: dict) -> None:
    """Sets what :func:`mid_epoch_state` saved (after ``fit`` reset the metrics)."""
    variables = model.metrics_variables
    if len(variables) != len(state["metrics"]):
        raise InputError(f"step checkpoint: {len(state['metrics'])} metric values for "
                         f"{len(variables)} metric variables of the model")
    for variable, value in zip(variables, state["metrics"], strict=True):
        variable.assign(np.asarray(value, dtype=variable.dtype))
    for generator, value in zip(_random_layers(model), state["seeds"], strict=True):
        variable = seed_state(generator)
        variable.assign(np.asarray(value, dtype=variable.dtype))


class StopOnSignal(keras.callbacks.Callback):
    """SIGTERM or SIGINT (a cluster's preemption, Ctrl-C): stop after the step in flight,
    keeping it; and, every ``every`` steps, a step checkpoint that survives SIGKILL.

    The handlers only note the signal. The step in flight finishes; then
    ``step.keras`` is written atomically beside ``last.keras`` (model,
    optimizer, epoch and step, the epoch's running metric totals and the
    dropout seed states; the batches are pure functions of (seed, epoch,
    step), so the data and augmentation need no state) and
    :class:`Preempted` is raised. ``--resume`` continues from that step and
    gives the uninterrupted run's curve. A signal at an epoch's last step
    lets the epoch end (validation, checkpoint) and stops right after it.
    :class:`RunCheckpoint` removes ``step.keras`` once the epoch's
    checkpoint is written. Use it as a context manager around ``fit`` (it
    installs and restores the handlers); put it after
    :class:`RunCheckpoint` and :class:`EpochSeeds` in the callback list.

    Args:
        checkpoint: RunCheckpoint or None. Where step checkpoints go (its
            run directory, config and best score). None: no step
            checkpoints; a signal loses the partial epoch (multi-worker runs).
        steps_per_epoch: int. Steps of a whole epoch.
        every: int, default 0. Also write ``step.keras`` every this many
            steps (0: only on a signal).
        resume: dict or None. The state of the step checkpoint the run
            resumes from: its epoch's running totals are restored when that
            epoch begins, and its batches are numbered from its ``step``.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoint: RunCheckpoint | None = None, steps_per_epoch: int = 0,
                 every: int = 0, resume: dict | None = None):
        super().__init__()
        self.checkpoint = checkpoint
        self.steps_per_epoch = int(steps_per_epoch)
        self.every = int(every)
        self._resume = resume if resume and resume.get("step") else None
        self.received: int | None = None
        self.epoch = 0
        self.offset = 0
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
        self.epoch, self.offset = epoch, 0
        if self._resume is not None and epoch == self._resume["epoch"]:
            restore_mid_epoch_state(self.model, self._resume)
            self.offset = int(self._resume["step"])
            self._resume = None

    def on_train_batch_end(self, batch, logs=None):
        step = self.offset + batch + 1  # steps of this epoch done
        last = step >= self.steps_per_epoch  # the epoch's end checkpoints it anyway
        if self.received is not None:
            if self.checkpoint is None:
                raise Preempted(self.received, self.epoch)
            if not last:
                self.save_step(self.epoch, step)
                raise Preempted(self.received, self.epoch, step)
        elif (self.every and self.checkpoint is not None and not last
              and (self.epoch * self.steps_per_epoch + step) % self.every == 0):
            self.save_step(self.epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        if self.received is not None:
            raise Preempted(self.received, epoch + 1)

    def save_step(self, epoch: int, step: int) -> None:
        """Writes ``step.keras`` (and ``state.json``) for ``step`` steps into ``epoch``."""
        ckpt = self.checkpoint
        state = {"epoch": epoch, "step": step, "monitor": ckpt.monitor,
                 "best_score": ckpt.best_score, "best_epoch": ckpt.best_epoch}
        # a fine-tuning run's frozen encoder: saved trainable, as the epoch checkpoints are,
        # so the file's optimizer state covers every variable and loads whole
        frozen = [layer for layer in self.model.layers if not layer.trainable]
        for layer in frozen:
            layer.trainable = True
        try:
            save_model(self.model, ckpt.run_dir / STEP, ckpt.config,
                       state={**state, **mid_epoch_state(self.model)})
        finally:
            for layer in frozen:
                layer.trainable = False
        atomic_write_text(ckpt.run_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def resume_checkpoint(run_dir, warn=None, move_damaged: bool = True, use_step: bool = True):
    """The model and state ``--resume`` continues from: ``step.keras`` when it is newer
    than the last complete epoch, else ``last.keras``, or, when that cannot be loaded,
    the ``previous.keras`` kept beside it.

    A damaged checkpoint is renamed ``<name>.damaged.keras`` (kept, never
    deleted), so the next checkpoint does not push it into ``previous.keras``.

    Args:
        run_dir: the run directory.
        warn: callable taking the one-line message that names the damaged file
            and the checkpoint used instead; default: print to stderr.
        move_damaged: bool, default True. False on the workers of a
            multi-worker run, where only the chief renames files.
        use_step: bool, default True. False: ignore ``step.keras`` (a
            multi-worker run repeats the partial epoch).

    Returns:
        ``(model, state)``; ``state`` holds ``epoch`` (complete epochs),
        ``best_score``, ``best_epoch`` and, from a step checkpoint, ``step``,
        ``metrics`` and ``seeds``.

    Raises:
        InputError: no checkpoint that loads; the message names ``last.keras``.
    """
    run_dir = Path(run_dir)
    warn = warn or (lambda text: print(f"warning: {text}", file=sys.stderr))
    last, previous, step = run_dir / LAST, run_dir / PREVIOUS, run_dir / STEP
    if use_step and step.is_file():
        epoch_state = read_checkpoint_state(last) if last.is_file() else None
        done = (epoch_state or {}).get("epoch", 0)
        try:
            model, state = load_model(step, compile=True), _checkpoint_state(step, None)
        except InputError as err:
            moved = ""
            if move_damaged:
                os.replace(step, run_dir / "step.damaged.keras")
                moved = f"; it is kept as {run_dir / 'step.damaged.keras'}"
            warn(f"{err}; resuming from the last complete epoch instead{moved}")
        else:
            if state.get("step") and state["epoch"] >= done:
                return model, state
            # older than last.keras: killed between the epoch's checkpoint and its removal
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
    warn(f"{damaged}; resuming from {previous} (epoch {state.get('epoch', '?')}) "
         f"instead{moved}")
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
