#!/usr/bin/env python
"""CPU runtimes side by side on one 128^3 window: Keras against OpenVINO and ONNX Runtime.

The same network and weights (the default network, base 16, depth 5, seeded,
untrained; or ``--model`` FILE.keras) per window of batch 1, in one run:

* ours: Keras fp32 (the compiled forward of ``predict.py``,
  :func:`unet3d.models.forward.keras_predict_fn`), Keras bf16 (what
  ``--precision auto`` picks on a CPU with avx512_bf16) and, with ``--litert``,
  the LiteRT int8 file of :func:`unet3d.export.export_litert` (exported on the
  calibration patches below; minutes) or ``--litert-file``, an existing one
  (repeat it to time several files in the same run, e.g. before and after a
  change to the lowering: rows ``litert_int8``, ``litert_int8_2``, ...);
* OpenVINO fp32 (IR from the Keras SavedModel, or ``--ov-source onnx``), bf16
  (the same IR, ``INFERENCE_PRECISION_HINT`` bf16) and int8 (NNCF post-training
  quantization);
* ONNX Runtime fp32 (ONNX from Keras' ``model.export(format="onnx")``, i.e.
  tf2onnx) and int8 (``quantize_static``, QDQ, per-channel weights).

Both int8 paths calibrate on the same real 128^3 patches of ``--data``
(:func:`unet3d.export.calibration.draw_patches`, the tumour-centred and other
fixed patches of up to 4 cases); every row then runs on one real window of
another case, ``--case`` (its tumour-centred patch). Agreement with Keras fp32
on that window: WT Dice of the thresholded sigmoid channel 0 and the largest
absolute difference of the probabilities (meaningful for trained weights).

The peers live in their own venv, made on first use from the exact versions in
``bench/peers/requirements-runtimes.txt`` (never this project's dependencies).
Each conversion and each engine runs in its own process (``bench/peers/runtimes_*.py``;
ours: ``bench/peers/ours_window.py``),
reading the window from an ``.npz`` and writing its output back; peak memory from
``os.wait4``. Rows alternate for ``--rounds`` rounds; a row's time is the median
of its timed calls (after a first, untimed one).

``--profile`` then prints, for each LiteRT file, where its time goes operator by
operator (:func:`unet3d.export.profile.profile_ops`: each operator timed alone,
process CPU time, ``--profile-threads``), by op type and the slowest operators.

Usage:
    python bench/bench_runtimes.py [--model FILE.keras] [--reps 3] [--rounds 2]
        [--litert | --litert-file FILE.tflite ...] [--engines keras_fp32,ov_fp32,...] [--quick]
        [--profile]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "brats2018"
PEER_VENV = Path.home() / ".cache" / "unet3d" / "bench-runtimes-venv"
PEERS = REPO / "bench" / "peers"
REQUIREMENTS = PEERS / "requirements-runtimes.txt"
# row: (side, what it runs, precision / hint, label)
ENGINES = {
    "keras_fp32": ("ours", "keras", "fp32", "Keras fp32 (compiled forward)"),
    "keras_bf16": ("ours", "keras", "bf16", "Keras bf16"),
    "litert_int8": ("ours", "litert", "fp32", "LiteRT int8 (unet3d.export)"),
    "ov_fp32": ("peer", "openvino", "f32", "OpenVINO fp32"),
    "ov_bf16": ("peer", "openvino", "bf16", "OpenVINO bf16 hint"),
    "ov_int8": ("peer", "openvino", "f32", "OpenVINO int8 (NNCF)"),
    "ort_fp32": ("peer", "onnxruntime", "", "ONNX Runtime fp32"),
    "ort_int8": ("peer", "onnxruntime", "", "ONNX Runtime int8 (QDQ)"),
}
DEFAULT_ENGINES = "keras_fp32,keras_bf16,ov_fp32,ov_bf16,ov_int8,ort_fp32,ort_int8"
# the conversions each row needs, in order
NEEDS = {"ov_fp32": ["savedmodel", "ov"], "ov_bf16": ["savedmodel", "ov"],
         "ov_int8": ["savedmodel", "ov", "ov_int8"], "ort_fp32": ["onnx"],
         "ort_int8": ["onnx", "ort_int8"], "litert_int8": ["litert"]}


def output_of(target: str, source: str) -> str:
    """What a conversion writes, relative to the work folder."""
    return {"onnx": "converted/fp32.onnx", "savedmodel": "converted/saved_model",
            "ov": f"converted/ov_fp32_{source}.xml", "ov_int8": f"converted/ov_int8_{source}.xml",
            "ort_int8": "converted/ort_int8.onnx", "litert": "litert_int8.tflite"}[target]


def ensure_peer(venv: Path) -> Path:
    """The peer's python, installing its venv (exact pins, no resolver) on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing the runtimes peer into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "-r",
                        str(REQUIREMENTS)], check=True)
    return python


