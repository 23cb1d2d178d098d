#!/usr/bin/env python
"""Data pipeline versus training step throughput, measured side by side.

Prints:
  * patches per second from the BratsPatchDataset with 0 (main thread), 1 and
    2 loader threads, with the paper's augmentation on;
  * training steps per second of the model (default: the paper's network,
    base 16, depth 5, 128^3 patches, batch 2);
  * their ratio: how many times faster the data arrives than it is consumed
    (goal: >= 3);
  * per-case load time from the preprocessed cache versus .nii.gz decoding.

Usage:
    python bench/bench_training.py [--data ../shared/data/brats2018] [--cases 4]
        [--patch-size 128] [--base-filters 16] [--depth 5] [--steps 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import unet3d.tf_env  # noqa: F401  (TensorFlow environment defaults, before TF loads)
from data_generators.augmentation import AugmentationConfig
from data_generators.dataset import BratsPatchDataset
from data_generators.io import find_cases, load_case
from data_generators.preprocessing import PreprocessedCache

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


def train_steps_per_second(patch: int, batch: int, base: int, depth: int, steps: int) -> float:
    import keras

    from unet3d.config import ModelConfig
    from unet3d.losses import make_loss
    from unet3d.metrics import region_metrics
    from unet3d.model import build_unet3d

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
    args = parser.parse_args(argv)

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

    steps = train_steps_per_second(args.patch_size, args.batch_size, args.base_filters,
                                   args.depth, args.steps)
    consumed = steps * args.batch_size
    print(f"training (base {args.base_filters}, depth {args.depth}, batch {args.batch_size}, "
          f"{args.patch_size}^3): {steps:.4f} steps/s = {consumed:.3f} patches/s")
    best = max(rates.values())
    print(f"ratio data/training: {best / consumed:.1f}x (goal >= 3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
