#!/usr/bin/env python
"""Segment brain tumors in new patients' scans into NIfTI label maps in their own space.

Examples:
    python predict.py --model runs/exp1/best.keras --input /data/Patient_042 --out preds/
    python predict.py --model runs/exp1/best.keras --input /data/BraTS_Validation --out preds/ \\
        --tta --preview --mesh stl
    python predict.py --model runs/exp1/best.keras --input /data/BraTS_Training --out preds/ \\
        --gt /data/BraTS_Training
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import keras

from data_generators.labels import resolve_convention
from data_generators.layouts import layout_of
from unet3d.artifacts import DEFAULT_NAME, load_artifact, shipped_path
from unet3d.env import prepare_backend
from unet3d.evaluation.folder import evaluate_folder, format_summary
from unet3d.evaluation.review import write_review
from unet3d.inference.api import Predictor
from unet3d.inference.pipeline import PredictSettings
from unet3d.precision import resolve_precision
from unet3d_base.errors import InputError
from unet3d_base.fileio import (
    ensure_writable_dir,
    exclusive_lock,
    remove_stale_temporaries,
    shared_lock,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Segment brain tumors (BraTS layout) with a trained 3D U-Net.")
    parser.add_argument("--model",
                        help="a .keras model (its run's config inside or config.json beside "
                             "it), an exported LiteRT .tflite (its .tflite.json beside it) or "
                             "a folder of fold_<k>.keras models (their ensemble) or an "
                             "ensemble manifest .json naming its member models; "
                             f"default: the shipped models/{DEFAULT_NAME}.keras")
    parser.add_argument("--input", required=True,
                        help="a case folder (four modalities) or a folder of case folders")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--labels", default="brats2017",
                        help="label convention written: brats2017 (0,1,2,4; default) or 2023 "
                             "(enhancing = 3)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average the 8 axis mirrorings (4 for a slice network); "
                             "default: as the model's stored plan says, else off")
    parser.add_argument("--mode", choices=("auto", "whole", "sliding"), default="auto",
                        help="whole cropped volume at once, sliding window, or auto (whole "
                             "when it fits --max-memory-gb)")
    parser.add_argument("--patch-size", type=int, nargs="+", metavar="N",
                        help="sliding window size (default: the training patch size)")
    parser.add_argument("--overlap", type=float, default=0.5, help="sliding window overlap")
    parser.add_argument("--max-memory-gb", type=float, default=4.0,
                        help="auto mode slides windows when the whole volume would need more")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="what a .keras network computes in: bf16 only where the CPU has "
                             "avx512_bf16 or amx_bf16 (or on a GPU), else ~20x slower; auto "
                             "(default) picks bf16 exactly there")
    parser.add_argument("--no-postprocess", action="store_true",
                        help="no post-processing at all (neither step below)")
    parser.add_argument("--et-threshold", type=int,
                        help="enhancing tumors below this many voxels become necrosis; 0: off "
                             "(default: the plan stored with the model, else 500)")
    parser.add_argument("--largest-component", action=argparse.BooleanOptionalAction,
                        help="keep only the largest connected tumor component (default: the "
                             "plan chosen on validation and stored with the model, else off)")
    parser.add_argument("--preview", action="store_true", help="PNG montage of axial slices")
    parser.add_argument("--mesh", choices=("stl", "obj"), help="surface mesh per region (mm)")
    parser.add_argument("--gt", help="ground-truth folder: score the predictions (CSV + table)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT interpreter threads")
    parser.add_argument("--html", action="store_true",
                        help="write OUT/index.html: a review page of every case in OUT "
                             "(three planes, volumes, flags, scores with --gt), flagged cases "
                             "first, each linked to its own page; opens offline")
    parser.add_argument("--num-parts", type=int, default=1, metavar="N",
                        help="share a folder of cases among N processes (machines, array "
                             "jobs) writing one --out: each takes every N-th case, in name "
                             "order (default 1)")
    parser.add_argument("--part-id", type=int, default=0, metavar="K",
                        help="which of the --num-parts shares this process segments, 0-based "
                             "(default 0)")
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace):
    try:
        resolve_convention(args.labels)
    except ValueError as err:
        raise InputError(f"--labels: {err}") from None
    patch = None
    if args.patch_size:
        if len(args.patch_size) not in (1, 2, 3) or min(args.patch_size) <= 0:
            raise InputError("--patch-size takes one, two (a 2D network) or three positive sizes")
        patch = tuple(args.patch_size)
    if args.et_threshold is not None and args.et_threshold < 0:
        raise InputError(f"--et-threshold must be >= 0, got {args.et_threshold}")
    if not 0 <= args.overlap < 1:
        raise InputError(f"--overlap must lie in [0, 1), got {args.overlap}")
    return PredictSettings(labels=args.labels, tta=args.tta, mode=args.mode, patch_size=patch,
                           overlap=args.overlap, postprocess=not args.no_postprocess,
                           et_min_voxels=args.et_threshold, preview=args.preview,
                           largest_component=args.largest_component,
                           mesh=args.mesh, overwrite=args.overwrite,
                           max_memory_gb=args.max_memory_gb, threads=args.threads)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    source = Path(args.input)
    if not source.exists():
        raise InputError(f"--input {source}: does not exist")
    if not source.is_dir():
        raise InputError(f"--input {source}: is not a folder")
    if args.num_parts < 1:
        raise InputError(f"--num-parts must be >= 1, got {args.num_parts}")
    if not 0 <= args.part_id < args.num_parts:
        raise InputError(f"--part-id must lie in 0..{args.num_parts - 1} (--num-parts "
                         f"{args.num_parts}), got {args.part_id}")
    out = Path(args.out)
    ensure_writable_dir(out, "--out")
    if args.num_parts == 1:
        with exclusive_lock(out, "--out"):  # one process at a time writes an output folder
            remove_stale_temporaries(out)  # a killed run's: nobody else can own them now
            return _segment(args, settings, source, out)
    # the parts of one folder write it together (a shared lock), each part once at a time
    with shared_lock(out, "--out"), exclusive_lock(
            out, f"--part-id {args.part_id} --num-parts {args.num_parts}: --out",
            name=f".lock.part{args.part_id}of{args.num_parts}"):
        return _segment(args, settings, source, out)


def _segment(args: argparse.Namespace, settings, source: Path, out: Path) -> int:
    shipped = args.model is None
    predictor = Predictor(load_artifact(args.model or shipped_path(), threads=settings.threads,
                                        precision=resolve_precision(args.precision)), settings)
    model = predictor.model
    card = f"; shipped default, see {Path(model.path).with_suffix('.md')}" if shipped else ""
    plan, plan_source = predictor.plan
    ensemble = f", ensemble of {model.members}" if model.members > 1 else ""
    print(f"model: {model.path} ({model.output_mode}, {model.precision}{ensemble}, modalities "
          f"{', '.join(model.modalities)}{card})")
    print(f"post-processing ({plan_source}): {plan.describe()}")

    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or keras.utils.Progbar(total, unit_name="case")
        bar.update(done)

    result = predictor.predict_folder(source, out, num_parts=args.num_parts,
                                      part_id=args.part_id, on_case=progress)
    failures = result.failures
    if not result.cases:  # one case folder
        print_case(next(iter(result.reports.values())))
    else:
        print(f"{len(result.reports)} segmented, {len(result.skipped)} already done "
              f"(--overwrite to redo), {len(failures)} failed; outputs in {out}")
        for name, reason in failures.items():
            print(f"failed: {name}: {reason}", file=sys.stderr)

    layout = layout_of(source)
    if layout.own_masks:
        if args.gt:
            print(f"--gt: the masks beside {layout.title} are scored in each report "
                  "(dice_wt_vs_masks); --gt is for BraTS label maps", file=sys.stderr)
        if args.html:
            print(f"--html: the review page is for BraTS label maps, not {layout.title}",
                  file=sys.stderr)
        return 1 if failures else 0
    # the parts of one folder: the part that completes it scores and reviews the whole
    complete = args.num_parts == 1 or all(predictor.is_done(case_dir, out)
                                          for case_dir in result.cases)
    if (args.gt or args.html) and not complete:
        why = "cases failed or " if failures else ""
        print(f"part {args.part_id} of {args.num_parts} done; the folder is not complete yet "
              f"({why}other parts still segmenting): the part that completes it writes "
              f"{'evaluation.csv' if args.gt else ''}{' and ' if args.gt and args.html else ''}"
              f"{'index.html' if args.html else ''} for every case; or run afterwards: "
              f"unet3d-evaluate --pred {out} --gt GT --overwrite{' --html' if args.html else ''}")
        return 1 if failures else 0
    rows = None  # per-case scores, with --gt
    if args.gt:  # every case of the folder, whichever part segmented it
        rows, summary = evaluate_folder(out, args.gt, csv_path=out / "evaluation.csv",
                                        convention=settings.labels, overwrite=True)
        print(format_summary(summary, len(rows)))
        print(f"per-case scores: {out / 'evaluation.csv'}")
    if args.html:
        index = write_review(out, args.gt, rows, convention=settings.labels)
        print(f"review page: {index}")
    return 1 if failures else 0


def print_case(report: dict) -> None:
    volumes = "  ".join(f"{r} {v['cm3']:.1f} cm3" for r, v in report["volumes"].items())
    print(f"{report['case_id']}: {report['segmentation']}  ({volumes}; "
          f"{report['runtime_s']['total']:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_backend()
    try:
        return run(args)
    except InputError as err:
        print(f"predict.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # through the entry point, which answers a full disk too
    from unet3d.cli import predict_main

    sys.exit(predict_main())
