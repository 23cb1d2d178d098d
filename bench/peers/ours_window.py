#!/usr/bin/env python
"""Our side of bench/bench_runtimes.py: one window through this project's forward pass.

Runs in this project's environment, one row per process, with the same
protocol as ``runtimes_engine.py``: reads the window (``window`` of an
``.npz``), loads the model with :func:`unet3d.artifacts.load_artifact` (a
``.keras`` file runs compiled in ``--precision``,
:func:`unet3d.models.forward.keras_predict_fn`; a ``.tflite`` file through
LiteRT), runs the window once, then ``--reps`` timed calls, writes the last
output (``.npy``) and prints one JSON line.

``--export-litert`` instead exports the ``.keras`` model to a LiteRT int8 file
(:func:`unet3d.export.export_litert`) calibrated on the ``calibration``
patches of the ``.npz``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from unet3d.env import apply_defaults

apply_defaults()  # TensorFlow environment defaults (oneDNN), before TF loads


def run(args: argparse.Namespace) -> dict:
    from unet3d.artifacts import load_artifact

    window = np.load(args.inputs)["window"]
    start = time.perf_counter()
    model = load_artifact(args.model, threads=args.threads, precision=args.precision)
    load = time.perf_counter() - start
    start = time.perf_counter()
    out = model.predict_fn(window)
    first, times, cpu = time.perf_counter() - start, [], []
    for _ in range(args.reps):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = model.predict_fn(window)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)  # all threads: steadier beside other jobs
    np.save(args.out, out)
    return {"load_s": load, "first_s": first, "times": times, "cpu_times": cpu}


def export(args: argparse.Namespace) -> dict:
    from unet3d.export import export_litert

    patches = list(np.load(args.inputs)["calibration"])
    start = time.perf_counter()
    export_litert(args.model, args.out, "int8", window=args.window,
                  calibration=[p[None] for p in patches])
    return {"seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help=".keras or .tflite")
    parser.add_argument("--inputs", required=True, help=".npz with 'window' (and 'calibration')")
    parser.add_argument("--out", required=True, help=".npy of the output (.tflite to export)")
    parser.add_argument("--precision", default="fp32", help="fp32 or bf16 (.keras)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads")
    parser.add_argument("--export-litert", action="store_true")
    parser.add_argument("--window", type=int, default=128)
    args = parser.parse_args()
    print(json.dumps(export(args) if args.export_litert else run(args)))


if __name__ == "__main__":
    main()
