"""Keras vs LiteRT (naive and lowered fp32 / fp16 / int8) for the 3D U-Net, side by side.

Every configuration runs in its own subprocess; its peak memory is that
child's ``ru_maxrss`` from ``os.wait4`` (``getrusage(RUSAGE_CHILDREN)`` would
only give the maximum over all children). Models are untrained but seeded
(deterministic), except the edge preset, which loads the shipped trained
model (``--edge-model``, default ``models/brats18_unet3d_b8.keras`` when
present). Latencies and sizes are real; the Dice columns measure agreement
with Keras fp32, which is only meaningful for trained weights. The case
column is the window latency times the number of windows (overlap 0.5) that
cover a real cropped case (Brats18_CBICA_AOZ_1, 138x170x144). Inputs are
real BraTS patches from ``/work/shared/data/brats2018`` when present (else
seeded normal noise); the output says which.

    python bench/bench_export.py                        # default 128^3 + edge 96^3
    python bench/bench_export.py --quick                # a ~2 minute smoke run
    python bench/bench_export.py --presets edge --window-edge 64 --reps 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BRATS = REPO.parent / "shared" / "data" / "brats2018"
PRESETS = {"default": {"base_filters": 16, "depth": 5}, "edge": {"base_filters": 8, "depth": 4}}
SHIPPED = REPO / "models" / "brats18_unet3d_b8.keras"
CASE_SHAPE = (138, 170, 144)  # Brats18_CBICA_AOZ_1 cropped to the brain
CONFIGS = ("keras_fp32", "keras_bf16", "litert_naive", "litert_fp32", "litert_fp16",
           "litert_int8")


# ---- workers (run in a subprocess each) ---------------------------------------
def _build(preset: dict, policy: str = "float32", weights: str | None = None):
    """The preset's network under ``policy``: seeded, or with a trained model's weights."""
    import keras

    from unet3d.config import ModelConfig
    from unet3d.models.unet import build_unet3d

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = build_unet3d(ModelConfig(**preset))
    finally:
        keras.config.set_dtype_policy(previous)
    if weights:
        from unet3d.artifacts.keras_file import load_model

        model.set_weights(load_model(weights).get_weights())
    return model


def _time(fn, x: np.ndarray, reps: int) -> tuple[list[float], np.ndarray]:
    out = fn(x)  # warm-up (graph tracing, allocation)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        out = fn(x)
        times.append(time.perf_counter() - start)
    return times, out


def worker(job: dict) -> dict:
    """One step of one configuration: Keras timing, a conversion, or a LiteRT run.

    ``phase`` "run" imports only numpy and ``ai_edge_litert``, so its peak
    memory is LiteRT's alone; conversion ("convert") runs in its own process.
    """
    from unet3d.env import apply_defaults

    apply_defaults()  # TensorFlow environment defaults, before TF loads
    patches = np.load(job["patches"])
    kind, result = job["config"], {}
    path = Path(job["dir"]) / f"{kind}.tflite"
    if job.get("phase") == "run":
        from unet3d.artifacts.litert_file import LiteRTModel

        runner = LiteRTModel(path, threads=job["threads"])
        times, _ = _time(runner.predict_fn, patches[:1], job["reps"])
        outs = [runner.predict_fn(p[None]) for p in patches]
        np.save(Path(job["dir"]) / f"{kind}_out.npy", np.concatenate(outs))
        return {"latency_s": float(np.median(times))}
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(job["threads"])
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if kind.startswith("keras"):
        model = _build(job["preset"], "mixed_bfloat16" if kind == "keras_bf16" else "float32",
                       job.get("weights"))
        fn = tf.function(lambda x: model(x, training=False), jit_compile=False)
        times, _ = _time(lambda x: fn(x).numpy(), patches[:1], job["reps"])
        outs = [fn(p[None]).numpy().astype(np.float32) for p in patches]
        np.save(Path(job["dir"]) / f"{kind}_out.npy", np.concatenate(outs))
        return {"latency_s": float(np.median(times))}

    from unet3d.artifacts.litert_file import op_names
    from unet3d.export.convert import convert
    from unet3d.export.lowering import lower_model

    model = _build(job["preset"], weights=job.get("weights"))
    start = time.perf_counter()
    if kind == "litert_naive":
        spec = tf.TensorSpec((1, *job["window"], 4), tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        # no trackable object: the legacy path freezes the variables into constants
        converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
        content = converter.convert()
    else:
        precision = kind.split("_")[1]
        content = convert(lower_model(model, job["window"]), precision,
                          [p[None] for p in patches])
    result["convert_s"] = time.perf_counter() - start
    path.write_bytes(content)
    result["size_bytes"] = len(content)
    result["ops"] = sorted(op_names(content))
    return result


def run_job(job: dict) -> dict:
    """Runs :func:`worker` in a subprocess; adds its peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    log = Path(job["dir"]) / f"{job['config']}_{job.get('phase', 'main')}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(job)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
        proc.returncode = os.waitstatus_to_exitcode(status)
    lines = log.read_text().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = [line for line in lines if line.strip()][-2:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail)[:300],
                "wall_s": time.perf_counter() - start}
    result = json.loads(lines[-1])
    result["peak_mb"] = usage.ru_maxrss / 1024  # Linux: kB
    return result


