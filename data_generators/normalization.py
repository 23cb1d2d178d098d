"""Per-sequence intensity normalisation inside the brain mask.

``zscore`` (the paper's and nnU-Net's), ``percentile`` (clip each sequence to
its 0.5-99.5 percentiles inside the brain, then z-score) or ``n4`` (SimpleITK's
N4 bias-field correction inside the brain, then z-score).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

NORMALIZATIONS = ("zscore", "percentile", "n4")
DEFAULT_NORMALIZATION = "zscore"  # a config without one (or with ``normalization: null``)
PERCENTILES = (0.5, 99.5)
N4_SHRINK = 4
N4_ITERATIONS = (50, 50, 50, 50)


def effective_normalization(method: str | None) -> str:
    """The normalisation ``method`` names: :data:`DEFAULT_NORMALIZATION` for None (a
    config's ``normalization: null``, or one written before the setting existed)."""
    return DEFAULT_NORMALIZATION if method is None else method


def normalization_settings(method: str) -> dict:
    """What a cached case's normalisation depends on, beyond its name (part of the cache
    fingerprint: other settings rebuild the case)."""
    if method == "percentile":
        return {"percentiles": list(PERCENTILES)}
    if method == "n4":
        return {"shrink": N4_SHRINK, "iterations": list(N4_ITERATIONS),
                "fit_mask": "brain and this sequence > 0"}
    return {}


def zscore_in_mask(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-channel z-scoring with statistics from inside ``mask``.

    Args:
        image: ``(X, Y, Z, C)``.
        mask: ``(X, Y, Z)`` boolean.

    Returns:
        float32 ``(X, Y, Z, C)``: ``(x - mean) / std`` inside the mask, 0
        outside; a channel with std 0 is only centred.
    """
    image = np.asarray(image, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[-1]):
        values = image[..., c][mask].astype(np.float64)
        mean = values.mean()
        std = values.std()
        scaled = (values - mean) / std if std > 0 else values - mean
        out[..., c][mask] = scaled.astype(np.float32)
    return out


def clip_percentiles(image: np.ndarray, mask: np.ndarray,
                     percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Per-channel clipping to the ``percentiles`` of the values inside ``mask``.

    Args:
        image: ``(X, Y, Z, C)``.
        mask: ``(X, Y, Z)`` boolean.

    Returns:
        float32 ``(X, Y, Z, C)``, clipped inside the mask, 0 outside.
    """
    image = np.asarray(image, dtype=np.float32)
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[-1]):
        values = image[..., c][mask]
        lo, hi = np.percentile(values, percentiles)
        out[..., c][mask] = np.clip(values, lo, hi)
    return out


def n4_correct(image: np.ndarray, mask: np.ndarray, shrink: int = N4_SHRINK,
               iterations: tuple[int, ...] = N4_ITERATIONS) -> np.ndarray:
    """Per-channel N4 bias-field correction (SimpleITK) inside ``mask``.

    The field is fitted on the image shrunk by ``shrink`` (as is usual for
    N4), then evaluated at full resolution and divided out.

    Args:
        image: ``(X, Y, Z, C)`` non-negative intensities.
        mask: ``(X, Y, Z)`` boolean; the fit uses these voxels only.

    Returns:
        float32 ``(X, Y, Z, C)``, corrected inside the mask, 0 outside.
    """
    image = np.asarray(image, dtype=np.float32)
    out = np.zeros(image.shape, dtype=np.float32)
    if not mask.any():
        return out
    for c in range(image.shape[-1]):
        channel = np.where(mask, np.maximum(image[..., c], 0), 0).astype(np.float32)
        full = sitk.GetImageFromArray(channel)
        small = sitk.Shrink(full, [shrink] * 3)
        # fitted where this sequence has signal: a zero inside the brain mask (a voxel only
        # another sequence covers) is no intensity to correct
        fit_mask = sitk.Shrink(sitk.GetImageFromArray((mask & (channel > 0)).astype(np.uint8)),
                               [shrink] * 3)
        corrector = sitk.N4BiasFieldCorrectionImageFilter()
        corrector.SetMaximumNumberOfIterations(list(iterations))
        corrector.Execute(small, fit_mask)
        log_field = sitk.GetArrayFromImage(corrector.GetLogBiasFieldAsImage(full))
        out[..., c] = np.where(mask, channel / np.exp(log_field), 0).astype(np.float32)
    return out


def normalize(cropped: np.ndarray, mask: np.ndarray, method: str = "zscore") -> np.ndarray:
    """Normalises a cropped ``(X, Y, Z, C)`` image inside the brain ``mask`` by ``method``."""
    if method not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, "
                         f"got {method!r}")
    if method == "percentile":
        cropped = clip_percentiles(cropped, mask)
    elif method == "n4":
        cropped = n4_correct(cropped, mask)
    return zscore_in_mask(cropped, mask)
