"""The run directory of ``train.py``: created or continued, its config and its log."""

from __future__ import annotations

import json
from pathlib import Path

from unet3d.config import TrainConfig
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text, ensure_writable_dir


def prepare_run_dir(config: TrainConfig, resume: bool) -> Path:
    """Creates the run directory; refuses to overwrite an earlier run unless resuming."""
    run_dir = Path(config.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"--out {run_dir}: exists and is not a directory")
    if resume:
        if not any((run_dir / name).is_file()
                   for name in ("last.keras", "previous.keras", "step.keras")):
            raise InputError(f"--resume: {run_dir} holds no last.keras to resume from")
        return run_dir
    if (run_dir / "last.keras").exists() or (run_dir / "config.json").exists():
        raise InputError(f"--out {run_dir}: holds an earlier run; pass --resume to continue "
                         "it or choose another --out")
    return ensure_writable_dir(run_dir, "--out")


def load_resume_config(run_dir: Path, epochs: int | None = None) -> TrainConfig:
    """The config saved in ``run_dir`` (moved or copied: it continues there), optionally
    with more epochs."""
    values = json.loads((run_dir / "config.json").read_text())
    config = TrainConfig.from_dict(values, source=str(run_dir / "config.json"))
    return config.replace(out=str(run_dir), **({"epochs": epochs} if epochs else {}))


def truncate_log(path: Path, epochs: int) -> None:
    """Keeps the header and the first ``epochs`` rows of a CSV log (atomically).

    A run killed after logging an epoch but before checkpointing it repeats
    that epoch on ``--resume``; its first row must not stay twice.
    """
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    atomic_write_text(path, "".join(lines[:1 + epochs]))


def write_config_and_split(run_dir: Path, config: TrainConfig, train_ids: list[str],
                           val_ids: list[str]) -> None:
    """A new run's ``config.json`` and ``split.json`` (the seed and the case ids of each
    side, which ``--resume`` reads back)."""
    config.save(run_dir / "config.json")
    split = {"seed": config.seed, "folds": config.folds, "fold": config.fold,
             "val_fraction": config.val_fraction, "train": train_ids, "validation": val_ids}
    atomic_write_text(run_dir / "split.json", json.dumps(split, indent=2) + "\n")