# ---- driver ------------------------------------------------------------------------
def draw_inputs(window, count: int, tmp: Path) -> str:
    """Writes ``tmp/patches.npy`` `(N, D, H, W, 4)` in a subprocess; returns the source.

    The parent never imports TensorFlow: Linux carries a parent's peak RSS
    into its children's ``ru_maxrss`` through fork and exec.
    """
    code = (
        "import sys, numpy as np\n"
        "from pathlib import Path\n"
        "window, count, out, brats = tuple(map(int, sys.argv[1:4])), int(sys.argv[4]), "
        "sys.argv[5], Path(sys.argv[6])\n"
        "if brats.is_dir() and any(brats.iterdir()):\n"
        "    from unet3d.export.calibration import draw_patches\n"
        "    np.save(out, np.concatenate(draw_patches(brats, window, count)))\n"
        "    print(f'real BraTS 2018 patches ({count})')\n"
        "else:\n"
        "    rng = np.random.default_rng(0)\n"
        "    np.save(out, rng.standard_normal((count, *window, 4), dtype=np.float32))\n"
        "    print('seeded normal noise')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, *map(str, window), str(count),
                           str(tmp / "patches.npy"), str(BRATS)],
                          env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def agreement(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    """Max |dp| and WT Dice (channel 0 > 0.5) between `(N, D, H, W, K)` outputs."""
    a, b = ref[..., 0] > 0.5, out[..., 0] > 0.5
    total = int(a.sum()) + int(b.sum())
    dice = 1.0 if total == 0 else 2 * int((a & b).sum()) / total
    return {"max_abs_diff": float(np.abs(ref - out).max()), "dice_wt": dice}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--presets", default="default,edge", help="default,edge")
    parser.add_argument("--window-default", type=int, default=128)
    parser.add_argument("--window-edge", type=int, default=96)
    parser.add_argument("--naive-window", type=int, default=64,
                        help="window of the naive (CONV_3D) LiteRT model; 0 skips it")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--patches", type=int, default=2, help="input/calibration patches")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--edge-model", default=str(SHIPPED) if SHIPPED.is_file() else None,
                        help="trained .keras for the edge preset (default: the shipped model; "
                             "'' for an untrained seeded one)")
    parser.add_argument("--quick", action="store_true",
                        help="windows 64 (default) and 48 (edge), naive 32, 1 rep")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.window_default, args.window_edge, args.naive_window, args.reps = 64, 48, 32, 1
    configs = [c for c in args.configs.split(",") if c]
    for name in args.presets.split(","):
        preset = PRESETS[name]
        size = args.window_default if name == "default" else args.window_edge
        window = (size,) * 3
        weights = args.edge_model if name == "edge" and args.edge_model else None
        with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
            source = draw_inputs(window, args.patches, Path(tmp))
            patches = np.load(Path(tmp) / "patches.npy")
            print(f"\n== {name}: base {preset['base_filters']}, depth {preset['depth']}, window "
                  f"{size}^3, {args.threads} threads, inputs: {source}; "
                  f"{'weights of ' + weights if weights else 'untrained seeded model'}",
                  flush=True)
            rows = {}
            for config in configs:
                job = {"config": config, "preset": preset, "window": list(window),
                       "threads": args.threads, "reps": args.reps, "dir": tmp,
                       "patches": str(Path(tmp) / "patches.npy"), "weights": weights}
                if config == "litert_naive":
                    if args.naive_window <= 0:
                        continue
                    nw = min(args.naive_window, size)
                    job["window"] = [nw] * 3
                    job["patches"] = str(Path(tmp) / "naive_patches.npy")
                    np.save(job["patches"], np.ascontiguousarray(patches[:, :nw, :nw, :nw]))
                rows[config] = run_job(job)
                if config.startswith("litert") and "error" not in rows[config]:
                    convert_mb = rows[config].pop("peak_mb")
                    rows[config].update(run_job({**job, "phase": "run"}),
                                        convert_peak_mb=convert_mb)
                rows[config]["window"] = job["window"][0]
                print(f"  {config}: {json.dumps(rows[config])[:240]}", flush=True)
            _agreement(rows, Path(tmp))
            _table(rows, size)
    return 0


