"""``unet3d-campaign``: run a training campaign, see where it stands, gather its results.

See :mod:`unet3d.training.campaign` for what a campaign is. Examples::

    unet3d-campaign run campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5
    unet3d-campaign status campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5
    unet3d-campaign oof campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5
    unet3d-campaign plot campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5
    unet3d-campaign sync campaigns/brats_cv5/campaign.json --runs ~/campaign/brats_cv5
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.labels import MODALITIES
from data_generators.layouts import find_any_cases
from data_generators.lgg import is_lgg_root
from unet3d.artifacts import write_plan
from unet3d.postprocessing import PostProcessing
from unet3d.training.campaign import (
    Campaign,
    load_campaign,
    make_split,
    planned_runs,
    read_curve,
    read_json,
    read_split,
)
from unet3d.training.campaign_results import copy_atomic
from unet3d.training.campaign_ship import ship
from unet3d.training.oof import out_of_fold_report, plot_curves, predict_out_of_fold, write_report
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text


def format_status(campaign: dict[str, Any], status: dict[str, Any]) -> str:
    lines = [f"campaign {campaign['name']}  (updated {status.get('updated', 'never')})"]
    for stage in ("study", "folds", "final"):
        try:
            runs = planned_runs(campaign, stage)
        except InputError as err:
            lines.append(f"{stage}: {err}")
            continue
        for run in runs:
            e = status.get("runs", {}).get(run["name"], {})
            dice = e.get("val_dice")
            shown = " ".join(f"{r} {dice[r]:.3f}" for r in campaign["_regions"] if r in dice
                             ) if dice else ""
            lines.append(f"  {run['name']:<32} {e.get('state', 'pending'):<18} "
                         f"epochs {e.get('epochs_done', 0):>4}  "
                         f"{e.get('cpu_hours', 0.0):6.2f} CPU-h  {shown}")
    lines.append(f"continue: {status.get('continue', '')}")
    return "\n".join(lines)


def out_of_fold(campaign: dict[str, Any], runs_dir: Path, log=print) -> dict[str, Any]:
    """Out-of-fold segmentations of every case by the published fold models, the
    post-processing chosen on them (stored into each fold model) and ``oof.json``."""
    split = read_split(campaign)
    models = {k: runs_dir / "published" / f"fold_{k}.keras" for k in range(len(split))}
    missing = [k for k, path in models.items() if not path.is_file()]
    if missing:
        raise InputError(f"{runs_dir / 'published'}: no model yet for fold(s) "
                         f"{', '.join(map(str, missing))}; finish the folds stage first")
    mirror = bool(campaign.get("mirroring", False))
    results = predict_out_of_fold(split, models, campaign["_data"], runs_dir / "oof", log, mirror)
    lgg = is_lgg_root(campaign["_data"])
    report = out_of_fold_report(results, campaign["_regions"], lgg, mirror)
    write_report(report, runs_dir / "oof.json")
    plan = PostProcessing(**report["plan_values"])
    for path in sorted((runs_dir / "published").glob("*.keras")):  # the final model too
        write_plan(path, plan)
    overall = report["overall_postprocessed"]
    log(f"out-of-fold, {len(results)} cases, post-processing: {report['plan']}")
    for region in campaign["_regions"]:
        d, h = overall[f"Dice_{region}"], overall[f"HD95_{region}"]
        log(f"  {region}: Dice mean {d['mean']:.3f} median {d['median']:.3f} worst "
            f"{d['worst']:.3f}  HD95 mean {h['mean']:.1f} "
            f"{campaign.get('hd95_unit', 'mm').split(':')[0]}")
    return report


def plot(campaign: dict[str, Any], runs_dir: Path) -> Path:
    """``curves.png``: each fold's validation Dice per region against training steps."""
    curves, steps = {}, {}
    status = read_json(runs_dir / "status.json", {}) or {}
    for run in planned_runs(campaign, "folds"):
        run_dir = runs_dir / run["name"]
        curve = read_curve(run_dir, campaign["_regions"])
        if not curve["mean"]:  # the run folder is gone: the curve kept in the status
            curve = status.get("runs", {}).get(run["name"], {}).get("curve") or curve
        if curve["mean"]:
            name = f"fold {run['fold']}"
            curves[name] = curve
            steps[name] = int(read_json(run_dir / "config.json", {}).get(
                "steps_per_epoch", run["config"]["steps_per_epoch"]))
    if not curves:
        raise InputError(f"{runs_dir}: no fold has a validation curve yet")
    return plot_curves(curves, steps, runs_dir / "curves.png",
                       campaign["folds"].get("flat_fraction", 0.2))


