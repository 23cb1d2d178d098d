"""The shipped model: safe loading, its card, real-case Dice, int8 agreement, fine-tuning."""

from __future__ import annotations

import json
import re

import keras
import nibabel as nib
import numpy as np
import pytest

import unet3d.cli.predict as predict_cli
import unet3d.cli.train as train_cli
from tests.conftest import require_brats
from unet3d.artifacts.keras_file import read_model_config
from unet3d.artifacts.plan_file import read_plan
from unet3d.artifacts.shipped import DEFAULT_NAME, REPO_MODELS
from unet3d.config import TrainConfig
from unet3d.inference import Predictor
from unet3d.training.finetune import encoder_layers

pytestmark = pytest.mark.slow  # converts, trains or runs real cases: not in make test-fast

KERAS = REPO_MODELS / f"{DEFAULT_NAME}.keras"
INT8 = REPO_MODELS / f"{DEFAULT_NAME}_int8.tflite"
FP16 = REPO_MODELS / f"{DEFAULT_NAME}_fp16.tflite"
CARD = REPO_MODELS / f"{DEFAULT_NAME}.md"
CONFIG = REPO_MODELS / f"{DEFAULT_NAME}.config.json"
SPLIT = REPO_MODELS / f"{DEFAULT_NAME}.split.json"


def card_table() -> dict[str, str]:
    """The `| key | value |` rows of the card's "Configuration" table."""
    text = CARD.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*`?([a-z_]+)`?\s*\|\s*([^|]+?)\s*\|$", section, re.M)
    return dict(rows)


def int8_window() -> list[int]:
    return json.loads(INT8.with_name(INT8.name + ".json").read_text())["window"]


def whole_tumor_dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.fixture(scope="module")
def val_case():
    """A validation case of the cross-validation the shipped model's choices were made on.

    The shipped model trained on all 23 cases (no validation): this case is
    among them, so it guards against a broken file, not over-fitting; the
    card reports the out-of-fold figures.
    """
    split = json.loads(SPLIT.read_text())
    assert split["validation"] == [] and len(split["train"]) == 23
    folds = split["decision_split"]["folds"]
    for fold in folds:
        assert not set(fold["val"]) & set(fold["train"])
        assert set(fold["val"]) | set(fold["train"]) == set(split["train"])
    return require_brats() / folds[0]["val"][0]


def test_shipped_files_exist_and_are_small():
    for path in (KERAS, INT8, FP16, CARD, CONFIG, SPLIT):
        assert path.is_file(), path
    for path in (KERAS, INT8, FP16):
        assert path.stat().st_size < 25e6, path
        if path.suffix == ".tflite":
            assert path.with_name(path.name + ".json").is_file()
    assert INT8.stat().st_size < 0.3 * FP16.stat().st_size * 2  # int8 <= 30% of fp32 (~2x fp16)


def test_loads_safely_and_matches_card_and_config():
    model = keras.models.load_model(KERAS, safe_mode=True, compile=False)
    embedded = TrainConfig.from_dict(read_model_config(KERAS), source=str(KERAS))
    shipped = TrainConfig.from_dict(json.loads(CONFIG.read_text()), source=str(CONFIG))
    # the training config file reproduces the run: same everything but where data/out were
    assert embedded.replace(data=None, out="x", cache_dir=None) == \
        shipped.replace(data=None, out="x", cache_dir=None)
    table = card_table()
    assert int(table["parameters"].replace(",", "")) == model.count_params()
    for key in ("base_filters", "depth", "segmentation_levels", "output_mode"):
        assert table[key] == str(getattr(embedded.model, key)), key
    for key in ("epochs", "steps_per_epoch", "batch_size", "seed", "loss", "label_convention"):
        assert table[key] == str(getattr(embedded, key)), key
    assert table["patch_size"] == "x".join(map(str, embedded.patch_size))
    assert table["modalities"] == ", ".join(embedded.modalities)
    # the LiteRT files were exported from this model: their reports carry the same config
    for path in (INT8, FP16):
        report = json.loads(path.with_name(path.name + ".json").read_text())
        assert TrainConfig.from_dict(report["config"]).model == embedded.model


@pytest.fixture(scope="module")
def shipped_predictions(val_case, tmp_path_factory):
    """predict.py without --model (defaults), with the Keras model on the int8 file's
    windows in fp32, and with the int8 file, on one real validation case."""
    out = tmp_path_factory.mktemp("shipped")
    done = {}
    for name, extra in (("keras", []),
                        ("keras_windows", ["--mode", "sliding", "--precision", "fp32",
                                           "--patch-size", *map(str, int8_window())]),
                        ("int8", ["--model", str(INT8)])):
        code = predict_cli.main(["--input", str(val_case), "--out", str(out / name), *extra])
        assert code == 0
        done[name] = nib.load(out / name / f"{val_case.name}.nii.gz")
    return done


