"""One Keras layer to its folded-layout TF function: :func:`lower_layer`.

Each supported layer kind (``type(layer).__name__``) has a small lowering in
:data:`LOWERINGS` that checks the layer's settings, reads its weights as
float32 and returns a function of the layer's input tensors. The 3D network's
tensors are folded `(D, H, W, C)` (:mod:`unet3d.export.ops`); a 2D (slice)
network's are `(1, H, W, C)`, so its ``Conv2D`` and ``UpSampling2D`` map to
``CONV_2D`` and ``RESIZE_NEAREST_NEIGHBOR`` directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from unet3d.export.ops import conv3d_as_conv2d, instance_norm, upsample2x
from unet3d_base.errors import InputError

Array = np.ndarray
Lowered = Callable[[list[tf.Tensor]], tf.Tensor]


def _weights(layer) -> list[Array]:
    return [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]


def _check_spatial(layer, values: Sequence[int]) -> None:
    if any(int(v) != int(values[0]) for v in values):
        raise InputError(f"layer {layer.name}: only equal sizes in all three axes are supported, "
                         f"got {tuple(values)}")


def conv3d_parts(layer, config: dict[str, Any] | None = None) -> tuple[Array, Array | None, int]:
    """A ``Conv3D`` layer's float32 kernel `(kd, kh, kw, Cin, Cout)`, bias (or None) and stride.

    Raises:
        InputError: settings that have no lowering (padding other than 'same',
            dilation, groups, unequal sizes, a fused activation).
    """
    config = layer.get_config() if config is None else config
    _check_spatial(layer, config["strides"])
    _check_spatial(layer, config["kernel_size"])
    if config["padding"] != "same" or tuple(config["dilation_rate"]) != (1, 1, 1) \
            or config.get("groups", 1) != 1:
        raise InputError(f"layer {layer.name}: only 'same', undilated, ungrouped Conv3D "
                         "can be exported")
    activation = config.get("activation", "linear")
    if activation not in ("linear", None):
        raise InputError(f"layer {layer.name}: fused activation {activation!r} unsupported")
    weights = _weights(layer)
    return weights[0], (weights[1] if config["use_bias"] else None), int(config["strides"][0])


def _conv3d(layer, config: dict[str, Any]) -> Lowered:
    kernel, bias, stride = conv3d_parts(layer, config)
    return lambda xs: conv3d_as_conv2d(xs[0], kernel, bias, stride)


def _conv2d(layer, config: dict[str, Any]) -> Lowered:
    """A 2D network's layers see `(1, H, W, C)`: LiteRT's own CONV_2D."""
    if config["padding"] != "same" or tuple(config["dilation_rate"]) != (1, 1) \
            or config.get("groups", 1) != 1 or len(set(config["strides"])) != 1 \
            or config.get("activation", "linear") not in ("linear", None):
        raise InputError(f"layer {layer.name}: only 'same', undilated, ungrouped Conv2D "
                         "without a fused activation can be exported")
    weights = _weights(layer)
    kernel = tf.constant(weights[0])
    bias = tf.constant(weights[1]) if config["use_bias"] else None
    stride = int(config["strides"][0])

    def conv2d(xs):
        y = tf.nn.conv2d(xs[0], kernel, strides=stride, padding="SAME")
        return y if bias is None else tf.nn.bias_add(y, bias)
    return conv2d


def _upsampling2d(layer, config: dict[str, Any]) -> Lowered:
    if tuple(config["size"]) != (2, 2) or config.get("interpolation") != "nearest":
        raise InputError(f"layer {layer.name}: only UpSampling2D(size=2) can be exported")
    return lambda xs: tf.raw_ops.ResizeNearestNeighbor(
        images=xs[0], size=[2 * int(xs[0].shape[1]), 2 * int(xs[0].shape[2])],
        align_corners=False, half_pixel_centers=False)


def _depthwise_conv2d(layer, config: dict[str, Any]) -> Lowered:
    """The fixed smoothing behind an input stride's upsampling (``output_smooth``)."""
    if config["padding"] != "same" or set(config["strides"]) != {1} \
            or set(config["dilation_rate"]) != {1} or config["use_bias"] \
            or config.get("activation", "linear") not in ("linear", None):
        raise InputError(f"layer {layer.name}: only a 'same', unstrided DepthwiseConv2D "
                         "without bias can be exported")
    kernel = tf.constant(_weights(layer)[0])
    return lambda xs: tf.nn.depthwise_conv2d(xs[0], kernel, [1, 1, 1, 1], "SAME")


