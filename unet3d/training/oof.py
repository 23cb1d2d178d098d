"""Out-of-fold results of a campaign: every case segmented by the fold model that never saw
it, post-processing chosen on all of them, scores per fold, and the folds' curves.

``unet3d-campaign oof ...`` and ``unet3d-campaign plot ...`` call these.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from data_generators.geometry import load_case_for_model
from data_generators.labels import classes_to_regions
from data_generators.layouts import find_any_case
from data_generators.preprocessing import preprocess_case
from unet3d.artifacts import load_artifact
from unet3d.artifacts.manifest import read_manifest
from unet3d.evaluation.scores import dice, hd95
from unet3d.inference.pipeline import probabilities_to_classes
from unet3d.inference.predictor import WindowPredictor
from unet3d.postprocessing import PostProcessing, choose
from unet3d.precision import resolve_precision
from unet3d_base.fileio import atomic_path, atomic_write_text

REGIONS = ("WT", "TC", "ET")


def predict_out_of_fold(split: list[dict[str, list[str]]], models: dict[int, Path],
                        data_dir: Path, out_dir: Path, log=print, mirroring: bool = False
                        ) -> dict[str, dict[str, Any]]:
    """Segments each fold's validation cases with that fold's model, in the model's space
    (brain crop, 1 mm), before any post-processing; with ``mirroring``, averaging the
    input's axis mirrorings. Each case is kept as ``out_dir/<case>.npz`` (``classes``,
    ``truth``, ``fold``); cases already there, made the same way by the same model, are
    read, not predicted again.

    Returns:
        ``{case_id: {"classes", "truth", "fold"}}``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for k, fold in enumerate(split):
        if k not in models:
            continue
        model = None
        made_by = model_stamp(models[k]) + (":mirrored" if mirroring else "")
        for case_id in fold["val"]:
            path = out_dir / f"{case_id}.npz"
            if path.is_file():
                with np.load(path) as stored:
                    if "model" in stored and str(stored["model"]) == made_by:
                        results[case_id] = {"classes": stored["classes"],
                                            "truth": stored["truth"], "fold": int(stored["fold"])}
                        continue  # made by this very fold model: not predicted again
            if model is None:
                model = load_artifact(models[k], precision=resolve_precision("auto"))
                predictor = WindowPredictor(model.predict_fn, stride=model.stride,
                                            patch_size=model.patch_size,
                                            base_filters=model.base_filters,
                                            spatial_dims=model.spatial_dims, tta=mirroring,
                                            mode="sliding" if model.fixed_window else "auto")
            case = find_any_case(data_dir / case_id, modalities=model.modalities,
                                 require_label=True)
            image, label, _, _ = load_case_for_model(case, model.label_convention)
            cropped, truth, _ = preprocess_case(image, label, model.normalization)
            classes = probabilities_to_classes(predictor(cropped), model.output_mode)
            classes = classes.astype(np.uint8)
            tmp = path.with_name(f".{path.stem}.tmp.npz")
            np.savez_compressed(tmp, classes=classes, truth=truth, fold=k, model=made_by)
            tmp.replace(path)
            results[case_id] = {"classes": classes, "truth": truth, "fold": k}
            log(f"fold {k}: {case_id} segmented")
    return results


def model_stamp(path: Path) -> str:
    """Which model file made a prediction: its name, size and CRC-32 (the post-processing
    plan stored later does not count: only the network's weights do; a LiteRT file: the
    whole file; an ensemble manifest: its members')."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return f"{path.name}[{','.join(model_stamp(m) for m in read_manifest(path)[0])}]"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            weights = archive.read("model.weights.h5")
    else:
        weights = Path(path).read_bytes()
    return f"{path.name}:{len(weights)}:{zlib.crc32(weights):08x}"


def score_regions(classes: np.ndarray, truth: np.ndarray, regions: tuple[str, ...] = REGIONS
                  ) -> dict[str, float]:
    """Dice and HD95 (mm, the 1 mm grid) of ``regions`` of one class map."""
    pred, true = classes_to_regions(classes).astype(bool), classes_to_regions(truth).astype(bool)
    scores = {}
    for region in regions:
        c = REGIONS.index(region)
        scores[f"Dice_{region}"] = float(dice(pred[..., c], true[..., c]))
        scores[f"HD95_{region}"] = float(hd95(pred[..., c], true[..., c]))
    return scores


def slice_scores(classes: np.ndarray, truth: np.ndarray, region: str = "WT") -> dict[str, float]:
    """Per-slice figures of one region of a stack of axial slices (the last axis): the
    mean Dice over the slices where the truth or the prediction marks something, and how
    often a slice's tumour / no-tumour call is right (sensitivity, specificity)."""
    c = REGIONS.index(region)
    pred = classes_to_regions(classes)[..., c].astype(bool)
    true = classes_to_regions(truth)[..., c].astype(bool)
    p_any, t_any = pred.any(axis=(0, 1)), true.any(axis=(0, 1))
    both = p_any | t_any
    dices = [dice(pred[..., k], true[..., k]) for k in np.flatnonzero(both)]
    return {"slice_dice_mean": float(np.mean(dices)) if dices else 1.0,
            "slices_with_tumour": int(t_any.sum()), "slices": int(t_any.size),
            "tumour_slices_found": int((p_any & t_any).sum()),
            "empty_slices_called_empty": int((~p_any & ~t_any).sum())}


