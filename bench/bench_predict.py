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

``--stages [--precision fp32|bf16]`` profiles memory instead: a pass through the stages
of ``predict.py`` (load onto the model's grid, crop and normalise, network and
post-processing, back onto the input's grid, write), the process's peak resident
memory within each stage (Linux: ``VmHWM``, reset before each stage), what it holds
after it, and the stage's wall and CPU seconds; once without inference's memory saving
(``UNET3D_MEMORY_SAVING=0``, before) and once with it (after), each in its own process,
side by side with their ratios, and whether the two wrote the same labels.
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

from unet3d.env import prepare_backend  # noqa: E402

prepare_backend()  # as predict.py: environment defaults, then TensorFlow (without JAX)

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
    from unet3d.inference.allocators import return_freed_heap_tops
    from unet3d.inference.pipeline import PredictSettings, crop_for_model, segment_cropped
    from unet3d.models.forward import memory_saving

    model = load_artifact(args.model, precision=args.precision)
    if memory_saving():  # as predict_case does before it loads a case
        return_freed_heap_tops()
    settings = PredictSettings(overwrite=True, max_memory_gb=8.0)
    layout = layout_of(args.case)
    case = layout.find_case(Path(args.case), model.modalities)
    rows = []

    def stage(name, fn):
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here
        start, cpu = time.perf_counter(), time.process_time()
        result = fn()
        rows.append((name, time.perf_counter() - start, time.process_time() - cpu,
                     _memory_kb("VmHWM") / 2**20, _memory_kb("VmRSS") / 2**20))
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
                        help="profile each stage's peak memory instead, without and with "
                             "inference's memory saving")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="--stages: the precision profiled")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
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
    """Runs :func:`stages_worker` without the memory saving (``UNET3D_MEMORY_SAVING=0``)
    and with it, each in its own process, and prints them side by side."""
    results = {}
    for saving in ("0", "1"):
        cmd = [sys.executable, __file__, "--worker", "--stages", "--model", str(model_path),
               "--case", args.case, "--out", str(tmp / f"out{saving}"),
               "--precision", args.precision]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "UNET3D_MEMORY_SAVING": saving})
        if proc.returncode:
            print(f"stages (UNET3D_MEMORY_SAVING={saving}): failed\n{proc.stderr[-2000:]}")
            return 1
        results[saving] = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = results["0"], results["1"]
    print(f"{args.precision}, mode {after['mode']}: before = UNET3D_MEMORY_SAVING=0, after = "
          "the memory saving (default); peak resident memory within each stage, what the "
          "process holds after it, wall and CPU seconds")
    print(f"{'stage':28} {'peak GB before':>14} {'after':>6} {'ratio':>6} "
          f"{'held GB before':>15} {'after':>6} {'wall s before':>14} {'after':>6} "
          f"{'ratio':>6} {'cpu s before':>13} {'after':>6} {'ratio':>6}")
    for old, new in zip(before["stages"], after["stages"], strict=True):
        name, wall0, cpu0, peak0, held0 = old
        _, wall1, cpu1, peak1, held1 = new
        print(f"{name:28} {peak0:14.2f} {peak1:6.2f} {_ratio(peak1, peak0)} "
              f"{held0:15.2f} {held1:6.2f} {wall0:14.2f} {wall1:6.2f} {_ratio(wall1, wall0)} "
              f"{cpu0:13.2f} {cpu1:6.2f} {_ratio(cpu1, cpu0)}")
    peaks = [max(row[3] for row in r["stages"]) for r in (before, after)]
    walls = [sum(row[1] for row in r["stages"]) for r in (before, after)]
    cpus = [sum(row[2] for row in r["stages"]) for r in (before, after)]
    same = np.array_equal(_written_labels(tmp / "out0"), _written_labels(tmp / "out1"))
    print(f"{'process':28} {peaks[0]:14.2f} {peaks[1]:6.2f} {_ratio(*peaks[::-1])} "
          f"{'':15} {'':6} {walls[0]:14.2f} {walls[1]:6.2f} {_ratio(*walls[::-1])} "
          f"{cpus[0]:13.2f} {cpus[1]:6.2f} {_ratio(*cpus[::-1])}")
    print(f"labels written before and after: {'identical' if same else 'DIFFERENT'}")
    return 0 if same else 1


def _ratio(new: float, old: float) -> str:
    return f"{new / old:6.2f}" if old > 0 else f"{'-':>6}"


def _written_labels(out: Path) -> np.ndarray:
    import nibabel as nib

    return np.asanyarray(nib.load(next(out.glob("*.nii.gz"))).dataobj)


if __name__ == "__main__":
    sys.exit(main())
