"""Finding and reading the Kaggle "LGG MRI segmentation" dataset (Buda et al.).

Layout (``mateuszbuda/lgg-mri-segmentation``, folder ``kaggle_3m``)::

    <root>/
      data.csv, README.md                      other files in the root are ignored
      TCGA_CS_4941_19960909/
        TCGA_CS_4941_19960909_1.tif            256x256 RGB uint8 slice 1
        TCGA_CS_4941_19960909_1_mask.tif       256x256 uint8 mask, 0 or 255
        TCGA_CS_4941_19960909_2.tif            ... slice numbers are not zero-padded
        ...

The three channels of a slice are pre-contrast T1 (``t1``), FLAIR (``flair``)
and post-contrast T1 (``t1ce``), in that order (:data:`LGG_MODALITIES`); where a
sequence was not acquired its channel is a copy of FLAIR (:func:`repeated_flair`). The
mask marks the FLAIR abnormality; it is loaded as class 2 (edema, see
:data:`data_generators.labels.CLASSES`), so that the whole-tumor region equals
the mask. Volumes are returned channels-last, ``(H, W, N, C)``, with the
slices stacked along axis 2 in slice-number order. Predictions are written in the
dataset's own mask format by :mod:`data_generators.lgg_predictions`; a small synthetic
dataset in this layout by :mod:`data_generators.lgg_synthetic`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.io import check_data_folder
from data_generators.lgg_channels import (
    COPY_CANDIDATES,
    LGG_MODALITIES,
    channel_indices,
    flair_copies,
    flair_copy_text,
    read_rgb_slice,
    read_tif,
    shape_text,
)
from data_generators.lgg_channels import repeated_flair as repeated_flair  # re-exported
from data_generators.lgg_channels import tif_shape as tif_shape  # re-exported
from unet3d_base.errors import InputError

LGG_FORMAT = "kaggle-lgg-tif"
EDEMA_CLASS = 2  # index of "edema" in data_generators.labels.CLASSES
_MASK_THRESHOLD = 127


@dataclass(frozen=True)
class LggPatient:
    """The files of one patient.

    Args:
        patient_id: str. The patient folder's name, e.g. ``TCGA_CS_4941_19960909``.
        slices: tuple of Path. The image slices ``<patient>_<n>.tif``, sorted by ``n``.
        masks: tuple of Path or None. The matching ``<patient>_<n>_mask.tif``,
            None where a slice has no mask.
    """

    patient_id: str
    slices: tuple[Path, ...]
    masks: tuple[Path | None, ...]


def _slice_pattern(name: str, mask: bool) -> re.Pattern[str]:
    tail = "_mask" if mask else ""
    return re.compile(rf"^{re.escape(name)}_(\d+){tail}\.tiff?$", re.IGNORECASE)


ANY_SLICE = re.compile(r"^(.+?)_(\d+)(_mask)?\.tiff?$", re.IGNORECASE)
PATIENT_ID = re.compile(r"^[A-Za-z]+_[A-Za-z0-9]+_[A-Za-z0-9]+_\d{8}$")  # TCGA_CS_4941_19960909


def _other_patients_files(folder: Path) -> list[Path]:
    """Slice or mask files of ``folder`` named for another patient: a patient id of the
    dataset's form (``TCGA_CS_4941_19960909``) or a sibling folder's name."""
    def stranger(prefix: str) -> bool:
        return prefix.lower() != folder.name.lower() and (
            bool(PATIENT_ID.match(prefix)) or (folder.parent / prefix).is_dir())
    return sorted(p for p in folder.iterdir() if (m := ANY_SLICE.match(p.name))
                  and stranger(m.group(1)) and p.is_file())


def _numbered(folder: Path, mask: bool) -> dict[int, list[Path]]:
    """Slice number -> the image (or mask) files of ``folder`` carrying it."""
    pattern = _slice_pattern(folder.name, mask)
    found: dict[int, list[Path]] = {}
    for path in folder.iterdir():
        match = pattern.match(path.name)
        if match and path.is_file():
            found.setdefault(int(match.group(1)), []).append(path)
    return found


def is_lgg_patient(folder: str | Path) -> bool:
    """True when ``folder`` is a folder holding ``<folder name>_<n>.tif`` image slices.

    Args:
        folder: the candidate patient folder.

    Returns:
        Whether it holds at least one image slice; mask files alone do not count.
    """
    folder = Path(folder)
    return folder.is_dir() and bool(_numbered(folder, mask=False))


def is_lgg_root(root: str | Path) -> bool:
    """True when ``root`` holds at least one LGG patient folder (:func:`is_lgg_patient`).

    Args:
        root: the candidate dataset folder.

    Returns:
        Whether any subfolder holds ``<subfolder>_<n>.tif`` image slices.
    """
    root = Path(root)
    return root.is_dir() and any(is_lgg_patient(sub) for sub in root.iterdir())


def find_lgg_patient(folder: str | Path, require_masks: bool = False) -> LggPatient:
    """Finds the slices and masks of one patient folder.

    Image slices are ``<folder name>_<n>.tif``, masks ``<folder name>_<n>_mask.tif``
    (``.tiff`` and any letter case are accepted too); other files are ignored,
    and so are masks without an image slice, but not another patient's slices or
    masks: a patient folder holds one patient.

    Args:
        folder: the patient folder.
        require_masks: raise if a slice has no mask.

    Returns:
        The patient's files, slices sorted by slice number.

    Raises:
        InputError: missing folder, no image slices, two files with the same
            slice number, another patient's slice or mask in the folder, or
            (``require_masks``) a missing mask, named by its path.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: patient folder not found")
    images = _numbered(folder, mask=False)
    if not images:
        raise InputError(f"{folder}: no image slices ({folder.name}_<n>.tif)")
    masks = _numbered(folder, mask=True)
    strangers = _other_patients_files(folder)
    if strangers:
        raise InputError(f"{strangers[0]}: not a slice of patient {folder.name}; a patient "
                         "folder holds one patient's slices and masks")
    for number, paths in (*images.items(), *masks.items()):
        if len(paths) > 1:
            shown = ", ".join(sorted(p.name for p in paths))
            raise InputError(f"{folder}: several files for slice {number} ({shown})")
    numbers = sorted(images)
    found_masks = tuple(masks[n][0] if n in masks else None for n in numbers)
    if require_masks:
        for number, mask in zip(numbers, found_masks, strict=True):
            if mask is None:
                raise InputError(f"{folder / f'{folder.name}_{number}_mask.tif'}: mask not "
                                 f"found for slice {images[number][0].name}")
    return LggPatient(patient_id=folder.name, slices=tuple(images[n][0] for n in numbers),
                      masks=found_masks)


