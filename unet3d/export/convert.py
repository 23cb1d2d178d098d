"""Converting the lowered U-Net to ``.tflite`` (fp32, fp16, int8) and checking it.

The comparison with Keras is :mod:`unet3d.export.agreement`, the choice of
calibration patches :func:`unet3d.export.calibration.choose_patches`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d.artifacts.keras_file import load_model, read_model_config
from unet3d.artifacts.litert_file import LiteRTModel, op_names, report_path
from unet3d.export.agreement import agreement, output_mode_of
from unet3d.export.calibration import choose_patches
from unet3d.export.lowering import lower_model
from unet3d.models.forward import keras_predict_fn
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_path

PRECISIONS = ("fp32", "fp16", "int8")
# ops that must never appear: LiteRT's slow float-only 3D kernels, and TF fallbacks
FORBIDDEN_OPS = ("CONV_3D", "CONV_3D_TRANSPOSE")
DEFAULT_CALIBRATION_PATCHES = 8


def model_stride(model) -> int:
    """2 ** (number of stride-2 encoder convolutions), times the input pooling's stride if
    any: spatial sizes must be multiples of it.
    (An attention gate's strided convolution works on a grid the encoder already halved.)"""
    strided = [layer for layer in model.layers if type(layer).__name__ in ("Conv2D", "Conv3D")
               and set(layer.get_config()["strides"]) != {1} and "attention" not in layer.name]
    pooled = [layer.get_config()["pool_size"][0] for layer in model.layers
              if type(layer).__name__ == "AveragePooling2D"]  # ModelConfig.input_stride
    return 2 ** len(strided) * int(np.prod(pooled))


def model_dims(model) -> int:
    """3 for the 3D network, 2 for its slice form."""
    return len(model.inputs[0].shape) - 2


def check_window(window: Sequence[int] | int, stride: int, dims: int = 3) -> tuple[int, ...]:
    """Validates a window: 1 or ``dims`` positive sizes, each divisible by ``stride``.

    Raises:
        InputError: naming ``--window``.
    """
    values = [window] if isinstance(window, (int, np.integer)) else list(window)
    if len(values) == 1:
        values = values * dims
    if len(values) != dims or any(int(v) <= 0 for v in values):
        raise InputError(f"--window needs 1 or {dims} positive sizes, got {values}")
    window = tuple(int(v) for v in values)
    if any(v % stride for v in window):
        raise InputError(f"--window {'x'.join(map(str, window))} is not divisible by the "
                         f"model stride {stride}")
    return window


def convert(concrete_fn, precision: str, calibration: Sequence[np.ndarray] = ()) -> bytes:
    """Runs TF's LiteRT converter on the lowered function.

    Args:
        concrete_fn: from :func:`unet3d.export.lowering.lower_model`.
        precision: ``fp32``; ``fp16`` (fp16 weights, fp32 compute); ``int8``
            (int8 weights and activations, float32 input and output).
        calibration: float32 `(1, D, H, W, C)` patches; needed for int8.

    Returns:
        The ``.tflite`` flatbuffer, names stripped (:func:`strip_names`).
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_fn], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if not calibration:
            raise InputError("int8 export needs calibration patches")
        patches = list(calibration)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([p] for p in patches)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    elif precision != "fp32":
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return strip_names(converter.convert())


def strip_names(content: bytes) -> bytes:
    """The flatbuffer without its tensor, subgraph and signature names (TensorFlow's long
    op paths): ~8% of a small model's file. Inputs and outputs are read by index."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _check_arguments(out_path: Path, precision: str, overwrite: bool,
                     calibration_patches: int) -> None:
    """Refuses a bad precision, output path or patch count before any work; makes the
    output's folder.

    Raises:
        InputError: naming the option at fault.
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if out_path.suffix != ".tflite":
        raise InputError(f"--out {out_path}: must end in .tflite")
    if out_path.exists() and not overwrite:
        raise InputError(f"--out {out_path}: exists; pass --overwrite to replace it")
    if out_path.is_dir():
        raise InputError(f"--out {out_path}: is a folder")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"--out {out_path}: cannot write there ({err.strerror})") from None
    if calibration_patches <= 0:
        raise InputError(f"--calibration-patches must be positive, got {calibration_patches}")


def export_litert(
    model_or_path,
    out_path: str | Path,
    precision: str = "fp32",
    window: Sequence[int] | int | None = None,
    calibration: Iterable[np.ndarray] | None = None,
    threads: int = 2,
    *,
    calibration_data: str | Path | None = None,
    calibration_patches: int = DEFAULT_CALIBRATION_PATCHES,
    config: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Exports a trained U-Net to a LiteRT ``.tflite`` file with a JSON report beside it.

    A 3D model is lowered to 4D ops (:func:`unet3d.export.lowering.lower_model`)
    for one static window (a 2D one maps to them layer for layer), converted,
    checked for forbidden ops (``CONV_3D``, Flex) and compared with the Keras
    model on the calibration patches.
    ``out_path`` and ``<out_path>.json`` are written atomically; nothing is
    left behind on error.

    Args:
        model_or_path: keras.Model, or str/Path of a ``.keras`` file (its
            embedded or sibling config is used).
        out_path: str or Path of the ``.tflite`` file.
        precision: ``fp32``, ``fp16`` (fp16 weights) or ``int8`` (full integer
            weights and activations, float32 input/output).
        window: (D, H, W) ((H, W) for a 2D network), one size for all axes, or
            None: the config's training ``patch_size``. Must be divisible by the
            model stride.
        calibration: float32 patches `(1, D, H, W, C)` or `(D, H, W, C)`, or
            None: drawn from ``calibration_data``, else from the run's training
            cases (``split.json`` beside the model), else (fp32/fp16 only)
            seeded random patches.
        threads: int, default 2. LiteRT threads for the agreement check.
        calibration_data: folder of BraTS case folders to draw patches from.
        calibration_patches: int, default 8. Patches to draw.
        config: TrainConfig dict stored with the export; default: the model
            file's.
        overwrite: bool, default True. False refuses an existing ``out_path``.

    Returns:
        The report dict (also in ``<out_path>.json``): ``path``, ``precision``,
        ``window``, ``size_bytes``, ``ops`` (name -> count), ``calibration``,
        ``agreement`` (see :func:`unet3d.export.agreement.agreement`), ``config``.

    Raises:
        InputError: bad model file, precision, window, calibration or output.
    """

    out_path = Path(out_path)
    _check_arguments(out_path, precision, overwrite, calibration_patches)

    model_path = None
    if isinstance(model_or_path, (str, Path)):
        model_path = Path(model_or_path)
        model = load_model(model_path)
        config = config if config is not None else read_model_config(model_path)
    else:
        model = model_or_path
    if window is None:
        if not config or not config.get("patch_size"):
            raise InputError("--window is needed: the model has no training config")
        window = config["patch_size"]
    window = check_window(window, model_stride(model), model_dims(model))
    channels = int(model.inputs[0].shape[-1])
    patches, source = choose_patches(calibration, calibration_data, calibration_patches,
                                     model_path, config, window, channels, precision)

    content = convert(lower_model(model, window), precision, patches)
    ops = op_names(content)
    bad = [name for name in ops if name in FORBIDDEN_OPS or name.startswith("Flex")]
    if bad:  # a lowering bug, not bad input
        raise RuntimeError(f"exported graph still holds {', '.join(bad)}")

    output_mode = (config or {}).get("model", {}).get("output_mode") or output_mode_of(model)

    forward = keras_predict_fn(model)  # compiled once, reused for every patch
    reference = [forward(np.asarray(p, dtype=np.float32)) for p in patches]
    report: dict[str, Any] = {
        "path": str(out_path),
        "precision": precision,
        "window": list(window),
        "size_bytes": len(content),
        "ops": ops,
        "input": [1, *window, channels],
        "calibration": {"source": source, "patches": len(patches)},
    }
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(content)
        runner = LiteRTModel(tmp, threads=threads)
        report["output_channels"] = runner.out_channels
        exported = [runner.predict_fn(p) for p in patches]
        report["agreement"] = {"reference": "keras", "output_mode": output_mode,
                               **agreement(reference, exported, output_mode)}
        report["config"] = config
        with atomic_path(report_path(out_path)) as meta:
            meta.write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict[str, Any]) -> str:
    """A few human-readable lines of an export report."""
    agree = report["agreement"]
    ops = ", ".join(f"{name} x{count}" for name, count in report["ops"].items())
    return "\n".join([
        f"wrote {report['path']} ({report['size_bytes'] / 1e6:.2f} MB, {report['precision']}, "
        f"window {'x'.join(map(str, report['window']))})",
        f"ops: {ops}",
        f"agreement with Keras on {report['calibration']['patches']} patches "
        f"({report['calibration']['source']}): max |dp| {agree['max_abs_diff']:.2e}, "
        f"mean |dp| {agree['mean_abs_diff']:.2e}, WT Dice {agree['dice_wt']:.4f} "
        f"(lowest {agree['dice_wt_min']:.4f})",
        f"report: {report['path']}.json",
    ])
