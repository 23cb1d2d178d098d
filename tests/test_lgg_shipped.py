"""The shipped Kaggle LGG models on the real patients: the 2D U-Net (models/lgg_unet2d), its
ensemble with a second network (models/lgg_unet2d_ensemble.json) and its 64 KB edge
version's int8 LiteRT file, through predict.py."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

import unet3d.cli.predict as predict_cli
from data_generators.lgg import find_lgg_patient
from tests.conftest import require_lgg
from tests.test_lgg_end_to_end import check_written_masks
from unet3d.artifacts.keras_file import read_model_config
from unet3d.artifacts.plan_file import read_plan
from unet3d.artifacts.shipped import REPO_MODELS
from unet3d.config import TrainConfig

pytestmark = pytest.mark.slow  # runs real patients

REPO = REPO_MODELS.parent
MODEL = REPO_MODELS / "lgg_unet2d.keras"
EDGE = REPO_MODELS / "lgg_unet2d_edge.keras"
EDGE_INT8 = REPO_MODELS / "lgg_unet2d_edge_int8.tflite"
ENSEMBLE = REPO_MODELS / "lgg_unet2d_ensemble.json"
OOF = {MODEL: REPO / "campaigns" / "lgg_b16_cv5" / "oof.json",
       EDGE: REPO / "campaigns" / "lgg_edge_s2_cv5" / "oof.json",
       ENSEMBLE: REPO / "campaigns" / "lgg_ensemble_cv5" / "oof.json"}


def oof_report(model) -> dict:
    report = json.loads(OOF[model].read_text())
    return report["reports"]["ensemble"] if model == ENSEMBLE else report


def segment(model, patient_dir, out, capsys) -> tuple[float, np.ndarray]:
    """predict.py on one patient: the Dice it reports, recomputed from the written masks,
    and the stacked prediction."""
    code = predict_cli.main(["--model", str(model), "--input", str(patient_dir),
                             "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    return check_written_masks(out, find_lgg_patient(patient_dir), 256)


@pytest.mark.parametrize("model", [MODEL, EDGE], ids=["lgg_unet2d", "lgg_unet2d_edge"])
def test_shipped_lgg_files_load_safely_with_card_config_split(model):
    for suffix in (".keras", ".md", ".config.json", ".split.json"):
        assert model.with_suffix(suffix).is_file(), suffix
    loaded = keras.models.load_model(model, safe_mode=True, compile=False)
    embedded = TrainConfig.from_dict(read_model_config(model), source=str(model))
    shipped = TrainConfig.from_dict(json.loads(model.with_suffix(".config.json").read_text()))
    assert embedded.replace(data=None, out="x", cache_dir=None) == \
        shipped.replace(data=None, out="x", cache_dir=None)
    assert embedded.model.spatial_dims == 2 and loaded.count_params() > 0
    plan = read_plan(model)
    assert plan is not None and plan.chosen_on  # chosen out of fold, stored in the file
    split = json.loads(model.with_suffix(".split.json").read_text())
    patients = set(split["train"])
    folds = split["decision_split"]["folds"]
    assert len(folds) == 5
    for fold in folds:  # by patient: no patient on both sides of a fold
        assert not set(fold["val"]) & set(fold["train"])
    assert set().union(*(set(f["val"]) for f in folds)) == patients
    card = model.with_suffix(".md").read_text()
    assert f"{loaded.count_params():,} parameters" in card


def test_shipped_lgg_ensemble_is_the_shipped_model_and_lgg_b16_s2_cv5s_final_model():
    """The manifest names the two networks' final models and carries the plan chosen on
    the ensemble's out-of-fold predictions of all 21 patients."""
    values = json.loads(ENSEMBLE.read_text())
    assert values["members"] == ["lgg_unet2d.keras", "lgg_b16_s2_cv5/all.keras"]
    report = json.loads(OOF[ENSEMBLE].read_text())
    assert report["members"] == ["models/lgg_b16_cv5/fold_{fold}.keras",
                                 "models/lgg_b16_s2_cv5/fold_{fold}.keras"]
    ensemble = oof_report(ENSEMBLE)
    assert values["postprocessing"] == ensemble["plan_values"]
    assert len(ensemble["cases"]) == 21 and values["postprocessing"]["mirroring"]
    assert ENSEMBLE.with_suffix(".md").is_file()


@pytest.mark.parametrize("model", [MODEL, EDGE, ENSEMBLE],
                         ids=["lgg_unet2d", "lgg_unet2d_edge", "lgg_unet2d_ensemble"])
def test_shipped_lgg_model_segments_a_real_patient(model, tmp_path, capsys):
    """A patient the model trained on: at least about what the fold model that never saw
    it scored out of fold (a guard against a broken file; the card has the evaluation).
    The patient that fold model scored best on, so that the bar is a high one."""
    oof = oof_report(model)
    patient_id = max(oof["cases"], key=lambda c: oof["cases"][c]["postprocessed"]["Dice_WT"])
    dice, _ = segment(model, require_lgg() / patient_id, tmp_path, capsys)
    assert dice > oof["cases"][patient_id]["postprocessed"]["Dice_WT"] - 0.05


def test_edge_int8_file_is_small_and_agrees_with_its_keras_model(tmp_path, capsys):
    assert EDGE_INT8.stat().st_size <= 64 * 1024
    report = json.loads(EDGE_INT8.with_name(EDGE_INT8.name + ".json").read_text())
    assert report["precision"] == "int8" and report["window"] == [256, 256]
    oof = json.loads(OOF[EDGE].read_text())
    patient_id = sorted(oof["cases"])[0]
    keras_dice, keras_pred = segment(EDGE, require_lgg() / patient_id, tmp_path / "keras",
                                     capsys)
    int8_dice, int8_pred = segment(EDGE_INT8, require_lgg() / patient_id, tmp_path / "int8",
                                   capsys)
    # the int8 file scores about what its Keras model does against the masks; the two
    # masks overlap only in part (measured 0.58 on this patient): the network's false
    # positives lie near the 0.5 threshold, where int8 rounding flips them
    assert int8_dice >= keras_dice - 0.1, (int8_dice, keras_dice)
    both = keras_pred.sum() + int8_pred.sum()
    assert both > 0 and 2 * (keras_pred & int8_pred).sum() / both >= 0.5
