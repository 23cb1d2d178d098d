"""The Isensee et al. 2017 3D U-Net, built from a frozen :class:`ModelConfig`.

Reference: F. Isensee, P. Kickingereder, W. Wick, M. Bendszus, K. H.
Maier-Hein, "Brain Tumor Segmentation and Radiomics Survival Prediction:
Contribution to the BRATS 2017 Challenge", arXiv:1802.10508.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from unet3d.config import ModelConfig
from unet3d.models.layers import (
    attention_gate,
    context_module,
    conv,
    localization_module,
    norm_act,
    upsample,
    upsampling_module,
)

# x2 nearest upsampling then this binomial kernel is bilinear interpolation with pixel
# centres at (i + 0.5) / 2, except on the outermost rows and columns (zero padding)
SMOOTHING = np.outer([0.25, 0.5, 0.25], [0.25, 0.5, 0.25])


def build_unet3d(config: ModelConfig | None = None, name: str = "isensee2017",
                 spatial_shape: tuple[int, int, int] | None = None) -> keras.Model:
    """Builds (never compiles) the 3D U-Net, or its 2D form (``config.spatial_dims``).

    With ``config.attention_gates`` each skip connection passes an additive
    attention gate (:func:`unet3d.models.layers.attention_gate`) first.
    Encoder: a 3x3x3 conv to ``base_filters``, then per level a stride-2
    3x3x3 conv doubling the filters (none at level 0), each followed by a
    context module and its residual sum. Decoder: per level an upsampling
    module, concatenation with the encoder's (normalised, activated) sum,
    and a localization module. Deep supervision: 1x1x1 segmentation layers
    on the lowest ``segmentation_levels`` decoder outputs, each upscaled x2
    and added to the next, then the final sigmoid (``regions``) or softmax
    (``labels``), kept in float32 under mixed precision. With
    ``config.input_stride`` 2 (2D only) the input is average-pooled 2x2 first, and
    the summed logits are upsampled x2 (nearest) and smoothed by the fixed
    :data:`SMOOTHING` kernel: bilinear, but for the outermost pixels.

    Args:
        config: ModelConfig or None (the paper's defaults).
        name: str, default "isensee2017". The model's name.
        spatial_shape: (D, H, W), (H, W) for a 2D network, or None (default: open,
            any divisible size).

    Returns:
        keras.Model mapping `(B, D, H, W, in_channels)` to
        `(B, D, H, W, out_channels)`; spatial sizes are open but must be
        divisible by ``config.stride``.
    """
    config = config or ModelConfig()
    kw = {"norm": config.norm, "slope": config.leaky_slope, "l2": config.l2}
    spatial = tuple(spatial_shape) if spatial_shape else (None,) * config.spatial_dims
    if len(spatial) != config.spatial_dims:
        raise ValueError(f"spatial_shape {spatial} has not {config.spatial_dims} sizes")
    inputs = keras.Input(shape=(*spatial, config.in_channels), name="image")

    skips = []
    x = inputs
    if config.input_stride > 1:  # the network works at a fraction of the resolution
        x = layers.AveragePooling2D(config.input_stride, name="input_pool")(x)
    for level in range(config.depth):
        filters = config.base_filters * 2**level
        x = conv(x, filters, strides=1 if level == 0 else 2, l2=config.l2,
                 name=f"enc{level}_conv")
        x = context_module(x, filters, dropout=config.dropout, name=f"enc{level}_context", **kw)
        if level < config.depth - 1:
            skips.append(norm_act(x, config.norm, config.leaky_slope, name=f"enc{level}_skip"))

    segmentations = []
    for level in range(config.depth - 2, -1, -1):
        filters = config.base_filters * 2**level
        skip = skips[level]
        if config.attention_gates:  # gated by the decoder one level down
            skip = attention_gate(skip, x, filters, name=f"dec{level}_attention")
        x = upsampling_module(x, filters, name=f"dec{level}_upsampling", **kw)
        x = layers.Concatenate(name=f"dec{level}_concat")([skip, x])
        x = localization_module(x, filters, name=f"dec{level}_localization", **kw)
        if level < config.segmentation_levels:
            segmentations.append(
                conv(x, config.out_channels, kernel_size=1, l2=config.l2,
                     name=f"dec{level}_segmentation")
            )

    # segmentations run from the coarsest supervised level to full resolution
    logits = segmentations[0]
    for index, seg in enumerate(segmentations[1:], start=1):
        logits = upsample(logits, name=f"deep_supervision{index}_up")
        logits = layers.Add(name=f"deep_supervision{index}_sum")([logits, seg])

    if config.input_stride > 1:  # bilinear x2 inside the slice: nearest, then fixed weights
        logits = upsample(logits, name="output_up")
        logits = layers.DepthwiseConv2D(3, padding="same", use_bias=False, trainable=False,
                                        name="output_smooth")(logits)
    activation = "sigmoid" if config.output_mode == "regions" else "softmax"
    outputs = layers.Activation(activation, dtype="float32", name="probabilities")(logits)
    model = keras.Model(inputs, outputs, name=name)
    if config.input_stride > 1:
        smooth = model.get_layer("output_smooth")
        smooth.set_weights([np.broadcast_to(SMOOTHING[:, :, None, None],
                                            smooth.kernel.shape).astype(np.float32)])
    return model


def conv_flops(model: keras.Model) -> int:
    """Floating-point operations (2 per multiply-add) of every convolution in one forward pass.

    ``model`` must have a static spatial input shape (``build_unet3d(...,
    spatial_shape=...)``). Normalisation, activations and additions are left
    out: they are a small fraction of the work.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.Conv3D)):
            out_voxels = int(np.prod(layer.output.shape[1:-1]))
            cin = layer.input.shape[-1]
            total += 2 * out_voxels * int(np.prod(layer.kernel_size)) * cin * layer.filters
    return total
