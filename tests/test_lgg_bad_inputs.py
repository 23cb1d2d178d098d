"""Bad Kaggle LGG input through predict.py and train.py: one line on stderr naming the file,
exit status 2, no traceback, nothing written.

Each row breaks one file of a small dataset in the Kaggle LGG layout (written by
:func:`data_generators.lgg_synthetic.write_synthetic_lgg`, 64x64 slices): a slice that is
not ``HxWx3``, a slice of another size than the patient's others, a mask of another size
than its slice, a folder holding another patient's slice, a truncated TIFF.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile

import unet3d.cli.predict as predict_cli
import unet3d.cli.train as train_cli
from data_generators.lgg_synthetic import write_synthetic_lgg
from unet3d.artifacts.keras_file import save_model
from unet3d.config import ModelConfig, TrainConfig
from unet3d.models.unet import build_unet3d

SIZE = 64
TINY_2D = ModelConfig(base_filters=2, depth=2, segmentation_levels=1, in_channels=3,
                      spatial_dims=2, dropout=0.0)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lgg_bad")
    write_synthetic_lgg(root / "data", patients=2, slices=4, size=SIZE, seed=3)
    keras.utils.set_random_seed(0)
    config = TrainConfig(model=TINY_2D, modalities=("t1", "flair", "t1ce"),
                         patch_size=(32, 32)).to_dict()
    model = save_model(build_unet3d(TINY_2D), root / "model2d.keras", config)
    return root / "data", model


def _patients(data: Path) -> list[Path]:
    return sorted(p for p in data.iterdir() if p.is_dir())


def not_rgb(data: Path) -> Path:
    bad = _patients(data)[0] / f"{_patients(data)[0].name}_2.tif"
    tifffile.imwrite(bad, np.zeros((SIZE, SIZE), np.uint8), photometric="minisblack")
    return bad


def other_size(data: Path) -> Path:
    bad = _patients(data)[0] / f"{_patients(data)[0].name}_3.tif"
    tifffile.imwrite(bad, np.zeros((SIZE // 2, SIZE // 2, 3), np.uint8), photometric="rgb")
    return bad


def mask_other_size(data: Path) -> Path:
    bad = _patients(data)[0] / f"{_patients(data)[0].name}_1_mask.tif"
    tifffile.imwrite(bad, np.zeros((SIZE, SIZE + 8), np.uint8), photometric="minisblack")
    return bad


def mixed_patients(data: Path) -> Path:
    first, second = _patients(data)
    stranger = second / f"{second.name}_4.tif"
    return Path(shutil.copy(stranger, first / stranger.name))


def truncated(data: Path) -> Path:
    bad = _patients(data)[0] / f"{_patients(data)[0].name}_2.tif"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return bad


BREAKS: dict[str, Callable[[Path], Path]] = {
    "slice_not_hxwx3": not_rgb, "slice_of_another_size": other_size,
    "mask_of_another_size": mask_other_size, "folder_mixing_patients": mixed_patients,
    "truncated_tiff": truncated,
}


def _run(main, argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err


@pytest.mark.parametrize("kind", list(BREAKS))
def test_predict_refuses_bad_lgg_input(kind, assets, tmp_path, capsys):
    data, model = assets
    data = Path(shutil.copytree(data, tmp_path / "data"))
    bad = BREAKS[kind](data)
    patient = _patients(data)[0]
    out = tmp_path / "preds"
    code, err = _run(predict_cli.main, ["--model", str(model), "--input", str(patient),
                                        "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("predict.py: error: ") and str(bad) in lines[0], lines[0]
    assert code == 2
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize("kind", list(BREAKS))
def test_train_refuses_bad_lgg_input(kind, assets, tmp_path, capsys):
    data, _ = assets
    data = Path(shutil.copytree(data, tmp_path / "data"))
    bad = BREAKS[kind](data)
    run = tmp_path / "run"
    argv = ["--data", str(data), "--out", str(run), "--cache-dir", str(tmp_path / "cache"),
            "--spatial-dims", "2", "--modalities", "t1", "flair", "t1ce",
            "--base-filters", "2", "--depth", "3", "--patch-size", "32", "32",
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2"]
    code, err = _run(train_cli.main, argv, capsys)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train.py: error: ") and str(bad) in lines[0], lines[0]
    assert code == 2
    assert not run.exists() or not [p for p in run.rglob("*") if p.is_file()]
