#!/usr/bin/env python
"""Full-case prediction on a real BraTS case: where the time and memory go.

For the default network (base 16, depth 5; untrained weights: timing does not
depend on them) on 2 CPU cores, each configuration runs in its own process
(fp32 / mixed_bfloat16, without / with mirroring TTA) and reports the wall
time from files to written NIfTI split into load + preprocess, network and
write, and the process's peak memory. The network time is compared with the
time the convolutions' FLOPs would take at numpy's measured float32
matrix-multiply peak.

Usage:
    python bench/bench_predict.py [--case ../shared/data/brats2018/Brats18_CBICA_AOZ_1]
        [--base-filters 16] [--depth 5] [--no-tta] [--bf16-tta] [--ensemble K]

``--ensemble K`` adds, for each configuration, a K-model fold ensemble (a folder of
``fold_<k>.keras``, as ``predict.py --model FOLDER`` takes it) beside the single model.

``--stages`` profiles memory instead: one fp32 pass through the stages of
``predict.py`` (load onto the model's grid, crop and normalise, network and
post-processing, back onto the input's grid, write), the process's peak resident
memory within each stage (Linux: ``VmHWM``, reset before each stage) and what it holds
after it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from unet3d.env import apply_defaults  # noqa: E402

apply_defaults()  # TensorFlow environment defaults, before TF loads

DEFAULT_CASE = REPO.parent / "shared" / "data" / "brats2018" / "Brats18_CBICA_AOZ_1"


def matmul_peak_gflops(n: int = 4096, repeats: int = 3) -> float:
    """Best-of-``repeats`` float32 matrix-multiply rate of numpy, in GFLOP/s."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def worker(args: argparse.Namespace) -> None:
    """One configuration, in its own process: prints a JSON line."""
    from unet3d.artifacts import load_artifact
    from unet3d.inference.pipeline import PredictSettings, predict_case

    model = load_artifact(args.model, precision=args.precision)
    settings = PredictSettings(tta=args.tta, overwrite=True, max_memory_gb=8.0)
    report = predict_case(args.case, args.out, model, settings)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"runtime": report["runtime_s"], "mode": report["settings"]["resolved_mode"],
                      "peak_gb": peak_kb / 2**20}))