def write_fold_configs(campaign: dict[str, Any], status: dict[str, Any]) -> list[Path]:
    """``<campaign folder>/configs/<run>.config.json``: each fold's (and the final model's)
    training config, with the epochs it actually trained when it is done; re-run one with
    ``train.py --config FILE --data DIR --out RUN``."""
    written = []
    stages = ("folds", "final") if campaign.get("recipe") else ()
    for stage in stages:
        for run in planned_runs(campaign, stage):
            config = {k: v for k, v in run["config"].items() if k != "data"}
            entry = status.get("runs", {}).get(run["name"], {})
            if entry.get("state") == "done":
                config["epochs"] = entry["epochs_done"]
            elif stage == "final":
                continue  # its length is known once the folds are done
            path = campaign["_file"].parent / "configs" / f"{run['name'].split('/')[1]}.json"
            path.parent.mkdir(exist_ok=True)
            atomic_write_text(path, json.dumps(config, indent=2) + "\n")
            written.append(path)
    return written


def results_markdown(campaign: dict[str, Any], runs_dir: Path) -> str:
    """The campaign's figures as Markdown tables, from its status, study and out-of-fold
    report: what a model card quotes."""
    status = read_json(runs_dir / "status.json", {}) or {}
    runs = status.get("runs", {})
    machines = sorted({e["machine"] for e in runs.values() if e.get("machine")})
    total = sum(e.get("cpu_hours", 0.0) for e in runs.values())
    lines = [f"# Campaign `{campaign['name']}`: results", "",
             f"Written by `unet3d-campaign sync` from `status.json` (updated "
             f"{status.get('updated', 'never')}). Machine: {'; '.join(machines) or 'unknown'}. "
             f"CPU-hours spent so far (user + system time of the training processes): "
             f"{total:.2f}.", ""]
    study = read_json(runs_dir / "study.json", {}) or {}
    regions = campaign["_regions"]
    if study:
        folds = campaign["study"]["folds"]
        sched = campaign["study"].get("schedule", {})
        lines += ["## Recipe study", "",
                  f"Each arm on folds {', '.join(map(str, folds))}; "
                  f"{sched.get('epochs', '?')} epochs of {sched.get('steps_per_epoch', '?')} "
                  "steps from scratch; whole-volume Dice of the fold's validation cases (best "
                  "epoch), mean over folds; spread: max - min of the folds' mean Dice.", ""]
        common = {arm.get("common_cases") for arm in study.values()} - {None}
        if common and any(len(arm["folds"]) for arm in study.values()):
            lines += ["Where arms were scored on different cases (a channel some lack), "
                      f"'common' is each arm's mean Dice on the {max(common)} cases every "
                      "arm was scored on.", ""]
        extra = " common |" if common else ""
        lines += ["| arm | overrides | " + " | ".join(regions) + " | mean | spread | CPU-h "
                  "per fold | mean Dice per CPU-h of one fold |" + extra,
                  "|---|---|" + "---|" * (len(regions) + 4 + bool(common))]
        for name, arm in study.items():
            m = arm["mean"]
            spread = f"{arm['spread']:.3f}" if arm.get("spread") is not None else "1 fold"
            overrides = ", ".join(f"{k}={v}" for k, v in arm["overrides"].items()) or "-"
            lines.append(f"| {name} | {overrides} | "
                         + "".join(f"{m[r]:.3f} | " for r in regions)
                         + f"{m['mean']:.3f} | {spread} | "
                         f"{arm.get('cpu_hours_per_fold', arm['cpu_hours']):.2f} "
                         f"| {arm['dice_per_cpu_hour']:.2f} |"
                         + (f" {np.mean(list(arm['mean_common'].values())):.3f} |"
                            if common and arm.get("mean_common") else " - |" if common else ""))
        lines.append("")
    fold_runs = [r for r in runs if r.startswith("folds/")]
    if fold_runs:
        lines += ["## Folds", "", "| fold | state | epochs | flat | CPU-h | "
                  + " | ".join(regions) + " |", "|---|---|---|---|---|" + "---|" * len(regions)]
        for name in sorted(fold_runs):
            e = runs[name]
            d = e.get("val_dice") or {}
            lines.append(f"| {name.split('/')[1]} | {e['state']} | {e.get('epochs_done', 0)} "
                         f"| {e.get('flat', '-')} | {e.get('cpu_hours', 0):.2f} | "
                         + " | ".join(f"{d[r]:.3f}" if r in d else "-" for r in regions) + " |")
        lines.append("")
    oof = read_json(runs_dir / "oof.json")

    def header(first: str) -> str:
        names = [f"{m} {r}" for m in ("Dice", "HD95") for r in regions]
        return f"| {first} | " + " | ".join(names) + " |\n|---|" + "---|" * len(names)
    if oof:
        lines += ["## Out of fold", "", f"{len(oof['cases'])} cases, each segmented by the fold "
                  f"model that never saw it; post-processing chosen on all of them: "
                  f"{oof['plan']}.", "",
                  header("")]
        keys = [f"{m}_{r}" for m in ("Dice", "HD95") for r in regions]
        for stage in ("raw", "postprocessed"):
            summary = oof[f"overall_{stage}"]
            for stat in ("mean", "median", "worst"):
                lines.append(f"| {stage} {stat} | " + " | ".join(
                    f"{summary[k][stat]:.3f}" if k.startswith("Dice") else
                    f"{summary[k][stat]:.1f}" for k in keys) + " |")
        lines += ["", header("fold")]
        for fold, summary in oof["per_fold_postprocessed"].items():
            lines.append(f"| {fold} | " + " | ".join(
                f"{summary[k]['mean']:.3f}" if k.startswith("Dice") else
                f"{summary[k]['mean']:.1f}" for k in keys) + " |")
        lines.append("")
    return "\n".join(lines)


