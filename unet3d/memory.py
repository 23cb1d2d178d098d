"""Memory estimates, so runs that cannot fit are refused instead of killed by the kernel.

The factors are measured on this project's network (TensorFlow 2.21, CPU,
fp32) and count float32 feature maps of ``base_filters`` channels per voxel
alive at the peak: a training step of the default network (base 16) at
128^3, batch 2, peaked at ~19 GB; a compiled whole-volume forward pass
(:func:`unet3d.models.forward.keras_predict_fn`) of a 144x176x144 case at 2.35 GB
with 0.84 GB of it before the call (6.5 maps per voxel; an eager call took
7.9 GB, 34 maps).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from unet3d_base.errors import InputError

TRAIN_MAPS_PER_VOXEL = 70
INFER_MAPS_PER_VOXEL = 8  # measured 6.5 compiled (fp32; bf16 5.2), with margin
RUNTIME_OVERHEAD = 1.0 * 2**30  # TensorFlow itself


def available_bytes() -> int:
    """Memory the machine can give this process now (``MemAvailable``), in bytes.

    ``UNET3D_MEMORY_GB`` overrides it (for containers with limits /proc does
    not show).
    """
    override = os.environ.get("UNET3D_MEMORY_GB")
    if override:
        return int(float(override) * 2**30)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def training_bytes(patch_size: Sequence[int], batch_size: int, base_filters: int) -> int:
    """Estimated peak memory of one training step."""
    maps = int(np.prod(patch_size)) * batch_size * base_filters * TRAIN_MAPS_PER_VOXEL
    return int(maps * 4 + RUNTIME_OVERHEAD)


def inference_bytes(shape: Sequence[int], base_filters: int, batch_size: int = 1) -> int:
    """Estimated peak memory of one forward pass over ``shape`` voxels."""
    maps = int(np.prod(shape)) * batch_size * base_filters * INFER_MAPS_PER_VOXEL
    return int(maps * 4 + RUNTIME_OVERHEAD)


def check_fits(needed: int, what: str, advice: str, available: int | None = None) -> None:
    """Raises InputError naming ``advice`` when ``needed`` exceeds the available memory."""
    available = available_bytes() if available is None else available
    if needed > available:
        raise InputError(f"{what} needs about {needed / 2**30:.1f} GB but only "
                         f"{available / 2**30:.1f} GB are available; {advice}")