def _memory_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def stages_worker(args: argparse.Namespace) -> None:
    """Peak and held memory of each stage of one prediction, in this process."""
    from data_generators.geometry import load_case_for_model
    from data_generators.labels import classes_to_labels
    from data_generators.layouts import layout_of
    from unet3d.artifacts import load_artifact
    from unet3d.inference.pipeline import PredictSettings, crop_for_model, segment_cropped

    model = load_artifact(args.model, precision="fp32")
    settings = PredictSettings(overwrite=True, max_memory_gb=8.0)
    layout = layout_of(args.case)
    case = layout.find_case(Path(args.case), model.modalities)
    rows = []

    def stage(name, fn):
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here
        start = time.perf_counter()
        result = fn()
        rows.append((name, time.perf_counter() - start, _memory_kb("VmHWM") / 2**20,
                     _memory_kb("VmRSS") / 2**20))
        return result

    stage("model loaded", lambda: None)
    image, _, properties, geometry = stage("load onto the model's grid",
                                           lambda: load_case_for_model(case))
    cropped = stage("crop and normalise", lambda im=image: crop_for_model(im, model, args.case))
    del image
    seg = stage("network and post-processing", lambda: segment_cropped(cropped, model, settings))
    full = stage("back onto the input's grid", lambda: geometry.labels_from_model(seg.classes))
    labels = classes_to_labels(full, "brats2017")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    stage("write", lambda: layout.save(full, labels, case, properties, Path(args.out)))
    print(json.dumps({"stages": rows, "mode": seg.mode}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=str(DEFAULT_CASE))
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--configs", default="fp32,fp32-eigen,bf16",
                        help="fp32 (oneDNN kernels), fp32-eigen (TF_ENABLE_ONEDNN_OPTS=0), bf16")
    parser.add_argument("--bf16-tta", action="store_true", help="also bf16 with TTA (slow)")
    parser.add_argument("--ensemble", type=int, default=1, metavar="K",
                        help="also time a K-model fold ensemble in each configuration")
    parser.add_argument("--stages", action="store_true",
                        help="profile each stage's peak memory (fp32) instead")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--tta", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        (stages_worker if args.stages else worker)(args)
        return 0

    from data_generators.io import find_case
    from data_generators.nifti import load_case
    from data_generators.preprocessing import preprocess_case
    from unet3d.artifacts.keras_file import save_model
    from unet3d.config import ModelConfig, TrainConfig
    from unet3d.models.unet import build_unet3d, conv_flops

    config = TrainConfig(model=ModelConfig(base_filters=args.base_filters, depth=args.depth))
    image, _, props = load_case(find_case(args.case))
    cropped, _, _ = preprocess_case(image, None)
    padded = tuple(s + (-s % config.model.stride) for s in cropped.shape[:3])
    flops = conv_flops(build_unet3d(config.model, spatial_shape=padded))
    peak = matmul_peak_gflops()
    from unet3d.env import describe_cpu

    print(f"machine: {describe_cpu()}")
    print(f"case {Path(args.case).name}: {tuple(props['original_shape'])}, cropped to "
          f"{cropped.shape[:3]}, padded to {padded}")
    print(f"network: base {args.base_filters}, depth {args.depth}; convolutions "
          f"{flops / 1e9:.0f} GFLOP per pass; numpy float32 matmul peak {peak:.0f} GFLOP/s "
          f"-> ideal {flops / peak / 1e9:.2f} s per pass")

    # (label, precision, TTA, oneDNN): each in its own process, kernels chosen at TF load
    configs = [("fp32", "fp32", False, "1"), ("fp32-eigen", "fp32", False, "0"),
               ("bf16", "bf16", False, "1")]
    if not args.no_tta:
        configs.insert(1, ("fp32", "fp32", True, "1"))
    if args.bf16_tta:  # bf16 3D convolutions are slow on CPUs without AVX-512 BF16
        configs.append(("bf16", "bf16", True, "1"))
    configs = [(*c, 1) for c in configs if c[0] in args.configs.split(",")]
    if args.ensemble > 1:
        configs = [row for c in configs for row in (c, (*c[:4], args.ensemble))]
    with tempfile.TemporaryDirectory() as tmp:
        model_path = save_model(build_unet3d(config.model), Path(tmp) / "model.keras",
                                config.to_dict())
        folder = Path(tmp) / "folds"
        for k in range(args.ensemble if args.ensemble > 1 else 0):
            import keras

            keras.utils.set_random_seed(k)
            save_model(build_unet3d(config.model), folder / f"fold_{k}.keras", config.to_dict())
        if args.stages:
            return _print_stages(args, model_path, Path(tmp))
        print(f"{'kernels':10} {'TTA':4} {'models':6} {'mode':6} {'load+prep':>9} "
              f"{'network':>8} {'write':>6} {'total':>7} {'net/ideal':>9} {'peak GB':>7}")
        for label, precision, tta, onednn, members in configs:
            target = model_path if members == 1 else folder
            cmd = [sys.executable, __file__, "--worker", "--model", str(target),
                   "--case", args.case, "--out", str(Path(tmp) / "out"),
                   "--precision", precision, "--base-filters", str(args.base_filters),
                   "--depth", str(args.depth)] + (["--tta"] if tta else [])
            env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode:
                print(f"{label} tta={tta} models={members}: failed\n{proc.stderr[-2000:]}")
                continue
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            rt = result["runtime"]
            passes = (8 if tta else 1) * members
            ratio = rt["network"] / (passes * flops / peak / 1e9)
            print(f"{label:10} {'yes' if tta else 'no':4} {members:6} {result['mode']:6} "
                  f"{rt['load_preprocess']:8.2f}s {rt['network']:7.2f}s {rt['write']:5.2f}s "
                  f"{rt['total']:6.2f}s {ratio:8.2f}x {result['peak_gb']:7.2f}")
    return 0


def _print_stages(args: argparse.Namespace, model_path: Path, tmp: Path) -> int:
    cmd = [sys.executable, __file__, "--worker", "--stages", "--model", str(model_path),
           "--case", args.case, "--out", str(tmp / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        print(f"stages: failed\n{proc.stderr[-2000:]}")
        return 1
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fp32, mode {result['mode']}: peak resident memory within each stage, and what "
          "the process holds after it")
    print(f"{'stage':30} {'seconds':>8} {'peak GB':>8} {'after GB':>9}")
    for name, seconds, peak, after in result["stages"]:
        print(f"{name:30} {seconds:8.2f} {peak:8.2f} {after:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
