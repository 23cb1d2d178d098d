"""Helpers shared by the data_generators tests (imported by name; not a test module)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None,
               zooms: tuple[float, ...] | None = None) -> Path:
    """Writes ``data`` as NIfTI (dtype kept) with qform/sform code 1."""
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    if zooms is not None:
        img.header.set_zooms(zooms)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path