def run_measured(cmd: list[str]) -> tuple[dict, float]:
    """Runs ``cmd``; returns its last stdout line as JSON and its peak RSS in GB."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status):
            lines = [line for line in err.read().strip().splitlines() if line.strip()]
            raise RuntimeError(lines[-1] if lines else f"exit {status}")
        lines = out.read().strip().splitlines()
    return json.loads(lines[-1]), usage.ru_maxrss / 2**20


def prepare(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, str]:
    """The model file and the .npz of windows (``window``, ``calibration``)."""
    from unet3d.artifacts.keras_file import read_model_config, save_model
    from unet3d.config import TrainConfig
    from unet3d.export.calibration import draw_patches
    from unet3d.models.unet import build_unet3d

    if args.model:  # rebuilt in fp32: layers saved in mixed_bfloat16 would export bf16 Casts
        from unet3d.artifacts.keras_file import load_model
        from unet3d.precision import policy_scope

        config, trained = read_model_config(args.model), load_model(args.model)
        with policy_scope("fp32"):
            model = build_unet3d(TrainConfig.from_dict(config, source=args.model).model,
                                 name=trained.name)
        model.set_weights(trained.get_weights())
        model_path = save_model(model, tmp / "model_fp32.keras", config)
    elif (tmp / "default.keras").exists():  # kept in --work
        model_path, config = tmp / "default.keras", TrainConfig().to_dict()
    else:
        import keras

        keras.utils.set_random_seed(0)
        config = TrainConfig().to_dict()
        model_path = save_model(build_unet3d(TrainConfig().model), tmp / "default.keras", config)
    # an older config stores "normalization": null; draw_patches reads the raw dict
    config = {**config, "normalization": config.get("normalization") or "zscore"}
    window = (args.window,) * 3
    case = Path(args.case).name
    others = sorted(p.name for p in Path(args.data).iterdir() if p.is_dir() and p.name != case)
    calibration = draw_patches(args.data, window, args.calibration_patches, config,
                               case_ids=others)
    evaluation = draw_patches(args.data, window, 1, config, case_ids=[case])[0]
    inputs = tmp / "inputs.npz"
    np.savez(inputs, window=evaluation, calibration=np.concatenate(calibration))
    return model_path, inputs, (f"{len(calibration)} patches drawn from up to 4 of the "
                                f"{len(others)} other cases")


def needs(row: str, source: str) -> list[str]:
    """The conversions a row needs, in order (OpenVINO reads the SavedModel or the ONNX)."""
    return ["onnx" if t == "savedmodel" and source == "onnx" else t for t in NEEDS.get(row, [])]


def convert_all(args, peer: Path, model: Path, inputs: Path, rows: list[str], tmp: Path) -> dict:
    """Runs every conversion the rows need (each after the one it reads); returns failures."""
    failed: dict[str, str] = {}
    for target in dict.fromkeys(t for row in rows for t in needs(row, args.ov_source)):
        if target == "litert":
            cmd = [sys.executable, str(PEERS / "ours_window.py"), "--export-litert", "--model",
                   str(model), "--inputs", str(inputs), "--out", str(tmp / "litert_int8.tflite"),
                   "--window", str(args.window)]
        else:
            cmd = [str(peer), str(PEERS / "runtimes_convert.py"), "--target", target,
                   "--model", str(model), "--out", str(tmp / "converted"), "--calibration",
                   str(inputs), "--source", args.ov_source, "--window", str(args.window)]
        if (target == "litert" and args.litert_files) or (
                args.work and (tmp / output_of(target, args.ov_source)).exists()):
            continue  # given, or kept from an earlier run (--work)
        before = {"ov": args.ov_source, "ov_int8": "ov", "ort_int8": "onnx"}.get(target)
        if before in failed:
            failed[target] = f"skipped: needs {before}"
            continue
        try:
            result, peak = run_measured(cmd)
            print(f"converted {target}: {result.get('seconds', 0):.1f} s, peak {peak:.2f} GB",
                  flush=True)
        except RuntimeError as err:
            failed[target] = str(err)
            print(f"conversion {target} FAILED: {err}", flush=True)
    return failed


def litert_rows(files: list[str]) -> list[str]:
    """One row per given LiteRT file (``litert_int8``, ``litert_int8_2``, ...), labelled by
    the file's name; at least ``litert_int8`` (the exported file when none is given)."""
    rows = ["litert_int8" if k == 0 else f"litert_int8_{k + 1}" for k in range(len(files))]
    for row, file in zip(rows, files, strict=True):
        ENGINES[row] = ("ours", "litert", "fp32", f"LiteRT int8 ({Path(file).name})"[:32])
        NEEDS[row] = ["litert"]
    return rows or ["litert_int8"]


