"""A campaign's files and plan: the campaign file, its split, the runs each stage makes,
and the runs' validation curves (:mod:`unet3d.training.campaign` runs them)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.layouts import find_any_cases
from data_generators.lgg import is_lgg_root
from unet3d_base.errors import InputError

REGIONS = ("WT", "TC", "ET")


# ---- the campaign file and its split -------------------------------------------------
def load_campaign(path: str | Path, data: str | Path | None = None) -> dict[str, Any]:
    """Reads a campaign file; paths in it are made absolute.

    ``data`` is relative to the repository root (the campaign folder's
    grandparent) unless the ``data`` argument gives the folder; ``split`` and
    ``models`` are relative to the campaign file's folder and the repository
    root respectively.
    """
    path = Path(path).resolve()
    try:
        campaign = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable campaign file ({err})") from None
    for key in ("name", "data", "split", "study", "folds"):
        if key not in campaign:
            raise InputError(f"{path}: no {key!r} entry")
    root = path.parent.parent.parent
    campaign["_file"] = path
    campaign["_data"] = Path(data).expanduser().resolve() if data else \
        (root / campaign["data"]).resolve()
    campaign["_split"] = path.parent / campaign["split"]
    campaign["_models"] = root / campaign.get("models", f"models/{campaign['name']}")
    regions = tuple(campaign.get("regions", REGIONS))
    if not regions or not set(regions) <= set(REGIONS):
        raise InputError(f"{path}: 'regions' must list some of {', '.join(REGIONS)}")
    campaign["_regions"] = regions
    if campaign["folds"].get("publish", "best") not in ("best", "last"):
        raise InputError(f"{path}: folds 'publish' must be 'best' or 'last'")
    starts = campaign.get("init_from", {})
    if not isinstance(starts, dict) or not set(starts) <= {"folds", "final"}:
        raise InputError(f"{path}: 'init_from' maps 'folds' and/or 'final' to model files")
    campaign["_init_from"] = {stage: str((root / Path(value).expanduser()).resolve())
                              for stage, value in starts.items()}
    return campaign


def published_checkpoint(campaign: dict[str, Any]) -> str:
    """The checkpoint a finished run publishes: ``best.keras`` (the best validation
    epoch) unless the campaign's folds say ``"publish": "last"`` (the last epoch, chosen
    without looking at the fold's validation cases)."""
    return f"{campaign['folds'].get('publish', 'best')}.keras"


def make_split(case_ids: list[str], folds: int, seed: int) -> list[dict[str, list[str]]]:
    """A seeded k-fold split of ``case_ids`` (sorted, then permuted with ``seed``):
    one ``{"train": [...], "val": [...]}`` per fold, as nnU-Net's ``splits_final.json``."""
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids) or not 2 <= folds <= len(ids):
        raise InputError(f"cannot split {len(ids)} cases into {folds} folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    split = []
    for part in np.array_split(order, folds):
        val = sorted(ids[i] for i in part)
        split.append({"train": [c for c in ids if c not in val], "val": val})
    return split


def read_split(campaign: dict[str, Any]) -> list[dict[str, list[str]]]:
    """The campaign's split, checked (:func:`read_split_file`)."""
    return read_split_file(campaign["_split"])


def read_split_file(path: Path) -> list[dict[str, list[str]]]:
    """A split file (a list of ``{"train": [...], "val": [...]}`` folds), checked: each
    fold's sets are disjoint, the validation sets are disjoint and each fold trains on
    all the other cases."""
    try:
        split = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable split ({err})") from None
    if not isinstance(split, list) or not split or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list)
            and isinstance(f.get("val"), list) for f in split):
        raise InputError(f"{path}: not a split (expected a list of {{train, val}} folds)")
    every = set().union(*(set(f["train"]) | set(f["val"]) for f in split))
    seen: set[str] = set()
    for k, fold in enumerate(split):
        train, val = set(fold["train"]), set(fold["val"])
        if train & val or train | val != every or val & seen:
            raise InputError(f"{path}: fold {k} does not partition the cases")
        seen |= val
    return split


