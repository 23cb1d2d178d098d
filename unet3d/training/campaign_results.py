"""What a campaign keeps of its runs: each run's figures read from its folder, the recipe
study's table, and the published models (:mod:`unet3d.training.campaign` calls these)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.artifacts.keras_file import load_model, read_model_config, save_model
from unet3d.config import TrainConfig
from unet3d.models.unet import build_unet3d
from unet3d.training.campaign_plan import REGIONS, planned_runs, read_curve, read_json


def run_results(run_dir: Path, regions: tuple[str, ...] = REGIONS) -> dict[str, Any]:
    """What a training process left in ``run_dir``: the epochs done, the best epoch and its
    mean validation patch Dice over ``regions``, and (once the run scored its validation
    cases) the whole-volume validation Dice per region of ``regions``."""
    curve = read_curve(run_dir, regions)
    results: dict[str, Any] = {"epochs_done": len(curve["epoch"])}
    if curve["mean"]:
        best = int(np.argmax(curve["mean"]))
        results["best_epoch"] = best + 1
        results["best_val_patch_dice"] = round(curve["mean"][best], 4)
    validation = read_json(run_dir / "validation.json")
    if validation:
        results["val_dice"] = {r: round(float(np.mean([c[r] for c in validation.values()])), 4)
                               for r in regions}
        results["val_dice_cases"] = {c: {r: round(float(v[r]), 4) for r in regions}
                                     for c, v in sorted(validation.items())}
    return results


def study_table(campaign: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """The study's table (``study.json``): per arm, whole-volume validation Dice per fold,
    mean, spread, CPU-hours (in all and per fold run) and mean Dice per CPU-hour of one
    fold run; from the finished study runs among ``runs`` (the status's)."""
    table: dict[str, Any] = {}
    regions = campaign.get("_regions", REGIONS)
    for run in planned_runs(campaign, "study"):
        entry = runs.get(run["name"], {})
        if entry.get("state") != "done" or "val_dice" not in entry:
            continue
        arm = table.setdefault(run["arm"], {"overrides": campaign["study"]["arms"][
            run["arm"]], "folds": {}})
        arm["folds"][str(run["fold"])] = {**entry["val_dice"],
                                          "cpu_hours": entry["cpu_hours"]}
    for arm in table.values():
        folds = list(arm["folds"].values())
        per_fold_mean = [float(np.mean([f[r] for r in regions])) for f in folds]
        arm["mean"] = {r: round(float(np.mean([f[r] for f in folds])), 4) for r in regions}
        arm["mean"]["mean"] = round(float(np.mean(per_fold_mean)), 4)
        arm["spread"] = round(float(np.ptp(per_fold_mean)), 4) if len(folds) > 1 else None
        arm["cpu_hours"] = round(float(np.sum([f["cpu_hours"] for f in folds])), 3)
        # per fold run, so that arms with fewer folds done so far compare fairly
        arm["cpu_hours_per_fold"] = round(arm["cpu_hours"] / len(folds), 3)
        arm["dice_per_cpu_hour"] = round(
            arm["mean"]["mean"] / max(arm["cpu_hours_per_fold"], 1e-9), 3)
    add_common_cases(table, runs, regions)
    return table


def add_common_cases(table: dict[str, Any], runs: dict[str, Any],
                     regions: tuple[str, ...]) -> None:
    """Where the arms validated different cases (an arm reading a channel some cases lack),
    each arm's mean Dice over the cases every arm validated: ``mean_common`` and
    ``common_cases``."""
    per_arm: dict[str, dict[str, dict[str, float]]] = {}
    for name, entry in runs.items():
        parts = name.split("/")
        if parts[0] == "study" and len(parts) == 3 and parts[1] in table:
            per_arm.setdefault(parts[1], {}).update(entry.get("val_dice_cases") or {})
    if len(per_arm) < 2 or len({frozenset(c) for c in per_arm.values()}) == 1:
        return
    common = sorted(set.intersection(*(set(c) for c in per_arm.values())))
    for arm, cases in per_arm.items():
        table[arm]["common_cases"] = len(common)
        table[arm]["mean_common"] = {r: round(float(np.mean([cases[c][r] for c in common])), 4)
                                     for r in regions} if common else None


def copy_atomic(source: Path, target: Path) -> Path:
    """Copies a file under a temporary name beside ``target``, then renames it: an
    interrupted copy never leaves a truncated ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.copy.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def publish_weights(source: Path, target: Path) -> Path:
    """Saves ``source`` (a checkpoint) as a model without optimizer state, with its recipe
    (none of the machine's settings: data, run and cache folders)."""
    config = TrainConfig.from_dict(read_model_config(source), source=str(source))
    trained = load_model(source)
    model = build_unet3d(config.model, name=trained.name)
    model.set_weights(trained.get_weights())
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_model(model, target, config.recipe_dict())
