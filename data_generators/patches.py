"""What the patch datasets (:mod:`data_generators.dataset`) share: the checks of their
cases, the 3D patch cut for a 2D or 3D patch size, the targets and random centres.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_generators.labels import CLASSES, classes_to_regions
from data_generators.preprocessing import PreprocessedCase
from unet3d_base.errors import InputError

OUTPUT_MODES = ("regions", "labels")


def encode_target(label: np.ndarray, output_mode: str) -> np.ndarray:
    """Class indices ``(..., )`` -> float32 regions ``(..., 3)`` or one-hot ``(..., 4)``."""
    if output_mode == "regions":
        return classes_to_regions(label).astype(np.float32)
    if output_mode == "labels":
        return np.eye(len(CLASSES), dtype=np.float32)[np.asarray(label, dtype=np.intp)]
    raise ValueError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, got {output_mode!r}")


def check_cases(cases: Sequence[PreprocessedCase], output_mode: str) -> None:
    if not cases:
        raise InputError("no cases to sample patches from")
    if output_mode not in OUTPUT_MODES:
        raise InputError(f"output_mode must be one of {', '.join(OUTPUT_MODES)}, "
                         f"got {output_mode!r}")
    for case in cases:
        if case.label is None:
            raise InputError(f"case {case.case_id}: has no label to train on")


def volume_patch(patch_size: Sequence[int]) -> tuple[int, int, int]:
    """The 3D patch cut for ``patch_size``: itself, or ``(H, W, 1)`` for a slice ``(H, W)``."""
    size = tuple(int(p) for p in patch_size)
    if len(size) not in (2, 3):
        raise InputError(f"patch size must have 2 (slices) or 3 sizes, got {size}")
    return size if len(size) == 3 else (*size, 1)


def as_slices(batch: np.ndarray, spatial_dims: int) -> np.ndarray:
    """``(B, H, W, 1, C)`` -> ``(B, H, W, C)`` for a 2D network; unchanged for 3D."""
    return batch[:, :, :, 0] if spatial_dims == 2 else batch


def random_voxel(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    return np.array([rng.integers(0, int(s)) for s in shape[:3]], dtype=np.int64)
