"""Fixtures for the data_generators tests: the shared BraTS 2018 data and tiny NIfTI cases."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from dg_helpers import save_nifti

KEYS_2018 = ("t1", "t1ce", "t2", "flair", "seg")
KEYS_2023 = ("t1n", "t1c", "t2w", "t2f", "seg")


@pytest.fixture(scope="session")
def real_case(brats_dir: Path):
    """The first real case, as CaseFiles."""
    from data_generators.io import find_cases

    return find_cases(brats_dir)[0]


@pytest.fixture()
def make_case(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a tiny case folder; returns the folder.

    Image channel ``c`` holds ``(c + 1) * 100 + x`` inside a box, 0 outside;
    the label holds 1, 2 and 4 blocks (BraTS 2017 values).
    """

    def make(case_id: str = "Case_001", shape=(8, 9, 10), naming: str = "2018",
             root: Path | None = None, with_label: bool = True, ext: str = ".nii.gz") -> Path:
        folder = (root or tmp_path / "data") / case_id
        keys = KEYS_2018 if naming == "2018" else KEYS_2023
        sep = "_" if naming == "2018" else "-"
        x = np.arange(shape[0], dtype=np.int16)[:, None, None]
        for c, key in enumerate(keys[:4]):
            data = np.zeros(shape, dtype=np.int16)
            inner = (slice(1, -1),) * 3
            data[inner] = ((c + 1) * 100 + np.broadcast_to(x, shape))[inner]
            save_nifti(folder / f"{case_id}{sep}{key}{ext}", data)
        if with_label:
            seg = np.zeros(shape, dtype=np.int16)
            seg[2:4, 2:4, 2:4] = 2
            seg[3, 3, 3] = 1
            seg[4:6, 4:6, 4:6] = 4
            save_nifti(folder / f"{case_id}{sep}seg{ext}", seg)
        return folder

    return make
