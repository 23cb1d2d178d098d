#!/usr/bin/env python
"""The README's performance table: every row measured in one run, each row saying what it compares.

Two groups of rows, each row in its own process (peak memory from ``os.wait4``),
the rows of a group alternating for ``--rounds`` rounds:

**A whole case, files to NIfTI** (the real case ``--case``; the time is the
second case a process segments, so graph building is left out, and the first
is reported too):

* the shipped model (``unet3d.artifacts.shipped.DEFAULT_NAME``) with
  ``predict.py``'s defaults (``--precision auto``, whole volume, its stored
  post-processing): ``bench/peers/ours_predict.py --run case --as-predict``;
* the default network (base 16, depth 5, seeded and untrained: timing does not
  depend on the weights) through ``predict.py``'s pipeline in fp32 and, on a
  CPU with native bf16, in bf16;
* the same network shape in MONAI (``DynUNet`` through
  ``sliding_window_inference``, ``bench/peers/monai_dynunet.py``, torch 2.13.0
  CPU + MONAI 1.6.1 in their own venv): 128^3 windows at overlap 0.5 with
  Gaussian blending, what MONAI users run;
* like for like: both sides on one window over the whole cropped volume, and
  both sides on 128^3 windows at overlap 0.5 with Gaussian blending
  (ours ``--mode sliding``).

**One 128^3 window, batch 1** (the tumour-centred window of ``--case``), the
default network: Keras fp32 (the compiled forward ``predict.py`` uses), Keras
bf16, the LiteRT int8 file of ``unet3d-export`` (exported in the run, or
``--litert-file``), OpenVINO fp32 and int8 (NNCF), ONNX Runtime fp32 and int8
(static QDQ), from ``bench/bench_runtimes.py``'s workers and conversions.
Agreement: WT Dice of the thresholded channel 0 against Keras fp32. On the
untrained default network that agreement says little (its outputs hover around
0.5), so the shipped model's window follows: Keras fp32 against the shipped
int8 file (``<model>_int8.tflite``), on the same window.

The table is printed as Markdown, ready for the README. ``--work DIR`` keeps the
model, the windows and the conversions (minutes each: the int8 calibrations
above all) for the next run.

Usage:
    python bench/bench_summary.py [--rounds 1] [--reps 3] [--work DIR]
        [--litert-file FILE.tflite] [--no-peers-int8] [--skip-case | --skip-window]
        [--skip-shipped-window]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_runtimes as runtimes  # noqa: E402
import bench_vs_monai as monai  # noqa: E402

REPO = BENCH.parent
CASE_ROWS = {
    # row: (label, side, arguments of the worker after --case/--out)
    "shipped": ("shipped model, predict.py defaults", "ours",
                ["--run", "case", "--as-predict", "--precision", "auto"]),
    "ours_fp32": ("default network, whole volume, fp32", "ours",
                  ["--run", "case", "--precision", "fp32"]),
    "ours_bf16": ("default network, whole volume, bf16", "ours",
                  ["--run", "case", "--precision", "bf16"]),
    "monai_sliding": ("MONAI DynUNet, 128^3 windows, overlap 0.5, fp32", "peer",
                      ["--roi", "128", "--blend", "gaussian", "--overlap", "0.5"]),
    "ours_sliding": ("default network, 128^3 windows, overlap 0.5, fp32", "ours",
                     ["--run", "stages", "--mode", "sliding", "--window", "128",
                      "--overlap", "0.5", "--precision", "fp32"]),
    "monai_whole": ("MONAI DynUNet, whole volume, fp32", "peer",
                    ["--roi", "0", "--blend", "constant", "--overlap", "0.5"]),
}
# what each case row is compared with: (row, what the ratio says)
CASE_VERSUS = {
    "ours_fp32": [("monai_sliding", "MONAI as its users run it"),
                  ("monai_whole", "like for like: both one whole-volume pass")],
    "ours_bf16": [("monai_sliding", "MONAI as its users run it")],
    "ours_sliding": [("monai_sliding", "like for like: both 128^3 windows")],
    "shipped": [("ours_fp32", "the default network, same pipeline")],
}
WINDOW_ROWS = ("keras_fp32", "keras_bf16", "litert_int8", "ov_fp32", "ov_int8", "ort_fp32",
               "ort_int8")


def case_seconds(result: dict) -> float:
    """The second case a worker segmented (the first also builds the graph)."""
    if "runs" in result:  # stage-timed workers
        return result["runs"][-1]["total"]
    return result["times"][-1]


def first_seconds(result: dict) -> float:
    return result["runs"][0]["total"] if "runs" in result else result["times"][0]


def measure_cases(args, rows: list[str], model: Path, shipped: Path, tmp: Path) -> dict:
    peer = monai.ensure_peer(Path(args.monai_venv))
    results: dict[str, list] = {}
    for round_ in range(args.rounds):
        for row in rows:
            label, side, extra = CASE_ROWS[row]
            out = tmp / f"case_{row}"
            if side == "ours":
                path = shipped if row == "shipped" else model
                cmd = [sys.executable, str(monai.OURS), "--model", str(path), *extra]
            else:
                cmd = [str(peer), str(monai.PEER_SCRIPT), *extra]
            result, peak = monai.run_measured(cmd + ["--case", args.case, "--out", str(out)])
            results.setdefault(row, []).append((result, peak))
            print(f"round {round_ + 1}: {label}: {case_seconds(result):.2f} s "
                  f"(first {first_seconds(result):.2f} s), peak {peak:.2f} GB", flush=True)
    return results


def case_table(rows: list[str], results: dict) -> list[str]:
    def seconds(row):
        return statistics.median(case_seconds(r) for r, _ in results[row])

    lines = []
    for row in rows:
        if row not in results:
            continue
        label = CASE_ROWS[row][0]
        peak = max(p for _, p in results[row])
        first = statistics.median(first_seconds(r) for r, _ in results[row])
        versus = "; ".join(
            f"{seconds(other) / seconds(row):.2f}x {CASE_ROWS[other][0]} ({why})"
            for other, why in CASE_VERSUS.get(row, []) if other in results)
        stages = ""
        if "runtime_s" in results[row][-1][0]:  # predict_case's own split of the time
            split = results[row][-1][0]["runtime_s"]
            stages = (f" (read+preprocess {split['load_preprocess']:.2f}, network+post "
                      f"{split['network']:.2f}, write {split['write']:.2f})")
        one = [r["peaks_gb"][0] for r, _ in results[row] if "peaks_gb" in r]
        memory = f"{max(one):.2f} / {peak:.2f} GB" if one else f"- / {peak:.2f} GB"
        lines.append(f"| {label} | {seconds(row):.2f} s{stages} | {first:.2f} s | {memory} | "
                     f"{versus} |")
    return lines


def window_table(rows: list[str], results: dict, tmp: Path,
                 labels: dict[str, str] | None = None) -> list[str]:
    import numpy as np

    base = statistics.median(t for r, _ in results["keras_fp32"] for t in r["times"])
    reference = np.load(tmp / "keras_fp32.npy")
    lines = []
    for row in rows:
        if row not in results:
            continue
        runs = results[row]
        median = statistics.median(t for r, _ in runs for t in r["times"])
        dice, _ = runtimes.agreement(reference, np.load(tmp / f"{row}.npy"))
        cpu, cpu_base = runtimes.cpu_median(runs), runtimes.cpu_median(results["keras_fp32"])
        cpu_text = f"{cpu_base / cpu:.2f}x" if cpu and cpu_base else "-"
        label = (labels or {}).get(row, runtimes.ENGINES[row][3])
        lines.append(f"| {label} | {1000 * median:.0f} ms | "
                     f"{base / median:.2f}x | {cpu_text} | "
                     f"{max(p for _, p in runs):.2f} GB | {dice:.4f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=str(monai.DEFAULT_CASE))
    parser.add_argument("--data", default=str(runtimes.DATA))
    parser.add_argument("--shipped", help="the shipped model's .keras (default: predict.py's)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3, help="timed calls per window row")
    parser.add_argument("--calibration-patches", type=int, default=4)
    parser.add_argument("--litert-file", help="an int8 .tflite of the default network "
                        "(default: exported in the run)")
    parser.add_argument("--no-peers-int8", action="store_true",
                        help="leave out OpenVINO's and ONNX Runtime's int8 (their "
                             "calibrations take minutes)")
    parser.add_argument("--skip-case", action="store_true")
    parser.add_argument("--case-rows", default=",".join(CASE_ROWS),
                        help=f"of {', '.join(CASE_ROWS)}")
    parser.add_argument("--skip-window", action="store_true")
    parser.add_argument("--skip-shipped-window", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", help="keep the model, inputs and conversions here")
    parser.add_argument("--monai-venv", default=str(monai.PEER_VENV))
    parser.add_argument("--runtimes-venv", default=str(runtimes.PEER_VENV))
    args = parser.parse_args(argv)

    from unet3d.env import apply_defaults, describe_cpu

    apply_defaults()  # oneDNN defaults before TensorFlow loads
    from unet3d.artifacts.shipped import shipped_path
    from unet3d.precision import native_bf16

    shipped = Path(args.shipped) if args.shipped else shipped_path()
    bf16 = native_bf16()
    case_rows = [r for r in args.case_rows.split(",") if bf16 or r != "ours_bf16"]
    if unknown := [r for r in case_rows if r not in CASE_ROWS]:
        parser.error(f"unknown --case-rows {unknown}")
    window_rows = [r for r in WINDOW_ROWS if (bf16 or r != "keras_bf16") and not (
        args.no_peers_int8 and r in ("ov_int8", "ort_int8"))]
    # bench_runtimes' settings: one round per row group, --reps timed calls
    settings = argparse.Namespace(
        model=None, data=args.data, case=Path(args.case).name, window=128,
        calibration_patches=args.calibration_patches,
        litert_files=[args.litert_file] if args.litert_file else [],
        ov_source="savedmodel", reps=args.reps, rounds=args.rounds, threads=args.threads,
        work=args.work)
    print(f"machine: {describe_cpu()}; every runtime with {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(args.work or name)
        tmp.mkdir(parents=True, exist_ok=True)
        model, inputs, source = runtimes.prepare(settings, tmp)
        failed: dict[str, str] = {}
        case_results, window_results, shipped_results = {}, {}, {}
        shipped_int8 = shipped.with_name(f"{shipped.stem}_int8.tflite")
        if not args.skip_shipped_window and shipped_int8.is_file():
            # its own folder: prepare() writes the fp32 copy and the windows there
            shipped_dir = tmp / "shipped"
            shipped_dir.mkdir(exist_ok=True)
            own = argparse.Namespace(**{**vars(settings), "model": str(shipped),
                                        "litert_files": [str(shipped_int8)],
                                        "calibration_patches": 1})
            shipped_model, shipped_inputs, _ = runtimes.prepare(own, shipped_dir)
            shipped_results = runtimes.measure(
                own, ["keras_fp32", "litert_int8"],
                [None, shipped_model, shipped_inputs, shipped_dir], failed)
        if not args.skip_window:
            peer = runtimes.ensure_peer(Path(args.runtimes_venv))
            failed = runtimes.convert_all(settings, peer, model, inputs, window_rows, tmp)
            window_rows = [r for r in window_rows
                           if not any(t in failed for t in runtimes.needs(r, "savedmodel"))]
            window_results = runtimes.measure(settings, window_rows,
                                              [peer, model, inputs, tmp], failed)
        if not args.skip_case:
            case_results = measure_cases(args, case_rows, model, shipped, tmp)

        print(f"\nmachine: {describe_cpu()}; `python bench/bench_summary.py "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`".rstrip())
        if case_results:
            print(f"\nA whole case, files to NIfTI ({Path(args.case).name}; the second case "
                  f"a process segments, median of {args.rounds} round(s)):\n")
            print("| row | seconds a case | first case | peak memory: one case / two | "
                  "speed-up over |")
            print("|---|---|---|---|---|")
            print("\n".join(case_table(case_rows, case_results)))
        if window_results:
            print(f"\nOne 128^3 window, batch 1, the default network (int8 calibrated on "
                  f"{source}):\n")
            print("| row | per window | vs Keras fp32 | CPU time vs Keras fp32 | "
                  "peak memory | WT Dice vs Keras fp32 |")
            print("|---|---|---|---|---|---|")
            print("\n".join(window_table(window_rows, window_results, tmp)))
        if shipped_results:
            print(f"\nThe same window, the shipped model ({shipped.name}) and its int8 "
                  f"file ({shipped_int8.name}):\n")
            print("| row | per window | vs Keras fp32 | CPU time vs Keras fp32 | "
                  "peak memory | WT Dice vs Keras fp32 |")
            print("|---|---|---|---|---|---|")
            print("\n".join(window_table(
                ["keras_fp32", "litert_int8"], shipped_results, tmp / "shipped",
                {"keras_fp32": "shipped model, Keras fp32",
                 "litert_int8": f"shipped model, LiteRT int8 ({shipped_int8.name})"})))
        for what, why in failed.items():
            print(f"failed: {what}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
