"""Shipping a campaign's final model: the model file with the post-processing chosen out of
fold, its recipe, its split and its card, every one written from the campaign's records
(``status.json``, ``oof.json``, the split), none by hand."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from unet3d.artifacts.keras_file import load_model, read_model_config
from unet3d.artifacts.plan_file import read_plan
from unet3d.config import TrainConfig
from unet3d.postprocessing import PostProcessing
from unet3d.training.campaign_plan import REGIONS, read_json, read_split
from unet3d.training.campaign_results import copy_atomic
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text

# published mean Dice (WT, TC, ET), as their authors report them: not the same cases
PEERS = (
    ("Isensee et al. 2017, BraTS 2017 validation set (reported)", (0.90, 0.80, 0.73)),
    ("ellisdg/3DUnetCNN (Keras), BraTS 2018 validation set (reported)", (0.86, 0.76, 0.65)),
)
CARD_KEYS = ("base_filters", "depth", "input_stride", "segmentation_levels", "output_mode",
             "epochs", "steps_per_epoch", "batch_size", "seed", "loss", "batch_dice",
             "label_convention", "normalization", "foreground_fraction", "augment_strength",
             "learning_rate", "lr_decay", "precision")


def ship(campaign: dict[str, Any], runs_dir: Path, name: str) -> list[Path]:
    """Writes ``<models>/<name>.keras`` (the campaign's final model, trained on every case,
    with the out-of-fold post-processing stored in it), ``.config.json`` (its recipe:
    ``train.py --config`` re-trains it), ``.split.json`` (every case trains; the
    cross-validation split the decisions were made on) and ``.md`` (its card).

    Raises:
        InputError: the final model or the out-of-fold report is not there yet.
    """
    final = runs_dir / "published" / "all.keras"
    if not final.is_file():
        raise InputError(f"{final}: no final model yet; run the final stage first")
    oof = read_json(runs_dir / "oof.json", None)
    if oof is None:
        raise InputError(f"{runs_dir / 'oof.json'}: no out-of-fold report yet; run oof first")
    plan = read_plan(final)
    if plan is None or plan.describe() != oof["plan"]:
        raise InputError(f"{final}: its post-processing is not the out-of-fold one; run oof "
                         "again (it stores the plan into every published model)")
    root = campaign["_models"].parent
    target = copy_atomic(final, root / f"{name}.keras")
    recipe = read_model_config(target)
    config_file = root / f"{name}.config.json"
    atomic_write_text(config_file, json.dumps(recipe, indent=2) + "\n")
    split = read_split(campaign)
    every = sorted(c for fold in split for c in fold["val"])
    split_file = root / f"{name}.split.json"
    atomic_write_text(split_file, json.dumps({
        "train": every, "validation": [],
        "decision_split": {"file": _relative(campaign["_split"], root.parent),
                           "folds": split}}, indent=2) + "\n")
    card = root / f"{name}.md"
    status = read_json(runs_dir / "status.json", {}) or {}
    atomic_write_text(card, card_text(name, campaign, recipe, oof, status,
                                      load_model(target).count_params()))
    return [target, config_file, split_file, card]


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def card_text(name: str, campaign: dict[str, Any], recipe: dict[str, Any],
              oof: dict[str, Any], status: dict[str, Any], parameters: int) -> str:
    """The model card: what it is, its out-of-fold scores, post-processing, training
    cost and machine, and its configuration."""
    config = TrainConfig.from_dict(recipe, source=name)
    overall, raw = oof["overall_postprocessed"], oof["overall_raw"]
    cases, regions = len(oof["cases"]), campaign.get("_regions", REGIONS)
    unit = campaign.get("hd95_unit", "mm")
    lines = [f"# {name}", "",
             f"The Isensee et al. 2017 U-Net ({config.model.spatial_dims}D, "
             f"{config.model.base_filters} base filters, "
             f"{config.model.depth} levels, {parameters:,} parameters) trained on all "
             f"{cases} cases of the campaign `{campaign['name']}`, with the recipe its study "
             f"chose and the post-processing chosen on the out-of-fold predictions of its "
             f"{len(oof['per_fold_postprocessed'])}-fold cross-validation. Written by "
             "`unet3d-campaign ship` from the campaign's records.", "",
             "## Out-of-fold accuracy", "",
             f"Each of the {cases} cases segmented by the fold model that never saw it, "
             "post-processed as below (whole volumes: each case's Dice over all its voxels).",
             "", f"| region | Dice mean | median | worst | HD95 mean ({unit}) | median | worst |",
             "|---|---|---|---|---|---|---|"]
    for region in regions:
        d, h = overall[f"Dice_{region}"], overall[f"HD95_{region}"]
        lines.append(f"| {region} | {d['mean']:.3f} | {d['median']:.3f} | {d['worst']:.3f} "
                     f"| {h['mean']:.1f} | {h['median']:.1f} | {h['worst']:.1f} |")
    lines += ["", "Before post-processing, mean Dice " + ", ".join(
        f"{r} {raw[f'Dice_{r}']['mean']:.3f}" for r in regions) + ".", "",
        "| fold | cases | " + " | ".join(f"Dice {r}" for r in regions) + " | "
        + " | ".join(f"HD95 {r} ({unit})" for r in regions) + " |",
        "|---|---|" + "---|" * (2 * len(regions))]
    for fold, summary in oof["per_fold_postprocessed"].items():
        count = sum(1 for c in oof["cases"].values() if str(c["fold"]) == fold)
        lines.append(f"| {fold} | {count} | " + " | ".join(
            f"{summary[f'Dice_{r}']['mean']:.3f}" for r in regions) + " | " + " | ".join(
            f"{summary[f'HD95_{r}']['mean']:.1f}" for r in regions) + " |")
    slices = oof.get("overall_slices")
    if slices:
        lines += ["", f"Per slice ({regions[0]}, the slices of every patient, after "
                  f"post-processing): mean Dice {slices['slice_dice_mean_of_cases']:.3f} over the "
                  "slices where the mask or the prediction marks tumour (mean of the "
                  f"patients' means); of {slices['slices']} slices, {slices['slices_with_tumour']}"
                  f" show tumour; a slice's tumour / no-tumour call: sensitivity "
                  f"{slices['sensitivity']:.3f}, specificity {slices['specificity']:.3f}."]
    lines += peer_lines(campaign, overall, cases, regions)
    if campaign.get("card_note"):
        lines += [campaign["card_note"], ""]
    lines += choice_lines(campaign)
    plan = PostProcessing(**oof["plan_values"])
    mirrored = (f" The {2 ** config.model.spatial_dims} axis mirrorings of the input are "
                "averaged, as the campaign file says, and `predict.py` does the same unless "
                "`--no-tta`.") if plan.mirroring else ""
    rules = dataclasses.replace(plan, mirroring=False).describe()  # what was chosen
    lines += ["## Post-processing", "", f"{rules}: chosen on the {cases} out-of-fold "
              f"cases, stored in the model file, applied by `predict.py`.{mirrored}", ""]
    lines += training_lines(status, campaign)
    lines += ["## Configuration", "", "| key | value |", "|---|---|",
              f"| parameters | {parameters:,} |",
              f"| patch_size | {'x'.join(map(str, config.patch_size))} |",
              f"| modalities | {', '.join(config.modalities)} |"]
    for key in CARD_KEYS:
        value = getattr(config.model, key) if hasattr(config.model, key) \
            else getattr(config, key)
        if key != "input_stride" or value != 1:  # shown where the network uses one
            lines.append(f"| {key} | {value} |")
    lines += ["", f"`train.py --config models/{name}.config.json --data <data folder>` "
              "trains it again; `models/" + name + ".split.json` lists its cases and the "
              "cross-validation split the choices were made on.", ""]
    return "\n".join(lines)


def peer_lines(campaign: dict[str, Any], overall: dict[str, Any], cases: int,
               regions: tuple[str, ...]) -> list[str]:
    """The published figures the card places the model against: the campaign file's
    ``peers`` (``[{"who": ..., "dice": {region: value}}]``), else the BraTS ones."""
    peers = [(p["who"], tuple(p["dice"].get(r) for r in regions))
             for p in campaign.get("peers", [])] or \
        [(who, tuple(values[REGIONS.index(r)] for r in regions)) for who, values in PEERS]
    lines = ["", "## Compared with published figures", "",
             "| | " + " | ".join(f"Dice {r}" for r in regions) + " |",
             "|---|" + "---|" * len(regions),
             f"| this model, out-of-fold on {cases} cases | " + " | ".join(
                 f"{overall[f'Dice_{r}']['mean']:.3f}" for r in regions) + " |"]
    lines += [f"| {who} | " + " | ".join(_as_published(v) for v in values) + " |"
              for who, values in peers]
    return [*lines, "", campaign.get("peers_note", "The published figures are on other "
            "cases (the challenges' validation sets, hundreds of cases); they place this "
            "model, they do not rank it."), ""]


def choice_lines(campaign: dict[str, Any]) -> list[str]:
    """Why this recipe and why this model: the campaign file's ``recipe_choice`` and
    ``shipped_choice`` texts, and where the study's table is."""
    lines = []
    results = campaign["_file"].parent / "results.md"
    if campaign.get("recipe_choice"):
        lines += ["## Recipe", "", campaign["recipe_choice"], ""]
        if results.is_file():
            where = _relative(results, campaign["_models"].parent.parent)
            what = ("The study's table, with the spread across folds"
                    if campaign.get("study", {}).get("arms") else "The campaign's figures")
            lines += [f"{what}: [{where}](../{where}).", ""]
    if campaign.get("shipped_choice"):
        lines += ["## One model, not the fold ensemble", "", campaign["shipped_choice"], ""]
    return lines


