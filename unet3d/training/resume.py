"""Which checkpoint ``--resume`` continues from: ``step.keras`` when it is newer than the
epoch's ``last.keras``, else ``last.keras``, else ``previous.keras``; damaged files are kept
aside under another name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from unet3d.artifacts.keras_file import load_model, read_checkpoint_state
from unet3d.training.callbacks import LAST, PREVIOUS, STEP, read_state
from unet3d_base.errors import InputError


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
