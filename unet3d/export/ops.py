"""The 4D TensorFlow ops that stand in for the U-Net's 3D layers (folded layout).

A volume `(1, D, H, W, C)` is folded to `(D, H, W, C)`, depth on the batch
axis, and

* a 3x3x3 ``Conv3D`` becomes one ``CONV_2D`` over depth-stacked slices: the
  depth-padded tensor's three neighbouring slices are concatenated on the
  channel axis `(D', H, W, 3 * C)` and convolved with the kernel transposed
  to `(kh, kw, kd, cin, cout)` and reshaped to `(3, 3, 3 * cin, cout)`; stride
  2 picks every other slice in depth (TF 'same' padding, matched exactly) and
  lets the 2D convolution's stride do height and width
  (:func:`depth_taps`, :func:`conv3d_as_conv2d`);
* instance norm (``GroupNormalization(groups=-1)``) is ``MEAN`` over axes
  2, 1, 0 (one axis at a time, for float32 accuracy), ``RSQRT`` and ``MUL``/``ADD``
  (:func:`volume_mean`, :func:`instance_norm`);
* ``UpSampling3D`` is ``RESIZE_NEAREST_NEIGHBOR`` on height and width and, in
  depth, a channel-free ``CONCATENATION`` of the tensor with itself on the
  height axis followed by a ``RESHAPE`` that interleaves the copies
  (:func:`upsample2x`).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

Array = np.ndarray


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
