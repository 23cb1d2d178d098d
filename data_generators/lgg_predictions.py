"""Writing predictions for the Kaggle LGG dataset (:mod:`data_generators.lgg`): one
``<patient>_<n>_pred.tif`` per slice, in the dataset's own mask format.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import tifffile

from data_generators.lgg import LggPatient, shape_text, tif_shape
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_path

_SLICE_NUMBER = re.compile(r"_(\d+)\.tiff?$", re.IGNORECASE)


def slice_number(path: str | Path) -> int:
    """The slice number ``n`` of ``<patient>_<n>.tif``.

    Raises:
        InputError: the name does not end in ``_<n>.tif``.
    """
    match = _SLICE_NUMBER.search(Path(path).name)
    if match is None:
        raise InputError(f"{path}: not an LGG slice name (<patient>_<n>.tif)")
    return int(match.group(1))


def prediction_path(out_dir: str | Path, patient_id: str, slice_path: str | Path) -> Path:
    """``<out_dir>/<patient>_<n>_pred.tif`` for one image slice (``n`` as a plain number)."""
    return Path(out_dir) / f"{patient_id}_{slice_number(slice_path)}_pred.tif"


def save_lgg_predictions(classes: np.ndarray, patient: LggPatient,
                         out_dir: str | Path) -> list[Path]:
    """Writes one whole-tumor mask per slice, in the dataset's own mask format.

    Args:
        classes: ``(H, W, N)`` class indices, ``N`` the patient's slice count.
        patient: the patient the prediction is for.
        out_dir: folder for ``<patient>_<n>_pred.tif`` (uint8, 255 where
            ``classes > 0``, 0 elsewhere); each file is written atomically.

    Returns:
        The files written, in slice order.

    Raises:
        ValueError: ``classes`` is not 3D, has another slice count, or another
            ``H x W`` than a slice (the message names the slice).
        InputError: a slice of ``patient`` cannot be read.
        OutputError: the storage refused a write.
    """
    classes = np.asarray(classes)
    if classes.ndim != 3 or classes.shape[2] != len(patient.slices):
        raise ValueError(f"{patient.patient_id}: prediction shape {shape_text(classes.shape)}, "
                         f"expected HxWx{len(patient.slices)} (one plane per slice)")
    out_dir = Path(out_dir)
    written = []
    for k, slice_path in enumerate(patient.slices):
        shape = tif_shape(Path(slice_path))[:2]
        if classes.shape[:2] != shape:
            raise ValueError(f"{slice_path}: slice is {shape_text(shape)}, prediction plane is "
                             f"{shape_text(classes.shape[:2])}")
        plane = np.where(classes[:, :, k] > 0, 255, 0).astype(np.uint8)
        path = prediction_path(out_dir, patient.patient_id, slice_path)
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, plane, photometric="minisblack")
        written.append(path)
    return written