# ---- runs -----------------------------------------------------------------------------
def planned_runs(campaign: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    """The runs of a stage, in order: ``{"name", "fold", "config"}`` each."""
    split = read_split(campaign)
    runs = []
    if stage == "study":
        study = campaign["study"]
        for arm, overrides in study["arms"].items():
            for k in study["folds"]:
                config = {**study["base"], **study.get("schedule", {}), **overrides}
                runs.append({"name": f"study/{arm}/fold{k}", "fold": k, "arm": arm,
                             "config": config})
    elif stage == "folds":
        recipe = campaign.get("recipe")
        if not recipe:
            raise InputError(f"{campaign['_file']}: no 'recipe' yet; run and read the study, "
                             "then write the chosen recipe into the campaign file")
        schedule = campaign["folds"]
        for k in range(len(split)):
            config = {**recipe, "epochs": schedule["epochs"],
                      "steps_per_epoch": schedule["steps_per_epoch"]}
            if "folds" in campaign.get("_init_from", {}):  # warm start, fold by fold
                config["init_from"] = campaign["_init_from"]["folds"].format(fold=k)
            runs.append({"name": f"folds/fold{k}", "fold": k, "config": config})
    elif stage == "final":  # nnU-Net's fold "all": every case, no validation
        runs = planned_runs(campaign, "folds")[:1]
        runs[0].update(name="final/all", fold=None)
        runs[0]["config"].pop("init_from", None)
        if "final" in campaign.get("_init_from", {}):
            runs[0]["config"]["init_from"] = campaign["_init_from"]["final"]
    else:
        raise InputError(f"unknown stage {stage!r} (study, folds or final)")
    usable: dict[tuple[str, ...], set[str]] = {}
    for run in runs:
        val = split[run["fold"]]["val"] if run["fold"] is not None else []
        modalities = tuple(run["config"].get("modalities") or ())
        if modalities and is_lgg_root(campaign["_data"]):
            if modalities not in usable:  # patients whose channels are real for this run
                usable[modalities] = {c.case_id for c in find_any_cases(
                    campaign["_data"], modalities, log=lambda _: None)}
            val = [c for c in val if c in usable[modalities]]
        run["config"] = {**run["config"], "data": str(campaign["_data"]),
                         "validation_cases": val}
    return runs


def read_curve(run_dir: Path, regions: tuple[str, ...] = REGIONS) -> dict[str, list[float]]:
    """Per-epoch validation Dice of a run's ``log.csv``: ``{"epoch", "mean", "WT", ...}``
    (only ``epoch`` for a run without validation); ``mean`` is the mean over ``regions``
    (all three: the log's own ``val_dice_mean``)."""
    path = run_dir / "log.csv"
    curve: dict[str, list[float]] = {k: [] for k in ("epoch", "mean", *REGIONS)}
    if not path.is_file():
        return curve
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                epoch = int(row["epoch"]) + 1
                scores = ([float(row[f"val_dice_{r.lower()}"]) for r in REGIONS]
                          if "val_dice_mean" in row else [])
            except (KeyError, ValueError, TypeError):
                break
            curve["epoch"].append(epoch)
            for key, value in zip(REGIONS, scores, strict=False):
                curve[key].append(value)
            if scores:
                curve["mean"].append(float(np.mean([curve[r][-1] for r in regions])))
    return curve


def is_flat(values: list[float], flat_fraction: float, tolerance: float,
            min_epochs: int = 5) -> bool:
    """True when the best of the last ``flat_fraction`` of ``values`` is no more than
    ``tolerance`` above the best before it (the curve stopped rising)."""
    n = len(values)
    if n < max(min_epochs, 2):
        return False
    tail = max(1, math.ceil(n * flat_fraction))
    return max(values[-tail:]) <= max(values[:-tail]) + tolerance


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default
