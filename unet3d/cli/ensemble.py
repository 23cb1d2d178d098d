"""``unet3d-ensemble``: score an ensemble of cross-validated networks out of fold, beside
each of them alone, and write the manifest that ``predict.py --model`` runs.

Example (two campaigns cross-validated on one split)::

    unet3d-ensemble --members 'models/lgg_b16_cv5/fold_{fold}.keras' \\
        'models/lgg_b16_s2_cv5/fold_{fold}.keras' \\
        --split campaigns/lgg_cv5/splits_final.json --data ../shared/data/lgg/kaggle_3m \\
        --regions WT --mirroring --out campaigns/lgg_ensemble_cv5 \\
        --final models/lgg_unet2d.keras models/lgg_b16_s2_cv5/all.keras \\
        --manifest models/lgg_unet2d_ensemble.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from data_generators.lgg import is_lgg_root
from unet3d.artifacts.loader import combine
from unet3d.postprocessing import PostProcessing
from unet3d.training.campaign_plan import read_split_file
from unet3d.training.ensemble import ensemble_out_of_fold, summary_table, write_manifest
from unet3d.training.oof import REGIONS
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text

PROG = "unet3d-ensemble"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", nargs="+", required=True,
                        help="a path template with {fold} per member network "
                             "(models/<campaign>/fold_{fold}.keras)")
    parser.add_argument("--split", type=Path, required=True,
                        help="the split the members were cross-validated on (a campaign's "
                             "splits_final.json: a list of {train, val} folds)")
    parser.add_argument("--data", type=Path, required=True, help="the cases' folder")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for oof.json, results.md and the kept predictions")
    parser.add_argument("--regions", nargs="+", default=list(REGIONS), choices=REGIONS)
    parser.add_argument("--mirroring", action="store_true",
                        help="average the input's mirrorings (as the members' campaigns did)")
    parser.add_argument("--final", nargs="+", type=Path, default=None,
                        help="the members' final models (one per --members, in order): "
                             "with --manifest, the ensemble predict.py runs")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="write the ensemble manifest here (needs --final)")
    return parser.parse_args(None if argv is None else list(argv))


def run(args: argparse.Namespace) -> int:
    if (args.manifest is None) != (args.final is None):
        raise InputError("--manifest and --final go together")
    if args.final is not None:
        if len(args.final) != len(args.members):
            raise InputError(f"--final names {len(args.final)} models for "
                             f"{len(args.members)} members")
        if args.manifest.suffix.lower() != ".json":
            raise InputError(f"{args.manifest}: an ensemble manifest's name ends in .json")
        combine(args.manifest, list(args.final))  # they must make one ensemble: refused now
    split = read_split_file(args.split)
    regions = tuple(args.regions)
    reports = ensemble_out_of_fold(split, args.members, args.data, args.out, regions,
                                   slices=is_lgg_root(args.data), mirroring=args.mirroring)
    atomic_write_text(args.out / "oof.json", json.dumps(
        {"members": args.members, "split": str(args.split), "reports": reports}, indent=1))
    table = summary_table(reports, args.members, regions)
    cases = len(reports["ensemble"]["cases"])
    atomic_write_text(args.out / "results.md", f"Out of fold, {cases} cases, each row with "
                      "its own post-processing chosen on its predictions "
                      f"(`{PROG}`).\n\n{table}\n")
    print(table)
    print(f"ensemble post-processing: {reports['ensemble']['plan']}")
    if args.manifest is not None:
        plan = PostProcessing(**reports["ensemble"]["plan_values"])
        print(f"wrote {write_manifest(args.manifest, args.final, plan)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except InputError as err:
        print(f"{PROG}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    from unet3d.cli import ensemble_main

    sys.exit(ensemble_main())
