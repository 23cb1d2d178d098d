"""End-to-end training on tiny synthetic data, its run directory, and train.py's CLI."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import unet3d.cli.train as train_cli
from data_generators.synthetic import write_synthetic_dataset
from tests.conftest import REPO
from unet3d.artifacts.keras_file import read_model_config
from unet3d.config import ConfigError, ModelConfig, TrainConfig
from unet3d.training.run import train

TINY = dict(
    model=ModelConfig(base_filters=4, depth=3, dropout=0.0),
    epochs=4, steps_per_epoch=6, batch_size=2, patch_size=(32, 32, 32),
    learning_rate=0.01, synthetic_cases=5, synthetic_shape=(56, 56, 48),
    val_patches_per_case=2, val_fraction=0.4, workers=1, seed=3,
)


@pytest.fixture(autouse=True)
def _memory_as_on_an_idle_machine(monkeypatch):
    """These tests are about other checks: the default config's memory estimate (18.5 GB) must
    not trip over whatever else runs on the machine (a 512^3 x 4 request still does)."""
    monkeypatch.setenv("UNET3D_MEMORY_GB", "64")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    config = TrainConfig(out=str(root / "run"), cache_dir=str(root / "cache"), **TINY)
    result = train(config, log=lambda *_: None)
    return config, result


@pytest.mark.slow
def test_validation_dice_rises(tiny_run):
    _, result = tiny_run
    wt = result.history["val_dice_wt"]
    assert len(wt) == 4
    assert max(wt[1:]) > wt[0] + 0.05, wt
    best = int(np.argmax(result.history["val_dice_mean"]))
    assert result.best_epoch == best + 1
    # the reported Dice is the per-case mean over whole validation volumes
    per_case = json.loads((result.run_dir / "validation.json").read_text())
    assert len(per_case) == 2
    for region in ("WT", "TC", "ET"):
        assert result.val_dice[region] == pytest.approx(
            np.mean([scores[region] for scores in per_case.values()]))
    assert result.val_dice["WT"] > 0.5


@pytest.mark.slow
def test_training_on_every_case_without_validation(tmp_path):
    """validation_cases: [] is nnU-Net's fold "all": every case trains, best = last epoch."""
    config = TrainConfig(out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                         **{**TINY, "epochs": 2, "steps_per_epoch": 2,
                            "validation_cases": ()})
    result = train(config, log=lambda *_: None)
    split = json.loads((result.run_dir / "split.json").read_text())
    assert split["validation"] == [] and len(split["train"]) == TINY["synthetic_cases"]
    assert not any(key.startswith("val_") for key in result.history)
    assert result.val_dice == {} and result.best_epoch == 2
    assert not (result.run_dir / "validation.json").exists()
    best = keras.saving.load_model(result.run_dir / "best.keras", compile=False)
    last = keras.saving.load_model(result.run_dir / "last.keras", compile=False)
    for a, b in zip(best.get_weights(), last.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_run_directory_contents(tiny_run):
    config, _ = tiny_run
    run = REPO / config.out if not config.out.startswith("/") else type(REPO)(config.out)
    saved = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert saved == config
    assert saved.modalities == ("t1", "t1ce", "t2", "flair")
    split = json.loads((run / "split.json").read_text())
    assert len(split["train"]) == 3 and len(split["validation"]) == 2
    assert not set(split["train"]) & set(split["validation"])
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
    assert {"loss", "val_loss", "dice_wt", "val_dice_et", "learning_rate"} <= set(rows[0])
    lrs = [float(r["learning_rate"]) for r in rows]
    np.testing.assert_allclose(lrs, [0.01 * 0.985**e for e in range(4)], rtol=1e-5)
    state = json.loads((run / "state.json").read_text())
    assert state["epoch"] == 4
    for name in ("best.keras", "last.keras"):
        model = keras.models.load_model(run / name, safe_mode=True)
        assert model.output_shape[-1] == 3
        # a model carries its recipe, none of this machine's paths or loader settings
        embedded = read_model_config(run / name)
        assert not {"data", "out", "cache_dir", "workers", "strategy"} & set(embedded)
        assert TrainConfig.from_dict(embedded).recipe == config.recipe
    assert not list(run.glob(".*tmp*")), "temporary files left behind"


@pytest.mark.slow
def test_tensorboard_scalars_and_image(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    config, _ = tiny_run
    logs = type(REPO)(config.out) / "tensorboard"

    def tags(sub):
        acc = EventAccumulator(str(logs / sub), size_guidance={"tensors": 0})
        acc.Reload()
        return acc

    train_acc, val_acc, img_acc = tags("train"), tags("validation"), tags("images")
    for tag in ("epoch_loss", "epoch_dice_wt", "epoch_dice_tc", "epoch_dice_et",
                "epoch_learning_rate"):
        events = train_acc.Tensors(tag)
        assert [e.step for e in events] == [0, 1, 2, 3], tag
    lr = [float(make_ndarray(e.tensor_proto)) for e in train_acc.Tensors("epoch_learning_rate")]
    np.testing.assert_allclose(lr, [0.01 * 0.985**e for e in range(4)], rtol=1e-5)
    assert [e.step for e in val_acc.Tensors("epoch_dice_mean")] == [0, 1, 2, 3]
    images = img_acc.Tensors("validation/image_truth_prediction")
    assert [e.step for e in images] == [0, 1, 2, 3]
    # an image summary stores width, height and the encoded PNG
    width, height, png = make_ndarray(images[-1].tensor_proto)
    assert png.startswith(b"\x89PNG")
    assert int(width) == 3 * 32 and int(height) == 32


@pytest.mark.slow
def test_resume_continues_schedule_and_optimizer(tiny_run, tmp_path):
    import shutil

    config, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(config.out, run)
    resumed = config.replace(out=str(run), epochs=5)
    result = train(resumed, resume=True, log=lambda *_: None)
    assert list(result.history["learning_rate"]) == pytest.approx([0.01 * 0.985**4])
    rows = list(csv.DictReader((run / "log.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3, 4]
    last = keras.models.load_model(run / "last.keras", safe_mode=True)
    assert int(last.optimizer.iterations) == 5 * config.steps_per_epoch


def run_cli(argv, capsys):
    code = train_cli.main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(root / "good", n_cases=3, shape=(40, 40, 32), seed=1)
    return root


def _bad_label(case_dir):
    import nibabel as nib

    seg = next(case_dir.glob("*_seg.nii.gz"))
    img = nib.load(seg)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 3  # not a BraTS 2017-2021 label
    nib.save(nib.Nifti1Image(data, img.affine, img.header), seg)
    return seg.name


def _missing_modality(case_dir):
    path = next(case_dir.glob("*_t2.nii.gz"))
    path.unlink()
    return "t2"


def _shape_mismatch(case_dir):
    import nibabel as nib

    path = next(case_dir.glob("*_flair.nii.gz"))
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-1], img.affine, img.header), path)
    return path.name


def _affine_mismatch(case_dir):
    import nibabel as nib

    path = next(case_dir.glob("*_t1ce.nii.gz"))
    img = nib.load(path)
    affine = img.affine.copy()
    affine[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), affine, img.header), path)
    return path.name


