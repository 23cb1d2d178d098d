"""Patch extraction with the spatial and intensity augmentations of Isensee et al. 2017.

Spatial transforms (rotation, scaling, elastic deformation) act on the
patch's voxel coordinate grid, which is then sampled with
``scipy.ndimage.map_coordinates``; image and label share the grid, so they
stay aligned. Mirroring and intensity transforms follow.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class AugmentationConfig:
    """Augmentation probabilities and ranges (nnU-Net / Isensee et al. defaults).

    Args:
        p_rotation: probability of a rotation; when drawn, each axis gets an
            angle uniform in ``[-max_rotation_deg, max_rotation_deg]``.
        max_rotation_deg: largest rotation per axis, in degrees.
        p_scale: probability of an isotropic scaling.
        scale_range: scaling factor range (>1 zooms out).
        p_elastic: probability of an elastic deformation.
        elastic_alpha: range of the displacement's standard deviation, in voxels.
        elastic_sigma: range of the displacement's smoothness length, in voxels.
        mirror_axes: spatial axes flipped, each with probability ``p_mirror``.
        p_mirror: flip probability per axis.
        p_gamma: probability of a gamma transform, per channel.
        gamma_range: gamma exponent range (on min-max normalised values).
        p_brightness: probability of a multiplicative brightness change, per channel.
        brightness_range: brightness factor range.
        p_contrast: probability of a contrast change, per channel.
        contrast_range: contrast factor range.
        in_plane: the 2D forms of the spatial transforms, for slices (patches of
            depth 1): rotation about the slice normal (axis 2) only, and elastic
            displacement within the slice. The same draws are made either way.
    """

    p_rotation: float = 0.2
    max_rotation_deg: float = 15.0
    p_scale: float = 0.2
    scale_range: tuple[float, float] = (0.75, 1.25)
    p_elastic: float = 0.2
    elastic_alpha: tuple[float, float] = (0.0, 4.0)
    elastic_sigma: tuple[float, float] = (9.0, 13.0)
    mirror_axes: tuple[int, ...] = (0, 1, 2)
    p_mirror: float = 0.5
    p_gamma: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    p_brightness: float = 0.15
    brightness_range: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast_range: tuple[float, float] = (0.75, 1.25)
    in_plane: bool = False

    def scaled(self, strength: float) -> AugmentationConfig:
        """A copy whose probabilities, mirroring's aside, are multiplied by ``strength``
        (capped at 1)."""
        names = ("p_rotation", "p_scale", "p_elastic", "p_gamma", "p_brightness", "p_contrast")
        return dataclasses.replace(
            self, **{n: min(1.0, getattr(self, n) * strength) for n in names})


def _rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation about axes 0, 1, 2 by ``angles`` (radians), composed in that order."""
    a, b, c = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _elastic_field(
    patch_size: tuple[int, int, int], alpha: float, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """Smooth random displacement ``(3, D, H, W)`` with std ``alpha`` voxels.

    Noise on a coarse grid (spacing ``sigma / 2``) is Gaussian-smoothed and
    linearly upsampled, which is much cheaper than smoothing full-size noise.
    """
    step = max(sigma / 2.0, 1.0)
    coarse_shape = tuple(int(np.ceil(p / step)) + 2 for p in patch_size)
    field = np.empty((3,) + tuple(patch_size), dtype=np.float32)
    noise = rng.standard_normal((3,) + coarse_shape)
    for k in range(3):
        smooth = ndimage.gaussian_filter(noise[k], sigma=2.0, mode="reflect")
        std = smooth.std()
        smooth = smooth / std * alpha if std > 0 else smooth * 0
        zoom = [p / s for p, s in zip(patch_size, coarse_shape, strict=True)]
        up = ndimage.zoom(smooth, zoom, order=1, mode="nearest", grid_mode=True)
        field[k] = up[: patch_size[0], : patch_size[1], : patch_size[2]]
    return field


def _draw_spatial(
    patch_size: tuple[int, int, int], rng: np.random.Generator, config: AugmentationConfig
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Draws the linear map and elastic field; ``(None, None)`` means identity."""
    matrix = None
    if rng.random() < config.p_rotation:
        limit = np.deg2rad(config.max_rotation_deg)
        angles = rng.uniform(-limit, limit, size=3)
        if config.in_plane:  # about the slice normal only: the slice stays a slice
            angles[:2] = 0.0
        matrix = _rotation_matrix(angles)
    if rng.random() < config.p_scale:
        scale = rng.uniform(*config.scale_range)
        matrix = scale * (np.eye(3) if matrix is None else matrix)
    field = None
    if rng.random() < config.p_elastic:
        alpha = rng.uniform(*config.elastic_alpha)
        sigma = rng.uniform(*config.elastic_sigma)
        field = _elastic_field(patch_size, alpha, sigma, rng)
        if config.in_plane:
            field[2] = 0.0
    return matrix, field


def _slice_padded(array: np.ndarray, start: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``array[start:start+size]`` on the first three axes, zero outside the array."""
    out = np.zeros(tuple(size) + array.shape[3:], dtype=array.dtype)
    src, dst = [], []
    for axis in range(3):
        lo = int(start[axis])
        hi = lo + int(size[axis])
        a, b = max(lo, 0), min(hi, array.shape[axis])
        if b <= a:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _sample(
    image: np.ndarray,
    label: np.ndarray | None,
    center: np.ndarray,
    patch_size: tuple[int, int, int],
    matrix: np.ndarray | None,
    field: np.ndarray | None,
    order: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples the transformed grid with map_coordinates from a cropped region."""
    half = np.array([p // 2 for p in patch_size], dtype=np.float64)
    grid = np.stack(
        np.meshgrid(*[np.arange(p, dtype=np.float32) for p in patch_size], indexing="ij")
    ).reshape(3, -1)
    offsets = grid - half[:, None].astype(np.float32)
    if matrix is not None:
        offsets = (matrix.astype(np.float32) @ offsets).astype(np.float32)
    if field is not None:
        offsets += field.reshape(3, -1)
    coords = offsets + center.astype(np.float32)[:, None]
    if patch_size[2] == 1 and np.all(coords[2] == np.round(coords[2, 0])):
        return _sample_plane(image, label, coords[:2], int(np.round(coords[2, 0])), patch_size,
                             order)
    return _sample_volume(image, label, coords, patch_size, order)


def _sample_volume(
    image: np.ndarray,
    label: np.ndarray | None,
    coords: np.ndarray,
    patch_size: tuple[int, int, int],
    order: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A spline of ``order`` at voxel coordinates ``coords`` `(3, N)`, per channel."""
    # read only the region the coordinates touch (memmap friendly, cheap spline prefilter)
    margin = 1 + order
    lo = np.floor(coords.min(axis=1)).astype(int) - margin
    hi = np.ceil(coords.max(axis=1)).astype(int) + margin + 1
    region_img = _slice_padded(image, lo, tuple(hi - lo)).astype(np.float32, copy=False)
    coords -= lo[:, None].astype(np.float32)
    shape = tuple(patch_size)
    channels = [
        ndimage.map_coordinates(region_img[..., c], coords, order=order, mode="constant",
                                cval=0.0, output=np.float32).reshape(shape)
        for c in range(image.shape[-1])
    ]
    img = np.stack(channels, axis=-1)
    lbl = None
    if label is not None:
        region_lbl = _slice_padded(label, lo, tuple(hi - lo))
        lbl = ndimage.map_coordinates(region_lbl, coords, order=0, mode="constant", cval=0,
                                      output=np.uint8).reshape(shape)
    return img, lbl


def _sample_plane(
    image: np.ndarray,
    label: np.ndarray | None,
    coords: np.ndarray,
    z: int,
    patch_size: tuple[int, int, int],
    order: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_sample` for a slice that stays on plane ``z``: a 2D spline per channel.

    The same values as the 3D spline, whose coordinate on the slice axis falls on a
    sample (where a spline interpolates exactly), at a ninth of the cost or less.
    """
    margin = 1 + order
    lo = np.floor(coords.min(axis=1)).astype(int) - margin
    hi = np.ceil(coords.max(axis=1)).astype(int) + margin + 1
    start = np.array([lo[0], lo[1], z])
    size = (int(hi[0] - lo[0]), int(hi[1] - lo[1]), 1)
    region_img = _slice_padded(image, start, size)[:, :, 0].astype(np.float32, copy=False)
    coords = coords - lo[:, None].astype(np.float32)
    shape = tuple(patch_size)
    img = np.empty(shape + (image.shape[-1],), dtype=np.float32)
    for c in range(image.shape[-1]):
        img[..., c] = ndimage.map_coordinates(
            region_img[..., c], coords, order=order, mode="constant", cval=0.0,
            output=np.float32).reshape(shape)
    lbl = None
    if label is not None:
        region_lbl = _slice_padded(label, start, size)[:, :, 0]
        lbl = ndimage.map_coordinates(region_lbl, coords, order=0, mode="constant", cval=0,
                                      output=np.uint8).reshape(shape)
    return img, lbl


def _intensity(img: np.ndarray, rng: np.random.Generator, config: AugmentationConfig) -> None:
    """Gamma, brightness and contrast per channel, in place; draws in a fixed order."""
    for c in range(img.shape[-1]):
        x = img[..., c]
        if rng.random() < config.p_gamma:
            gamma = rng.uniform(*config.gamma_range)
            lo, hi = float(x.min()), float(x.max())
            span = hi - lo
            if span > 0:
                x[...] = ((x - lo) / span) ** gamma * span + lo
        if rng.random() < config.p_brightness:
            x *= rng.uniform(*config.brightness_range)
        if rng.random() < config.p_contrast:
            factor = rng.uniform(*config.contrast_range)
            lo, hi = float(x.min()), float(x.max())
            mean = float(x.mean())
            x[...] = np.clip((x - mean) * factor + mean, lo, hi)


def extract_patch(
    image: np.ndarray,
    label: np.ndarray | None,
    center: np.ndarray | tuple[int, int, int],
    patch_size: tuple[int, int, int],
    rng: np.random.Generator | None = None,
    config: AugmentationConfig | None = None,
    order: int = 1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Cuts a patch around ``center``, optionally augmented.

    The patch covers voxels ``center - patch_size // 2`` up to (exclusive)
    ``center - patch_size // 2 + patch_size`` before any spatial transform,
    which rotates / scales / deforms about ``center``. Voxels outside the
    volume read as 0 in both image and label.

    Args:
        image: ``(X, Y, Z, C)`` volume (may be a memmap).
        label: ``(X, Y, Z)`` uint8 class indices, or None.
        center: voxel index into ``image``.
        patch_size: ``(D, H, W)``.
        rng: random generator; every parameter is drawn from it once. Needed
            when ``config`` is given.
        config: augmentation settings; None extracts a plain patch.
        order: spline order for the image (1 or 3); the label uses 0.

    Returns:
        ``(image patch float32 (D, H, W, C), label patch uint8 (D, H, W) or None)``.
    """
    patch_size = tuple(int(p) for p in patch_size)
    center = np.asarray(center, dtype=np.int64).reshape(3)
    if config is not None and rng is None:
        raise ValueError("extract_patch: an augmentation config needs an rng")
    matrix = field = None
    if config is not None:
        matrix, field = _draw_spatial(patch_size, rng, config)
    if matrix is None and field is None:
        start = center - np.array([p // 2 for p in patch_size])
        img = _slice_padded(image, start, patch_size).astype(np.float32, copy=False)
        lbl = None if label is None else _slice_padded(label, start, patch_size).astype(np.uint8)
    else:
        img, lbl = _sample(image, label, center, patch_size, matrix, field, order)
    if config is None:
        return np.ascontiguousarray(img), lbl
    flips = [ax for ax in config.mirror_axes if rng.random() < config.p_mirror]
    if flips:
        img = np.flip(img, axis=flips)
        lbl = None if lbl is None else np.ascontiguousarray(np.flip(lbl, axis=flips))
    img = np.array(img, dtype=np.float32, copy=True) if flips else img
    _intensity(img, rng, config)
    return np.ascontiguousarray(img), lbl