def test_default_model_segments_a_validation_case(val_case, shipped_predictions, capsys):
    seg = nib.load(next(val_case.glob("*_seg.nii*")))
    pred = shipped_predictions["keras"]
    assert pred.shape == seg.shape
    np.testing.assert_allclose(pred.affine, seg.affine, atol=1e-4)
    dice = whole_tumor_dice(np.asarray(pred.dataobj), np.asarray(seg.dataobj))
    # a regression guard (the card has the evaluation): the shipped model trained on this
    # case, so it must do at least about as well as the fold model that never saw it
    oof = json.loads((REPO_MODELS.parent / "campaigns" / "brats_cv5" / "oof.json").read_text())
    out_of_fold = oof["cases"][val_case.name]["postprocessed"]["Dice_WT"]
    assert dice > out_of_fold - 0.02, (dice, out_of_fold)


def test_predict_names_the_shipped_model(val_case, tmp_path, capsys):
    code = predict_cli.main(["--input", str(val_case), "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert f"model: {KERAS}" in out and f"see {CARD}" in out
    report = json.loads((tmp_path / f"{val_case.name}.json").read_text())
    plan = read_plan(KERAS)  # chosen on validation, stored inside the model file
    assert plan is not None and plan.chosen_on
    assert report["postprocessing"] == {
        "largest_component": plan.largest_component, "et_min_voxels": plan.et_min_voxels,
        "min_component_voxels": plan.min_component_voxels,
        "max_distance_mm": plan.max_distance_mm,
        "tc_largest_component": plan.tc_largest_component,
        "et_largest_component": plan.et_largest_component,
        "tc_min_component_voxels": plan.tc_min_component_voxels,
        "et_min_component_voxels": plan.et_min_component_voxels,
        "mirroring": plan.mirroring, "source": "model", "rules": plan.describe()}
    assert report["settings"]["resolved_tta"] is plan.mirroring
    assert f"post-processing (model): {plan.describe()}" in out
    assert report["model"]["path"] == str(KERAS)


def test_three_lines_in_a_notebook_equal_predict_py(val_case, shipped_predictions):
    files = [nib.load(next(val_case.glob(f"*_{m}.nii*"))) for m in ("t1", "t1ce", "t2", "flair")]
    image = np.stack([f.get_fdata(dtype=np.float32) for f in files], axis=-1)
    labels = Predictor.from_artifact().predict_arrays(image, files[0].affine)  # shipped model
    np.testing.assert_array_equal(labels, np.asarray(shipped_predictions["keras"].dataobj))


def test_int8_agrees_with_keras(shipped_predictions):
    # the same windows and blending: what differs is the int8 quantization alone
    keras_seg = np.asarray(shipped_predictions["keras_windows"].dataobj)
    int8_seg = np.asarray(shipped_predictions["int8"].dataobj)
    assert whole_tumor_dice(keras_seg, int8_seg) >= 0.97


def test_fine_tune_starts_from_the_shipped_weights(tmp_path, capsys):
    shipped = keras.models.load_model(KERAS, safe_mode=True, compile=False)
    run = tmp_path / "ft"
    config = tmp_path / "two_cases.yaml"  # two synthetic cases: one trains, one validates
    config.write_text("synthetic_cases: 2\nsynthetic_shape: [64, 64, 48]\n"
                      "val_patches_per_case: 1\nval_fraction: 0.5\n")
    code = train_cli.main([
        "--init-from", str(KERAS), "--freeze-encoder-epochs", "1", "--out", str(run),
        "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--steps-per-epoch", "2",
        "--patch-size", "48", "--batch-size", "1", "--learning-rate", "0.01",
        "--config", str(config),
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert f"from {KERAS}" in out
    tuned = keras.models.load_model(run / "best.keras", safe_mode=True, compile=False)
    assert tuned.count_params() == shipped.count_params()  # the architecture came along
    for layer in encoder_layers(shipped):  # frozen during the only epoch: loaded, unchanged
        for mine, theirs in zip(tuned.get_layer(layer.name).get_weights(),
                                layer.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    moved = lambda m: np.asarray(m.get_layer("dec0_localization_conv3").get_weights()[0])  # noqa: E731
    delta = np.abs(moved(tuned) - moved(shipped)).max()
    assert 0 < delta < 0.1  # trained a little, from the shipped weights, not from scratch