def _truncated(case_dir):
    path = next(case_dir.glob("*_t1.nii.gz"))
    path.write_bytes(path.read_bytes()[:200])
    return path.name


@pytest.mark.parametrize(("corrupt", "expected"), [
    (_bad_label, "not in the brats2017 convention"),
    (_missing_modality, "t2"),
    (_shape_mismatch, "differs"),
    (_affine_mismatch, "affine differs"),
    (_truncated, "not a readable NIfTI"),
])
def test_bad_data_is_one_line_error(corrupt, expected, tiny_data, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data / "good", data)
    case_dir = sorted(p for p in data.iterdir() if p.is_dir())[1]
    named = corrupt(case_dir)
    code, err = run_cli(["--data", str(data), "--out", str(tmp_path / "run"),
                         "--cache-dir", str(tmp_path / "cache"), "--patch-size", "32",
                         "--depth", "3", "--base-filters", "4"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert expected in err and named in err and case_dir.name in err
    assert not (tmp_path / "run" / "last.keras").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["--patch-size", "100"], "--patch-size 100x100x100 is not divisible by 2^(depth-1) = 16"),
    (["--patch-size", "64", "64"], "--patch-size takes one or three sizes"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--batch-size", "-2"], "--batch-size must be a positive integer"),
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--config", "/no/such/config.yaml"], "config file not found"),
    (["--patch-size", "512", "--batch-size", "4"],
     "training with --patch-size 512x512x512, --batch-size 4 and --base-filters 16 needs about"),
])
def test_bad_options_are_one_line_errors(argv, expected, tmp_path, capsys):
    code, err = run_cli([*argv, "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert err.startswith("train.py: error: ") and expected in err
    assert len(err.strip().splitlines()) == 1


def test_config_file_errors_name_fields_and_options_name_flags(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("epochs: 0\n")
    code, err = run_cli(["--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert code == 2 and err == "train.py: error: --epochs must be a positive integer, got 0\n"
    with pytest.raises(ConfigError, match=r"^epochs must be a positive integer, got 0$"):
        TrainConfig(epochs=0)  # the library names the field itself
    config.write_text("batch_dice: true\nval_patches_per_case: 0\n")  # no flag for it
    code, err = run_cli(["--config", str(config), "--out", str(tmp_path / "run")], capsys)
    assert err == "train.py: error: val_patches_per_case must be a positive integer, got 0\n"


def test_older_configs_precision_field_is_read(tmp_path):
    assert TrainConfig.from_dict({"mixed_precision": "off"}).precision == "fp32"
    assert TrainConfig.from_dict({"mixed_precision": "bf16"}).precision == "bf16"
    assert TrainConfig().replace(mixed_precision="fp16").precision == "fp16"
    assert "mixed_precision" not in TrainConfig().to_dict()
    with pytest.raises(ConfigError, match="disagree"):
        TrainConfig.from_dict({"mixed_precision": "off", "precision": "bf16"})
    with pytest.raises(ConfigError, match=r"^precision must be one of fp32, bf16, fp16, "):
        TrainConfig(precision="off")


def test_empty_data_folder_and_unknown_config_key(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, err = run_cli(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "no case folders" in err and str(tmp_path / "empty") in err
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"epochs": 3, "learning_rat": 0.1}))
    code, err = run_cli(["--config", str(cfg), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "unknown key(s) learning_rat" in err and str(cfg) in err


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    code, err = run_cli(["--out", str(run)], capsys)
    assert code == 2 and "--resume" in err
    assert (run / "config.json").read_text() == "{}"


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--patch-size", "100",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("train.py: error: --patch-size 100x100x100 is not divisible "
                                   "by 2^(depth-1) = 16 (depth 5)")