def summary(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, median and worst case of each score over ``rows`` (worst: lowest Dice,
    highest HD95)."""
    keys = next(iter(rows.values())).keys()
    out = {}
    for key in keys:
        values = np.array([r[key] for r in rows.values()])
        worst = values.min() if key.startswith("Dice") else values.max()
        out[key] = {"mean": round(float(values.mean()), 4),
                    "median": round(float(np.median(values)), 4),
                    "worst": round(float(worst), 4)}
    return out


def out_of_fold_report(results: dict[str, dict[str, Any]],
                       regions: tuple[str, ...] = REGIONS, slices: bool = False,
                       mirroring: bool = False) -> dict[str, Any]:
    """Chooses post-processing on every out-of-fold case and scores ``regions`` before and
    after it, per case, per fold and over all cases (with ``slices``: per-slice figures of
    the first region after post-processing too, :func:`slice_scores`). ``mirroring``: the
    cases were predicted with mirroring, which the plan then records."""
    class_maps = {c: r["classes"] for c, r in results.items()}
    truths = {c: r["truth"] for c, r in results.items()}
    plan, table = choose(class_maps, truths)
    plan = dataclasses.replace(plan, mirroring=mirroring)
    raw = PostProcessing(et_min_voxels=0)
    cases = {}
    for case_id, r in sorted(results.items()):
        cases[case_id] = {
            "fold": r["fold"],
            "raw": score_regions(raw.apply(r["classes"])[0], r["truth"], regions),
            "postprocessed": score_regions(plan.apply(r["classes"])[0], r["truth"], regions),
        }
        if slices:
            cases[case_id]["slices"] = slice_scores(plan.apply(r["classes"])[0], r["truth"],
                                                    regions[0])
    report: dict[str, Any] = {"plan": plan.describe(), "plan_values": plan.to_dict(),
                              "cases": cases}
    for stage in ("raw", "postprocessed"):
        report[f"overall_{stage}"] = summary({c: v[stage] for c, v in cases.items()})
        report[f"per_fold_{stage}"] = {
            str(k): summary({c: v[stage] for c, v in cases.items() if v["fold"] == k})
            for k in sorted({v["fold"] for v in cases.values()})}
    if slices:
        report["overall_slices"] = pooled_slices([v["slices"] for v in cases.values()])
    report["candidates"] = table
    return report


def pooled_slices(per_case: list[dict[str, float]]) -> dict[str, float]:
    """Per-slice figures over every case's slices: the mean of the cases' mean slice Dice,
    slice-level sensitivity and specificity of the tumour / no-tumour call."""
    with_tumour = sum(c["slices_with_tumour"] for c in per_case)
    empty = sum(c["slices"] - c["slices_with_tumour"] for c in per_case)
    return {"slice_dice_mean_of_cases": round(float(np.mean(
                [c["slice_dice_mean"] for c in per_case])), 4),
            "slices": sum(c["slices"] for c in per_case), "slices_with_tumour": with_tumour,
            "sensitivity": round(sum(c["tumour_slices_found"] for c in per_case)
                                 / max(with_tumour, 1), 4),
            "specificity": round(sum(c["empty_slices_called_empty"] for c in per_case)
                                 / max(empty, 1), 4)}


def write_report(report: dict[str, Any], path: Path) -> None:
    atomic_write_text(path, json.dumps(report, indent=1) + "\n")


def plot_curves(curves: dict[str, dict[str, list[float]]], steps_per_epoch: dict[str, int],
                path: Path, flat_fraction: float = 0.2) -> Path:
    """One panel per fold: validation Dice per region (and their mean) against training steps.

    Args:
        curves: ``{fold name: read_curve(...)}``.
        steps_per_epoch: ``{fold name: steps}``.
        path: the PNG to write (atomically).
        flat_fraction: the last share of each curve that the flat-curve rule reads (shaded).
    """
    matplotlib.use("Agg")
    names = sorted(curves)
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.2 * max(1, len(names)), 3.0),
                             sharey=True, squeeze=False)
    colours = {"WT": "tab:green", "TC": "tab:red", "ET": "tab:orange", "mean": "black"}
    for ax, name in zip(axes[0], names, strict=False):
        curve = curves[name]
        steps = np.array(curve["epoch"]) * steps_per_epoch[name]
        for key in (*REGIONS, "mean"):
            ax.plot(steps, curve[key], color=colours[key], label=key,
                    linewidth=2.0 if key == "mean" else 1.0)
        if len(steps):
            tail = max(1, int(np.ceil(len(steps) * flat_fraction)))
            ax.axvspan(steps[-tail] - steps_per_epoch[name] / 2, steps[-1], color="0.9")
        ax.set_title(name)
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation Dice (patches)")
    axes[0][0].set_ylim(0, 1)
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path