def _as_published(value: float | None) -> str:
    """A published figure with the digits its authors gave (two or three)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if round(value, 2) == value else f"{value:.3f}"


def training_lines(status: dict[str, Any], campaign: dict[str, Any]) -> list[str]:
    """The runs' epochs, validation Dice and CPU-hours, and the machines they ran on."""
    runs, regions = status.get("runs", {}), campaign.get("_regions", REGIONS)
    lines = ["## Training", "", "| run | epochs | " + " | ".join(
        f"validation Dice {r}" for r in regions) + " | CPU-h |",
        "|---|---|" + "---|" * (len(regions) + 1)]
    for run, entry in sorted(runs.items()):
        if run.startswith("study/"):
            continue
        dice = entry.get("val_dice") or {}
        shown = " | ".join(f"{dice[r]:.3f}" if r in dice else "-" for r in regions)
        lines.append(f"| {run} | {entry.get('epochs_done', '-')} | {shown} | "
                     f"{entry.get('cpu_hours', 0.0):.2f} |")
    total = sum(e.get("cpu_hours", 0.0) + e.get("cpu_hours_discarded", 0.0)
                for e in runs.values())
    machines = sorted({e["machine"] for e in runs.values() if e.get("machine")})
    curves = campaign["_file"].parent / "curves.png"
    study = ", the recipe study included" if campaign.get("study", {}).get("arms") else ""
    lines += ["", f"CPU-hours{study}: {total:.1f} (user + system time of "
              "the training processes), on " + ("; ".join(machines) or "an unrecorded machine")
              + "."]
    if campaign.get("training_note"):
        lines += ["", campaign["training_note"]]
    if curves.is_file():
        where = _relative(curves, campaign["_models"].parent.parent)
        lines += ["", f"![validation curves of the folds](../{where})"]
    return [*lines, ""]
