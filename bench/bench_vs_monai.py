#!/usr/bin/env python
"""Files to NIfTI on one real case: this project's predict pipeline against MONAI's.

Both sides segment the same real BraTS case, from the four ``.nii.gz`` files to
a written label map, with the same network shape: 5 levels, 16..256 filters,
instance norm, leaky ReLU 0.01, untrained weights (timing does not depend on
them).

* ours: ``unet3d.inference.pipeline.predict_case`` (compiled whole-volume pass, the
  default of ``predict.py``), in fp32, in bf16, and with the 8-mirror TTA;
* MONAI: ``DynUNet`` through ``monai.inferers.sliding_window_inference``
  (128^3 windows, overlap 0.5, Gaussian), fp32 (and bf16 autocast with
  ``--peer-bf16``), from ``bench/peers/monai_dynunet.py``.

Every configuration runs in its own process, the two sides alternating for
``--rounds`` rounds; each process segments the case twice and reports both
times (the first includes building the compiled graph) and its peak resident
memory (``wait4``). The peer lives in its own virtual environment, made on
first use (``pip install torch==2.13.0`` takes the CPU wheel on this machine's
disk, then ``pip install --no-deps monai==1.6.1``, numpy and nibabel); it is
never a dependency of this project.

Then, unless ``--no-folder``: a folder of ``--folder-cases`` real cases through
one process, the peak memory of each case (``VmHWM``, reset between cases).
Our side runs ``bench/peers/ours_predict.py`` (in this environment).

``--like-for-like`` measures instead what the default comparison does not:
both sides whole-volume (ours ``--mode whole``; MONAI's
``sliding_window_inference`` with one window as large as the cropped volume,
rounded up to a multiple of 16), then both on 128^3 sliding windows at
overlap 0.5 with Gaussian blending (sigma 1/8 of the window on both sides;
ours ``--mode sliding``), all in fp32, every stage of each side timed: read,
preprocess, network (the forward calls alone), blend+post, write.

Usage:
    python bench/bench_vs_monai.py [--case ../shared/data/brats2018/Brats18_CBICA_AMH_1]
        [--rounds 2] [--no-tta] [--peer-bf16] [--folder-cases 20]
    python bench/bench_vs_monai.py --like-for-like [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "brats2018"
DEFAULT_CASE = DATA / "Brats18_CBICA_AMH_1"
PEER_VENV = Path.home() / ".cache" / "unet3d" / "bench-peers" / "monai"
PEER_SCRIPT = REPO / "bench" / "peers" / "monai_dynunet.py"
PEER_PACKAGES = (["torch==2.13.0"], ["--no-deps", "monai==1.6.1"],
                 ["numpy==2.4.6", "nibabel==5.4.2"])
OURS = REPO / "bench" / "peers" / "ours_predict.py"  # our side, in this environment
# --like-for-like: (what both sides do, our predict.py mode, MONAI's roi (0: one window over
# the whole cropped volume), MONAI's blending); both at overlap 0.5, in fp32
LIKE_FOR_LIKE = (("whole volume, one pass", "whole", 0, "constant"),
                 ("128^3 windows, overlap 0.5, Gaussian", "sliding", 128, "gaussian"))
STAGES = ("read", "preprocess", "network", "blend+post", "write", "total")


def ensure_peer(venv: Path) -> Path:
    """The peer's python, installing its venv on first use."""
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing the MONAI peer into {venv} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        for packages in PEER_PACKAGES:
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages],
                           check=True)
    return python


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[dict, float]:
    """Runs ``cmd``; returns its last stdout line as JSON and its peak RSS in GB."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{err.read()[-3000:]}")
        lines = out.read().strip().splitlines()
    return json.loads(lines[-1]), usage.ru_maxrss / 2**20


def like_for_like(args: argparse.Namespace, peer: Path, model: Path, tmp: str) -> None:
    """Both sides whole-volume, then both on 128^3 sliding windows, each stage timed."""
    results: dict[tuple[str, str], list] = {}
    for round_ in range(args.rounds):
        for comparison, mode, roi, blend in LIKE_FOR_LIKE:
            for side in ("ours", "MONAI"):
                if side == "ours":
                    cmd = [sys.executable, str(OURS), "--run", "stages", "--model", str(model),
                           "--mode", mode, "--window", "128", "--out", f"{tmp}/ours"]
                else:
                    cmd = [str(peer), str(PEER_SCRIPT), "--roi", str(roi), "--blend", blend,
                           "--out", f"{tmp}/peer"]
                result, peak = run_measured(cmd + ["--case", args.case, "--overlap", "0.5"])
                run = result["runs"][-1]  # the second case of the process: graph built
                results.setdefault((comparison, side), []).append((run, peak))
                print(f"round {round_ + 1}: {comparison}: {side}: {run['total']:.2f} s "
                      f"(network {run['network']:.2f} s in {run['calls']} calls), "
                      f"peak {peak:.2f} GB", flush=True)
    print(f"\n{'both sides do':38} {'side':5} " + " ".join(f"{s:>10}" for s in STAGES)
          + f" {'calls':>5} {'peak GB':>7} {'MONAI/ours':>10}")
    for comparison, *_ in LIKE_FOR_LIKE:
        medians = {side: {s: statistics.median(r[s] for r, _ in results[(comparison, side)])
                          for s in STAGES} for side in ("ours", "MONAI")}
        for side in ("ours", "MONAI"):
            runs = results[(comparison, side)]
            ratio = (f"{medians['MONAI']['total'] / medians['ours']['total']:.2f}x total, "
                     f"{medians['MONAI']['network'] / medians['ours']['network']:.2f}x net"
                     if side == "ours" else "")
            print(f"{comparison:38} {side:5} "
                  + " ".join(f"{medians[side][s]:9.2f}s" for s in STAGES)
                  + f" {runs[-1][0]['calls']:5d} {max(p for _, p in runs):7.2f} {ratio}")
    print("(seconds: median over rounds of the second case a process segments; network: the "
          "forward calls alone; blend+post: the rest of inference (padding, windows, blending, "
          "regions to labels, post-processing, un-cropping); MONAI/ours > 1: ours faster)")


def default_comparison(args: argparse.Namespace, peer: Path, model_path: Path, tmp: str,
                       ideal: float) -> None:
    """Ours (fp32, bf16, TTA) against MONAI's sliding window, alternating, and the table."""
    from unet3d.precision import native_bf16

    bf16 = native_bf16() and not args.no_bf16
    ours = [("ours fp32", "fp32", False)]
    if bf16:
        ours.append(("ours bf16", "bf16", False))
    if not args.no_tta:
        ours.append(("ours fp32 TTA x8", "fp32", True))
        if bf16:
            ours.append(("ours bf16 TTA x8", "bf16", True))
    peers = [("MONAI fp32", "fp32")] + ([("MONAI bf16", "bf16")] if args.peer_bf16 else [])
    results: dict[str, list] = {}
    for round_ in range(args.rounds):
        # alternate: ours, peer, ours, peer, ...
        order = [("ours", o) for o in ours]
        for index, p in enumerate(peers):
            order.insert(min(2 * index + 1, len(order)), ("peer", p))
        for side, item in order:
            if side == "ours":
                label, precision, tta = item
                cmd = [sys.executable, str(OURS), "--run", "case", "--model",
                       str(model_path), "--case", args.case, "--out", f"{tmp}/ours",
                       "--precision", precision] + (["--tta"] if tta else [])
            else:
                label, precision = item
                cmd = [str(peer), str(PEER_SCRIPT), "--case", args.case,
                       "--out", f"{tmp}/peer", "--precision", precision]
            result, peak = run_measured(cmd)
            results.setdefault(label, []).append((result, peak))
            print(f"round {round_ + 1}: {label}: {result['times'][-1]:.2f} s "
                  f"(first {result['times'][0]:.2f} s), peak {peak:.2f} GB", flush=True)

    def warm(label):  # per case once the process runs: the second segmentation
        return statistics.median(r["times"][-1] for r, _ in results[label])

    def peak(label):
        return max(p for _, p in results[label])

    base = warm("MONAI fp32")
    print()
    print(f"{'configuration':20} {'files->NIfTI':>12} {'first call':>10} {'peak GB':>8} "
          f"{'vs MONAI fp32':>13} {'net/ideal':>9}")
    for label in results:
        first = statistics.median(r["times"][0] for r, _ in results[label])
        ratio = base / warm(label)
        ideal_ratio = ""
        if label.startswith("ours"):
            passes = 8 if "TTA" in label else 1
            net = statistics.median(r["network"][-1] for r, _ in results[label])
            ideal_ratio = f"{net / (passes * ideal):.2f}x"
        print(f"{label:20} {warm(label):11.2f}s {first:9.2f}s {peak(label):8.2f} "
              f"{ratio:12.2f}x {ideal_ratio:>9}")
    print("(files->NIfTI: median over rounds of the second case in a process; first call: "
          "the first, with graph building; ratio > 1: faster than MONAI fp32)")


