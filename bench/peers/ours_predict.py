#!/usr/bin/env python
"""Our side of bench/bench_vs_monai.py: predict.py's pipeline on a case or a folder.

Runs in this project's environment, one configuration per process; prints one
JSON line.

* ``--run case``: :func:`unet3d.inference.pipeline.predict_case` on the case
  ``--repeats`` times: the wall times and the network time of its report;
* ``--run folder``: every case of a folder through one process: per-case time
  and peak memory (``VmHWM``, reset between cases);
* ``--run stages`` (``--like-for-like``): the steps of ``predict_case`` called
  one by one, as it does, each timed with ``perf_counter``:

* read: find the case's files and load them onto the model's grid
  (``load_case_for_model``: nibabel decode, LPS axes, 1 mm);
* preprocess: crop to the brain and z-score (``crop_for_model``);
* network: the forward calls alone (the model's ``predict_fn``, wrapped in a
  timer; one call for the whole volume, one per window when sliding);
* blend+post: the rest of ``segment_cropped`` (padding, cutting windows and
  Gaussian blending when sliding, regions to classes, post-processing,
  un-cropping) and the way back onto the input's grid and label convention;
* write: the NIfTI label map (``layout.save``).

``predict_case`` does the same, plus a JSON report and the volumes in it (not
timed here): one dict of stage seconds per repeat, with the resolved mode and
the number of network calls.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from unet3d.env import prepare_backend

prepare_backend()  # as predict.py: environment defaults, then TensorFlow (without JAX)

from data_generators.geometry import load_case_for_model  # noqa: E402
from data_generators.labels import classes_to_labels, resolve_convention  # noqa: E402
from data_generators.layouts import layout_of  # noqa: E402
from unet3d.artifacts import load_artifact  # noqa: E402
from unet3d.inference.pipeline import (  # noqa: E402
    PredictSettings,
    crop_for_model,
    predict_case,
    segment_cropped,
)
from unet3d.precision import resolve_precision  # noqa: E402


def timed_forward(model) -> list[float]:
    """Wraps ``model.predict_fn`` so each call's seconds are appended to the returned list."""
    calls: list[float] = []
    forward = model.predict_fn

    def run(batch):
        start = time.perf_counter()
        out = forward(batch)
        calls.append(time.perf_counter() - start)
        return out

    model.predict_fn = run
    return calls


def segment(case_dir: Path, out_dir: Path, model, settings, calls: list[float]) -> dict:
    calls.clear()
    start = time.perf_counter()
    layout = layout_of(case_dir)
    case = layout.find_case(case_dir, model.modalities, require_label=False)
    case = case if layout.own_masks else replace(case, label=None)  # as predict_case
    image, _, properties, geometry = load_case_for_model(case)
    read = time.perf_counter()
    cropped = crop_for_model(image, model, str(case.images[0]))
    del image
    preprocessed = time.perf_counter()
    shape = list(cropped.image.shape[:3])
    seg = segment_cropped(cropped, model, settings)
    full = geometry.labels_from_model(seg.classes)
    labels = classes_to_labels(full, resolve_convention(settings.labels))
    post = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    layout.save(full, labels, case, properties, out_dir)
    written = time.perf_counter()
    network = sum(calls)
    return {"read": read - start, "preprocess": preprocessed - read, "network": network,
            "blend+post": post - preprocessed - network, "write": written - post,
            "total": written - start, "mode": seg.mode, "calls": len(calls), "cropped": shape}


def run_case(args: argparse.Namespace, model) -> dict:
    settings = (PredictSettings(tta=args.tta, overwrite=True) if args.as_predict
                else PredictSettings(tta=args.tta, overwrite=True, largest_component=False))
    times, network, peaks = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        report = predict_case(args.case, args.out, model, settings)
        times.append(time.perf_counter() - start)
        network.append(report["runtime_s"]["network"])
        peaks.append(_peak_gb())  # the process's peak so far: the first is one case's
    return {"times": times, "network": network, "mode": report["settings"]["resolved_mode"],
            "runtime_s": report["runtime_s"], "precision": args.precision, "peaks_gb": peaks}


def _peak_gb() -> float:
    """This process's peak resident memory so far (``VmHWM``), in GB."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines()
                if line.startswith("VmHWM")) / 2**20


def run_folder(args: argparse.Namespace, model) -> list[dict]:
    settings = PredictSettings(overwrite=True)
    rows = []
    for case in sorted(Path(args.case).iterdir()):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        start = time.perf_counter()
        predict_case(case, args.out, model, settings)
        seconds = time.perf_counter() - start
        rows.append({"case": case.name, "seconds": seconds, "peak_gb": _peak_gb()})
    return rows


def run_stages(args: argparse.Namespace, model) -> dict:
    calls = timed_forward(model)
    settings = PredictSettings(mode=args.mode, patch_size=(args.window,), overlap=args.overlap,
                               overwrite=True, largest_component=False, max_memory_gb=8.0)
    return {"runs": [segment(Path(args.case), Path(args.out), model, settings, calls)
                     for _ in range(args.repeats)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", choices=("case", "folder", "stages"), required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--case", required=True, help="a case folder (a folder of them: folder)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--precision", default="fp32", help="fp32, bf16 or auto (predict.py's)")
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mode", choices=("whole", "sliding"), default="whole")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--as-predict", action="store_true",
                        help="--run case with predict.py's settings (the model's stored "
                             "post-processing) instead of no largest-component step")
    args = parser.parse_args()
    args.precision = resolve_precision(args.precision)
    model = load_artifact(args.model, precision=args.precision)
    run = {"case": run_case, "folder": run_folder, "stages": run_stages}[args.run]
    print(json.dumps(run(args, model)))


if __name__ == "__main__":
    main()
