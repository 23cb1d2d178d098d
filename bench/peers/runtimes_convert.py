#!/usr/bin/env python
"""Conversions for bench/bench_runtimes.py: a Keras U-Net to ONNX and OpenVINO IR, fp32 and int8.

Runs inside the runtimes peer's own virtual environment (the exact versions in
``bench/peers/requirements-runtimes.txt``; never this project's). One target
per process, so a failing or memory-hungry conversion takes no other with it:

* ``onnx``: the ``.keras`` file through Keras' own ONNX export
  (``model.export(..., format="onnx")``, which calls tf2onnx), static input
  `(1, W, W, W, C)`;
* ``savedmodel``: the ``.keras`` file as a TF SavedModel (``format="tf_saved_model"``),
  static input;
* ``ov``: the SavedModel (or with ``--source onnx`` the ONNX file) through
  ``openvino.convert_model``, saved as IR with fp32 weights (``ov.save_model``
  would store fp16 weights by default);
* ``ov_int8``: the fp32 IR through NNCF post-training quantization
  (``nncf.quantize``, default preset) on the calibration patches;
* ``ort_int8``: the fp32 ONNX through ``onnxruntime.quantization.quant_pre_process``
  then ``quantize_static`` (QDQ, int8 activations and per-channel int8 weights,
  MinMax) on the same patches.

Prints one JSON line: the target, the seconds it took and the file written.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def _keras_model(path: str):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    return keras, keras.saving.load_model(path, compile=False)


def _spec(keras, window: int, channels: int):
    return [keras.InputSpec(shape=(1, window, window, window, channels), dtype="float32")]


def convert_onnx(args, out: Path) -> Path:
    keras, model = _keras_model(args.model)
    path = out / "fp32.onnx"
    model.export(str(path), format="onnx", verbose=False,
                 input_signature=_spec(keras, args.window, args.channels))
    return path


def convert_savedmodel(args, out: Path) -> Path:
    keras, model = _keras_model(args.model)
    path = out / "saved_model"
    model.export(str(path), format="tf_saved_model", verbose=False,
                 input_signature=_spec(keras, args.window, args.channels))
    return path


def convert_ov(args, out: Path) -> Path:
    import openvino as ov

    source = out / ("fp32.onnx" if args.source == "onnx" else "saved_model")
    model = ov.convert_model(str(source))
    model.reshape([1, args.window, args.window, args.window, args.channels])
    path = out / f"ov_fp32_{args.source}.xml"
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def calibration(args) -> list[np.ndarray]:
    patches = np.load(args.calibration)["calibration"]
    return [np.ascontiguousarray(p[None], dtype=np.float32) for p in patches]


def convert_ov_int8(args, out: Path) -> Path:
    import nncf
    import openvino as ov

    patches = calibration(args)
    model = ov.Core().read_model(str(out / f"ov_fp32_{args.source}.xml"))
    quantized = nncf.quantize(model, nncf.Dataset(patches), subset_size=len(patches))
    path = out / f"ov_int8_{args.source}.xml"
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def _calibrate_in_priority_order() -> None:
    """Makes ONNX Runtime's calibrator free each activation once its min and max are taken.

    The calibrator appends a ReduceMin and a ReduceMax per activation at the end of
    the graph; in ONNX Runtime's default execution order they run last, so every
    activation of a 128^3 window stays alive at once (over 18 GB for the default
    network). PRIORITY_BASED order runs them as soon as they can (1.8 GB).
    """
    import onnxruntime as ort
    from onnxruntime.quantization import calibrate

    def create_inference_session(self):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        self.infer_session = ort.InferenceSession(self.augmented_model_path, options,
                                                  providers=self.execution_providers)

    calibrate.CalibraterBase.create_inference_session = create_inference_session


def convert_ort_int8(args, out: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    patches = calibration(args)
    _calibrate_in_priority_order()
    prepared = out / "fp32_prepared.onnx"
    quant_pre_process(str(out / "fp32.onnx"), str(prepared), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self.items = iter([{name: p} for p in patches])

        def get_next(self):
            return next(self.items, None)

    import onnx

    name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
    path = out / "ort_int8.onnx"
    quantize_static(str(prepared), str(path), Reader(name), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    per_channel=True)
    return path


TARGETS = {"onnx": convert_onnx, "savedmodel": convert_savedmodel, "ov": convert_ov,
           "ov_int8": convert_ov_int8, "ort_int8": convert_ort_int8}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(TARGETS), required=True)
    parser.add_argument("--model", help="the .keras file (onnx, savedmodel)")
    parser.add_argument("--out", required=True, help="folder of every converted file")
    parser.add_argument("--calibration", help=".npz with 'calibration' (N, W, W, W, C)")
    parser.add_argument("--source", choices=("savedmodel", "onnx"), default="savedmodel",
                        help="what OpenVINO reads (ov, ov_int8)")
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--channels", type=int, default=4)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = TARGETS[args.target](args, out)
    print(json.dumps({"target": args.target, "seconds": time.perf_counter() - start,
                      "path": str(path)}))


if __name__ == "__main__":
    main()
