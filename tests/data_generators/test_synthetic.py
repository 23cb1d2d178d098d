"""Tests for data_generators.synthetic."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from data_generators.io import find_cases
from data_generators.nifti import load_case
from data_generators.synthetic import make_synthetic_case, write_synthetic_dataset
from unet3d_base.errors import InputError

SHAPE = (48, 48, 40)


@pytest.fixture(scope="module")
def case():
    return make_synthetic_case(SHAPE, np.random.default_rng(0))


def test_labels_are_nested(case):
    image, label = case
    assert label.dtype == np.uint8 and set(np.unique(label).tolist()) == {0, 1, 2, 4}
    # necrosis touches only necrosis or enhancing; enhancing never touches background
    grown = ndimage.binary_dilation(label == 1)
    assert np.all(np.isin(label[grown], (1, 4)))
    grown = ndimage.binary_dilation(label == 4)
    assert np.all(np.isin(label[grown], (1, 2, 4)))
    brain = (image > 0).any(axis=-1)
    assert np.all(brain[label > 0])
    assert np.all(image[~brain] == 0) and np.all(image[brain] > 0)


def test_tissue_contrasts(case):
    image, label = case
    t1, t1ce, t2, flair = (image[..., c] for c in range(4))
    brain = image[..., 0] > 0
    normal = brain & (label == 0)

    def mean(channel, mask):
        return float(channel[mask].mean())

    assert mean(t2, label == 2) > mean(t2, normal)
    assert mean(flair, label == 2) > mean(flair, normal)
    assert mean(t1ce, label == 4) > mean(t1, label == 4)
    assert mean(t1ce, label == 4) > mean(t1ce, normal)
    assert mean(t2, label == 1) > mean(t2, normal)
    assert mean(t1, label == 1) < mean(t1, normal)


def test_deterministic(case):
    image, label = make_synthetic_case(SHAPE, np.random.default_rng(0))
    assert np.array_equal(image, case[0]) and np.array_equal(label, case[1])
    other, _ = make_synthetic_case(SHAPE, np.random.default_rng(1))
    assert not np.array_equal(other, case[0])


def test_write_and_load_dataset(tmp_path):
    dirs = write_synthetic_dataset(tmp_path / "synth", n_cases=3, shape=SHAPE, seed=2)
    assert [d.name for d in dirs] == ["Synth_000", "Synth_001", "Synth_002"]
    cases = find_cases(tmp_path / "synth")
    assert [c.case_id for c in cases] == ["Synth_000", "Synth_001", "Synth_002"]
    image, label, props = load_case(cases[0])
    assert image.shape == SHAPE + (4,) and props["spacing"] == [1.0, 1.0, 1.0]
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}
    img = nib.load(str(cases[0].images[0]))
    assert img.get_data_dtype() == np.int16
    assert np.allclose(np.diag(img.affine)[:3], [-1, -1, 1])

    # same parameters: nothing rewritten
    stamp = cases[0].images[0].stat().st_mtime_ns
    write_synthetic_dataset(tmp_path / "synth", n_cases=3, shape=SHAPE, seed=2)
    assert cases[0].images[0].stat().st_mtime_ns == stamp
    # same seed elsewhere: identical voxels
    write_synthetic_dataset(tmp_path / "twin", n_cases=1, shape=SHAPE, seed=2)
    twin = find_cases(tmp_path / "twin")[0]
    for a, b in zip(cases[0].images + (cases[0].label,), twin.images + (twin.label,),
                    strict=True):
        assert np.array_equal(np.asanyarray(nib.load(str(a)).dataobj),
                              np.asanyarray(nib.load(str(b)).dataobj))
    # other parameters: regenerated
    write_synthetic_dataset(tmp_path / "synth", n_cases=2, shape=SHAPE, seed=3)
    assert [c.case_id for c in find_cases(tmp_path / "synth")] == ["Synth_000", "Synth_001"]


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "important.txt").write_text("keep me")
    with pytest.raises(InputError, match="important.txt"):
        write_synthetic_dataset(tmp_path / "mine", n_cases=1, shape=(32, 32, 32))
    assert (tmp_path / "mine" / "important.txt").exists()
