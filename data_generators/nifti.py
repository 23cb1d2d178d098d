"""Loading and saving BraTS cases' NIfTI volumes.

Images are returned channels-last, ``(X, Y, Z, C)``, in the requested
modality order; labels are converted to class indices 0..3 (see
:mod:`data_generators.labels`). The files of a case are found by
:mod:`data_generators.io`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from data_generators.io import CaseFiles, modality_name
from data_generators.labels import labels_to_classes
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_path


def read_volume(path: Path, what: str = "image") -> tuple[np.ndarray, nib.Nifti1Image]:
    """Loads a 3D NIfTI volume, forcing the data read, with one-line errors.

    Args:
        path: the NIfTI file.
        what: str, default "image". Named in the not-3D message ("label map").

    Raises:
        InputError: naming ``path``: missing, unreadable or not 3D.
    """
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except (nib.filebasedimages.ImageFileError, zlib.error, EOFError, OSError, ValueError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a readable NIfTI file ({detail})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"{path}: is {data.ndim}D, expected a 3D {what}")
    return data, img


def _shape_text(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def load_case(
    case: CaseFiles, label_convention: str = "brats2017"
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Loads a case's images and label.

    Args:
        case: the files, from :func:`data_generators.io.find_case`.
        label_convention: how label values map to tissues (``data_generators.labels``).

    Returns:
        ``image`` float32 ``(X, Y, Z, C)`` in modality order; ``label`` uint8
        class indices ``(X, Y, Z)`` (0 background, 1 necrosis, 2 edema,
        3 enhancing) or None; and JSON-serialisable properties: ``case_id``,
        ``original_shape``, ``affine``, ``spacing``, ``reference_file``,
        ``modalities``.

    Raises:
        InputError: unreadable file, not 3D, shapes or affines that differ,
            non-finite voxels, or label values outside the convention.
    """
    ref_img = None
    ref_path = case.images[0]
    # gzip inflation releases the GIL: the modalities decode side by side; the
    # checks below still run in modality order, so errors name the same file
    with ThreadPoolExecutor(max_workers=len(case.images)) as pool:
        reads = [pool.submit(read_volume, Path(path)) for path in case.images]
    image = None
    for channel, path in enumerate(case.images):
        data, img = reads[channel].result()
        reads[channel] = None  # each decoded volume is freed once copied
        if ref_img is None:
            ref_img = img
            ref_shape = data.shape
        else:
            _check_same_grid(Path(path), data.shape, img, ref_path, ref_shape, ref_img)
        if image is None:  # each channel is written in place: no float copies to stack
            image = np.empty((*ref_shape, len(case.images)), dtype=np.float32)
        image[..., channel] = data
        # integers are finite; floats are checked after the cast (float64 may overflow)
        if data.dtype.kind not in "iub" and not np.isfinite(image[..., channel]).all():
            raise InputError(f"{path}: contains NaN or infinite voxels")
        del data
    label = None
    if case.label is not None:
        path = Path(case.label)
        data, img = read_volume(path)
        _check_same_grid(path, data.shape, img, ref_path, ref_shape, ref_img)
        if data.dtype.kind == "f":
            if not np.isfinite(data).all():
                raise InputError(f"{path}: contains NaN or infinite voxels")
            if not np.array_equal(data, np.round(data)):
                raise InputError(f"{path}: label map holds non-integer values")
            data = data.astype(np.int64)
        try:
            label = labels_to_classes(data, label_convention)
        except ValueError as err:
            raise InputError(f"{path}: {err}") from None
    assert ref_img is not None
    properties = {
        "case_id": case.case_id,
        "original_shape": [int(s) for s in ref_shape],
        "affine": np.asarray(ref_img.affine, dtype=float).tolist(),
        "spacing": [float(z) for z in ref_img.header.get_zooms()[:3]],
        "reference_file": str(ref_path),
        "modalities": [modality_name(p) for p in case.images],
    }
    return image, label, properties


def _check_same_grid(
    path: Path,
    shape: tuple[int, ...],
    img: nib.Nifti1Image,
    ref_path: Path,
    ref_shape: tuple[int, ...],
    ref_img: nib.Nifti1Image,
) -> None:
    if tuple(shape) != tuple(ref_shape):
        raise InputError(
            f"{path}: shape {_shape_text(shape)} differs from {Path(ref_path).name} "
            f"({_shape_text(ref_shape)})"
        )
    if not np.allclose(img.affine, ref_img.affine, atol=1e-3):
        raise InputError(f"{path}: affine differs from {Path(ref_path).name}")


def save_segmentation(labels: np.ndarray, properties: dict[str, Any], path: str | Path) -> Path:
    """Writes a label map as uint8 NIfTI with the reference image's header.

    Args:
        labels: ``(X, Y, Z)`` integer label values (already in the wanted
            convention), shaped like ``properties["original_shape"]``.
        properties: from :func:`load_case`.
        path: output ``.nii.gz`` or ``.nii`` file; written atomically.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: if the shape does not match the original image.
    """
    path = Path(path)
    labels = np.asarray(labels)
    shape = tuple(int(s) for s in properties["original_shape"])
    if labels.shape != shape:
        raise ValueError(
            f"segmentation shape {_shape_text(labels.shape)} differs from the "
            f"original image ({_shape_text(shape)})"
        )
    ref = nib.load(str(properties["reference_file"]))
    affine = np.asarray(properties["affine"], dtype=float)
    header = ref.header.copy()
    out = nib.Nifti1Image(labels.astype(np.uint8), affine, header=header)
    out.set_data_dtype(np.uint8)
    out.header.set_slope_inter(1.0, 0.0)
    qcode = int(ref.header["qform_code"])
    scode = int(ref.header["sform_code"])
    if qcode == 0 and scode == 0:
        scode = 2  # keep the affine somewhere a reader will look
    out.set_qform(affine, code=qcode)
    out.set_sform(affine, code=scode)
    with atomic_path(path) as tmp:
        nib.save(out, str(tmp))
    return path
