"""Brain cropping and per-modality intensity normalisation of a case.

Normalisation (``normalization`` of a training config) is one of
:data:`~data_generators.normalization.NORMALIZATIONS`
(:mod:`data_generators.normalization`). The on-disk cache of preprocessed
cases is :mod:`data_generators.cache`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_generators.normalization import (  # noqa: F401  (zscore_in_mask: its old home)
    normalize,
    zscore_in_mask,
)

MAX_FOREGROUND = 20000

Box = tuple[tuple[int, int], ...]


# a voxel's channel flags (1 byte each) read as one unsigned integer: non-zero when any is
_FLAGS_AS_INT = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def nonzero_voxels(image: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool: the voxels non-zero in any channel of ``(X, Y, Z, C)`` (or in
    ``(X, Y, Z)``). Equal to ``(image != 0).any(axis=-1)``, ~10x faster for 4 channels
    (NumPy reduces a short last axis slowly)."""
    flags = np.asarray(image) != 0
    if flags.ndim != 4:
        return flags
    as_int = _FLAGS_AS_INT.get(flags.shape[-1])
    if as_int is None or not flags.flags.c_contiguous:
        return flags.any(axis=-1)
    return flags.view(as_int)[..., 0] != 0


def brain_bbox(image: np.ndarray) -> Box:
    """Bounding box of the voxels non-zero in any modality.

    Args:
        image: ``(X, Y, Z, C)`` or ``(X, Y, Z)`` array.

    Returns:
        ``((x0, x1), (y0, y1), (z0, z1))``, lower bound inclusive, upper exclusive.

    Raises:
        ValueError: if every voxel is zero.
    """
    mask = nonzero_voxels(image)
    if not mask.any():
        raise ValueError("image is all zero: no brain to crop to")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def crop(array: np.ndarray, box: Box) -> np.ndarray:
    """Crops ``(X, Y, Z[, C])`` to ``box`` (a view)."""
    return array[tuple(slice(lo, hi) for lo, hi in box)]


def uncrop(
    array: np.ndarray, box: Box, original_shape: Sequence[int], fill: float = 0
) -> np.ndarray:
    """Places a cropped ``(X, Y, Z[, C])`` array back into the full volume.

    Args:
        array: the cropped array; trailing channel axes are kept.
        box: the box it was cropped with.
        original_shape: the full spatial shape ``(X, Y, Z)``.
        fill: value outside the box.

    Returns:
        An array of shape ``original_shape + array.shape[3:]``.
    """
    array = np.asarray(array)
    full = np.full(tuple(int(s) for s in original_shape[:3]) + array.shape[3:], fill,
                   dtype=array.dtype)
    full[tuple(slice(lo, hi) for lo, hi in box)] = array
    return full


def preprocess_case(
    image: np.ndarray, label: np.ndarray | None, normalization: str = "zscore",
) -> tuple[np.ndarray, np.ndarray | None, Box]:
    """Crops to the brain and normalises each modality inside the brain mask.

    Args:
        image: ``(X, Y, Z, C)`` raw intensities.
        label: ``(X, Y, Z)`` class indices or None.
        normalization: one of :data:`~data_generators.normalization.NORMALIZATIONS`,
            default ``zscore``.

    Returns:
        ``(image float32, label uint8 or None, crop_box)``.
    """
    box = brain_bbox(image)
    cropped = crop(image, box)
    mask = nonzero_voxels(cropped)
    out = normalize(cropped, mask, normalization)
    lab = None if label is None else np.ascontiguousarray(crop(label, box), dtype=np.uint8)
    return out, lab, box


def foreground_coords(label: np.ndarray | None, limit: int = MAX_FOREGROUND) -> np.ndarray:
    """Voxel coordinates ``(N, 3)`` int32 with label > 0, at most ``limit`` (seeded subsample)."""
    if label is None:
        return np.zeros((0, 3), dtype=np.int32)
    coords = np.argwhere(np.asarray(label) > 0).astype(np.int32)
    if len(coords) > limit:
        keep = np.random.default_rng(0).choice(len(coords), size=limit, replace=False)
        coords = coords[np.sort(keep)]
    return coords


@dataclass
class PreprocessedCase:
    """A cropped, normalised case, usually memory-mapped from the cache.

    Args:
        case_id: str.
        image: float32 ``(X, Y, Z, C)``, z-scored, cropped to the brain.
        label: uint8 ``(X, Y, Z)`` classes 0..3, or None.
        properties: :func:`data_generators.nifti.load_case` properties plus ``crop_box``.
        foreground: int32 ``(N, 3)`` coordinates of tumor voxels (subsampled).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    properties: dict[str, Any]
    foreground: np.ndarray
