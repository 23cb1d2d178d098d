"""A small synthetic dataset in the Kaggle LGG layout and format (:mod:`data_generators.lgg`),
for tests and demos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from unet3d_base.fileio import atomic_path


def write_synthetic_lgg(root: str | Path, patients: int = 3, slices: int = 6, size: int = 64,
                        seed: int = 0) -> list[Path]:
    """Writes a small dataset in the Kaggle LGG layout and format, for tests and demos.

    Each slice is an RGB uint8 TIFF: an elliptic "brain" on a black background,
    with different intensities per channel. On the middle slices a bright blob
    in the FLAIR channel marks the "tumor", and the slice's mask (uint8, 255
    on the blob, 0 elsewhere) matches it exactly; the other slices have an
    all-zero mask. Patients are named ``TCGA_SY_<nnnn>_20000101``.

    Args:
        root: the dataset folder; created if needed.
        patients: int, default 3. Number of patient folders.
        slices: int, default 6. Slices per patient.
        size: int, default 64. Slice height and width.
        seed: int, default 0. The same seed writes the same files.

    Returns:
        The patient folders, sorted.

    Raises:
        ValueError: ``patients`` or ``slices`` below 1, or ``size`` below 16.
    """
    if patients < 1 or slices < 1 or size < 16:
        raise ValueError(f"need patients >= 1, slices >= 1, size >= 16; got {patients}, "
                         f"{slices}, {size}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = (size - 1) / 2.0
    brain = ((yy - centre) / (0.42 * size)) ** 2 + ((xx - centre) / (0.36 * size)) ** 2 <= 1.0
    tumor_slices = range(slices // 3, slices - slices // 3) if slices > 2 else range(slices)
    folders = []
    for index in range(patients):
        patient_id = f"TCGA_SY_{index + 1:04d}_20000101"
        folder = root / patient_id
        levels = np.array([120.0, 100.0, 90.0]) + rng.uniform(-10.0, 10.0, 3)
        cy, cx = centre + rng.uniform(-0.1, 0.1, 2) * size
        radius = rng.uniform(0.10, 0.16) * size
        for k in range(slices):
            rgb = (levels + rng.normal(0.0, 6.0, (size, size, 3))) * brain[:, :, None]
            mask = np.zeros((size, size), np.uint8)
            if k in tumor_slices:
                # the blob shrinks away from the middle tumor slice
                offset = abs(k - (tumor_slices.start + tumor_slices.stop - 1) / 2.0)
                r = radius * (1.0 - 0.25 * offset / max(len(tumor_slices), 1))
                blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
                rgb[blob, 1] = 220.0 + rng.normal(0.0, 5.0, int(blob.sum()))  # FLAIR
                rgb[blob, 0] *= 0.8  # a little darker on T1
                mask[blob] = 255
            stem = f"{patient_id}_{k + 1}"
            with atomic_path(folder / f"{stem}.tif") as tmp:
                tifffile.imwrite(tmp, np.clip(np.rint(rgb), 0, 255).astype(np.uint8),
                                 photometric="rgb")
            with atomic_path(folder / f"{stem}_mask.tif") as tmp:
                tifffile.imwrite(tmp, mask, photometric="minisblack")
        folders.append(folder)
    return sorted(folders)
