"""Where an exported graph spends its time, operator by operator.

LiteRT's Python interpreter has no per-operator profiler, so
:func:`profile_ops` cuts the graph into one-operator models (each holds one
operator of the file, its constant inputs, and its other inputs as model
inputs) and times each alone in LiteRT (XNNPACK, as in :class:`LiteRTModel`),
on seeded random inputs of the right type. The sum over operators comes within
about 10% of the whole graph's time (the default network's int8 file at 128^3,
1 thread, process CPU time beside a training job: 1712 ms whole against
1574 ms summed before the sub-pixel and split-tap lowering, 1169 against
1213 ms after). Each one-operator model is
delegated like the whole graph would be: an operator XNNPACK does not take
runs in LiteRT's own (single-threaded) kernel here too.

    python -m unet3d.export.profile model.tflite --threads 1 --top 12
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_models(content: bytes) -> Iterator[tuple[int, str, bytes]]:
    """Each operator of the first subgraph as a model of its own.

    Yields:
        (operator index, op name, the one-operator ``.tflite`` bytes): its
        non-constant inputs become the model's inputs, its outputs the model's
        outputs; buffers other operators read are left empty.
    """
    from ai_edge_litert.tools import flatbuffer_utils

    names = _builtin_names()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    graph = model.subgraphs[0]
    buffers = list(model.buffers)
    empty = type(buffers[0])()
    constant = {i for i, t in enumerate(graph.tensors)
                if buffers[t.buffer].data is not None and len(buffers[t.buffer].data)}
    for index, op in enumerate(list(graph.operators)):
        code = model.operatorCodes[op.opcodeIndex]
        name = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        used = {int(i) for i in op.inputs if i >= 0}
        keep = {graph.tensors[i].buffer for i in used}
        model.buffers = [b if k in keep or k == 0 else empty for k, b in enumerate(buffers)]
        graph.operators = [op]
        graph.inputs = [i for i in sorted(used) if i not in constant]
        graph.outputs = [int(i) for i in op.outputs]
        yield index, name, bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _time(content: bytes, threads: int, reps: int, clock) -> tuple[float, Any]:
    """Median seconds of ``reps`` invocations after one warm-up, and the interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=threads)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        shape, dtype = detail["shape"], np.dtype(detail["dtype"])
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    times = []
    for _ in range(reps):
        start = clock()
        interpreter.invoke()
        times.append(clock() - start)
    return float(np.median(times)), interpreter


def profile_ops(path_or_content: str | Path | bytes, threads: int = 1, reps: int = 3,
                clock: str = "cpu") -> dict[str, Any]:
    """Times every operator of a ``.tflite`` file on its own.

    Args:
        path_or_content: the file, or its bytes.
        threads: int, default 1. LiteRT threads.
        reps: int, default 3. Timed runs per operator (the median is kept).
        clock: ``cpu`` (process CPU time: steadier beside other jobs) or ``wall``.

    Returns:
        dict: ``graph_ms`` (the whole graph, same clock), ``ops`` (per operator:
        ``index``, ``op``, ``ms``, ``inputs`` and ``output`` shapes and dtypes).
    """
    content = path_or_content
    if not isinstance(content, (bytes, bytearray)):
        content = Path(content).read_bytes()
    timer = time.process_time if clock == "cpu" else time.perf_counter
    graph_s, _ = _time(bytes(content), threads, reps, timer)
    rows = []
    for index, name, sub in op_models(bytes(content)):
        seconds, interpreter = _time(sub, threads, reps, timer)
        shapes = [f"{tuple(int(v) for v in d['shape'])}{np.dtype(d['dtype']).name}"
                  for d in interpreter.get_input_details()]
        out = interpreter.get_output_details()[0]
        rows.append({"index": index, "op": name, "ms": seconds * 1e3, "inputs": shapes,
                     "output": f"{tuple(int(v) for v in out['shape'])}"
                               f"{np.dtype(out['dtype']).name}"})
    return {"graph_ms": graph_s * 1e3, "ops": rows}


def by_type(profile: dict[str, Any]) -> list[tuple[str, int, float, float]]:
    """(op name, count, total ms, share of the summed time), slowest first."""
    totals: dict[str, list[float]] = {}
    for row in profile["ops"]:
        entry = totals.setdefault(row["op"], [0, 0.0])
        entry[0] += 1
        entry[1] += row["ms"]
    summed = sum(ms for _, ms in totals.values()) or 1.0
    return sorted(((name, int(n), ms, ms / summed) for name, (n, ms) in totals.items()),
                  key=lambda r: -r[2])


def format_profile(profile: dict[str, Any], top: int = 12, slowest: int = 0) -> str:
    """Lines: the graph's time, the op types by time, and optionally the slowest operators."""
    summed = sum(row["ms"] for row in profile["ops"])
    lines = [f"whole graph {profile['graph_ms']:.0f} ms, operators one by one "
             f"{summed:.0f} ms ({len(profile['ops'])} operators)"]
    for name, count, ms, share in by_type(profile)[:top]:
        lines.append(f"  {name:<26} x{count:<4} {ms:8.1f} ms {100 * share:5.1f}%")
    for row in sorted(profile["ops"], key=lambda r: -r["ms"])[:slowest]:
        lines.append(f"  #{row['index']:<4} {row['op']:<24} {row['ms']:7.1f} ms  "
                     f"{' '.join(row['inputs'])} -> {row['output']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help=".tflite file")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--top", type=int, default=12, help="op types to list")
    parser.add_argument("--slowest", type=int, default=0, help="single operators to list")
    args = parser.parse_args(argv)
    profile = profile_ops(args.model, args.threads, args.reps, args.clock)
    print(format_profile(profile, args.top, args.slowest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
