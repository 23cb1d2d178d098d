"""Building blocks of the Isensee et al. 2017 3D U-Net (arXiv:1802.10508).

Each module is a function that adds standard, serialisable Keras layers to a
functional graph, so saved models hold no custom code and load with
``safe_mode=True``. Tensors are channels-last, ``(B, D, H, W, C)`` for the 3D
network or ``(B, H, W, C)`` for its 2D form: every block takes its
convolution and upsampling layers from the rank of its input, so one builder
serves both.
"""

from __future__ import annotations

import keras
from keras import layers

# Isensee et al. use instance norm with a small epsilon.
NORM_EPSILON = 1e-5


def _spatial_dims(x: keras.KerasTensor) -> int:
    return len(x.shape) - 2


def conv(
    x: keras.KerasTensor,
    filters: int,
    kernel_size: int = 3,
    strides: int = 1,
    l2: float = 0.0,
    name: str | None = None,
) -> keras.KerasTensor:
    """A 'same'-padded convolution (3D or 2D, as ``x``) with He-normal initialisation.

    Args:
        x: KerasTensor `(B, D, H, W, C)` or `(B, H, W, C)`.
        filters: int. Output channels.
        kernel_size: int, default 3.
        strides: int, default 1. 2 halves each spatial size.
        l2: float, default 0.0. L2 penalty on the kernel (off when 0).
        name: str or None.
    """
    layer = layers.Conv3D if _spatial_dims(x) == 3 else layers.Conv2D
    return layer(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        kernel_initializer="he_normal",
        kernel_regularizer=keras.regularizers.L2(l2) if l2 > 0 else None,
        name=name,
    )(x)


def upsample(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """x2 nearest-neighbour upsampling of every spatial axis."""
    layer = layers.UpSampling3D if _spatial_dims(x) == 3 else layers.UpSampling2D
    return layer(size=2, name=name)(x)


def norm_act(
    x: keras.KerasTensor, norm: str = "instance", slope: float = 0.01, name: str = "na"
) -> keras.KerasTensor:
    """Instance normalisation (``GroupNormalization(groups=-1)``) then leaky ReLU.

    Args:
        x: KerasTensor `(B, D, H, W, C)`.
        norm: str, default "instance". ``instance`` or ``none``.
        slope: float, default 0.01. Leaky ReLU negative slope (the paper's,
            not Keras' default 0.3).
        name: str. Prefix of the layer names.
    """
    if norm == "instance":
        x = layers.GroupNormalization(groups=-1, epsilon=NORM_EPSILON, name=f"{name}_norm")(x)
    elif norm != "none":
        raise ValueError(f"unknown norm {norm!r}")
    return layers.LeakyReLU(negative_slope=slope, name=f"{name}_act")(x)


def context_module(
    x: keras.KerasTensor,
    filters: int,
    dropout: float = 0.3,
    norm: str = "instance",
    slope: float = 0.01,
    l2: float = 0.0,
    name: str = "context",
) -> keras.KerasTensor:
    """Pre-activation residual block: (norm, lReLU, conv) x2 with dropout between.

    Returns the block's output *plus the identity* ``x`` (Isensee et al. 2017,
    Fig. 1, "context module").

    Args:
        x: KerasTensor `(B, D, H, W, filters)`.
        filters: int. Channels of both 3x3(x3) convolutions.
        dropout: float, default 0.3.
        norm, slope, l2: see :func:`norm_act` and :func:`conv`.
        name: str. Prefix of the layer names.
    """
    y = norm_act(x, norm, slope, name=f"{name}_a")
    y = conv(y, filters, l2=l2, name=f"{name}_a_conv")
    if dropout > 0:
        y = layers.Dropout(dropout, name=f"{name}_dropout")(y)
    y = norm_act(y, norm, slope, name=f"{name}_b")
    y = conv(y, filters, l2=l2, name=f"{name}_b_conv")
    return layers.Add(name=f"{name}_sum")([x, y])


def upsampling_module(
    x: keras.KerasTensor,
    filters: int,
    norm: str = "instance",
    slope: float = 0.01,
    l2: float = 0.0,
    name: str = "upsampling",
) -> keras.KerasTensor:
    """x2 nearest-neighbour upsampling then a 3x3(x3) conv to ``filters`` (half).

    Args:
        x: KerasTensor `(B, D, H, W, 2 * filters)`.
        filters: int. Output channels.
        norm, slope, l2: see :func:`norm_act` and :func:`conv`.
        name: str. Prefix of the layer names.
    """
    y = upsample(x, name=f"{name}_up")
    y = conv(y, filters, l2=l2, name=f"{name}_conv")
    return norm_act(y, norm, slope, name=name)


def localization_module(
    x: keras.KerasTensor,
    filters: int,
    norm: str = "instance",
    slope: float = 0.01,
    l2: float = 0.0,
    name: str = "localization",
) -> keras.KerasTensor:
    """A 3x3(x3) conv then a 1x1(x1) conv that halves the concatenated channels.

    Args:
        x: KerasTensor `(B, D, H, W, 2 * filters)` (skip and upsampled).
        filters: int. Output channels.
        norm, slope, l2: see :func:`norm_act` and :func:`conv`.
        name: str. Prefix of the layer names.
    """
    y = conv(x, filters, l2=l2, name=f"{name}_conv3")
    y = norm_act(y, norm, slope, name=f"{name}_a")
    y = conv(y, filters, kernel_size=1, l2=l2, name=f"{name}_conv1")
    return norm_act(y, norm, slope, name=f"{name}_b")


def attention_gate(
    skip: keras.KerasTensor,
    gating: keras.KerasTensor,
    filters: int,
    name: str = "attention",
) -> keras.KerasTensor:
    """Additive attention gate on a skip connection (Oktay et al. 2018, arXiv:1804.03999).

    The skip features are brought to the gating signal's (coarser) grid by a
    stride-2 convolution, added to the gating signal's 1x1 projection, passed
    through a ReLU and a 1x1 convolution to one channel whose sigmoid is the
    attention coefficient; upsampled x2, it scales the skip features voxel by
    voxel. Standard layers only, so the model still loads with ``safe_mode=True``.

    Args:
        skip: KerasTensor `(B, *S, C)`: the encoder's features at this level.
        gating: KerasTensor `(B, *S/2, C')`: the decoder's features one level down.
        filters: int. Channels of the intermediate sum.
        name: str. Prefix of the layer names.

    Returns:
        ``skip`` weighted by the attention coefficients, same shape.
    """
    theta = conv(skip, filters, kernel_size=2, strides=2, name=f"{name}_skip")
    phi = conv(gating, filters, kernel_size=1, name=f"{name}_gating")
    joint = layers.ReLU(name=f"{name}_relu")(layers.Add(name=f"{name}_sum")([theta, phi]))
    coefficients = conv(joint, 1, kernel_size=1, name=f"{name}_psi")
    coefficients = layers.Activation("sigmoid", name=f"{name}_sigmoid")(coefficients)
    coefficients = upsample(coefficients, name=f"{name}_up")
    # one coefficient per voxel, broadcast over the skip's channels
    return layers.Multiply(name=f"{name}_gate")([skip, coefficients])
