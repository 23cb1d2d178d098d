"""The three channels of a Kaggle LGG slice: reading a slice, choosing channels, and
telling the channels that only repeat FLAIR.

A slice's R, G and B channels hold pre-contrast T1 (``t1``), FLAIR (``flair``) and
post-contrast T1 (``t1ce``) (:data:`LGG_MODALITIES`). Where a patient's pre- or
post-contrast sequence was not acquired, the dataset fills that channel with FLAIR,
byte for byte (6 of its 110 patients lack pre-contrast, 9 post-contrast). Such a
channel is no T1: :func:`flair_copies` tells it on one slice, and
:func:`data_generators.lgg.repeated_flair` on every slice of a patient.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from unet3d_base.errors import InputError

# the channel order of the RGB slices
LGG_MODALITIES: tuple[str, ...] = ("t1", "flair", "t1ce")
FLAIR_CHANNEL = LGG_MODALITIES.index("flair")
# the channels the dataset fills with a copy of FLAIR where their sequence is missing
COPY_CANDIDATES: tuple[str, ...] = ("t1", "t1ce")
_TIF_ERRORS = (tifffile.TiffFileError, OSError, ValueError, EOFError, struct.error, KeyError,
               IndexError)


def read_tif(path: Path) -> np.ndarray:
    """The image of a TIFF file; InputError naming ``path`` if it cannot be read."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return np.asarray(tifffile.imread(path))
    except _TIF_ERRORS as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a readable TIFF file ({detail})") from None


def tif_shape(path: Path) -> tuple[int, ...]:
    """The shape of a TIFF file's first page, read from its header only."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        with tifffile.TiffFile(path) as tif:
            return tuple(int(s) for s in tif.pages[0].shape)
    except _TIF_ERRORS as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a readable TIFF file ({detail})") from None


def shape_text(shape: Sequence[int]) -> str:
    """``(240, 240)`` -> ``240x240``."""
    return "x".join(str(int(s)) for s in shape)


def read_rgb_slice(path: Path) -> np.ndarray:
    """An ``HxWx3`` image slice; InputError naming ``path`` if it is unreadable or not RGB."""
    data = read_tif(path)
    if data.ndim != 3 or data.shape[2] != 3:
        raise InputError(f"{path}: shape {shape_text(data.shape)}, expected an HxWx3 RGB slice")
    return data


def channel_indices(modalities: Sequence[str], folder: Path) -> list[int]:
    """The RGB channels holding ``modalities``; InputError naming ``folder`` for others."""
    unknown = [m for m in modalities if m not in LGG_MODALITIES]
    if unknown or not modalities:
        raise InputError(f"{folder}: Kaggle LGG slices hold {', '.join(LGG_MODALITIES)} (their "
                         f"RGB channels), not {', '.join(unknown) or 'no sequence'}; train with "
                         f"--modalities from those, or predict with a model trained on them")
    return [LGG_MODALITIES.index(m) for m in modalities]


def flair_copies(rgb: np.ndarray, channels: Sequence[str] = COPY_CANDIDATES
                 ) -> tuple[str, ...]:
    """Which of ``channels`` (from :data:`COPY_CANDIDATES`, others are ignored) are
    byte-identical to FLAIR in one ``HxWx3`` slice, in :data:`LGG_MODALITIES` order."""
    flair = rgb[..., FLAIR_CHANNEL]
    return tuple(name for name in COPY_CANDIDATES if name in channels
                 and np.array_equal(rgb[..., LGG_MODALITIES.index(name)], flair))


def flair_copy_text(channels: Sequence[str]) -> str:
    """``("t1ce",)`` -> ``its t1ce channel is a copy of FLAIR on every slice (t1ce was
    not acquired)``."""
    names = " and ".join(channels)
    plural = len(channels) > 1
    return (f"its {names} channel{'s' if plural else ''} {'are copies' if plural else 'is a copy'}"
            f" of FLAIR on every slice ({names} {'were' if plural else 'was'} not acquired)")


def repeated_flair(patient, channels: Sequence[str] = COPY_CANDIDATES
                   ) -> tuple[str, ...]:
    """Which of the patient's ``t1`` and ``t1ce`` channels are byte-identical to its FLAIR
    channel on every slice: copies the dataset made where the sequence was not acquired.

    Each slice is read once at most, and none after the first on which no channel in
    question repeats FLAIR.

    Args:
        patient: the files, from :func:`find_lgg_patient`.
        channels: the channels in question; names other than ``t1``, ``t1ce`` are ignored.

    Returns:
        Those channels, in :data:`LGG_MODALITIES` order; empty for a patient without slices.

    Raises:
        InputError: an unreadable slice, or one that is not ``HxWx3``.
    """
    remaining = tuple(c for c in COPY_CANDIDATES if c in channels) if patient.slices else ()
    for path in patient.slices:
        if not remaining:
            break
        remaining = flair_copies(read_rgb_slice(Path(path)), remaining)
    return remaining
