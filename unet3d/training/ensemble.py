"""Ensembles of several campaigns' models, scored out of fold: nnU-Net's
``find_best_configuration``, for networks cross-validated on one split.

Each member is a path template with ``{fold}`` (``models/lgg_b16_cv5/fold_{fold}.keras``):
fold ``k``'s member models never saw fold ``k``'s validation cases, so their mean
probabilities segment those cases out of fold. Every member alone and the ensemble are
scored the same way (:func:`unet3d.training.oof.out_of_fold_report`); the ensemble's
post-processing is chosen on its own out-of-fold predictions and written, with the
members' final models, into an ensemble manifest that ``predict.py --model`` loads
(:func:`unet3d.artifacts.loader.load_manifest`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from unet3d.artifacts.manifest import MANIFEST_FORMAT
from unet3d.postprocessing import PostProcessing
from unet3d.training.oof import out_of_fold_report, predict_out_of_fold
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text


def fold_models(template: str, folds: int) -> dict[int, Path]:
    """``{k: template with {fold} = k}``; InputError for a template without ``{fold}`` or a
    fold model that is not there."""
    if "{fold}" not in template:
        raise InputError(f"{template}: a member must be a path template with {{fold}} in it "
                         "(models/<campaign>/fold_{fold}.keras)")
    models = {k: Path(template.replace("{fold}", str(k))) for k in range(folds)}
    for path in models.values():
        if not path.is_file():
            raise InputError(f"{path}: member model not found (a .keras or .tflite file)")
    return models


def write_manifest(path: Path, members: list[Path], plan: PostProcessing) -> Path:
    """An ensemble manifest at ``path``: ``members`` relative to its folder, and ``plan``."""
    names = [os.path.relpath(Path(m).resolve(), Path(path).resolve().parent) for m in members]
    values = {"format": MANIFEST_FORMAT, "members": names, "postprocessing": plan.to_dict()}
    atomic_write_text(Path(path), json.dumps(values, indent=1) + "\n")
    return Path(path)


def ensemble_out_of_fold(split: list[dict[str, list[str]]], templates: list[str],
                         data_dir: Path, work_dir: Path, regions: tuple[str, ...],
                         slices: bool = False, mirroring: bool = False, log=print
                         ) -> dict[str, dict[str, Any]]:
    """Out-of-fold reports of every member alone (``member 0``, ...) and of their
    ensemble (``ensemble``), each with its own post-processing chosen on its predictions.
    Predictions are kept under ``work_dir`` and reused while the models are unchanged."""
    members = [fold_models(t, len(split)) for t in templates]
    reports = {}
    for i, models in enumerate(members):
        results = predict_out_of_fold(split, models, data_dir, work_dir / f"member_{i}",
                                      log, mirroring)
        reports[f"member {i}"] = out_of_fold_report(results, regions, slices, mirroring)
    neutral = PostProcessing(et_min_voxels=0)  # the plan is chosen below, on the ensemble
    manifests = {k: write_manifest(work_dir / "manifests" / f"fold_{k}.json",
                                   [m[k] for m in members], neutral)
                 for k in range(len(split))}
    results = predict_out_of_fold(split, manifests, data_dir, work_dir / "ensemble", log,
                                  mirroring)
    reports["ensemble"] = out_of_fold_report(results, regions, slices, mirroring)
    return reports


def summary_table(reports: dict[str, dict[str, Any]], templates: list[str],
                  regions: tuple[str, ...]) -> str:
    """Markdown: mean / median / worst Dice per region after post-processing, the raw
    mean, and (slice data) the share of tumour-free slices called empty, per row."""
    lines = ["| model | " + " | ".join(f"{r} mean | {r} median | {r} worst | {r} raw mean"
                                       for r in regions) + " | empty slices called empty |",
             "|---" * (1 + 4 * len(regions) + 1) + "|"]
    for name, report in reports.items():
        label = templates[int(name.split()[1])] if name.startswith("member") else \
            "ensemble (mean probabilities)"
        cells = []
        for r in regions:
            d = report["overall_postprocessed"][f"Dice_{r}"]
            cells += [f"{d['mean']:.3f}", f"{d['median']:.3f}", f"{d['worst']:.3f}",
                      f"{report['overall_raw'][f'Dice_{r}']['mean']:.3f}"]
        empty = report.get("overall_slices", {}).get("specificity")
        cells.append("-" if empty is None else f"{empty:.1%}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
