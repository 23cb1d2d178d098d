#!/usr/bin/env python
"""Data pipeline versus training step throughput, measured side by side.

Prints:
  * patches per second from the BratsPatchDataset with 0 (main thread), 1 and
    2 loader threads, with the paper's augmentation on;
  * training steps per second of the model (default: the paper's network,
    base 16, depth 5, 128^3 patches, batch 2);
  * their ratio: how many times faster the data arrives than it is consumed
    (goal: >= 3);
  * the train step under each of ``--step-configs``, each in its own process
    (the kernels are chosen when TensorFlow loads): ``onednn-fp32`` (the
    default here), ``eigen-fp32`` (``TF_ENABLE_ONEDNN_OPTS=0``, TensorFlow's
    default on CPUs without AVX-512) and ``onednn-bf16`` (``mixed_bfloat16``),
    with their ratios;
  * per-case load time from the preprocessed cache versus .nii.gz decoding.

Usage:
    python bench/bench_training.py [--data ../shared/data/brats2018] [--cases 4]
        [--patch-size 128] [--base-filters 16] [--depth 5] [--steps 2]
        [--step-configs onednn-fp32,eigen-fp32,onednn-bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from unet3d.env import apply_defaults

apply_defaults()  # TensorFlow environment defaults, before TF loads
from data_generators.augmentation import AugmentationConfig  # noqa: E402
from data_generators.cache import PreprocessedCache  # noqa: E402
from data_generators.dataset import BratsPatchDataset  # noqa: E402
from data_generators.io import find_cases  # noqa: E402
from data_generators.nifti import load_case  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2018"


def patches_per_second(dataset: BratsPatchDataset, workers: int, batches: int) -> float:
    """Batches drawn in the main thread (0) or by a pool of ``workers`` threads."""
    start = time.perf_counter()
    if workers == 0:
        for index in range(batches):
            dataset[index]
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(dataset.__getitem__, range(batches)))
    return batches * dataset.batch_size / (time.perf_counter() - start)


def train_steps_per_second(patch: int, batch: int, base: int, depth: int, steps: int,
                           policy: str = "float32") -> float:
    import keras

    keras.config.set_dtype_policy(policy)
    from unet3d.config import ModelConfig
    from unet3d.models.losses import make_loss
    from unet3d.models.metrics import region_metrics
    from unet3d.models.unet import build_unet3d

    model = build_unet3d(ModelConfig(base_filters=base, depth=depth))
    model.compile(optimizer=keras.optimizers.Adam(5e-4), loss=make_loss("dice", "regions"),
                  metrics=region_metrics())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, patch, patch, patch, 4)).astype(np.float32)
    y = (rng.random((batch, patch, patch, patch, 3)) > 0.9).astype(np.float32)
    model.train_on_batch(x, y)  # build and trace
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    return steps / (time.perf_counter() - start)


STEP_CONFIGS = {"onednn-fp32": ("1", "float32"), "eigen-fp32": ("0", "float32"),
                "onednn-bf16": ("1", "mixed_bfloat16")}


def step_in_subprocess(name: str, args: argparse.Namespace) -> float:
    """Train steps/s under one of :data:`STEP_CONFIGS`, in a fresh process."""
    onednn, policy = STEP_CONFIGS[name]
    job = json.dumps({"patch": args.patch_size, "batch": args.batch_size,
                      "base": args.base_filters, "depth": args.depth, "steps": args.steps,
                      "policy": policy})
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
    done = subprocess.run([sys.executable, __file__, "--step-worker", job], env=env,
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--base-filters", type=int, default=16)
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--step-configs", default=",".join(STEP_CONFIGS),
                        help="train-step variants to time side by side ('' skips them)")
    parser.add_argument("--step-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step_worker:
        job = json.loads(args.step_worker)
        print(train_steps_per_second(job["patch"], job["batch"], job["base"], job["depth"],
                                     job["steps"], job["policy"]))
        return 0

    cases = find_cases(args.data)[: args.cases]
    with tempfile.TemporaryDirectory() as tmp:
        cache = PreprocessedCache(Path(tmp) / "cache")
        decode, cached = [], []
        for case in cases:
            start = time.perf_counter()
            load_case(case)
            decode.append(time.perf_counter() - start)
            cache.get(case)  # builds the cache entry
            start = time.perf_counter()
            entry = cache.get(case)
            np.asarray(entry.image).sum()  # touch every voxel
            cached.append(time.perf_counter() - start)
        print(f"cases: {len(cases)} from {args.data}")
        print(f"per case: .nii.gz decode {np.mean(decode):.3f} s, cache load "
              f"{np.mean(cached):.3f} s  ({np.mean(decode) / np.mean(cached):.0f}x faster)")

        entries = [cache.get(case) for case in cases]
        patch = (args.patch_size,) * 3
        dataset = BratsPatchDataset(entries, patch_size=patch, batch_size=args.batch_size,
                                    steps_per_epoch=args.batches,
                                    augmentation=AugmentationConfig(), seed=0)
        rates = {w: patches_per_second(dataset, w, args.batches) for w in (0, 1, 2)}
        for workers, rate in rates.items():
            print(f"data pipeline, {workers} worker threads: {rate:.2f} patches/s "
                  f"({args.patch_size}^3, augmentation on)")

    names = [n for n in args.step_configs.split(",") if n]
    timed = {name: step_in_subprocess(name, args) for name in names}
    if "onednn-fp32" in timed:
        steps = timed["onednn-fp32"]
    else:
        steps = train_steps_per_second(args.patch_size, args.batch_size, args.base_filters,
                                       args.depth, args.steps)
    consumed = steps * args.batch_size
    print(f"training (base {args.base_filters}, depth {args.depth}, batch {args.batch_size}, "
          f"{args.patch_size}^3): {steps:.4f} steps/s = {consumed:.3f} patches/s")
    best = max(rates.values())
    print(f"ratio data/training: {best / consumed:.1f}x (goal >= 3x)")
    for name, rate in timed.items():
        print(f"train step, {name}: {1 / rate:.2f} s")
    if {"onednn-fp32", "eigen-fp32"} <= set(timed):
        print(f"oneDNN vs Eigen kernels (fp32): {timed['onednn-fp32'] / timed['eigen-fp32']:.2f}x"
              " faster")
    if {"onednn-fp32", "onednn-bf16"} <= set(timed):
        print(f"mixed_bfloat16 vs fp32 (oneDNN): "
              f"{timed['onednn-bf16'] / timed['onednn-fp32']:.2f}x as fast (goal >= 1.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
