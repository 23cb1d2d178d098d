"""Finding BraTS cases stored as NIfTI files: the modality and label files of a case folder.

Loading and saving the volumes themselves is :mod:`data_generators.nifti`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data_generators.labels import MODALITIES
from unet3d_base.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")

# modality -> file-name keys accepted after the case prefix (BraTS 2017-2021, BraTS 2023)
_KEYS: dict[str, tuple[str, ...]] = {
    "t1": ("t1", "t1n"),
    "t1ce": ("t1ce", "t1c"),
    "t2": ("t2", "t2w"),
    "flair": ("flair", "t2f"),
    "seg": ("seg",),
}


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case.

    Args:
        case_id: str. The case folder's name.
        images: tuple of Path. One file per modality, in the requested order.
        label: Path or None. The segmentation, if present.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


def _nifti_stem(name: str) -> str | None:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix):
            return lower[: -len(suffix)]
    return None


def _matches(stem: str, key: str) -> bool:
    return re.search(rf"(^|[_\-.]){re.escape(key)}$", stem) is not None


def _pick(case_dir: Path, files: list[Path], name: str) -> Path | None:
    keys = _KEYS.get(name.lower(), (name.lower(),))
    hits = [f for f in files if any(_matches(_nifti_stem(f.name) or "", k) for k in keys)]
    if len(hits) > 1:
        shown = ", ".join(sorted(f.name for f in hits))
        raise InputError(f"{case_dir}: several files for {name} ({shown})")
    return hits[0] if hits else None


def find_case(
    case_dir: str | Path,
    modalities: Sequence[str] = MODALITIES,
    require_label: bool = False,
) -> CaseFiles:
    """Finds the modality and label files of one case folder.

    Accepts ``<case>_{t1,t1ce,t2,flair,seg}.nii[.gz]`` (BraTS 2017-2021) and
    ``<case>-{t1n,t1c,t2w,t2f,seg}.nii[.gz]`` (BraTS 2023), matched by
    file-name suffix, case-insensitively.

    Args:
        case_dir: the case folder.
        modalities: modality names, in the channel order wanted.
        require_label: raise if there is no segmentation file.

    Returns:
        The case's files.

    Raises:
        InputError: missing folder, missing or duplicated modality, or a
            missing label when ``require_label``.
    """
    case_dir = Path(case_dir)
    if not case_dir.is_dir():
        raise InputError(f"{case_dir}: case folder not found")
    files = sorted(
        f for f in case_dir.iterdir() if f.is_file() and _nifti_stem(f.name) is not None
    )
    images = []
    for modality in modalities:
        found = _pick(case_dir, files, modality)
        if found is None:
            raise InputError(f"{case_dir}: no {modality} image (*_{modality}.nii[.gz])")
        images.append(found)
    label = _pick(case_dir, files, "seg")
    if label is None and require_label:
        raise InputError(f"{case_dir}: no segmentation (*_seg.nii[.gz])")
    return CaseFiles(case_id=case_dir.name, images=tuple(images), label=label)


def find_cases(
    root: str | Path,
    modalities: Sequence[str] = MODALITIES,
    require_label: bool = True,
) -> list[CaseFiles]:
    """Finds every case in a folder of case folders.

    Args:
        root: folder whose subfolders hold one case each; subfolders without
            NIfTI files are ignored.
        modalities: modality names, in channel order.
        require_label: raise for a case without a segmentation.

    Returns:
        The cases, sorted by ``case_id``.

    Raises:
        InputError: ``root`` missing, not a folder, holding no case, or a bad case.
    """
    root = check_data_folder(root)
    cases = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if any(f.is_file() and _nifti_stem(f.name) is not None for f in sub.iterdir()):
            cases.append(find_case(sub, modalities, require_label))
    if not cases:
        raise InputError(f"{root}: no case folders with NIfTI files found")
    return sorted(cases, key=lambda c: c.case_id)


def check_data_folder(root: str | Path) -> Path:
    """``root`` as a Path; InputError if it is missing or not a folder."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: data folder not found")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    return root


def modality_name(path: Path) -> str:
    """``.../X_t1ce.nii.gz`` -> ``t1ce``; BraTS 2023 keys map back (``t1c`` -> ``t1ce``)."""
    stem = _nifti_stem(Path(path).name) or Path(path).name
    key = re.split(r"[_\-.]", stem)[-1]
    for name, keys in _KEYS.items():
        if key in keys:
            return name
    return key
