"""The network's architecture: :class:`ModelConfig`."""

from __future__ import annotations

from dataclasses import dataclass

from unet3d.config.checks import ConfigError, choice, positive
from unet3d_base.errors import InputError

OUTPUT_MODES = ("regions", "labels")
NORMS = ("instance", "none")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the Isensee et al. 2017 3D U-Net.

    Args:
        in_channels: int, default 4. Input modalities, channels-last.
        base_filters: int, default 16. Filters at full resolution; level ``i``
            has ``base_filters * 2**i``.
        depth: int, default 5. Number of resolution levels; spatial input
            sizes must be divisible by ``2**(depth - 1)``.
        segmentation_levels: int, default 3. Decoder levels whose 1x1x1
            segmentation outputs are summed (deep supervision).
        dropout: float, default 0.3. Dropout inside each context module.
        norm: str, default "instance". ``instance`` or ``none``.
        leaky_slope: float, default 0.01. Negative slope of the leaky ReLU.
        output_mode: str, default "regions". ``regions``: 3 sigmoid channels
            (WT, TC, ET); ``labels``: softmax over background + 3 classes.
        l2: float, default 0.0. L2 weight decay on conv kernels (paper: 1e-5).
        spatial_dims: int, default 3. 3: the paper's 3D network on volumes;
            2: the same blocks in 2D, on axial slices.
        attention_gates: bool, default False. Additive attention gates on the
            skip connections (Oktay et al. 2018).
        input_stride: int, default 1. 2 (2D networks only): the network works at
            half the input's resolution, a 2x2 average pooling in front and a
            bilinear x2 upsampling of its logits behind, for ~1/4 of the work per
            slice; spatial sizes must then be divisible by ``2**depth``.
    """

    in_channels: int = 4
    base_filters: int = 16
    depth: int = 5
    segmentation_levels: int = 3
    dropout: float = 0.3
    norm: str = "instance"
    leaky_slope: float = 0.01
    output_mode: str = "regions"
    l2: float = 0.0
    spatial_dims: int = 3
    attention_gates: bool = False
    input_stride: int = 1

    def __post_init__(self) -> None:
        positive(self, "in_channels", "base_filters", "depth")
        if self.input_stride not in (1, 2):
            raise ConfigError(f"input_stride must be 1 or 2, got {self.input_stride!r}",
                              "input_stride")
        if self.input_stride > 1 and self.spatial_dims != 2:
            raise ConfigError("input_stride > 1 needs a 2D network (spatial_dims 2)",
                              "input_stride")
        if self.spatial_dims not in (2, 3):
            raise ConfigError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}",
                              "spatial_dims")
        if not 1 <= self.segmentation_levels <= self.depth:
            raise InputError(
                f"segmentation_levels must lie in 1..depth ({self.depth}), "
                f"got {self.segmentation_levels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must lie in [0, 1), got {self.dropout}")
        choice(self, "norm", NORMS)
        choice(self, "output_mode", OUTPUT_MODES)
        if self.l2 < 0:
            raise InputError(f"l2 must be >= 0, got {self.l2}")

    @property
    def out_channels(self) -> int:
        return 3 if self.output_mode == "regions" else 4

    @property
    def stride(self) -> int:
        """Spatial sizes must be multiples of this."""
        return self.input_stride * 2 ** (self.depth - 1)
