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
  (:func:`upsample2x`);
* an ``UpSampling3D`` followed by a 3x3x3 ``Conv3D`` is one sub-pixel
  convolution at the low resolution: each of the 8 output phases of a
  nearest-upsampled input reads only 2x2x2 low-resolution voxels, so the
  kernel's taps are summed per phase (exactly the same function, 8/27 of the
  multiply-adds) and ``DEPTH_TO_SPACE`` plus a depth interleave put the
  phases in place (:func:`upsample_conv3d`).

Per-channel vectors `(1, 1, 1, C)` (instance norm's mean and scale) are
widened to `(1, 1, W, C)` before they meet a full tensor: XNNPACK's int8
binary ops broadcast a row of C values at a time, so a 2 KB row instead of
16 bytes makes them ~2x faster.
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
        padded = tf.pad(x, [[before, after], [0, 0], [0, 0], [0, 0]]) if before or after else x
        # the tap without offset is x itself: no slice (a copy on XNNPACK)
        return [x if j == before else padded[j:j + out] for j in range(kernel)]
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


# From this many input channels on, a stride-1 3x3x3 convolution is three 2D
# convolutions, one per depth tap, summed: stacking taps costs a CONCATENATION
# that copies 16-32 bytes at a time, which outweighs the extra ADDs at 32+ channels
# (measured in int8 on XNNPACK: 16% less time at 128^3 x 32 channels, 10% more at 16).
SPLIT_TAPS_CHANNELS = 32


def conv3d_as_conv2d(x: tf.Tensor, kernel: Array, bias: Array | None, stride: int,
                     split_channels: int | None = SPLIT_TAPS_CHANNELS) -> tf.Tensor:
    """A 'same' ``Conv3D`` as 2D convolutions over depth slices.

    Below ``split_channels`` input channels (or at stride 2) one ``CONV_2D`` reads the
    depth taps stacked on the channel axis; from it on, each tap has its own
    ``CONV_2D`` and the three are summed.

    Args:
        x: float32 `(D, H, W, Cin)`, depth folded into the batch axis.
        kernel: float32 `(kd, kh, kw, Cin, Cout)` (Keras' Conv3D layout).
        bias: float32 `(Cout,)` or None.
        stride: int. The same stride on all three axes.
        split_channels: int or None (never split).

    Returns:
        float32 `(D', H', W', Cout)` equal to Keras' Conv3D output.
    """
    kd, kh, kw, cin, cout = kernel.shape
    taps = depth_taps(x, kd, stride)
    if stride == 1 and kd > 1 and split_channels is not None and cin >= split_channels:
        y = None
        for j, tap in enumerate(taps):
            part = tf.nn.conv2d(tap, tf.constant(np.ascontiguousarray(kernel[j], np.float32)),
                                strides=1, padding="SAME")
            y = part if y is None else y + part
    else:
        stacked = taps[0] if kd == 1 else tf.concat(taps, axis=-1)
        # channel index of ``stacked`` is tap * Cin + c, so order the kernel (kh, kw, kd, Cin)
        k2d = np.ascontiguousarray(
            np.transpose(kernel, (1, 2, 0, 3, 4)).reshape(kh, kw, kd * cin, cout),
            dtype=np.float32)
        y = tf.nn.conv2d(stacked, tf.constant(k2d), strides=stride, padding="SAME")
    if bias is not None:
        y = tf.nn.bias_add(y, tf.constant(np.asarray(bias, np.float32)))
    return y


# Per axis, output phase p of a nearest x2 upsampling followed by a 3-tap 'same'
# convolution reads the low-resolution taps p - 1 + u (u = 0, 1); row u of
# _PHASE_TAPS[p] sums the kernel taps (offsets -1, 0, +1 on the fine grid) that land there.
_PHASE_TAPS = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)


def upsample_conv_kernels(kernel: Array) -> list[Array]:
    """The two depth phases' 2x2 kernels of :func:`upsample_conv3d`.

    Args:
        kernel: float32 `(3, 3, 3, Cin, Cout)`.

    Returns:
        Two float32 `(2, 2, 2 * Cin, 4 * Cout)`: input channel (depth tap, c),
        output channel (a, b, o) holding height phase 1 - a and width phase 1 - b
        (the order ``DEPTH_TO_SPACE`` then shifts into place by one row and column).
    """
    cin, cout = kernel.shape[3:]
    flipped = _PHASE_TAPS[::-1]
    return [np.ascontiguousarray(
        np.einsum("tx,auy,bvz,xyzco->uvtcabo", taps, flipped, flipped, kernel)
        .reshape(2, 2, 2 * cin, 4 * cout), dtype=np.float32) for taps in _PHASE_TAPS]