def _average_pooling2d(layer, config: dict[str, Any]) -> Lowered:
    """The input pooling of a network with an input stride."""
    pool = tuple(config["pool_size"])
    if tuple(config["strides"]) != pool or config["padding"] != "valid" or len(set(pool)) != 1:
        raise InputError(f"layer {layer.name}: only non-overlapping square AveragePooling2D "
                         "can be exported")
    return lambda xs: tf.nn.avg_pool2d(xs[0], pool, pool, padding="VALID")


def _upsampling3d(layer, config: dict[str, Any]) -> Lowered:
    if tuple(config["size"]) != (2, 2, 2):
        raise InputError(f"layer {layer.name}: only UpSampling3D(size=2) can be exported")
    return lambda xs: upsample2x(xs[0])


def _group_norm(layer, config: dict[str, Any]) -> Lowered:
    weights = _weights(layer)
    channels = weights[0].shape[0] if weights else -1
    if config["groups"] not in (-1, channels) or config["axis"] not in (-1, 4):
        raise InputError(f"layer {layer.name}: only instance norm (groups=-1) on the channel "
                         "axis can be exported")
    gamma = weights.pop(0) if config["scale"] else None
    beta = weights.pop(0) if config["center"] else None
    eps = float(config["epsilon"])
    return lambda xs: instance_norm(xs[0], gamma, beta, eps)


def _multiply(layer, config: dict[str, Any]) -> Lowered:
    """An attention gate: coefficients `(.., 1)` broadcast over channels."""
    return lambda xs: xs[0] * xs[1]


def _relu(layer, config: dict[str, Any]) -> Lowered:
    if config.get("max_value") is not None or config.get("negative_slope", 0) \
            or config.get("threshold", 0):
        raise InputError(f"layer {layer.name}: only a plain ReLU can be exported")
    return lambda xs: tf.nn.relu(xs[0])


def _leaky_relu(layer, config: dict[str, Any]) -> Lowered:
    slope = float(config["negative_slope"])
    return lambda xs: tf.nn.leaky_relu(xs[0], alpha=slope)


def _identity(layer, config: dict[str, Any]) -> Lowered:
    """Dropout and noise layers: nothing at inference."""
    return lambda xs: xs[0]


def _add(layer, config: dict[str, Any]) -> Lowered:
    def add(xs):
        out = xs[0]
        for other in xs[1:]:
            out = out + other
        return out
    return add


def _concatenate(layer, config: dict[str, Any]) -> Lowered:
    if config["axis"] not in (-1, 4):
        raise InputError(f"layer {layer.name}: only channel concatenation can be exported")
    return lambda xs: tf.concat(xs, axis=-1)


def _activation(layer, config: dict[str, Any]) -> Lowered:
    name = config["activation"]
    functions = {"sigmoid": tf.math.sigmoid, "softmax": lambda t: tf.nn.softmax(t, axis=-1),
                 "linear": lambda t: t, "relu": tf.nn.relu}
    if name not in functions:
        raise InputError(f"layer {layer.name}: activation {name!r} cannot be exported")
    return lambda xs: functions[name](xs[0])


# layer kind (``type(layer).__name__``) -> its lowering
LOWERINGS: dict[str, Callable[[Any, dict[str, Any]], Lowered]] = {
    "Conv3D": _conv3d,
    "Conv2D": _conv2d,
    "UpSampling2D": _upsampling2d,
    "UpSampling3D": _upsampling3d,
    "AveragePooling2D": _average_pooling2d,
    "DepthwiseConv2D": _depthwise_conv2d,
    "GroupNormalization": _group_norm,
    "Multiply": _multiply,
    "ReLU": _relu,
    "LeakyReLU": _leaky_relu,
    "Dropout": _identity,
    "SpatialDropout3D": _identity,
    "GaussianNoise": _identity,
    "GaussianDropout": _identity,
    "Add": _add,
    "Concatenate": _concatenate,
    "Activation": _activation,
}


def lower_layer(layer) -> Lowered:
    """The folded-layout function of one Keras layer.

    Args:
        layer: a keras layer of the kinds the U-Net uses (Conv3D or Conv2D,
            GroupNormalization, LeakyReLU, Dropout, Add, Concatenate,
            UpSampling3D or UpSampling2D, Activation, an attention
            gate's ReLU and Multiply, and an input stride's AveragePooling2D and DepthwiseConv2D).

    Returns:
        A function of the layer's input tensors (folded `(D, H, W, C)`).

    Raises:
        InputError: a layer kind or setting that has no lowering.
    """
    kind = type(layer).__name__
    config = layer.get_config()
    lowering = LOWERINGS.get(kind)
    if lowering is None:
        raise InputError(f"layer {layer.name}: {kind} has no LiteRT lowering")
    return lowering(layer, config)
