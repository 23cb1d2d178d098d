"""A training run as a TensorBoard HParams trial: its hyper-parameters and final validation scores.

Every run writes one under ``<run>/tensorboard/hparams``, so ``tensorboard
--logdir`` over a folder of runs shows them side by side in the HParams
dashboard's table. Written with TensorBoard's own protobufs and event
writer, not ``tf.summary``, so it works on every Keras backend.

``python -m unet3d.training.hparams RUN_DIR`` (re)writes the trial of a finished run
from its ``config.json`` and ``validation.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tensorboard.plugins.hparams import summary_v2 as hparams_summary

from unet3d.training.summaries import EventWriter

HPARAMS_DIR = ("tensorboard", "hparams")
METRICS = ("WT", "TC", "ET", "mean")


def flat_hparams(config: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters of a ``TrainConfig`` dict that tell runs apart, flattened."""
    model = config.get("model", {})
    patch = config.get("patch_size") or []
    return {
        "base_filters": int(model.get("base_filters", 16)),
        "depth": int(model.get("depth", 5)),
        "dropout": float(model.get("dropout", 0.3)),
        "output_mode": str(model.get("output_mode", "regions")),
        "spatial_dims": int(model.get("spatial_dims", 3)),
        "attention_gates": bool(model.get("attention_gates", False)),
        "input_stride": int(model.get("input_stride", 1)),
        "modalities": ",".join(config.get("modalities") or ()),
        "patch_size": "x".join(str(p) for p in patch),
        "batch_size": int(config.get("batch_size", 2)),
        "epochs": int(config.get("epochs", 0)),
        "steps_per_epoch": int(config.get("steps_per_epoch", 0)),
        "learning_rate": float(config.get("learning_rate", 0.0)),
        "lr_decay": float(config.get("lr_decay", 1.0)),
        "loss": str(config.get("loss", "dice")),
        "foreground_fraction": float(config.get("foreground_fraction", 0.0)),
        "batch_dice": bool(config.get("batch_dice", False)),
        "normalization": str(config.get("normalization", "zscore")),
        "augment": bool(config.get("augment", True)),
        "augment_strength": float(config.get("augment_strength", 1.0)),
        "precision": str(config.get("precision", "fp32")),
        "init_from": str(config.get("init_from") or ""),
        "train_cases": int(config.get("train_cases", 0)),
    }


def write_trial(run_dir: str | Path, config: dict[str, Any],
                val_dice: dict[str, float], extra: dict[str, float] | None = None) -> Path:
    """Writes the run's HParams trial; returns the event folder.

    Args:
        run_dir: the run directory (its name is the trial id).
        config: dict. The run's ``TrainConfig`` as a dict.
        val_dice: dict. Mean whole-volume validation Dice per region
            (``WT``, ``TC``, ``ET``, ``mean``).
        extra: dict or None. More metrics (``hd95_wt``, ``hours``, ...).
    """
    run_dir = Path(run_dir)
    folder = run_dir.joinpath(*HPARAMS_DIR)
    for old in folder.glob("events.out.tfevents.*"):  # one trial per run
        old.unlink()
    writer = EventWriter(folder)
    step = int(config.get("epochs", 0))
    writer.add(hparams_summary.hparams_pb(flat_hparams(config), trial_id=run_dir.name), step)
    metrics = {f"validation/dice_{k.lower()}": float(v) for k, v in val_dice.items()}
    metrics.update({f"validation/{k}": float(v) for k, v in (extra or {}).items()})
    for tag, value in metrics.items():
        writer.scalar(tag, value, step)
    writer.close()
    return folder


def region_means(per_case: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean Dice per region over the cases, and ``mean`` over the regions."""
    means = {r: float(np.mean([c[r] for c in per_case.values()])) for r in METRICS[:3]}
    means["mean"] = float(np.mean([means[r] for r in METRICS[:3]]))
    return means


def trial_from_run(run_dir: str | Path) -> Path:
    """Writes the trial of a finished run from ``config.json`` and ``validation.json`` (if any)."""
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    split = run_dir / "split.json"
    if split.is_file():
        config["train_cases"] = len(json.loads(split.read_text())["train"])
    val_dice = {}  # none when the run trained on every case
    if (run_dir / "validation.json").is_file():
        val_dice = region_means(json.loads((run_dir / "validation.json").read_text()))
    extra = {}
    summary = run_dir / "study.json"  # optional: scores of the full predict + evaluate pipeline
    if summary.is_file():
        extra = {k: float(v) for k, v in json.loads(summary.read_text()).items()
                 if isinstance(v, int | float)}
    return write_trial(run_dir, config, val_dice, extra)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(trial_from_run(path))
