"""Lowering the 3D U-Net (and its 2D form) to 4D ops that LiteRT's XNNPACK and int8 cover.

LiteRT runs ``CONV_3D`` with a float32-only reference kernel that XNNPACK does
not accelerate and quantization leaves in float32. This module rebuilds a
trained Keras model, layer by layer and from its weights, as a TF computation
whose tensors are 4D with depth folded into the batch axis: a volume
`(1, D, H, W, C)` becomes `(D, H, W, C)`, and

* a 3x3x3 ``Conv3D`` becomes one ``CONV_2D`` over depth-stacked slices: the
  depth-padded tensor's three neighbouring slices are concatenated on the
  channel axis `(D', H, W, 3 * C)` and convolved with the kernel transposed
  to `(kh, kw, kd, cin, cout)` and reshaped to `(3, 3, 3 * cin, cout)`; stride
  2 picks every other slice in depth (TF 'same' padding, matched exactly) and
  lets the 2D convolution's stride do height and width;
* instance norm (``GroupNormalization(groups=-1)``) is ``MEAN`` over axes
  2, 1, 0 (one axis at a time, for float32 accuracy), ``RSQRT`` and ``MUL``/``ADD``;
* ``UpSampling3D`` is ``RESIZE_NEAREST_NEIGHBOR`` on height and width and, in
  depth, a channel-free ``CONCATENATION`` of the tensor with itself on the
  height axis followed by a ``RESHAPE`` that interleaves the copies.

Every op is a LiteRT builtin with XNNPACK and int8 kernels: no ``CONV_3D``,
no Flex ops, no 5D tensors inside the graph. A 2D (slice) network's tensors
are `(1, H, W, C)`: its ``Conv2D`` and ``UpSampling2D`` map to ``CONV_2D`` and
``RESIZE_NEAREST_NEIGHBOR`` directly, and instance norm is the same three
``MEAN`` ops (Keras' own ``GroupNormalization`` graph would convert to dozens
of reshapes and tiles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from unet3d_base.errors import InputError

Array = np.ndarray


# ---- single-layer lowerings (folded layout `(D, H, W, C)`) -----------------
def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TF 'same' padding for one axis: (output size, pad before, pad after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return out, total // 2, total - total // 2


def depth_taps(x: tf.Tensor, kernel: int, stride: int) -> list[tf.Tensor]:
    """The depth slices each output slice of a 'same' conv reads, one tensor per tap.

    Args:
        x: float32 `(D, H, W, C)`.
        kernel: int. Kernel size in depth.
        stride: int. Stride in depth.

    Returns:
        ``kernel`` tensors `(D_out, H, W, C)`; tap ``j`` holds, at output
        slice ``o``, input slice ``o * stride + j - pad_before`` (zeros outside).
    """
    depth = int(x.shape[0])
    out, before, after = _same_pads(depth, kernel, stride)
    if stride == 1:
        if kernel == 1:  # no slicing: an identity STRIDED_SLICE trips the int8 quantizer
            return [x]
        if before or after:
            x = tf.pad(x, [[before, after], [0, 0], [0, 0], [0, 0]])
        return [x[j:j + out] for j in range(kernel)]
    if stride == 2:
        # pad to 2 * (out + 1) slices, then fold pairs onto the height axis:
        # (out + 1, 2 * H, W, C) holds even slices in rows [:H], odd in [H:],
        # so every tap is a stride-1 slice of a 4D tensor.
        extra = 2 * (out + 1) - (depth + before)
        x = tf.pad(x, [[before, extra], [0, 0], [0, 0], [0, 0]])
        height = int(x.shape[1])
        pairs = tf.reshape(x, [out + 1, 2 * height, int(x.shape[2]), int(x.shape[3])])
        taps = []
        for j in range(kernel):
            start, parity = divmod(j, 2)
            taps.append(pairs[start:start + out, parity * height:(parity + 1) * height])
        return taps
    x = tf.pad(x, [[before, after], [0, 0], [0, 0], [0, 0]])
    return [x[j:j + (out - 1) * stride + 1:stride] for j in range(kernel)]


def conv3d_as_conv2d(x: tf.Tensor, kernel: Array, bias: Array | None, stride: int) -> tf.Tensor:
    """A 'same' ``Conv3D`` as one 2D convolution over depth-stacked slices.

    Args:
        x: float32 `(D, H, W, Cin)`, depth folded into the batch axis.
        kernel: float32 `(kd, kh, kw, Cin, Cout)` (Keras' Conv3D layout).
        bias: float32 `(Cout,)` or None.
        stride: int. The same stride on all three axes.

    Returns:
        float32 `(D', H', W', Cout)` equal to Keras' Conv3D output.
    """
    kd, kh, kw, cin, cout = kernel.shape
    taps = depth_taps(x, kd, stride)
    stacked = taps[0] if kd == 1 else tf.concat(taps, axis=-1)
    # channel index of ``stacked`` is tap * Cin + c, so order the kernel (kh, kw, kd, Cin)
    k2d = np.ascontiguousarray(
        np.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * cin, cout), dtype=np.float32
    )
    y = tf.nn.conv2d(stacked, tf.constant(k2d), strides=stride, padding="SAME")
    if bias is not None:
        y = tf.nn.bias_add(y, tf.constant(np.asarray(bias, np.float32)))
    return y


def volume_mean(x: tf.Tensor) -> tf.Tensor:
    """Mean over (D, H, W) per channel as three one-axis ``MEAN`` ops.

    Equal to one ``MEAN`` over axes 0, 1, 2, but LiteRT accumulates each
    reduction in float32 sequentially: summing 128^3 values at once loses
    digits (8e-4 off TF on an untrained 96^3 model), three short sums do not
    (1e-5).

    A 2D network's slice `(1, H, W, C)` (a few ten thousand pixels) takes one
    ``MEAN`` over axes 1 and 2: fewer ops, hence a smaller file.

    Args:
        x: float32 `(D, H, W, C)`.

    Returns:
        float32 `(1, 1, 1, C)`.
    """
    if int(x.shape[0]) == 1:
        return tf.reduce_mean(x, axis=[1, 2], keepdims=True)
    for axis in (2, 1, 0):
        x = tf.reduce_mean(x, axis=axis, keepdims=True)
    return x


def instance_norm(x: tf.Tensor, gamma: Array | None, beta: Array | None,
                  epsilon: float) -> tf.Tensor:
    """Instance normalisation over (D, H, W) per channel, as ``GroupNormalization(-1)``.

    Args:
        x: float32 `(D, H, W, C)` (one volume, depth folded).
        gamma: float32 `(C,)` or None (no scale).
        beta: float32 `(C,)` or None (no offset).
        epsilon: float. Added to the (biased) variance.

    Returns:
        float32 `(D, H, W, C)`.
    """
    centred = x - volume_mean(x)
    inv = tf.math.rsqrt(volume_mean(centred * centred) + epsilon)
    if gamma is not None:
        inv = inv * tf.constant(np.asarray(gamma, np.float32))
    y = centred * inv
    if beta is not None:
        y = y + tf.constant(np.asarray(beta, np.float32))
    return y


def upsample2x(x: tf.Tensor) -> tf.Tensor:
    """Nearest-neighbour x2 in all three axes, as ``UpSampling3D(size=2)``.

    Args:
        x: float32 `(D, H, W, C)`.

    Returns:
        float32 `(2D, 2H, 2W, C)`, element `[d, h, w]` = ``x[d // 2, h // 2, w // 2]``.
    """
    depth, height, width, channels = (int(s) for s in x.shape)
    y = tf.raw_ops.ResizeNearestNeighbor(
        images=x, size=[2 * height, 2 * width], align_corners=False, half_pixel_centers=False
    )
    # (D, 2 * 2H, 2W, C): rows [:2H] and [2H:] are copies, and row-major order
    # makes the reshape interleave them as slices 2d and 2d + 1.
    y = tf.concat([y, y], axis=1)
    return tf.reshape(y, [2 * depth, 2 * height, 2 * width, channels])


# ---- the graph walk ---------------------------------------------------------
def _weights(layer) -> list[Array]:
    return [np.asarray(w, dtype=np.float32) for w in layer.get_weights()]


def _check_spatial(layer, values: Sequence[int]) -> None:
    if any(int(v) != int(values[0]) for v in values):
        raise InputError(f"layer {layer.name}: only equal sizes in all three axes are supported, "
                         f"got {tuple(values)}")


def lower_layer(layer) -> Callable[[list[tf.Tensor]], tf.Tensor]:
    """The folded-layout function of one Keras layer.

    Args:
        layer: a keras layer of the kinds the U-Net uses (Conv3D or Conv2D,
            GroupNormalization, LeakyReLU, Dropout, Add, Concatenate,
            UpSampling3D or UpSampling2D, Activation, and an attention
            gate's ReLU and Multiply).

    Returns:
        A function of the layer's input tensors (folded `(D, H, W, C)`).

    Raises:
        InputError: a layer kind or setting that has no lowering.
    """
    kind = type(layer).__name__
    config = layer.get_config()
    if kind == "Conv3D":
        _check_spatial(layer, config["strides"])
        _check_spatial(layer, config["kernel_size"])
        if config["padding"] != "same" or tuple(config["dilation_rate"]) != (1, 1, 1) \
                or config.get("groups", 1) != 1:
            raise InputError(f"layer {layer.name}: only 'same', undilated, ungrouped Conv3D "
                             "can be exported")
        weights = _weights(layer)
        kernel, bias = weights[0], (weights[1] if config["use_bias"] else None)
        stride = int(config["strides"][0])
        activation = config.get("activation", "linear")
        if activation not in ("linear", None):
            raise InputError(f"layer {layer.name}: fused activation {activation!r} unsupported")
        return lambda xs: conv3d_as_conv2d(xs[0], kernel, bias, stride)
    if kind == "Conv2D":  # a 2D network's layers see `(1, H, W, C)`: LiteRT's own CONV_2D
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
    if kind == "UpSampling2D":
        if tuple(config["size"]) != (2, 2) or config.get("interpolation") != "nearest":
            raise InputError(f"layer {layer.name}: only UpSampling2D(size=2) can be exported")
        return lambda xs: tf.raw_ops.ResizeNearestNeighbor(
            images=xs[0], size=[2 * int(xs[0].shape[1]), 2 * int(xs[0].shape[2])],
            align_corners=False, half_pixel_centers=False)
    if kind == "Multiply":  # an attention gate: coefficients `(.., 1)` broadcast over channels
        return lambda xs: xs[0] * xs[1]
    if kind == "ReLU":
        if config.get("max_value") is not None or config.get("negative_slope", 0) \
                or config.get("threshold", 0):
            raise InputError(f"layer {layer.name}: only a plain ReLU can be exported")
        return lambda xs: tf.nn.relu(xs[0])
    if kind == "GroupNormalization":
        weights = _weights(layer)
        channels = weights[0].shape[0] if weights else -1
        if config["groups"] not in (-1, channels) or config["axis"] not in (-1, 4):
            raise InputError(f"layer {layer.name}: only instance norm (groups=-1) on the channel "
                             "axis can be exported")
        gamma = weights.pop(0) if config["scale"] else None
        beta = weights.pop(0) if config["center"] else None
        eps = float(config["epsilon"])
        return lambda xs: instance_norm(xs[0], gamma, beta, eps)
    if kind == "LeakyReLU":
        slope = float(config["negative_slope"])
        return lambda xs: tf.nn.leaky_relu(xs[0], alpha=slope)
    if kind in ("Dropout", "SpatialDropout3D", "GaussianNoise", "GaussianDropout"):
        return lambda xs: xs[0]
    if kind == "Add":
        def add(xs):
            out = xs[0]
            for other in xs[1:]:
                out = out + other
            return out
        return add
    if kind == "Concatenate":
        if config["axis"] not in (-1, 4):
            raise InputError(f"layer {layer.name}: only channel concatenation can be exported")
        return lambda xs: tf.concat(xs, axis=-1)
    if kind == "UpSampling3D":
        if tuple(config["size"]) != (2, 2, 2):
            raise InputError(f"layer {layer.name}: only UpSampling3D(size=2) can be exported")
        return lambda xs: upsample2x(xs[0])
    if kind == "Activation":
        name = config["activation"]
        functions = {"sigmoid": tf.math.sigmoid, "softmax": lambda t: tf.nn.softmax(t, axis=-1),
                     "linear": lambda t: t, "relu": tf.nn.relu}
        if name not in functions:
            raise InputError(f"layer {layer.name}: activation {name!r} cannot be exported")
        return lambda xs: functions[name](xs[0])
    raise InputError(f"layer {layer.name}: {kind} has no LiteRT lowering")


def _graph(model) -> list[tuple[object, list[int], list[int]]]:
    """The model's layers in topological order with input and output tensor ids."""
    inputs = {id(t) for t in model.inputs}
    known = set(inputs)
    pending = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    order = []
    while pending:
        progressed = False
        for layer in list(pending):  # each layer is called once: public .input / .output
            ins = [id(t) for t in keras.tree.flatten(layer.input)]
            if ins and all(i in known for i in ins):
                outs = [id(t) for t in keras.tree.flatten(layer.output)]
                order.append((layer, ins, outs))
                known.update(outs)
                pending.remove(layer)
                progressed = True
        if not progressed:
            names = ", ".join(layer.name for layer in pending[:5])
            raise InputError(f"model {model.name}: cannot order layers ({names})")
    return order


def lower_model(model, window: tuple[int, ...]) -> tf.types.experimental.ConcreteFunction:
    """Rebuilds a Keras U-Net (3D, or its 2D slice form) as a 4D TF computation for one
    fixed window (D, H, W) or (H, W).

    Walks the functional graph (any depth, filters or output mode), reads
    every layer's weights as float32 (so mixed-precision models export a
    float32 graph) and chains the lowerings of :func:`lower_layer`.

    Args:
        model: functional keras.Model with one input `(B, D, H, W, C)` and one
            output `(B, D, H, W, K)`.
        window: (D, H, W) static input size.

    Returns:
        A concrete ``tf.function`` mapping float32 `(1, D, H, W, C)` to float32
        `(1, D, H, W, K)`; inside, tensors are `(D, H, W, C)`.

    Raises:
        InputError: more than one input/output, or a layer with no lowering.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise InputError(f"model {model.name}: needs exactly one input and one output")
    window = tuple(int(s) for s in window)
    channels = int(model.inputs[0].shape[-1])
    order = [(layer, lower_layer(layer), ins, outs) for layer, ins, outs in _graph(model)]
    input_id, output_id = id(model.inputs[0]), id(model.outputs[0])

    # a volume `(1, D, H, W, C)` folds to `(D, H, W, C)`; a 2D network's slice stays 4D
    folded = [*window, channels] if len(window) == 3 else [1, *window, channels]

    @tf.function(input_signature=[tf.TensorSpec((1, *window, channels), tf.float32,
                                                name="image")], autograph=False)
    def lowered(image: tf.Tensor) -> tf.Tensor:
        values = {input_id: tf.reshape(image, folded)}
        for _, fn, ins, outs in order:
            values[outs[0]] = fn([values[i] for i in ins])
        out = values[output_id]
        return tf.reshape(out, [1, *window, int(out.shape[-1])])

    return lowered.get_concrete_function()
