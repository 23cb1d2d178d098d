"""Bad input for every command-line tool, in one table.

``train.py``, ``predict.py``, ``unet3d-evaluate`` and
``unet3d-export`` must answer each row with exactly one line on
stderr, ``<prog>: error: <message>``, that names the file or option at fault,
exit with status 2, print no traceback and leave no output file behind (no
``last.keras``/``best.keras`` or other run files for train, no ``<case>.nii.gz``
or ``<case>.json`` for predict, no CSV for evaluate, no ``.tflite``/``.json``
for export). Each CLI is called in-process through ``main(argv)``.

Bad data is spread over train.py (every case of a BraTS folder is loaded and
cached before training starts) and predict.py (one case folder as --input).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import nibabel as nib
import numpy as np
import pytest

import unet3d.cli.evaluate as evaluate_cli
import unet3d.cli.export as export_cli
import unet3d.cli.predict as predict_cli
import unet3d.cli.train as train_cli
from data_generators.synthetic import write_synthetic_dataset
from unet3d.artifacts.keras_file import save_model
from unet3d.config import ModelConfig, TrainConfig
from unet3d.models.unet import build_unet3d

SHAPE = (32, 32, 32)  # the smallest synthetic case
CASE = "Synth_001"  # the case that gets broken
TINY = ModelConfig(base_filters=2, depth=2, segmentation_levels=1)  # stride 2
PROGS = {"train": "train.py", "predict": "predict.py", "evaluate": "evaluate",
         "export": "export"}
MAINS = {"train": train_cli.main, "predict": predict_cli.main, "evaluate": evaluate_cli.main,
         "export": export_cli.main}


@dataclass(frozen=True)
class Assets:
    """Read-only inputs shared by every row (copied before anything breaks them)."""

    data: Path  # a good BraTS folder of three synthetic cases
    model: Path  # a tiny .keras U-Net with its TrainConfig inside
    model_3ch: Path  # takes 3 channels, but its config lists 4 modalities
    lambda_model: Path  # holds a Lambda layer that would create `marker` if run
    marker: Path
    tflite: Path  # random bytes named .tflite


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("bad_inputs")
    write_synthetic_dataset(root / "data", n_cases=3, shape=SHAPE, seed=0)
    keras.utils.set_random_seed(0)
    config = TrainConfig(model=TINY, patch_size=(16, 16, 16)).to_dict()
    model = save_model(build_unet3d(TINY), root / "model.keras", config)
    three = ModelConfig(in_channels=3, base_filters=2, depth=2, segmentation_levels=1)
    model_3ch = save_model(build_unet3d(three), root / "model_3ch.keras", config)

    marker = root / "lambda_was_executed"
    inputs = keras.Input((None, None, None, 4))
    touch = keras.layers.Lambda(lambda x, p=str(marker): (open(p, "w").close(), x)[1])
    lambda_model = keras.Model(inputs, touch(inputs))  # building calls the function once
    marker.unlink(missing_ok=True)
    lambda_model = save_model(lambda_model, root / "lambda.keras", config)
    assert not marker.exists()

    tflite = root / "corrupt.tflite"
    tflite.write_bytes(np.random.default_rng(0).bytes(4096))
    return Assets(root / "data", model, model_3ch, lambda_model, marker, tflite)


class Workspace:
    """Per-row scratch folder: a copy of the data, output paths, a regular file."""

    def __init__(self, root: Path, assets: Assets) -> None:
        self.root = root
        self.assets = assets
        self.run = root / "run"  # train --out
        self.cache = root / "cache"
        self.preds = root / "preds"  # predict --out
        self.pred = root / "pred"  # evaluate --pred
        self.tflite = root / "out.tflite"  # export --out
        self.afile = root / "afile"  # a regular file: nothing can be written below it
        self.afile.write_text("not a folder\n")
        self._data: Path | None = None

    def data(self) -> Path:
        """A private copy of the good dataset."""
        if self._data is None:
            self._data = self.root / "data"
            shutil.copytree(self.assets.data, self._data)
        return self._data

    def case(self) -> Path:
        return self.data() / CASE

    def file(self, key: str) -> Path:
        return self.case() / f"{CASE}_{key}.nii.gz"

    def empty_dir(self) -> Path:
        folder = self.root / "empty"
        folder.mkdir()
        return folder

    def predictions(self) -> Path:
        """evaluate --pred: every ground-truth segmentation copied as a prediction."""
        for case in sorted(p for p in self.data().iterdir() if p.is_dir()):
            self.pred.mkdir(exist_ok=True)
            shutil.copy(case / f"{case.name}_seg.nii.gz", self.pred / f"{case.name}.nii.gz")
        return self.pred


def rewrite(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    """Replaces a NIfTI file's voxels (dtype kept) and optionally its affine."""
    img = nib.load(path)
    affine = img.affine if affine is None else affine
    out = nib.Nifti1Image(np.asarray(data), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    nib.save(out, str(path))
    return path


def voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


# ---- the command lines ---------------------------------------------------------------
def train_argv(ws: Workspace, *extra: str, data: Path | None = None) -> list[str]:
    """Tiny options, so that anything that gets past the checks would still be quick."""
    return ["--data", str(data if data is not None else ws.data()), "--out", str(ws.run),
            "--cache-dir", str(ws.cache), "--patch-size", "16", "--depth", "3",
            "--base-filters", "2", "--epochs", "1", "--steps-per-epoch", "1",
            "--batch-size", "1", "--no-augment", *extra]


def predict_argv(ws: Workspace, *extra: str, model: Path | None = None,
                 source: Path | None = None) -> list[str]:
    return ["--model", str(model or ws.assets.model),
            "--input", str(source if source is not None else ws.case()),
            "--out", str(ws.preds), *extra]


def evaluate_argv(ws: Workspace, *extra: str) -> list[str]:
    return ["--pred", str(ws.predictions()), "--gt", str(ws.data()), *extra]


def export_argv(ws: Workspace, *extra: str, model: Path | None = None) -> list[str]:
    return [str(model or ws.assets.model), "--out", str(ws.tflite), *extra]


# ---- ways to break a case --------------------------------------------------------------
def missing_modality(ws):
    ws.file("t2").unlink()
    return [str(ws.case()), "no t2 image"]


def zero_byte_file(ws):
    path = ws.file("t2")
    path.write_bytes(b"")
    return [str(path), "not a readable NIfTI"]


def truncated_gz(ws):
    path = ws.file("flair")
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return [str(path), "not a readable NIfTI"]


def text_renamed(ws):
    path = ws.file("flair")
    path.write_text("patient notes, not an image\n")
    return [str(path), "not a readable NIfTI"]


def image_4d(ws):
    path = ws.file("t1")
    data = voxels(path)
    rewrite(path, np.stack([data, data], axis=-1))
    return [str(path), "is 4D, expected a 3D image"]


def image_2d(ws):
    path = ws.file("t1ce")
    rewrite(path, voxels(path)[:, :, SHAPE[2] // 2])
    return [str(path), "is 2D, expected a 3D image"]


def shape_mismatch(ws):
    path = ws.file("t2")
    rewrite(path, voxels(path)[:, :, :-1])
    return [str(path), "32x32x31", "differs"]


def affine_mismatch(ws):
    path = ws.file("t1ce")
    affine = nib.load(path).affine.copy()
    affine[0, 3] += 2.0  # 2 mm off: far beyond the 1e-3 tolerance
    rewrite(path, voxels(path), affine)
    return [str(path), "affine differs"]


def non_finite_voxel(key: str, index: tuple[int, int, int], value: float):
    """Corruption: one voxel of modality ``key`` set to NaN or infinity."""

    def corrupt(ws):
        path = ws.file(key)
        data = voxels(path).astype(np.float32)
        data[index] = value
        rewrite(path, data)
        return [str(path), "NaN or infinite"]

    return corrupt


nan_voxels = non_finite_voxel("flair", (10, 10, 10), np.nan)
inf_voxels = non_finite_voxel("t1", (5, 6, 7), np.inf)


def all_zero_scan(ws):
    for key in ("t1", "t1ce", "t2", "flair"):
        rewrite(ws.file(key), np.zeros(SHAPE, np.int16))
    return [str(ws.case()), "all zero"]


def label_outside_convention(ws):
    path = ws.file("seg")
    data = voxels(path).copy()
    data[0, 0, 0] = 7
    rewrite(path, data)
    return [str(path), "label values 7 are not in the brats2017 convention"]


def label_wrong_shape(ws):
    path = ws.file("seg")
    rewrite(path, voxels(path)[:-2])
    return [str(path), "30x32x32", "differs"]


def label_non_integer(ws):
    path = ws.file("seg")
    rewrite(path, voxels(path).astype(np.float32) * 0.5)  # 4 -> 2.0, 1 -> 0.5
    return [str(path), "non-integer"]


def duplicate_modality(ws):
    shutil.copy(ws.file("t1"), ws.case() / f"{CASE}_t1.nii")  # .nii beside .nii.gz
    return [str(ws.case()), "several files for t1"]


def duplicate_modality_2023_name(ws):
    shutil.copy(ws.file("t1ce"), ws.case() / f"{CASE}-t1c.nii.gz")  # BraTS 2023 key
    return [str(ws.case()), "several files for t1ce"]


def break_data(corrupt: Callable[[Workspace], list[str]], cli: str):
    """Row builder: break the case, then run ``cli`` on it."""

    def make(ws):
        needles = corrupt(ws)
        argv = train_argv(ws) if cli == "train" else predict_argv(ws)
        return argv, needles

    return make


def config_unknown_key(ws):
    config = ws.root / "experiment.yaml"
    config.write_text("epochs: 3\nepochz: 5\n")
    return train_argv(ws, "--config", str(config)), [str(config), "unknown key", "epochz"]


def text_model(ws):
    model = ws.root / "model.keras"
    model.write_text("this is not a zip archive\n")
    return model


def eval_bad_prediction(ws, data: Callable[[np.ndarray], np.ndarray], *needles: str):
    argv = evaluate_argv(ws)
    path = ws.pred / f"{CASE}.nii.gz"
    rewrite(path, data(voxels(path)))
    return argv, [str(path), *needles]


def _label_3(v):
    out = v.copy()
    out[0, 0, 0] = 3
    return out


# ---- the table -------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    id: str
    cli: str
    make: Callable[[Workspace], tuple[list[str], list[str]]]  # -> (argv, needles)
    xfail: str | None = None


ROWS = [
    # ---- bad data, through train.py (caught while caching, before training) ----
    Row("train-zero-byte-file", "train", break_data(zero_byte_file, "train")),
    Row("train-text-renamed-nii-gz", "train", break_data(text_renamed, "train")),
    Row("train-2d-image", "train", break_data(image_2d, "train")),
    Row("train-affine-mismatch", "train", break_data(affine_mismatch, "train")),
    Row("train-infinite-voxels", "train", break_data(inf_voxels, "train")),
    Row("train-all-zero-scan", "train", break_data(all_zero_scan, "train")),
    Row("train-label-outside-convention", "train",
        break_data(label_outside_convention, "train")),
    Row("train-label-wrong-shape", "train", break_data(label_wrong_shape, "train")),
    Row("train-label-float-non-integer", "train", break_data(label_non_integer, "train")),
    Row("train-two-files-one-modality", "train", break_data(duplicate_modality, "train")),
    Row("train-missing-modality", "train", break_data(missing_modality, "train")),
    Row("train-folder-without-cases", "train",
        lambda ws: (train_argv(ws, data=ws.empty_dir()),
                    [str(ws.root / "empty"), "no case folders"])),
    Row("train-data-does-not-exist", "train",
        lambda ws: (train_argv(ws, data=ws.root / "nope"),
                    [str(ws.root / "nope"), "not found"])),
    Row("train-data-is-a-file", "train",
        lambda ws: (train_argv(ws, data=ws.afile), [str(ws.afile), "not a folder"])),
    # ---- bad options, through train.py ----
    Row("train-out-not-writable", "train",
        lambda ws: (train_argv(ws, "--out", str(ws.afile / "run")),
                    [f"--out {ws.afile / 'run'}", "cannot write"])),
    Row("train-patch-not-divisible-by-stride", "train",
        lambda ws: (train_argv(ws, "--patch-size", "18"),
                    ["--patch-size 18x18x18", "not divisible", "4"])),
    Row("train-zero-epochs", "train",
        lambda ws: (train_argv(ws, "--epochs", "0"), ["--epochs", "positive", "0"])),
    Row("train-negative-epochs", "train",
        lambda ws: (train_argv(ws, "--epochs", "-3"), ["--epochs", "positive", "-3"])),
    Row("train-zero-batch-size", "train",
        lambda ws: (train_argv(ws, "--batch-size", "0"), ["--batch-size", "positive"])),
    Row("train-negative-batch-size", "train",
        lambda ws: (train_argv(ws, "--batch-size", "-2"), ["--batch-size", "positive"])),
    Row("train-config-unknown-key", "train", config_unknown_key),
    Row("train-init-from-does-not-exist", "train",
        lambda ws: (train_argv(ws, "--init-from", str(ws.root / "nope.keras")),
                    [f"--init-from {ws.root / 'nope.keras'}", "not found"])),
    Row("train-init-from-another-architecture", "train",
        lambda ws: (train_argv(ws, "--init-from", str(ws.assets.model), "--base-filters", "4"),
                    [str(ws.assets.model), "another architecture", "enc0_context_a_norm"])),
    Row("train-init-from-lambda-model", "train",
        lambda ws: (train_argv(ws, "--init-from", str(ws.assets.lambda_model)),
                    [str(ws.assets.lambda_model), "Lambda"])),
    Row("train-freeze-encoder-without-init-from", "train",
        lambda ws: (train_argv(ws, "--freeze-encoder-epochs", "2"),
                    ["--freeze-encoder-epochs needs --init-from"])),
    Row("train-config-is-missing", "train",
        lambda ws: (train_argv(ws, "--config", str(ws.root / "none.yaml")),
                    [str(ws.root / "none.yaml"), "not found"])),
    # ---- bad data, through predict.py (one case folder) ----
    Row("predict-missing-modality", "predict", break_data(missing_modality, "predict")),
    Row("predict-zero-byte-file", "predict", break_data(zero_byte_file, "predict")),
    Row("predict-truncated-nii-gz", "predict", break_data(truncated_gz, "predict")),
    Row("predict-4d-image", "predict", break_data(image_4d, "predict")),
    Row("predict-shape-mismatch", "predict", break_data(shape_mismatch, "predict")),
    Row("predict-nan-voxels", "predict", break_data(nan_voxels, "predict")),
    Row("predict-all-zero-scan", "predict", break_data(all_zero_scan, "predict")),
    Row("predict-two-files-one-modality", "predict",
        break_data(duplicate_modality_2023_name, "predict")),
    Row("predict-folder-without-cases", "predict",
        lambda ws: (predict_argv(ws, source=ws.empty_dir()),
                    [f"--input {ws.root / 'empty'}", "no case folders"])),
    Row("predict-input-does-not-exist", "predict",
        lambda ws: (predict_argv(ws, source=ws.root / "nope"),
                    [f"--input {ws.root / 'nope'}", "does not exist"])),
    Row("predict-input-is-a-file", "predict",
        lambda ws: (predict_argv(ws, source=ws.afile), [f"--input {ws.afile}", "not a folder"])),
    # ---- bad models and options, through predict.py ----
    Row("predict-model-does-not-exist", "predict",
        lambda ws: (predict_argv(ws, model=ws.root / "nope.keras"),
                    [str(ws.root / "nope.keras"), "not found"])),
    Row("predict-model-is-a-folder", "predict",
        lambda ws: (predict_argv(ws, model=ws.data()), [str(ws.data()), "is a folder"])),
    Row("predict-model-not-a-model", "predict",
        lambda ws: (predict_argv(ws, model=text_model(ws)),
                    [str(ws.root / "model.keras"), "not a .keras model"])),
    Row("predict-model-channels-vs-modalities", "predict",
        lambda ws: (predict_argv(ws, model=ws.assets.model_3ch),
                    [str(ws.assets.model_3ch), "3 input channels", "4 modalities"])),
    Row("predict-model-with-lambda-layer", "predict",
        lambda ws: (predict_argv(ws, model=ws.assets.lambda_model),
                    [str(ws.assets.lambda_model), "cannot be loaded", "Lambda"])),
    Row("predict-corrupt-tflite", "predict",
        lambda ws: (predict_argv(ws, model=ws.assets.tflite),
                    [str(ws.assets.tflite), "not a usable LiteRT model"])),
    Row("predict-out-not-writable", "predict",
        lambda ws: (predict_argv(ws) + ["--out", str(ws.afile / "preds")],
                    [f"--out {ws.afile / 'preds'}", "cannot write"])),
    Row("predict-patch-not-divisible-by-stride", "predict",
        lambda ws: (predict_argv(ws, "--patch-size", "15"),
                    ["--patch-size (15, 15, 15)", "not divisible", "stride 2"])),
    Row("predict-negative-patch-size", "predict",
        lambda ws: (predict_argv(ws, "--patch-size", "-16"), ["--patch-size", "positive"])),
    # ---- evaluate ----
    Row("evaluate-pred-does-not-exist", "evaluate",
        lambda ws: (["--pred", str(ws.root / "nope"), "--gt", str(ws.data())],
                    [str(ws.root / "nope"), "not found"])),
    Row("evaluate-gt-without-cases", "evaluate",
        lambda ws: (["--pred", str(ws.predictions()), "--gt", str(ws.empty_dir())],
                    [str(ws.root / "empty"), "no case folders"])),
    Row("evaluate-label-outside-convention", "evaluate",
        lambda ws: eval_bad_prediction(ws, _label_3, "label values 3")),
    Row("evaluate-label-map-wrong-shape", "evaluate",
        lambda ws: eval_bad_prediction(ws, lambda v: v[:, :, :-4], "32x32x28", "differs")),
    Row("evaluate-csv-not-writable", "evaluate",
        lambda ws: (evaluate_argv(ws, "--csv", str(ws.afile / "scores.csv")),
                    [str(ws.afile / "scores.csv"), f"{ws.afile} is not a folder"])),
    # ---- export ----
    Row("export-model-does-not-exist", "export",
        lambda ws: (export_argv(ws, model=ws.root / "nope.keras"),
                    [str(ws.root / "nope.keras"), "not found"])),
    Row("export-model-is-a-folder", "export",
        lambda ws: (export_argv(ws, model=ws.data()), [str(ws.data()), "is a folder"])),
    Row("export-model-not-a-model", "export",
        lambda ws: (export_argv(ws, model=text_model(ws)),
                    [str(ws.root / "model.keras"), "not a .keras model"])),
    Row("export-model-with-lambda-layer", "export",
        lambda ws: (export_argv(ws, model=ws.assets.lambda_model),
                    [str(ws.assets.lambda_model), "Lambda"])),
    Row("export-window-not-divisible-by-stride", "export",
        lambda ws: (export_argv(ws, "--window", "15"),
                    ["--window 15x15x15", "not divisible", "stride 2"])),
    Row("export-out-not-writable", "export",
        lambda ws: (export_argv(ws) + ["--out", str(ws.afile / "m.tflite")],
                    [f"--out {ws.afile / 'm.tflite'}", "cannot write"])),
]


def leftovers(cli: str, ws: Workspace) -> list[Path]:
    """Output files the failed command left behind."""
    if cli == "train":  # the run folder may exist, but holds nothing
        return sorted(p for p in ws.run.rglob("*") if p.is_file()) if ws.run.exists() else []
    if cli == "predict":  # no <case>.nii.gz, <case>.json or temporary files
        return sorted(p for p in ws.preds.rglob("*") if p.is_file()) if ws.preds.exists() else []
    if cli == "evaluate":
        found = [ws.pred / "evaluation.csv", ws.afile / "scores.csv"]
        found += list(ws.pred.glob(".*")) if ws.pred.exists() else []
        return [p for p in found if p.exists()]
    names = ("*.tflite", "*.tflite.json", ".*.tmp*")
    return sorted(p for pattern in names for p in ws.root.glob(pattern))


def _params():
    for row in ROWS:
        marks = [pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else []
        yield pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", _params())
def test_bad_input(row: Row, assets: Assets, tmp_path: Path, capsys) -> None:
    ws = Workspace(tmp_path, assets)
    argv, needles = row.make(ws)
    capsys.readouterr()
    code = MAINS[row.cli](argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err + out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    prefix = f"{PROGS[row.cli]}: error: "
    assert lines[0].startswith(prefix), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert code == 2, (code, lines[0])
    assert leftovers(row.cli, ws) == []
    assert not assets.marker.exists(), "the Lambda layer's function was executed"

