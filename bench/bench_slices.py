"""Per-slice latency of a 2D (slice) U-Net: Keras against its LiteRT fp32 and int8 files.

Side by side in one run, on one 240x240 BraTS slice (the axial size of a
BraTS volume) with the four modalities of a real case when present (else
seeded noise): the Keras model compiled (``tf.function``) at batch 1, and the
LiteRT files (XNNPACK, ``--threads``, default 2) exported from it with
``unet3d.export.export_litert`` (int8 calibrated on real training patches).
Prints milliseconds per slice (median of ``--reps``), file sizes and the
ratios to Keras.

    python bench/bench_slices.py --model models/brats_unet2d_edge.keras
    python bench/bench_slices.py --model runs/slice2d/best.keras --reps 50 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BRATS = REPO.parent / "shared" / "data" / "brats2018"
CASE = "Brats18_CBICA_AOZ_1"
WINDOW = (240, 240)


def timed(fn, x: np.ndarray, reps: int) -> float:
    """Median milliseconds of ``fn(x)`` over ``reps`` calls, after two warm-up calls."""
    fn(x)
    fn(x)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def a_slice(modalities) -> tuple[np.ndarray, str]:
    """One z-scored 240x240 axial slice through the tumor of a real case, or noise."""
    if (BRATS / CASE).is_dir():
        from data_generators.geometry import load_case_for_model
        from data_generators.io import find_case
        from data_generators.preprocessing import preprocess_case

        image, label, _, _ = load_case_for_model(find_case(BRATS / CASE, modalities, True))
        cropped, cropped_label, _ = preprocess_case(image, label)
        z = int(np.argmax((cropped_label > 0).sum(axis=(0, 1))))
        plane = np.zeros((*WINDOW, len(modalities)), np.float32)
        h, w = (min(a, b) for a, b in zip(cropped.shape[:2], WINDOW, strict=True))
        plane[:h, :w] = cropped[:h, :w, z]
        return plane[None], f"{CASE} slice {z}"
    rng = np.random.default_rng(0)
    return rng.standard_normal((1, *WINDOW, len(modalities)), dtype=np.float32), "noise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a 2D .keras model")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from unet3d.env import prepare_backend

    prepare_backend()
    from unet3d.artifacts import load_artifact
    from unet3d.artifacts.litert_file import LiteRTModel
    from unet3d.export import export_litert

    keras_model = load_artifact(args.model, precision="fp32")
    if keras_model.spatial_dims != 2:
        raise SystemExit(f"{args.model}: not a 2D (slice) network")
    x, source = a_slice(keras_model.modalities)
    rows = [("keras fp32 (tf.function)", timed(keras_model.predict_fn, x, args.reps),
             Path(args.model).stat().st_size)]
    data = BRATS if BRATS.is_dir() else None
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            out = Path(tmp) / f"m_{precision}.tflite"
            export_litert(args.model, out, precision=precision, window=WINDOW,
                          calibration_data=data, threads=args.threads)
            runner = LiteRTModel(out, threads=args.threads)
            rows.append((f"LiteRT {precision} ({args.threads} threads)",
                         timed(runner.predict_fn, x, args.reps), out.stat().st_size))
    keras_ms = rows[0][1]
    print(f"model {args.model}; input {source}, 240x240; median of {args.reps} runs")
    print(f"{'runtime':34s} {'ms/slice':>9s} {'x Keras':>8s} {'file KB':>9s}")
    for name, ms, size in rows:
        print(f"{name:34s} {ms:9.2f} {keras_ms / ms:8.2f} {size / 1024:9.1f}")


if __name__ == "__main__":
    main()
