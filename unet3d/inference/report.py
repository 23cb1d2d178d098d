"""What predict.py writes beside a segmentation: volumes, a preview montage, meshes."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.measure import marching_cubes

from data_generators.labels import CLASS_COLOURS, REGIONS, classes_to_regions
from unet3d_base.fileio import atomic_path


def region_volumes(classes: np.ndarray, spacing: Sequence[float]) -> dict[str, dict[str, float]]:
    """Voxel count and volume in cm^3 of WT, TC and ET from a class map `(X, Y, Z)`."""
    voxel_cm3 = float(np.prod([float(s) for s in spacing[:3]])) / 1000.0
    regions = classes_to_regions(classes)
    out = {}
    for index, region in enumerate(REGIONS):
        count = int(regions[..., index].sum())
        out[region] = {"voxels": count, "cm3": count * voxel_cm3}
    return out


def preview_montage(image: np.ndarray, classes: np.ndarray, path: str | Path,
                    slices: int = 9, columns: int = 3) -> Path:
    """PNG montage of axial slices through the tumor with the classes overlaid.

    Args:
        image: `(X, Y, Z)` one modality (FLAIR is the usual choice).
        classes: `(X, Y, Z)` class indices 0..3.
        path: where the PNG goes (written atomically).
        slices: int, default 9. Evenly spread over the tumor's axial extent
            (the whole volume when there is no tumor).
        columns: int, default 3.
    """
    z_with_tumor = np.flatnonzero(classes.any(axis=(0, 1)))
    lo, hi = (z_with_tumor[0], z_with_tumor[-1]) if z_with_tumor.size else (0, classes.shape[2] - 1)
    zs = np.unique(np.linspace(lo, hi, slices).round().astype(int))
    p1, p99 = np.percentile(image[image != 0], [1, 99]) if image.any() else (0.0, 1.0)
    tiles = []
    for z in zs:
        grey = np.clip((image[:, :, z] - p1) / max(p99 - p1, 1e-6), 0, 1) * 255
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        for cls, colour in CLASS_COLOURS.items():
            mask = classes[:, :, z] == cls
            rgb[mask] = 0.45 * rgb[mask] + 0.55 * np.array(colour)
        # radiological display: rows = anterior-posterior, as viewers show axial slices
        tiles.append(np.rot90(rgb.astype(np.uint8)))
    rows = -(-len(tiles) // columns)
    h, w = tiles[0].shape[:2]
    canvas = np.zeros((rows * h, columns * w, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")
    return path


def region_mesh(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface of a binary mask, vertices in scanner millimetres.

    Returns ``(vertices (N, 3) float32, faces (M, 3) int)``; empty arrays for
    an empty mask.
    """
    if not mask.any():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    padded = np.pad(mask.astype(np.float32), 1)  # closes surfaces at the border
    verts, faces, _, _ = marching_cubes(padded, level=0.5)
    verts -= 1.0
    homogeneous = np.c_[verts, np.ones(len(verts))]
    mm = (np.asarray(affine, dtype=np.float64) @ homogeneous.T).T[:, :3]
    if np.linalg.det(np.asarray(affine)[:3, :3]) < 0:  # keep normals pointing outwards
        faces = faces[:, ::-1]
    return mm.astype(np.float32), faces


def write_mesh(vertices: np.ndarray, faces: np.ndarray, path: str | Path) -> Path:
    """Writes a triangle mesh as binary STL (``.stl``) or Wavefront OBJ (``.obj``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".stl":
            tri = vertices[faces]
            normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
            lengths = np.linalg.norm(normals, axis=1, keepdims=True)
            normals = np.divide(normals, lengths, out=np.zeros_like(normals), where=lengths > 0)
            record = np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
            data = np.zeros(len(faces), dtype=record)
            data["n"], data["v"] = normals, tri
            with open(tmp, "wb") as handle:
                handle.write(b"unet3d tumor surface, millimetres".ljust(80, b" "))
                handle.write(struct.pack("<I", len(faces)))
                handle.write(data.tobytes())
        elif path.suffix.lower() == ".obj":
            with open(tmp, "w") as handle:
                handle.write("# unet3d tumor surface, scanner millimetres\n")
                np.savetxt(handle, vertices, fmt="v %.4f %.4f %.4f")
                np.savetxt(handle, faces + 1, fmt="f %d %d %d")
        else:
            raise ValueError(f"{path}: mesh format must be .stl or .obj")
    return path
