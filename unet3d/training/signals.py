"""Stopping on a signal at a step boundary, and the mid-epoch state a step checkpoint keeps
(running metric totals, dropout seed states) so that ``--resume`` continues exactly."""

from __future__ import annotations

import json
import signal
import threading

import keras
import numpy as np

from unet3d.artifacts.keras_file import save_model
from unet3d.keras_compat import seed_state
from unet3d.training.callbacks import STATE_FILE, STEP, RunCheckpoint
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text


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
