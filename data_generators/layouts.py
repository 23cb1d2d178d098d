"""The dataset layouts a folder may hold, behind one interface for training and prediction.

* **BraTS**: one folder per case holding a NIfTI volume per modality
  (:mod:`data_generators.io`).
* **Kaggle LGG** (Buda et al.): one folder per patient holding RGB TIF slices
  and their masks (:mod:`data_generators.lgg`). A patient's slices are stacked
  into a volume ``(H, W, N, C)`` for a 2D network to sample and segment slice
  by slice. The TIFs carry no voxel spacing or orientation: the volume is
  taken as already in the model's space.

:class:`LggCase` answers to the same ``case_id`` / ``images`` / ``label``
names as :class:`data_generators.io.CaseFiles`, so the preprocessed cache
fingerprints and rebuilds either. A :class:`Layout` says how its cases are found,
loaded and written back; :func:`layout_of` tells which one a folder holds, so that
training and prediction never ask which layout they hold.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.io import CaseFiles, find_case, find_cases
from data_generators.lgg import (
    LggPatient,
    find_lgg_patient,
    find_lgg_patients,
    is_lgg_patient,
    is_lgg_root,
    load_lgg_patient,
)
from data_generators.lgg_predictions import prediction_path, save_lgg_predictions
from data_generators.nifti import load_case, save_segmentation

# a stacked LGG patient is taken as 1 mm and in the model's (LPS) axes: nothing to reorient
LGG_AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class LggCase:
    """A Kaggle LGG patient read with the given modalities (RGB channels)."""

    patient: LggPatient
    modalities: tuple[str, ...]

    @property
    def case_id(self) -> str:
        return self.patient.patient_id

    @property
    def images(self) -> tuple[Path, ...]:
        """Every file of the patient, slices then masks (what the cache fingerprints)."""
        return (*self.patient.slices, *(m for m in self.patient.masks if m is not None))

    @property
    def label(self) -> Path | None:
        return next((m for m in self.patient.masks if m is not None), None)


def find_any_cases(root: str | Path, modalities: Sequence[str], require_label: bool = True,
                   log: Callable[[str], Any] = print) -> list[CaseFiles | LggCase]:
    """The cases of a BraTS folder, or the patients of a Kaggle LGG folder, sorted by id;
    LGG patients whose requested channel is a copy of FLAIR left out, a line each to ``log``."""
    if is_lgg_root(root):
        return [LggCase(p, tuple(modalities)) for p in find_lgg_patients(
            root, require_masks=require_label, modalities=modalities, log=log)]
    return find_cases(root, modalities, require_label)


def find_any_case(folder: str | Path, modalities: Sequence[str], require_label: bool = False
                  ) -> CaseFiles | LggCase:
    """One BraTS case folder, or one Kaggle LGG patient folder."""
    if is_lgg_patient(folder):
        return LggCase(find_lgg_patient(folder, require_masks=require_label), tuple(modalities))
    return find_case(folder, modalities, require_label)


def load_any_case(case: CaseFiles | LggCase, label_convention: str = "brats2017"
                  ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """:func:`data_generators.nifti.load_case`, or a stacked LGG patient with the same
    properties (``affine`` :data:`LGG_AFFINE`, ``spacing`` 1 mm: the TIFs hold neither)."""
    if not isinstance(case, LggCase):
        return load_case(case, label_convention)
    image, label, properties = load_lgg_patient(case.patient, case.modalities)
    properties = {**properties, "affine": LGG_AFFINE.tolist(), "spacing": [1.0, 1.0, 1.0],
                  "reference_file": str(case.patient.slices[0])}
    return image, label, properties


class Layout:
    """How one dataset layout finds, loads and writes back its cases.

    Attributes:
        title: str. The layout's name in messages.
        slices: bool. Its cases are stacks of 2D slices, for a 2D network.
        own_masks: bool. Its masks lie beside the images, in the layout's own format:
            a prediction scores them itself (no BraTS label maps to score or review).
    """

    title = ""
    slices = False
    own_masks = False

    def holds_case(self, folder: Path) -> bool:
        """Whether ``folder`` is one case of this layout."""
        raise NotImplementedError

    def find_case(self, folder: str | Path, modalities: Sequence[str],
                  require_label: bool = False) -> CaseFiles | LggCase:
        raise NotImplementedError

    def segmentation_path(self, out_dir: Path, folder: Path) -> Path:
        """The prediction file written for the case in ``folder``, the last of them if
        several (named after the folder, as the case is)."""
        raise NotImplementedError

    def save(self, classes: np.ndarray, labels: np.ndarray, case: CaseFiles | LggCase,
             properties: dict[str, Any], out_dir: Path) -> None:
        """Writes a prediction on the case's own grid: ``classes`` (0..3) and ``labels``
        (the requested label convention), atomically."""
        raise NotImplementedError


class BratsLayout(Layout):
    """One folder per case, a NIfTI volume per modality; a NIfTI label map out."""

    title = "BraTS"

    def holds_case(self, folder: Path) -> bool:
        return folder.is_dir() and any(
            p.is_file() and p.name.lower().endswith((".nii", ".nii.gz")) for p in folder.iterdir())

    def find_case(self, folder, modalities, require_label=False) -> CaseFiles:
        return find_case(folder, modalities, require_label)

    def segmentation_path(self, out_dir: Path, folder: Path) -> Path:
        return out_dir / f"{Path(folder).name}.nii.gz"

    def save(self, classes, labels, case, properties, out_dir) -> None:
        save_segmentation(labels, properties, out_dir / f"{case.case_id}.nii.gz")


class LggLayout(Layout):
    """A Kaggle LGG patient's RGB TIF slices; a ``<patient>_<n>_pred.tif`` mask per slice."""

    title = "Kaggle LGG slices"
    slices = True
    own_masks = True

    def holds_case(self, folder: Path) -> bool:
        return is_lgg_patient(folder)

    def find_case(self, folder, modalities, require_label=False) -> LggCase:
        return LggCase(find_lgg_patient(folder, require_masks=require_label),
                       tuple(modalities))

    def segmentation_path(self, out_dir: Path, folder: Path) -> Path:
        patient = find_lgg_patient(folder)
        return prediction_path(out_dir, patient.patient_id, patient.slices[-1])

    def save(self, classes, labels, case, properties, out_dir) -> None:
        save_lgg_predictions(classes, case.patient, out_dir)


LAYOUTS = (LggLayout(), BratsLayout())  # the first that recognises a folder reads it


def layout_of(folder: str | Path) -> Layout:
    """The layout of a case folder, or of the case folders inside a dataset folder (the
    first one decides); BraTS when none recognises it (its errors then say what is
    missing)."""
    folder = Path(folder)
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    for candidate in [folder, *subfolders[:1]]:
        for layout in LAYOUTS:
            if layout.holds_case(candidate):
                return layout
    return LAYOUTS[-1]


def is_case_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is one case of some layout (not a folder of cases)."""
    return any(layout.holds_case(Path(folder)) for layout in LAYOUTS)
