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
fingerprints and rebuilds either.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from data_generators.nifti import load_case

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


def find_any_cases(root: str | Path, modalities: Sequence[str], require_label: bool = True
                   ) -> list[CaseFiles | LggCase]:
    """The cases of a BraTS folder, or the patients of a Kaggle LGG folder, sorted by id."""
    if is_lgg_root(root):
        return [LggCase(p, tuple(modalities))
                for p in find_lgg_patients(root, require_masks=require_label)]
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
