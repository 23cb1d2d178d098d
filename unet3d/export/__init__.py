"""LiteRT (``.tflite``) export of the 3D U-Net with 3D convolutions lowered to 2D.

``unet3d-export MODEL.keras --precision int8 --out model.tflite``

* :func:`lower_model` rebuilds a trained Keras model as a TF computation on
  4D tensors (depth folded into the batch axis) using only ops LiteRT's
  XNNPACK delegate accelerates and int8 quantization covers.
* :func:`export_litert` converts it (fp32, fp16 or int8), checks the file
  holds no ``CONV_3D`` or Flex op, compares it with the Keras model and
  writes ``<out>.json`` (report plus the ``TrainConfig`` under ``"config"``).
* :class:`unet3d.artifacts.litert_file.LiteRTModel` runs the file as a ``predict_fn``.
"""

from unet3d.export.agreement import agreement
from unet3d.export.convert import (
    FORBIDDEN_OPS,
    PRECISIONS,
    check_window,
    convert,
    export_litert,
    format_report,
    model_stride,
)
from unet3d.export.lowering import (
    conv3d_as_conv2d,
    depth_taps,
    instance_norm,
    lower_layer,
    lower_model,
    upsample2x,
)

__all__ = [
    "FORBIDDEN_OPS",
    "PRECISIONS",
    "agreement",
    "check_window",
    "conv3d_as_conv2d",
    "convert",
    "depth_taps",
    "export_litert",
    "format_report",
    "instance_norm",
    "lower_layer",
    "lower_model",
    "model_stride",
    "upsample2x",
]