def litert_path(args, row: str, tmp: Path) -> Path:
    """The ``.tflite`` a LiteRT row runs: the given file of that row, else the exported one."""
    if not args.litert_files:
        return tmp / "litert_int8.tflite"
    index = 0 if row == "litert_int8" else int(row.rsplit("_", 1)[1]) - 1
    return Path(args.litert_files[index])


def print_profiles(args, rows: list[str], tmp: Path) -> None:
    """Each LiteRT row's file, operator by operator (:mod:`unet3d.export.profile`)."""
    from unet3d.export.profile import format_profile, profile_ops

    for row in rows:
        if ENGINES[row][1] != "litert":
            continue
        path = litert_path(args, row, tmp)
        print(f"\nprofile of {path} ({args.profile_threads} thread(s), CPU time, each "
              f"operator alone, median of {args.reps}):", flush=True)
        profile = profile_ops(path, threads=args.profile_threads, reps=args.reps)
        print(format_profile(profile, top=12, slowest=args.profile_slowest), flush=True)


def engine_cmd(args, row: str, peer: Path, model: Path, inputs: Path, tmp: Path) -> list[str]:
    side, engine, precision, _ = ENGINES[row]
    out = ["--inputs", str(inputs), "--out", str(tmp / f"{row}.npy"), "--reps", str(args.reps)]
    if side == "ours":
        path = model if engine == "keras" else litert_path(args, row, tmp)
        return [sys.executable, str(PEERS / "ours_window.py"), "--model", str(path),
                "--precision", precision, "--threads", str(args.threads), *out]
    file = output_of(NEEDS[row][-1], args.ov_source)
    return [str(peer), str(PEERS / "runtimes_engine.py"), "--engine", engine, "--model",
            str(tmp / file), "--threads", str(args.threads), "--hint", precision or "f32", *out]


def measure(args, rows: list[str], where: list, failed: dict) -> dict[str, list]:
    """Every row in its own process, the rows alternating for ``--rounds`` rounds."""
    results: dict[str, list] = {}
    for round_ in range(args.rounds):
        for row in rows:
            try:
                result, peak = run_measured(engine_cmd(args, row, *where))
            except RuntimeError as err:
                failed[row] = str(err)
                print(f"round {round_ + 1}: {row} FAILED: {err}", flush=True)
                continue
            results.setdefault(row, []).append((result, peak))
            print(f"round {round_ + 1}: {row}: {statistics.median(result['times']):.2f} s "
                  f"(first {result['first_s']:.2f} s), peak {peak:.2f} GB", flush=True)
    return results