def folder_check(args: argparse.Namespace, model_path: Path, tmp: str) -> None:
    """A folder of real cases through one process: the peak memory of each."""
    folder = Path(tmp) / "folder"
    folder.mkdir()
    cases = sorted(p for p in DATA.iterdir() if p.is_dir())[:args.folder_cases]
    for case in cases:
        (folder / case.name).symlink_to(case.resolve())
    cmd = [sys.executable, str(OURS), "--run", "folder", "--model", str(model_path),
           "--case", str(folder), "--out", f"{tmp}/folder_out", "--precision", "fp32"]
    rows, _ = run_measured(cmd)
    first, last = rows[0]["peak_gb"], rows[-1]["peak_gb"]
    highest = max(r["peak_gb"] for r in rows)
    print(f"\nfolder of {len(rows)} real cases, ours fp32, one process: peak memory "
          f"first case {first:.2f} GB, last {last:.2f} GB (last/first "
          f"{last / first:.3f}), highest {highest:.2f} GB; median "
          f"{statistics.median(r['seconds'] for r in rows):.2f} s per case")


def flops_and_peak(case: str) -> tuple[float, float, tuple[int, ...]]:
    """Conv GFLOP of one whole-volume pass of the default network, numpy's sgemm GFLOP/s."""
    import numpy as np

    from data_generators.io import find_case
    from data_generators.nifti import load_case
    from data_generators.preprocessing import preprocess_case
    from unet3d.config import ModelConfig
    from unet3d.models.unet import build_unet3d, conv_flops

    image, _, _ = load_case(find_case(case))
    cropped, _, _ = preprocess_case(image, None)
    padded = tuple(s + (-s % 16) for s in cropped.shape[:3])
    flops = conv_flops(build_unet3d(ModelConfig(), spatial_shape=padded))
    a = np.random.default_rng(0).random((4096, 4096), dtype=np.float32)
    a @ a
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return flops / 1e9, 2 * 4096**3 / best / 1e9, padded


