"""Per-slice latency of a 2D (slice) U-Net: Keras against its LiteRT fp32 and int8 files,
and, for a cross-validated one, the per-patient Dice of its fold models and of their int8
files on the patients each never saw.

Side by side in one run, on one real slice: a 240x240 BraTS slice with the four
modalities of a real case (else seeded noise), or with ``--data`` a 256x256 slice
of a Kaggle LGG patient (``kaggle_3m``). The Keras model runs compiled
(``tf.function``) at batch 1; the LiteRT files (XNNPACK, ``--threads``, default 2)
are exported from it with ``unet3d.export.export_litert`` (int8 calibrated on real
patches), or ``--tflite`` times a file as shipped. Prints milliseconds per slice
(median of ``--reps``), file sizes and the ratios to Keras.

``--folds DIR --split FILE`` (a campaign's ``fold_<k>.keras`` models and its split)
adds per-patient Dice (each patient's slices stacked into one volume, as Buda et
al. 2019 score it, after the post-processing stored in the fold model) of every fold
model and of its int8 export, calibrated on that fold's training patients only, over the
patients of its validation set.

    python bench/bench_slices.py --model models/brats_unet2d_edge.keras
    python bench/bench_slices.py --model models/lgg_unet2d_edge.keras \\
        --tflite models/lgg_unet2d_edge_int8.tflite --data ../shared/data/lgg/kaggle_3m \\
        --folds models/lgg_edge_cv5 --split campaigns/lgg_edge_cv5/splits_final.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BRATS = REPO.parent / "shared" / "data" / "brats2018"
CASE = "Brats18_CBICA_AOZ_1"
WINDOW = (240, 240)
LGG_WINDOW = (256, 256)


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


def an_lgg_slice(data: Path, modalities, normalization) -> tuple[np.ndarray, str]:
    """The slice with the most tumour of the first LGG patient whose channels are real,
    preprocessed as inference does it, on a 256x256 plane."""
    from data_generators.geometry import load_case_for_model
    from data_generators.layouts import find_any_cases
    from data_generators.preprocessing import preprocess_case

    cases = find_any_cases(data, modalities, log=lambda _: None)
    if not cases:
        raise SystemExit(f"{data}: no patient with the channels {', '.join(modalities)}")
    image, label, _, _ = load_case_for_model(cases[0])
    cropped, cropped_label, _ = preprocess_case(image, label, normalization)
    k = int(np.argmax((cropped_label > 0).sum(axis=(0, 1))))
    plane = np.zeros((*LGG_WINDOW, len(modalities)), np.float32)
    h, w = (min(a, b) for a, b in zip(cropped.shape[:2], LGG_WINDOW, strict=True))
    plane[:h, :w] = cropped[:h, :w, k]
    return plane[None], f"{cases[0].case_id} slice {k}"


def out_of_fold_dice(folds: Path, split_file: Path, data: Path, threads: int) -> list[tuple]:
    """Per-patient WT Dice of each fold model and of its int8 file on its validation
    patients, after the post-processing stored in the fold model: rows ``(name, mean,
    median, worst, patients)``."""
    from unet3d.artifacts.keras_file import read_model_config
    from unet3d.artifacts.plan_file import read_plan
    from unet3d.export import export_litert
    from unet3d.export.calibration import draw_patches
    from unet3d.postprocessing import PostProcessing
    from unet3d.training.oof import predict_out_of_fold, score_regions

    split = json.loads(split_file.read_text())
    plans = {}  # each fold model's stored post-processing (the out-of-fold one)
    keras_models = {k: folds / f"fold_{k}.keras" for k in range(len(split))
                    if (folds / f"fold_{k}.keras").is_file()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        int8_models = {}
        for k, path in keras_models.items():
            config = read_model_config(path)
            plans[k] = read_plan(path) or PostProcessing(et_min_voxels=0)
            window = LGG_WINDOW  # whole slices, as the shipped file
            calibration = draw_patches(data, window, 8, config, case_ids=split[k]["train"])
            int8_models[k] = Path(tmp) / f"fold_{k}_int8.tflite"
            export_litert(path, int8_models[k], precision="int8", window=window,
                          calibration=calibration, threads=threads, config=config)
        for name, models in (("Keras fp32 fold models", keras_models),
                             ("their LiteRT int8 files", int8_models)):
            results = predict_out_of_fold(split, models, data, Path(tmp) / name,
                                          log=lambda _: None)
            scores = [score_regions(plans[r["fold"]].apply(r["classes"])[0], r["truth"],
                                    ("WT",))["Dice_WT"] for r in results.values()]
            rows.append((name, float(np.mean(scores)), float(np.median(scores)),
                         float(np.min(scores)), len(scores)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a 2D .keras model")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, help="a Kaggle LGG folder (kaggle_3m): time a "
                        "256x256 slice of it and calibrate on it (default: BraTS, 240x240)")
    parser.add_argument("--tflite", type=Path, help="time this LiteRT file as it is "
                        "(e.g. the shipped int8 one) instead of exporting int8 anew")
    parser.add_argument("--folds", type=Path, help="a folder of fold_<k>.keras models: "
                        "per-patient Dice of each and of its int8 export, out of fold")
    parser.add_argument("--split", type=Path, help="the split of --folds (splits_final.json)")
    args = parser.parse_args()
    if bool(args.folds) != bool(args.split) or (args.folds and not args.data):
        parser.error("--folds needs --split and --data")

    from unet3d.env import prepare_backend

    prepare_backend()
    from unet3d.artifacts import load_artifact
    from unet3d.artifacts.litert_file import LiteRTModel
    from unet3d.export import export_litert

    keras_model = load_artifact(args.model, precision="fp32")
    if keras_model.spatial_dims != 2:
        raise SystemExit(f"{args.model}: not a 2D (slice) network")
    if args.data:
        window = LGG_WINDOW
        x, source = an_lgg_slice(args.data, keras_model.modalities, keras_model.normalization)
    else:
        window = WINDOW
        x, source = a_slice(keras_model.modalities)
    rows = [("keras fp32 (tf.function)", timed(keras_model.predict_fn, x, args.reps),
             Path(args.model).stat().st_size)]
    data = args.data or (BRATS if BRATS.is_dir() else None)
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            out = Path(tmp) / f"m_{precision}.tflite"
            if precision == "int8" and args.tflite:
                out, label = args.tflite, f"LiteRT {args.tflite.name}"
            else:
                export_litert(args.model, out, precision=precision, window=window,
                              calibration_data=data, threads=args.threads)
                label = f"LiteRT {precision}"
            runner = LiteRTModel(out, threads=args.threads)
            rows.append((f"{label} ({args.threads} threads)",
                         timed(runner.predict_fn, x, args.reps), out.stat().st_size))
    keras_ms = rows[0][1]
    size = "x".join(map(str, window))
    print(f"model {args.model}; input {source}, {size}; median of {args.reps} runs")
    print(f"{'runtime':44s} {'ms/slice':>9s} {'x Keras':>8s} {'file KB':>9s}")
    for name, ms, nbytes in rows:
        print(f"{name:44s} {ms:9.2f} {keras_ms / ms:8.2f} {nbytes / 1024:9.1f}")
    if args.folds:
        print(f"\nper-patient Dice (WT), out of fold: {args.folds} over {args.split}")
        print(f"{'models':44s} {'mean':>6s} {'median':>7s} {'worst':>6s} {'patients':>9s}")
        for name, mean, median, worst, count in out_of_fold_dice(
                args.folds, args.split, args.data, args.threads):
            print(f"{name:44s} {mean:6.3f} {median:7.3f} {worst:6.3f} {count:9d}")


if __name__ == "__main__":
    main()