def find_lgg_patients(root: str | Path, require_masks: bool = True,
                      modalities: Sequence[str] | None = None,
                      log: Callable[[str], Any] = print) -> list[LggPatient]:
    """Finds every patient of an LGG dataset folder.

    Args:
        root: folder whose subfolders hold one patient each; files in it, and
            subfolders without image slices, are ignored.
        require_masks: raise for a slice without a mask.
        modalities: the channels to be read: a patient for whom one of them is a copy
            of FLAIR (:func:`repeated_flair`) is left out, with a line through ``log``
            naming its folder and the channel. None: every patient, no slice read.
        log: where those lines go.

    Returns:
        The patients, sorted by ``patient_id``.

    Raises:
        InputError: ``root`` missing, not a folder, holding no patient, a bad patient,
            or every patient left out.
    """
    root = check_data_folder(root)
    patients = [find_lgg_patient(sub, require_masks) for sub in sorted(root.iterdir())
                if is_lgg_patient(sub)]
    if not patients:
        raise InputError(f"{root}: no patient folders with <patient>_<n>.tif slices found")
    patients.sort(key=lambda p: p.patient_id)
    if modalities is None:
        return patients
    kept, copied = [], set()
    for patient in patients:
        copies = repeated_flair(patient, modalities)
        if copies:
            log(f"{Path(patient.slices[0]).parent}: left out, {flair_copy_text(copies)}")
            copied.update(copies)
        else:
            kept.append(patient)
    if not kept:
        names = " and ".join(c for c in COPY_CANDIDATES if c in copied)
        raise InputError(f"{root}: every patient left out, their {names} being copies of "
                         f"FLAIR; choose --modalities without {names}")
    return kept