def agreement(reference: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """WT Dice of the thresholded channel 0, and the largest absolute probability difference."""
    a, b = reference[..., 0] > 0.5, out[..., 0] > 0.5
    total = a.sum() + b.sum()
    dice = 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total
    return float(dice), float(np.abs(reference - out).max())


def cpu_median(runs: list) -> float | None:
    """Median process CPU seconds (all threads) per timed call, where the row reports it
    (this project's rows; the peers report wall time only)."""
    cpu = [t for r, _ in runs for t in r.get("cpu_times", [])]
    return statistics.median(cpu) if cpu else None


def report(rows: list[str], results: dict, tmp: Path) -> None:
    base = statistics.median(t for r, _ in results["keras_fp32"] for t in r["times"])
    reference = np.load(tmp / "keras_fp32.npy")
    cpu_base = cpu_median(results["keras_fp32"])
    print(f"\n{'row':32} {'ms/window':>10} {'vs Keras fp32':>13} {'first call':>10} "
          f"{'load':>7} {'peak GB':>8} {'WT Dice':>8} {'max |dp|':>9} {'CPU ms':>7} "
          f"{'CPU vs Keras':>12}")
    for row in rows:
        if row not in results:
            continue
        runs = results[row]
        median = statistics.median(t for r, _ in runs for t in r["times"])
        first = statistics.median(r["first_s"] for r, _ in runs)
        load = statistics.median(r["load_s"] for r, _ in runs)
        dice, diff = agreement(reference, np.load(tmp / f"{row}.npy"))
        cpu = cpu_median(runs)
        cpu_cols = (f" {1000 * cpu:7.0f} {cpu_base / cpu:11.2f}x" if cpu and cpu_base
                    else "")
        print(f"{ENGINES[row][3]:32} {1000 * median:10.0f} {base / median:12.2f}x "
              f"{first:9.2f}s {load:6.2f}s {max(p for _, p in runs):8.2f} {dice:8.4f} "
              f"{diff:9.2e}{cpu_cols}")
    fraction = float((reference[..., 0] > 0.5).mean())
    print(f"(ratio > 1: faster than Keras fp32; Keras fp32's WT on the window: "
          f"{100 * fraction:.1f}% of its voxels; CPU ms: process CPU time of all threads, "
          f"steadier than wall time beside other jobs)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help=".keras file (default: the default network, seeded)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--case", default="Brats18_CBICA_AMH_1", help="the timed window's case")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--calibration-patches", type=int, default=4)
    parser.add_argument("--engines", default=DEFAULT_ENGINES, help=f"of {', '.join(ENGINES)}")
    parser.add_argument("--litert", action="store_true", help="add LiteRT int8 (exported)")
    parser.add_argument("--litert-file", dest="litert_files", action="append", default=[],
                        help="an int8 .tflite of the same model and window "
                        "(e.g. a shipped one): the LiteRT row without exporting")
    parser.add_argument("--ov-source", choices=("savedmodel", "onnx"), default="savedmodel")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="1 round, 1 call, 2 patches")
    parser.add_argument("--peer-venv", default=str(PEER_VENV))
    parser.add_argument("--work", help="keep the model, inputs and conversions in this folder "
                        "and reuse those there (same --model, --window, --calibration-patches)")
    parser.add_argument("--profile", action="store_true",
                        help="then profile each LiteRT file operator by operator")
    parser.add_argument("--profile-threads", type=int, default=1)
    parser.add_argument("--profile-slowest", type=int, default=8,
                        help="single operators to list per profile")
    args = parser.parse_args(argv)
    from unet3d.env import apply_defaults, describe_cpu

    apply_defaults()  # TensorFlow environment defaults (oneDNN), before TF loads
    if args.quick:
        args.rounds, args.reps, args.calibration_patches = 1, 1, 2
    rows = list(dict.fromkeys(["keras_fp32"] + args.engines.split(",")
                              + (litert_rows(args.litert_files)
                                 if args.litert or args.litert_files else [])))
    if unknown := [r for r in rows if r not in ENGINES]:
        parser.error(f"unknown --engines {unknown}")
    peer = ensure_peer(Path(args.peer_venv))
    print(f"machine: {describe_cpu()}; {args.threads} threads per runtime")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(args.work or name)
        tmp.mkdir(parents=True, exist_ok=True)
        model, inputs, source = prepare(args, tmp)
        print(f"model {args.model or 'default network (seeded, untrained)'}; window "
              f"{args.window}^3 of {Path(args.case).name}; int8 calibration: {source}")
        failed = convert_all(args, peer, model, inputs, rows, tmp)
        rows = [r for r in rows if not any(t in failed for t in needs(r, args.ov_source))]
        results = measure(args, rows, [peer, model, inputs, tmp], failed)
        report(rows, results, tmp)
        if args.profile:
            print_profiles(args, rows, tmp)
        for name, why in failed.items():
            print(f"failed: {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
