"""The Kaggle LGG reader on the 21 real patients of ``../shared/data/lgg/kaggle_3m``: every
slice read, and the channels the dataset fills with FLAIR (where a sequence was not
acquired) found, left out of training and refused for prediction. The expected answers
are worked out here from the file names and from tifffile and numpy directly."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from data_generators.geometry import load_case_for_model
from data_generators.layouts import find_any_cases, layout_of
from data_generators.lgg import LGG_MODALITIES, find_lgg_patients, load_lgg_patient, repeated_flair
from unet3d_base.errors import InputError

PATIENTS, SLICES, SIZE = 21, 733, 256
RGB = {"t1": 0, "flair": 1, "t1ce": 2}  # the dataset's channel order (its README)
# the outcome of the numpy comparison below, written down so that a change shows
KNOWN_COPIES = {
    "TCGA_DU_7013_19860523": ("t1", "t1ce"),
    "TCGA_DU_7301_19911112": ("t1ce",),
    "TCGA_FG_7634_20000128": ("t1ce",),
    "TCGA_HT_7877_19980917": ("t1", "t1ce"),
    "TCGA_HT_A616_19991226": ("t1", "t1ce"),
}
T1CE_ONLY = "TCGA_DU_7301_19911112"  # real t1, t1ce a copy of FLAIR
BOTH = "TCGA_DU_7013_19860523"  # FLAIR in all three channels


@dataclass(frozen=True)
class Truth:
    numbers: tuple[int, ...]  # the n of every <patient>_<n>.tif, sorted
    copies: tuple[str, ...]  # t1 / t1ce equal to FLAIR on every slice
    on_some: tuple[str, ...]  # t1 / t1ce equal to FLAIR on at least one slice


def _image(folder: Path, n: int) -> Path:
    return folder / f"{folder.name}_{n}.tif"


@pytest.fixture(scope="module")
def truth(lgg_dir) -> dict[str, Truth]:
    """Per patient folder: its slice numbers and its channels equal to FLAIR, from tifffile."""
    found = {}
    for folder in sorted(p for p in lgg_dir.iterdir() if p.is_dir()):
        pattern = re.compile(rf"{re.escape(folder.name)}_(\d+)\.tif")
        numbers = sorted(int(m.group(1)) for m in map(pattern.fullmatch, os.listdir(folder)) if m)
        same = {name: [] for name in ("t1", "t1ce")}
        for n in numbers:
            rgb = tifffile.imread(_image(folder, n))
            for name, flags in same.items():
                flags.append(bool(np.array_equal(rgb[..., RGB[name]], rgb[..., RGB["flair"]])))
        found[folder.name] = Truth(tuple(numbers),
                                   tuple(name for name, f in same.items() if all(f)),
                                   tuple(name for name, f in same.items() if any(f)))
    return found


def _one_line(message: str, start: str) -> str:
    assert "\n" not in message and message.startswith(start), message
    return message


def _named(line: str) -> tuple[str, ...]:
    """The channels a line says are copies of FLAIR."""
    match = re.search(r"its (t1(?:ce)?(?: and t1ce)?) channels? (?:is a copy|are copies) of "
                      r"FLAIR", line)
    assert match, line
    return tuple(match.group(1).split(" and "))


def test_every_real_patient_is_read_slice_for_slice(lgg_dir, truth):
    patients = find_lgg_patients(lgg_dir)
    assert [p.patient_id for p in patients] == sorted(truth) and len(patients) == PATIENTS
    total = 0
    for patient in patients:
        folder, numbers = lgg_dir / patient.patient_id, truth[patient.patient_id].numbers
        assert list(patient.slices) == [_image(folder, n) for n in numbers]
        # every channel that is a real sequence; the FLAIR copies are refused (below)
        real = tuple(m for m in LGG_MODALITIES if m not in truth[patient.patient_id].copies)
        image, label, properties = load_lgg_patient(patient, real)
        assert image.shape == (SIZE, SIZE, len(numbers), len(real)) and image.dtype == np.float32
        assert label is not None and label.shape == image.shape[:3]
        for k, n in enumerate(numbers):
            rgb = tifffile.imread(_image(folder, n))
            assert rgb.shape == (SIZE, SIZE, 3) and rgb.dtype == np.uint8, (folder, n)
            assert np.array_equal(image[:, :, k], rgb[..., [RGB[m] for m in real]]), (folder, n)
            mask = tifffile.imread(folder / f"{folder.name}_{n}_mask.tif")
            assert mask.shape == (SIZE, SIZE) and mask.dtype == np.uint8, (folder, n)
            assert set(np.unique(mask).tolist()) <= {0, 255}, (folder, n)
            assert np.array_equal(label[:, :, k] == 2, mask == 255), (folder, n)
        assert set(np.unique(label).tolist()) == {0, 2}  # every patient has tumor slices
        assert properties["original_shape"] == [SIZE, SIZE, len(numbers)]
        total += len(numbers)
    assert total == SLICES


def test_repeated_flair_on_every_real_patient(lgg_dir, truth):
    patients = find_lgg_patients(lgg_dir)
    found = {p.patient_id: repeated_flair(p) for p in patients}
    assert found == {pid: t.copies for pid, t in truth.items()}
    assert {pid: copies for pid, copies in found.items() if copies} == KNOWN_COPIES
    # equal to FLAIR on some slices only (blank slices): a real sequence
    partial = {pid for pid, t in truth.items() if t.on_some != t.copies}
    assert partial and not any(found[pid] for pid in partial)
    by_id = {p.patient_id: p for p in patients}
    assert repeated_flair(by_id[T1CE_ONLY], ("t1", "flair")) == ()
    assert repeated_flair(by_id[BOTH], ("t1ce", "t2")) == ("t1ce",)


@pytest.mark.parametrize("modalities", [LGG_MODALITIES, ("flair",), ("t1", "flair"),
                                        ("flair", "t1ce")])
def test_training_leaves_out_patients_whose_channel_repeats_flair(lgg_dir, truth, modalities):
    lines = []
    cases = find_any_cases(lgg_dir, modalities, require_label=True, log=lines.append)
    copied = {pid: tuple(c for c in t.copies if c in modalities) for pid, t in truth.items()}
    left_out = sorted(pid for pid, copies in copied.items() if copies)
    assert [c.case_id for c in cases] == sorted(set(truth) - set(left_out))
    assert all(c.modalities == tuple(modalities) for c in cases)
    assert len(lines) == len(left_out)
    for pid, line in zip(left_out, lines, strict=True):
        _one_line(line, f"{lgg_dir / pid}: ")
        assert _named(line) == copied[pid]
    if modalities == ("flair",):
        assert len(cases) == PATIENTS and not lines


def test_every_patient_left_out_is_refused(lgg_dir, tmp_path):
    root = tmp_path / "kaggle_3m"
    root.mkdir()
    for pid, copies in KNOWN_COPIES.items():
        if copies == ("t1", "t1ce"):
            (root / pid).symlink_to(lgg_dir / pid, target_is_directory=True)
    lines = []
    with pytest.raises(InputError) as excinfo:
        find_lgg_patients(root, modalities=("t1", "flair"), log=lines.append)
    message = _one_line(str(excinfo.value), f"{root}: ")
    assert "every patient left out" in message and "without t1" in message
    assert "t1ce" not in message and len(lines) == 3
    assert len(find_lgg_patients(root, modalities=("flair",), log=lines.append)) == 3


def test_prediction_refuses_a_channel_that_repeats_flair(lgg_dir, truth):
    """As the prediction pipeline reads one patient: its layout finds it, then it is loaded."""
    for pid, modalities, named in [(T1CE_ONLY, LGG_MODALITIES, ("t1ce",)),
                                   (T1CE_ONLY, ("flair", "t1ce"), ("t1ce",)),
                                   (BOTH, ("t1", "flair"), ("t1",)),
                                   (BOTH, ("t1ce", "t1"), ("t1", "t1ce"))]:
        folder = lgg_dir / pid
        case = layout_of(folder).find_case(folder, modalities)
        with pytest.raises(InputError) as excinfo:
            load_case_for_model(case)
        assert _named(_one_line(str(excinfo.value), f"{folder}: ")) == named
    folder = lgg_dir / T1CE_ONLY
    image, label, properties, _ = load_case_for_model(
        layout_of(folder).find_case(folder, ("t1", "flair")))
    assert image.shape[-1] == 2 and properties["case_id"] == T1CE_ONLY
    image, _, _, _ = load_case_for_model(layout_of(lgg_dir / BOTH).find_case(lgg_dir / BOTH,
                                                                            ("flair",)))
    assert image.shape[-1] == 1 and len(truth[BOTH].numbers) in image.shape