def _agreement(rows: dict, tmp: Path) -> None:
    ref_path = tmp / "keras_fp32_out.npy"
    if not ref_path.is_file():
        return
    ref = np.load(ref_path)
    for config, row in rows.items():
        path = tmp / f"{config}_out.npy"
        if config == "keras_fp32" or not path.is_file():
            continue
        out = np.load(path)
        if out.shape != ref.shape:  # the naive model ran on a smaller window
            continue
        row.update(agreement(ref, out))


def windows_per_case(window: int, overlap: float = 0.5) -> int:
    """Sliding windows (nnU-Net's step rule) covering :data:`CASE_SHAPE`."""
    from unet3d.inference.predictor import pad_to, sliding_window_steps

    padded = pad_to(np.zeros((*CASE_SHAPE, 1), np.float32), (window,) * 3, multiple=1)[0]
    steps = sliding_window_steps(padded.shape[:3], (window,) * 3, overlap)
    return int(np.prod([len(s) for s in steps]))


def _table(rows: dict, window: int) -> None:
    count = windows_per_case(window)
    print(f"  {'config':<14}{'window':>7}{'size MB':>9}{'latency s':>11}"
          f"{f'case s ({count} win)':>17}{'peak MB':>9}{'max|dp|':>10}{'WT Dice':>9}")
    for config, row in rows.items():
        if "error" in row:
            print(f"  {config:<14} failed: {row['error']}")
            continue
        size = f"{row['size_bytes'] / 1e6:.2f}" if "size_bytes" in row else "-"
        diff = f"{row['max_abs_diff']:.1e}" if "max_abs_diff" in row else "-"
        dice = f"{row['dice_wt']:.4f}" if "dice_wt" in row else "-"
        peak = f"{row['peak_mb']:.0f}" if row.get("peak_mb") else "-"
        case = f"{row['latency_s'] * count:.1f}" if row["window"] == window else "-"
        print(f"  {config:<14}{row['window']:>7}{size:>9}{row['latency_s']:>11.3f}{case:>17}"
              f"{peak:>9}{diff:>10}{dice:>9}")
    print("  (naive = the unlowered Keras graph through the plain converter: CONV_3D; its "
          "window may be smaller, so no agreement is shown for it)")


if __name__ == "__main__":
    sys.exit(main())
