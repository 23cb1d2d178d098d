"""Inference on preprocessed volumes: whole volume, or Gaussian-weighted sliding window.

Plain functions do the work (as in nnU-Net): :func:`gaussian_importance_map`
and :func:`sliding_window_steps` are cached and stand alone;
:class:`WindowPredictor` only holds settings. A ``predict_fn`` maps a float32 batch
`(B, D, H, W, C)` to probabilities `(B, D, H, W, K)`, so Keras and LiteRT
models run through the same code.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import DTypeLike
from scipy import ndimage

from unet3d.memory import available_bytes, check_fits, inference_bytes
from unet3d.models.forward import ALIGN_BYTES, PredictFn


@functools.lru_cache(maxsize=8)
def gaussian_importance_map(patch_size: tuple[int, ...], sigma_scale: float = 1 / 8) -> np.ndarray:
    """nnU-Net's blending weights: a Gaussian centred in the patch, sigma = size / 8.

    Returns float32 `(D, H, W)` scaled to a maximum of 1, with no zeros (the
    smallest non-zero value replaces them) so every voxel gets some weight.
    """
    impulse = np.zeros(patch_size, dtype=np.float64)
    impulse[tuple(s // 2 for s in patch_size)] = 1.0
    weights = ndimage.gaussian_filter(impulse, [s * sigma_scale for s in patch_size],
                                      mode="constant", cval=0)
    weights /= weights.max()
    weights[weights == 0] = weights[weights > 0].min()
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=64)
def sliding_window_steps(image_size: tuple[int, ...], patch_size: tuple[int, ...],
                         overlap: float = 0.5) -> tuple[tuple[int, ...], ...]:
    """Window start positions per axis, evenly spread, covering the image.

    As nnU-Net: the step is at most ``patch * (1 - overlap)``, the first
    window starts at 0 and the last ends at the image border.
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    steps = []
    for size, patch in zip(image_size, patch_size, strict=True):
        if size < patch:
            raise ValueError(f"image size {size} is smaller than the patch {patch}")
        target = patch * (1 - overlap)
        count = int(math.ceil((size - patch) / target)) + 1 if size > patch else 1
        span = size - patch
        stride = span / (count - 1) if count > 1 else 0
        steps.append(tuple(int(round(stride * i)) for i in range(count)))
    return tuple(steps)


def aligned_zeros(shape: Sequence[int], dtype: DTypeLike) -> np.ndarray:
    """Zeros of ``shape`` in a buffer that starts on a :data:`ALIGN_BYTES` boundary.

    NumPy aligns its buffers to 16 bytes; a float32 batch aligned to 64 is handed to
    TensorFlow without a copy (:func:`unet3d.models.forward.keras_predict_fn`).
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.zeros(nbytes + ALIGN_BYTES, dtype=np.uint8)  # fresh zero pages, not written
    start = -raw.ctypes.data % ALIGN_BYTES
    return raw[start:start + nbytes].view(dtype).reshape(tuple(shape))


def pad_to(image: np.ndarray, shape: Sequence[int], multiple: int | Sequence[int] = 1
           ) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pads the spatial axes of `(X, Y, Z, C)` to at least ``shape`` and a multiple
    (one for all axes, or one per axis).

    Padding is split evenly before and after. Returns the padded array (a new one,
    :func:`aligned_zeros`) and the slices that cut the original back out.
    """
    multiples = (multiple,) * 3 if isinstance(multiple, int) else tuple(multiple)
    sizes, region = [], []
    for size, minimum, step in zip(image.shape[:3], shape, multiples, strict=True):
        target = max(size, minimum)
        target += -target % step
        before = (target - size) // 2
        sizes.append(target)
        region.append(slice(before, before + size))
    padded = aligned_zeros((*sizes, *image.shape[3:]), image.dtype)
    padded[tuple(region)] = image
    return padded, tuple(region)