def cpu_line() -> str:
    from unet3d.env import describe_cpu

    return describe_cpu()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=str(DEFAULT_CASE))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--no-bf16", action="store_true", help="skip our bf16 row")
    parser.add_argument("--peer-bf16", action="store_true", help="also MONAI in bf16 autocast")
    parser.add_argument("--peer-venv", default=str(PEER_VENV))
    parser.add_argument("--no-folder", action="store_true")
    parser.add_argument("--folder-cases", type=int, default=20)
    parser.add_argument("--like-for-like", action="store_true",
                        help="instead: both sides whole-volume, both on 128^3 sliding windows "
                             "(overlap 0.5, Gaussian), each stage timed")
    parser.add_argument("--quick", action="store_true", help="one round")
    args = parser.parse_args(argv)

    from unet3d.env import apply_defaults, import_tensorflow_quietly

    apply_defaults()
    import_tensorflow_quietly()
    from unet3d.artifacts.keras_file import save_model
    from unet3d.config import TrainConfig
    from unet3d.models.unet import build_unet3d

    peer = ensure_peer(Path(args.peer_venv))
    args.rounds = 1 if args.quick else args.rounds
    gflop, sgemm, padded = flops_and_peak(args.case)
    print(f"machine: {cpu_line()}")
    print(f"case {Path(args.case).name}, cropped and padded to {'x'.join(map(str, padded))}; "
          f"default network: {gflop:.0f} GFLOP of convolutions per pass; numpy float32 "
          f"matmul {sgemm:.0f} GFLOP/s -> ideal {gflop / sgemm:.2f} s per pass")

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig()
        model_path = save_model(build_unet3d(config.model), Path(tmp) / "default.keras",
                                config.to_dict())
        if args.like_for_like:
            like_for_like(args, peer, model_path, tmp)
            return 0
        default_comparison(args, peer, model_path, tmp, gflop / sgemm)
        if not args.no_folder:
            folder_check(args, model_path, tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
