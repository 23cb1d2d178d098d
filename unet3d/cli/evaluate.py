"""``unet3d-evaluate``: score a folder of predicted segmentations against ground truth.

Examples:
    unet3d-evaluate --pred preds/ --gt /data/BraTS_Training/
    unet3d-evaluate --pred preds/ --gt gt/ --labels brats2023
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from data_generators.labels import CONVENTIONS
from unet3d.env import prepare_backend
from unet3d.evaluation.folder import DEFAULT_CSV, PROG, evaluate_folder, format_summary
from unet3d.evaluation.review import write_review
from unet3d_base.errors import InputError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line.

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` if None.

    Returns:
        Namespace with ``pred``, ``gt``, ``csv``, ``labels``, ``overwrite``.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Score predicted BraTS segmentations (Dice, HD95, sensitivity, "
        "specificity, IoU per WT/TC/ET region) against ground truth.",
    )
    parser.add_argument(
        "--pred", required=True, type=Path, help="folder of <case_id>.nii.gz predictions"
    )
    parser.add_argument(
        "--gt",
        required=True,
        type=Path,
        help="folder of BraTS case folders holding <case_id>_seg.nii.gz",
    )
    parser.add_argument(
        "--csv", type=Path, default=None, help=f"per-case CSV (default PRED/{DEFAULT_CSV})"
    )
    parser.add_argument(
        "--labels",
        default="brats2017",
        choices=sorted(CONVENTIONS),
        help="label convention of predictions and ground truth (default brats2017: ET=4; "
        "brats2023: ET=3)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    parser.add_argument("--lesionwise", action="store_true",
                        help="add the BraTS 2023 lesion-wise Dice and HD95 per region "
                             "(LesionDice_WT, LesionHD95_WT, ...; lesion counts, misses and "
                             "false positives) to the CSV, the summary and the review page")
    parser.add_argument("--html", action="store_true",
                        help="also write PRED/index.html: a review page of every case (three "
                             "planes on the scan from --gt, volumes, flags, scores)")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input).

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` if None.

    Returns:
        0 on success, 2 on an input error (one line on stderr).
    """
    args = parse_args(argv)
    prepare_backend()
    try:
        csv_path = args.csv if args.csv is not None else args.pred / DEFAULT_CSV
        rows, summary = evaluate_folder(
            args.pred, args.gt, csv_path, convention=args.labels, overwrite=args.overwrite,
            lesionwise=args.lesionwise,
        )
        print(format_summary(summary, len(rows)))
        print(f"wrote {csv_path}")
        if args.html:
            print(f"wrote {write_review(args.pred, args.gt, rows, convention=args.labels)}")
    except InputError as err:
        message = " ".join(str(err).split("\n"))
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # through the entry point, which answers a full disk too
    from unet3d.cli import evaluate_main

    sys.exit(evaluate_main())