def sync(campaign: dict[str, Any], runs_dir: Path, log=print) -> list[Path]:
    """Copies status, study table and HParams trials, out-of-fold report, curves and
    published fold models into the repository."""
    folder = campaign["_file"].parent
    copied = []
    for name in ("status.json", "study.json", "oof.json", "curves.png"):
        if (runs_dir / name).is_file():
            copy_atomic(runs_dir / name, folder / name)
            copied.append(folder / name)
    for model in sorted((runs_dir / "published").glob("*.keras")):
        copy_atomic(model, campaign["_models"] / model.name)
        copied.append(campaign["_models"] / model.name)
    copied += write_fold_configs(campaign, read_json(runs_dir / "status.json", {}) or {})
    for trial in sorted((runs_dir / "study").glob("*/fold*/tensorboard/hparams")):
        arm, fold = trial.parts[-4], trial.parts[-3]  # the study's HParams trials
        target = folder / "study" / f"{arm}_{fold}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(trial, target)
        copied.append(target)
    results = folder / "results.md"
    atomic_write_text(results, results_markdown(campaign, runs_dir) + "\n")
    copied.append(results)
    for path in copied:
        log(f"copied {path}")
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="unet3d-campaign",
        description="Run a training campaign (recipe study, then k folds), see where it "
                    "stands, gather its results.")
    parser.add_argument("command",
                        choices=("split", "run", "status", "sync", "study", "oof", "plot",
                                 "ship"))
    parser.add_argument("campaign", help="the campaign file (campaigns/<name>/campaign.json)")
    parser.add_argument("--runs", help="runs folder, outside the work tree")
    parser.add_argument("--data", help="the BraTS folder, if not where the campaign file says")
    parser.add_argument("--name", help="ship: the shipped model's name, models/<name>.keras")
    parser.add_argument("--stage", choices=("study", "folds", "final"), action="append",
                        help="run only this stage (repeatable; default: study, folds, final)")
    args = parser.parse_args(argv)
    try:
        campaign = load_campaign(args.campaign, args.data)
        if args.command == "split":
            if campaign["_split"].exists():
                raise InputError(f"{campaign['_split']}: exists; a campaign keeps its split")
            # every case: an LGG patient's FLAIR is always its own (other channels may copy it)
            modalities = ("flair",) if is_lgg_root(campaign["_data"]) else MODALITIES
            ids = [c.case_id for c in find_any_cases(campaign["_data"], modalities,
                                                     require_label=True)]
            split = make_split(ids, campaign["split_folds"], campaign["split_seed"])
            atomic_write_text(campaign["_split"], json.dumps(split, indent=2) + "\n")
            print(f"wrote {campaign['_split']}: {len(ids)} cases, {len(split)} folds")
            return 0
        if not args.runs:
            raise InputError("--runs is needed: the runs folder, outside the work tree")
        runner = Campaign(campaign, args.runs)
        if args.command == "run":
            return runner.run(args.stage or ["study", "folds", "final"])
        if args.command == "status":
            print(format_status(campaign, runner.status))
        elif args.command == "study":
            print(json.dumps(runner.write_study(), indent=2))
        elif args.command == "oof":
            out_of_fold(campaign, runner.runs_dir)
        elif args.command == "plot":
            print(f"wrote {plot(campaign, runner.runs_dir)}")
        elif args.command == "ship":
            if not args.name:
                raise InputError("ship needs --name, the shipped model's name")
            for path in ship(campaign, runner.runs_dir, args.name):
                print(f"wrote {path}")
        else:
            sync(campaign, runner.runs_dir)
        return 0
    except InputError as err:
        print(f"unet3d-campaign: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # through the entry point, which answers a full disk too
    from unet3d.cli import campaign_main

    sys.exit(campaign_main())
