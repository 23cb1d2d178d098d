"""Whole-volume inference on a preprocessed (cropped, z-scored) case."""

from __future__ import annotations

import numpy as np


def pad_to_multiple(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pads the spatial axes of `(X, Y, Z, C)` up to multiples of ``multiple``.

    Returns the padded array and the slices that cut the original back out.
    Padding is split evenly before and after, as nnU-Net does.
    """
    pads, region = [], []
    for size in image.shape[:3]:
        total = -size % multiple
        before = total // 2
        pads.append((before, total - before))
        region.append(slice(before, before + size))
    pads.append((0, 0))
    return np.pad(image, pads), tuple(region)


def predict_volume(model, image: np.ndarray, multiple: int) -> np.ndarray:
    """Runs a fully convolutional model on a whole `(X, Y, Z, C)` volume at once.

    Args:
        model: keras.Model mapping `(B, D, H, W, C)` to `(B, D, H, W, K)`.
        image: float32 `(X, Y, Z, C)`, already preprocessed.
        multiple: int. The network's stride, ``2**(depth - 1)``.

    Returns:
        float32 probabilities `(X, Y, Z, K)` for the unpadded volume.
    """
    import keras

    padded, region = pad_to_multiple(np.asarray(image, dtype=np.float32), multiple)
    out = keras.ops.convert_to_numpy(model(padded[None], training=False))[0]
    return out[region]