def upsample_conv3d(x: tf.Tensor, kernel: Array, bias: Array | None) -> tf.Tensor:
    """``UpSampling3D(size=2)`` then a 'same' 3x3x3 ``Conv3D``, computed at the low resolution.

    Nearest upsampling repeats every voxel 2x2x2, so each of the 8 output
    phases of the convolution is a 2x2x2 convolution of the low-resolution
    input with summed kernel taps (zero padding matches: the fine grid's
    border zero lies beside the coarse grid's). Per depth phase, one
    ``CONV_2D`` (2x2, valid, on the input padded by one voxel) makes the
    4 height/width phases as channel groups; ``DEPTH_TO_SPACE`` places them
    (one row and column off, cut by the final slice) and the depth phases are
    interleaved as in :func:`upsample2x`.

    Args:
        x: float32 `(D, H, W, Cin)`, the convolution's input before upsampling.
        kernel: float32 `(3, 3, 3, Cin, Cout)`.
        bias: float32 `(Cout,)` or None.

    Returns:
        float32 `(2D, 2H, 2W, Cout)`, equal to the convolution of the upsampled input.
    """
    depth, height, width = (int(s) for s in x.shape[:3])
    cout = int(kernel.shape[-1])
    padded = tf.pad(x, [[1, 1], [1, 1], [1, 1], [0, 0]])
    slices = [padded[j:j + depth] for j in range(3)]  # depth taps -1, 0, +1
    phases = []
    for phase, k2d in enumerate(upsample_conv_kernels(kernel)):
        taps = tf.concat(slices[phase:phase + 2], axis=-1)
        y = tf.nn.conv2d(taps, tf.constant(k2d), strides=1, padding="VALID")
        if bias is not None:
            y = tf.nn.bias_add(y, tf.constant(np.tile(np.asarray(bias, np.float32), 4)))
        phases.append(tf.nn.depth_to_space(y, 2))
    y = tf.reshape(tf.concat(phases, axis=1), [2 * depth, 2 * height + 2, 2 * width + 2, cout])
    return y[:, 1:2 * height + 1, 1:2 * width + 1]


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


def across_width(v: tf.Tensor | Array, width: int) -> tf.Tensor:
    """A per-channel `(1, 1, 1, C)` tensor (or `(C,)` array) repeated to `(1, 1, width, C)`.

    A tensor is multiplied by a constant `(1, 1, width, 1)` of ones: the
    converter folds a ``TILE`` or ``BROADCAST_TO`` back into the binary op that
    follows, which would then broadcast 16-byte rows again.
    """
    if width == 1:  # a 2D network's slice: the vectors as they are (a small file)
        return tf.constant(np.asarray(v, np.float32).reshape(1, 1, 1, -1)) \
            if isinstance(v, np.ndarray) else v
    if isinstance(v, np.ndarray):
        return tf.constant(np.tile(np.asarray(v, np.float32).reshape(1, 1, 1, -1),
                                   (1, 1, width, 1)))
    return v * tf.ones((1, 1, width, 1), tf.float32)


def instance_norm(x: tf.Tensor, gamma: Array | None, beta: Array | None,
                  epsilon: float) -> tf.Tensor:
    """Instance normalisation over (D, H, W) per channel, as ``GroupNormalization(-1)``.

    The mean, scale and offset meet ``x`` widened to `(1, 1, W, C)`
    (:func:`across_width`), in a volume; in a 2D network's slice they stay `(1, 1, 1, C)`
    (the widened constants would triple a 64 KB file).

    Args:
        x: float32 `(D, H, W, C)` (one volume, depth folded).
        gamma: float32 `(C,)` or None (no scale).
        beta: float32 `(C,)` or None (no offset).
        epsilon: float. Added to the (biased) variance.

    Returns:
        float32 `(D, H, W, C)`.
    """
    # widened for a volume; a 2D network's slice `(1, H, W, C)` keeps its file small
    width = int(x.shape[2]) if int(x.shape[0]) > 1 else 1
    centred = x - across_width(volume_mean(x), width)
    inv = tf.math.rsqrt(volume_mean(centred * centred) + epsilon)
    if gamma is not None:
        inv = inv * tf.constant(np.asarray(gamma, np.float32))
    y = centred * across_width(inv, width)
    if beta is not None:
        y = y + across_width(np.asarray(beta, np.float32), width)
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
