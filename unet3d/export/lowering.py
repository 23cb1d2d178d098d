"""Lowering the 3D U-Net (and its 2D form) to 4D ops that LiteRT's XNNPACK and int8 cover.

LiteRT runs ``CONV_3D`` with a float32-only reference kernel that XNNPACK does
not accelerate and quantization leaves in float32. :func:`lower_model`
rebuilds a trained Keras model, layer by layer and from its weights, as a TF
computation whose tensors are 4D with depth folded into the batch axis: a
volume `(1, D, H, W, C)` becomes `(D, H, W, C)`. It walks the functional graph
here; each layer's function comes from :func:`unet3d.export.layers.lower_layer`,
built on the ops of :mod:`unet3d.export.ops` (a 3x3x3 ``Conv3D`` as one
``CONV_2D`` over depth-stacked slices, instance norm as three one-axis
``MEAN`` ops, ``UpSampling3D`` as a resize and an interleaving reshape).

An ``UpSampling3D`` whose only reader is a 3x3x3 ``Conv3D`` is lowered with
it (:func:`_fusions`) as one sub-pixel convolution at the low resolution
(:func:`unet3d.export.ops.upsample_conv3d`: 8/27 of the multiply-adds and no
full-resolution copy of the input).

Every op is a LiteRT builtin with XNNPACK and int8 kernels: no ``CONV_3D``,
no Flex ops, no 5D tensors inside the graph. A 2D (slice) network's tensors
are `(1, H, W, C)`: its ``Conv2D`` and ``UpSampling2D`` map to ``CONV_2D`` and
``RESIZE_NEAREST_NEIGHBOR`` directly, and instance norm is the same three
``MEAN`` ops (Keras' own ``GroupNormalization`` graph would convert to dozens
of reshapes and tiles).

The ops and :func:`lower_layer` stay importable from here.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from unet3d.export.layers import conv3d_parts, lower_layer
from unet3d.export.ops import (
    conv3d_as_conv2d,
    depth_taps,
    instance_norm,
    upsample2x,
    upsample_conv3d,
    volume_mean,
)
from unet3d_base.errors import InputError

__all__ = ["conv3d_as_conv2d", "depth_taps", "instance_norm", "lower_layer", "lower_model",
           "upsample2x", "upsample_conv3d", "volume_mean"]


# ---- the graph walk ---------------------------------------------------------
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


def _fusions(order, output_id: int) -> dict[str, object]:
    """Replacement functions (by layer name) for layer pairs lowered together:
    an ``UpSampling3D(size=2)`` whose output has one reader, a 3x3x3 stride-1
    ``Conv3D``, and is not the model's output, passes its input on, and that
    convolution becomes :func:`upsample_conv3d`."""
    readers: dict[int, list] = {}
    for layer, _, ins, _ in order:
        for i in set(ins):
            readers.setdefault(i, []).append(layer)
    replaced: dict[str, object] = {}
    for layer, _, _, outs in order:
        users = readers.get(outs[0], [])
        if type(layer).__name__ != "UpSampling3D" or len(users) != 1 \
                or outs[0] == output_id or type(users[0]).__name__ != "Conv3D":
            continue
        kernel, bias, stride = conv3d_parts(users[0])
        if kernel.shape[:3] == (3, 3, 3) and stride == 1:
            replaced[layer.name] = lambda xs: xs[0]
            replaced[users[0].name] = (lambda k, b: lambda xs: upsample_conv3d(
                xs[0], k, b))(kernel, bias)
    return replaced


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
    if len(window) == 3:
        fused = _fusions(order, output_id)
        order = [(layer, fused.get(layer.name, fn), ins, outs) for layer, fn, ins, outs in order]

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