def predict_whole(predict_fn: PredictFn, image: np.ndarray | list[np.ndarray],
                  multiple: int | Sequence[int]) -> np.ndarray:
    """The whole `(X, Y, Z, C)` volume in one pass, padded to ``multiple``.

    ``image`` may come as a list holding it alone, which this empties: a caller that
    keeps no other reference then has the volume freed once its padded copy is made,
    not held through the pass."""
    image = image.pop() if isinstance(image, list) else image
    padded, region = pad_to(image.astype(np.float32, copy=False), image.shape[:3], multiple)
    del image  # the last reference where the caller handed it over
    return predict_fn(padded[None])[0][region]


def predict_sliding(predict_fn: PredictFn, image: np.ndarray, patch_size: Sequence[int],
                    overlap: float = 0.5, batch_size: int = 1) -> np.ndarray:
    """Gaussian-weighted sliding-window prediction of a `(X, Y, Z, C)` volume.

    Args:
        predict_fn: batch `(B, D, H, W, C)` -> `(B, D, H, W, K)`.
        image: float32 `(X, Y, Z, C)`.
        patch_size: window `(D, H, W)`; images smaller than it are padded.
        overlap: float, default 0.5. Share of a window that overlaps the next.
        batch_size: int, default 1. Windows per call of ``predict_fn``.

    Returns:
        float32 `(X, Y, Z, K)`.
    """
    patch_size = tuple(int(p) for p in patch_size)
    padded, region = pad_to(image, patch_size)
    weights = gaussian_importance_map(patch_size)[..., None]
    starts = list(itertools.product(*sliding_window_steps(padded.shape[:3], patch_size, overlap)))
    total = None
    norm = np.zeros(padded.shape[:3] + (1,), dtype=np.float32)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        windows = [tuple(slice(s, s + p) for s, p in zip(start, patch_size, strict=True))
                   for start in chunk]
        batch = np.stack([padded[w] for w in windows]).astype(np.float32)
        out = predict_fn(batch)
        if total is None:
            total = np.zeros(padded.shape[:3] + (out.shape[-1],), dtype=np.float32)
        for window, probs in zip(windows, out, strict=True):
            total[window] += probs * weights
            norm[window] += weights
    return (total / norm)[region]


def slice_predict_fn(predict_fn: PredictFn, batch_slices: int = 16) -> PredictFn:
    """A 2D network's ``predict_fn`` (`(B, H, W, C)` -> `(B, H, W, K)`) as a volume one:
    `(B, X, Y, Z, C)` -> `(B, X, Y, Z, K)`, axial slice by slice, ``batch_slices`` slices
    per call. Whole-volume, sliding-window and mirroring code then serve both networks."""

    def run(batch: np.ndarray) -> np.ndarray:
        b, x, y, z, c = batch.shape
        slices = np.moveaxis(batch, 3, 1).reshape(b * z, x, y, c)
        size = min(batch_slices, b * z)
        outs = []
        for first in range(0, b * z, size):
            chunk = slices[first:first + size]
            if len(chunk) < size:  # the last chunk padded: one compiled graph for all
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                                        chunk.dtype)])
            outs.append(predict_fn(np.ascontiguousarray(chunk)))
        out = np.concatenate(outs)[: b * z]
        return np.moveaxis(out.reshape(b, z, x, y, out.shape[-1]), 1, 3)

    return run