def load_lgg_patient(
    patient: LggPatient, modalities: Sequence[str] = LGG_MODALITIES
) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Loads a patient's slices as one volume, and its masks as class indices.

    Args:
        patient: the files, from :func:`find_lgg_patient`.
        modalities: which channels, in the order wanted, from :data:`LGG_MODALITIES`.

    Returns:
        ``image`` float32 ``(H, W, N, C)``, slice ``k`` of the patient at
        ``[:, :, k]``; ``label`` uint8 ``(H, W, N)``, 2 (edema) where the mask
        is above 127 and 0 elsewhere, or None when no slice has a mask; and
        JSON-serialisable properties: ``case_id``, ``original_shape``
        ``[H, W, N]``, ``slices``, ``masks``, ``modalities``, ``format``.

    Raises:
        InputError: unknown modality, unreadable TIFF, a slice that is not
            ``HxWx3`` or not the size of the first slice, non-finite values, a
            mask that is not ``HxW`` or not its slice's size, masks for some
            slices but not others (naming the first missing one), or a requested
            ``t1``/``t1ce`` channel that is a copy of FLAIR (:func:`repeated_flair`).
    """
    folder = Path(patient.slices[0]).parent
    channels = channel_indices(modalities, folder)
    if not patient.slices or len(patient.masks) != len(patient.slices):
        raise InputError(f"{patient.patient_id}: {len(patient.slices)} slices but "
                         f"{len(patient.masks)} mask entries")
    has_masks = [m is not None for m in patient.masks]
    if any(has_masks) and not all(has_masks):
        missing = Path(patient.slices[has_masks.index(False)])
        raise InputError(f"{missing.with_name(missing.stem + '_mask.tif')}: mask not found for "
                         f"slice {missing.name}, while other slices of {patient.patient_id} "
                         "have one")
    image = label = None
    first = Path(patient.slices[0])
    copies = tuple(m for m in modalities if m in COPY_CANDIDATES)
    for k, (slice_path, mask_path) in enumerate(zip(patient.slices, patient.masks, strict=True)):
        slice_path = Path(slice_path)
        data = read_rgb_slice(slice_path)
        copies = flair_copies(data, copies)
        if image is None:
            height, width = data.shape[:2]
            image = np.empty((height, width, len(patient.slices), len(channels)), np.float32)
        elif data.shape[:2] != (height, width):
            raise InputError(f"{slice_path}: size {shape_text(data.shape[:2])} differs from "
                             f"{first.name} ({height}x{width})")
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            raise InputError(f"{slice_path}: contains NaN or infinite values")
        image[:, :, k, :] = data[:, :, channels]
        if mask_path is not None:
            mask_path = Path(mask_path)
            mask = read_tif(mask_path)
            if mask.ndim == 3 and mask.shape[2] == 1:
                mask = mask[:, :, 0]
            if mask.ndim != 2:
                raise InputError(f"{mask_path}: shape {shape_text(mask.shape)}, expected an "
                                 "HxW single-channel mask")
            if mask.shape != (height, width):
                raise InputError(f"{mask_path}: size {shape_text(mask.shape)} differs from its "
                                 f"slice {slice_path.name} ({height}x{width})")
            if label is None:
                label = np.zeros(image.shape[:3], np.uint8)
            label[:, :, k] = np.where(mask > _MASK_THRESHOLD, EDEMA_CLASS, 0)
    assert image is not None
    if copies:  # a copy of FLAIR passed off as the sequence would mislead the network
        raise InputError(f"{folder}: {flair_copy_text(copies)}; use a model or --modalities "
                         f"without {' and '.join(copies)}")
    properties = {
        "case_id": patient.patient_id,
        "original_shape": [int(s) for s in image.shape[:3]],
        "slices": [str(p) for p in patient.slices],
        "masks": [None if m is None else str(m) for m in patient.masks],
        "modalities": list(modalities),
        "format": LGG_FORMAT,
    }
    return image, label, properties
