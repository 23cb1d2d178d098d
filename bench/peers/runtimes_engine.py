#!/usr/bin/env python
"""One runtime of bench/bench_runtimes.py on one converted model, in its own process.

Runs inside the runtimes peer's own virtual environment (``openvino`` or
``onnxruntime``; never this project's). Reads the input window from an
``.npz`` (key ``window``, float32 `(1, D, H, W, C)`), loads and compiles the
model, runs the window once (the first call), then ``--reps`` more times, and
writes the last output (float32 probabilities `(1, D, H, W, K)`) to ``--out``
(``.npy``). Prints one JSON line: load-and-compile seconds, the first call, the
timed calls.

* ``openvino``: ``Core.compile_model(..., "CPU")`` with ``PERFORMANCE_HINT``
  LATENCY, ``INFERENCE_NUM_THREADS`` and ``INFERENCE_PRECISION_HINT`` (f32 by
  default: on a CPU with avx512_bf16 or AMX OpenVINO would otherwise compute
  float ops in bf16);
* ``onnxruntime``: a CPU ``InferenceSession``, all graph optimisations,
  ``intra_op_num_threads`` threads, one inter-op thread.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def openvino_runner(path: str, threads: int, hint: str):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                "INFERENCE_NUM_THREADS": threads,
                                                "INFERENCE_PRECISION_HINT": hint})
    request = compiled.create_infer_request()
    output = compiled.outputs[0]

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(request.infer([x])[output], dtype=np.float32)

    return run, ov.__version__


def onnxruntime_runner(path: str, threads: int, hint: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: x})[0], dtype=np.float32)

    return run, ort.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=("openvino", "onnxruntime"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True, help=".npz with 'window'")
    parser.add_argument("--out", required=True, help=".npy of the output")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hint", default="f32", help="OpenVINO inference precision: f32, bf16")
    args = parser.parse_args()
    window = np.ascontiguousarray(np.load(args.inputs)["window"], dtype=np.float32)
    start = time.perf_counter()
    factory = openvino_runner if args.engine == "openvino" else onnxruntime_runner
    run, version = factory(args.model, args.threads, args.hint)
    load = time.perf_counter() - start
    start = time.perf_counter()
    out = run(window)
    first = time.perf_counter() - start
    times = []
    for _ in range(args.reps):
        start = time.perf_counter()
        out = run(window)
        times.append(time.perf_counter() - start)
    np.save(args.out, out)
    print(json.dumps({"load_s": load, "first_s": first, "times": times, "version": version}))


if __name__ == "__main__":
    main()