def mirror_tta(predict: Callable[[np.ndarray], np.ndarray], image: np.ndarray,
               axes: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Mean of ``predict`` over every combination of flipping ``axes`` (8 for three).

    The passes run one at a time, summed in place into one buffer: the memory
    of about two passes (the running sum and the pass in flight).
    """
    result = None
    for count in range(len(axes) + 1):
        for flips in itertools.combinations(tuple(axes), count):
            flipped = np.ascontiguousarray(np.flip(image, flips)) if flips else image
            out = predict(flipped)
            del flipped
            out = np.flip(out, flips) if flips else out
            if result is None:
                result = np.array(out, dtype=np.float32)
            else:
                result += out
            del out
    result /= 2 ** len(axes)
    return result


@dataclass(frozen=True)
class WindowPredictor:
    """Settings for turning a preprocessed volume into probabilities.

    Args:
        predict_fn: batch -> probabilities, see :func:`keras_predict_fn`.
        stride: int. The network's ``2**(depth - 1)``.
        patch_size: tuple of int. Sliding-window size (D, H, W), or (H, W) for 2D.
        overlap: float, default 0.5.
        mode: str, default "auto". ``whole``, ``sliding`` or ``auto`` (whole
            volume when its estimated memory, :mod:`unet3d.memory`, fits
            ``max_memory_gb`` and the machine).
        tta: bool, default False. Average the 8 mirrorings (4 in-plane for 2D).
        base_filters: int, default 16. For the memory estimate.
        max_memory_gb: float, default 4.0.
        batch_size: int, default 1. Windows per network call.
        spatial_dims: int, default 3. 2: ``predict_fn`` is a 2D network's and
            ``patch_size`` is (H, W); volumes are segmented axial slice by slice
            (:func:`slice_predict_fn`), padded in-plane only.
    """

    predict_fn: PredictFn
    stride: int
    patch_size: tuple[int, ...]
    overlap: float = 0.5
    mode: str = "auto"
    tta: bool = False
    base_filters: int = 16
    max_memory_gb: float = 4.0
    batch_size: int = 1
    spatial_dims: int = 3

    @property
    def _multiple(self) -> tuple[int, int, int]:
        return (self.stride,) * 3 if self.spatial_dims == 3 else (self.stride, self.stride, 1)

    @property
    def _window(self) -> tuple[int, int, int]:
        return tuple(self.patch_size) if self.spatial_dims == 3 else (*self.patch_size, 1)

    def resolved_mode(self, shape: Sequence[int]) -> str:
        """``whole`` or ``sliding`` for a volume of ``shape``; refuses what cannot fit.

        Raises:
            InputError: the chosen way needs more memory than is available.
        """
        padded = [s + (-s % m) for s, m in zip(shape[:3], self._multiple, strict=True)]
        if self.spatial_dims == 2:  # slices go through the network 16 at a time
            padded[2] = min(padded[2], 16)
        whole = inference_bytes(padded, self.base_filters)
        mode = self.mode
        if mode == "auto":
            budget = min(self.max_memory_gb * 2**30, available_bytes())
            mode = "whole" if whole <= budget else "sliding"
        if mode == "whole":
            check_fits(whole, f"--mode whole on a {'x'.join(map(str, padded))} volume",
                       "use --mode sliding (or auto)")
        else:
            window = "x".join(map(str, self.patch_size))
            check_fits(inference_bytes(self._window, self.base_filters, self.batch_size),
                       f"a {window} sliding window", "lower --patch-size")
        return mode

    def __call__(self, image: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Probabilities `(X, Y, Z, K)` of a preprocessed `(X, Y, Z, C)` volume.

        ``image`` may come as a list holding it alone, which this empties: a caller that
        keeps no other reference then has a whole-volume pass without mirroring free it
        once padded (:func:`predict_whole`), so it is not held through the network."""
        fn = self.predict_fn if self.spatial_dims == 3 else slice_predict_fn(self.predict_fn)
        mode = self.resolved_mode((image[0] if isinstance(image, list) else image).shape)
        if mode == "whole" and not self.tta:
            return predict_whole(fn, image, self._multiple)
        image = image.pop() if isinstance(image, list) else image
        if mode == "whole":
            def once(img):
                return predict_whole(fn, img, self._multiple)
        else:
            def once(img):
                return predict_sliding(fn, img, self._window, self.overlap, self.batch_size)
        axes = (0, 1, 2) if self.spatial_dims == 3 else (0, 1)
        return mirror_tta(once, image, axes) if self.tta else once(image)
