"""A campaign over Kaggle LGG patients: scored on the whole-tumor region only, validation
lists without the patients an arm cannot read, per-slice figures, the arms compared on
their common patients, and the shipped LGG split."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tifffile

import unet3d.training.campaign_results as results
from data_generators.geometry import load_case_for_model
from data_generators.layouts import find_any_case
from data_generators.lgg import find_lgg_patients
from data_generators.lgg_synthetic import write_synthetic_lgg
from data_generators.preprocessing import preprocess_case
from tests.conftest import REPO
from unet3d.artifacts import load_artifact
from unet3d.artifacts.keras_file import save_model
from unet3d.config import ModelConfig, TrainConfig
from unet3d.inference.pipeline import probabilities_to_classes
from unet3d.inference.predictor import WindowPredictor
from unet3d.models.unet import build_unet3d
from unet3d.postprocessing import PostProcessing
from unet3d.precision import resolve_precision
from unet3d.training import campaign as cp
from unet3d.training.campaign_results import study_table
from unet3d.training.oof import (
    out_of_fold_report,
    pooled_slices,
    predict_out_of_fold,
    score_regions,
    slice_scores,
)

LGG_CAMPAIGN = REPO / "campaigns" / "lgg_cv5" / "campaign.json"


def test_shipped_lgg_split_is_by_patient_over_the_21(lgg_dir):
    campaign = cp.load_campaign(LGG_CAMPAIGN, data=lgg_dir)
    assert campaign["_regions"] == ("WT",)
    split = cp.read_split(campaign)
    patients = sorted(p.patient_id for p in find_lgg_patients(lgg_dir))
    assert len(patients) == 21 and len(split) == 5
    vals = [f["val"] for f in split]
    assert sorted(c for v in vals for c in v) == patients  # each patient validates once
    assert split == cp.make_split(patients, 5, campaign["split_seed"])


def _copy_flair_into_t1ce(folder) -> None:
    for path in sorted(folder.glob(f"{folder.name}_*.tif")):
        if path.stem.endswith("_mask"):
            continue
        rgb = tifffile.imread(path)
        rgb[..., 2] = rgb[..., 1]
        tifffile.imwrite(path, rgb, photometric="rgb")


def test_arm_reading_a_copied_channel_validates_without_that_patient(tmp_path):
    data = tmp_path / "repo" / "data"
    folders = write_synthetic_lgg(data, patients=4, slices=3, size=32, seed=0)
    _copy_flair_into_t1ce(folders[1])
    ids = sorted(f.name for f in folders)
    folder = tmp_path / "repo" / "campaigns" / "lgg"
    folder.mkdir(parents=True)
    definition = {"name": "lgg", "data": "data", "split": "split.json", "regions": ["WT"],
                  "study": {"folds": [0, 1], "base": {"modalities": ["t1", "flair", "t1ce"]},
                            "arms": {"three": {}, "flair": {"modalities": ["flair"]}}},
                  "folds": {}}
    (folder / "campaign.json").write_text(json.dumps(definition))
    split = [{"train": ids[2:], "val": ids[:2]}, {"train": ids[:2], "val": ids[2:]}]
    (folder / "split.json").write_text(json.dumps(split))
    campaign = cp.load_campaign(folder / "campaign.json")
    runs = {r["name"]: r["config"]["validation_cases"] for r in cp.planned_runs(campaign,
                                                                               "study")}
    assert runs["study/three/fold0"] == [ids[0]]  # ids[1]'s t1ce is its FLAIR
    assert runs["study/flair/fold0"] == ids[:2]
    assert runs["study/three/fold1"] == runs["study/flair/fold1"] == ids[2:]


def test_regions_must_be_brats_regions(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"name": "x", "data": "d", "split": "s",
                                                 "study": {}, "folds": {}, "regions": ["NCR"]}))
    with pytest.raises(Exception, match="regions"):
        cp.load_campaign(tmp_path / "c.json")


def test_curve_mean_is_over_the_campaign_regions(tmp_path):
    (tmp_path / "log.csv").write_text(
        "epoch,val_dice_mean,val_dice_wt,val_dice_tc,val_dice_et\n"
        "0,0.5,0.2,0.5,0.8\n1,0.6,0.4,0.6,0.8\n")
    assert cp.read_curve(tmp_path)["mean"] == pytest.approx([0.5, 0.6])
    assert cp.read_curve(tmp_path, ("WT",))["mean"] == pytest.approx([0.2, 0.4])
    assert cp.read_curve(tmp_path, ("WT", "ET"))["mean"] == pytest.approx([0.5, 0.6])


def test_slice_figures_worked_out_by_hand():
    truth = np.zeros((4, 4, 4), np.uint8)
    pred = np.zeros_like(truth)
    truth[0:2, 0:2, 0] = 2  # slice 0: 4 voxels, predicted 2 of them -> Dice 4/6
    pred[0:2, 0, 0] = 2
    truth[1, 1, 1] = 2  # slice 1: missed -> Dice 0, a tumour slice not found
    pred[3, 3, 2] = 2  # slice 2: a false alarm -> Dice 0, an empty slice called tumour
    # slice 3: empty in both, called empty
    got = slice_scores(pred, truth)
    assert got["slice_dice_mean"] == pytest.approx((4 / 6 + 0 + 0) / 3)
    assert (got["slices"], got["slices_with_tumour"], got["tumour_slices_found"],
            got["empty_slices_called_empty"]) == (4, 2, 1, 1)
    pooled = pooled_slices([got, {**got, "slice_dice_mean": 1.0}])
    assert pooled["sensitivity"] == 0.5 and pooled["specificity"] == 0.5
    assert pooled["slice_dice_mean_of_cases"] == pytest.approx(((4 / 6) / 3 + 1.0) / 2,
                                                               abs=1e-4)
    scores = score_regions(pred, truth, ("WT",))
    assert set(scores) == {"Dice_WT", "HD95_WT"}
    assert scores["Dice_WT"] == pytest.approx(2 * 2 / (3 + 5))


def test_study_table_compares_arms_on_their_common_cases(monkeypatch):
    campaign = {"_regions": ("WT",), "study": {"folds": [0], "arms": {"a": {}, "b": {}}}}
    runs = {"study/a/fold0": {"state": "done", "cpu_hours": 1.0, "val_dice": {"WT": 0.7},
                              "val_dice_cases": {"p1": {"WT": 0.6}, "p2": {"WT": 0.8}}},
            "study/b/fold0": {"state": "done", "cpu_hours": 1.0, "val_dice": {"WT": 0.5},
                              "val_dice_cases": {"p1": {"WT": 0.9}, "p2": {"WT": 0.5},
                                                 "p3": {"WT": 0.1}}}}
    planned = [{"name": f"study/{a}/fold0", "arm": a, "fold": 0} for a in ("a", "b")]
    monkeypatch.setattr(results, "planned_runs", lambda *_: planned)
    table = study_table(campaign, runs)
    assert table["a"]["common_cases"] == table["b"]["common_cases"] == 2
    assert table["a"]["mean_common"]["WT"] == pytest.approx(0.7)
    assert table["b"]["mean_common"]["WT"] == pytest.approx(0.7)
    assert table["b"]["mean"]["WT"] == pytest.approx(0.5)


def two_fold_lgg(tmp_path, patients: int, slices: int, data_seed: int, model_seed: int
                 ) -> tuple[list[str], list[dict[str, list[str]]], dict[int, Path]]:
    """Synthetic LGG patients in ``tmp_path / "data"``, split in two folds, and a tiny
    untrained 2D model per fold (seeded ``model_seed + k``): ``(ids, split, models)``."""
    folders = write_synthetic_lgg(tmp_path / "data", patients=patients, slices=slices,
                                  size=32, seed=data_seed)
    ids = sorted(f.name for f in folders)
    half = patients // 2
    split = [{"train": ids[half:], "val": ids[:half]}, {"train": ids[:half], "val": ids[half:]}]
    model_config = ModelConfig(base_filters=2, depth=2, segmentation_levels=1, in_channels=3,
                               spatial_dims=2, dropout=0.0)
    config = TrainConfig(model=model_config, modalities=("t1", "flair", "t1ce"),
                         patch_size=(16, 16)).to_dict()
    models = {}
    for k in (0, 1):
        keras.utils.set_random_seed(model_seed + k)
        models[k] = save_model(build_unet3d(model_config), tmp_path / f"fold_{k}.keras", config)
    return ids, split, models


def test_out_of_fold_segments_lgg_patients_with_2d_fold_models(tmp_path):
    """Fold models (tiny, untrained, 2D) segment their fold's patients; every patient is
    scored on WT with per-slice figures, worked out again from the stored class maps."""
    ids, split, models = two_fold_lgg(tmp_path, patients=4, slices=4, data_seed=1,
                                      model_seed=0)
    found = predict_out_of_fold(split, models, tmp_path / "data", tmp_path / "oof",
                                log=lambda _: None)
    assert sorted(found) == ids
    report = out_of_fold_report(found, ("WT",), slices=True)
    plan = PostProcessing(**report["plan_values"])
    for case_id, row in report["cases"].items():
        assert set(row["postprocessed"]) == {"Dice_WT", "HD95_WT"}
        processed, truth = plan.apply(found[case_id]["classes"])[0] > 0, found[case_id][
            "truth"] > 0
        both = processed.sum() + truth.sum()
        expected = 2 * (processed & truth).sum() / both if both else 1.0
        assert row["postprocessed"]["Dice_WT"] == pytest.approx(expected, abs=1e-6)
        assert row["slices"]["slices"] == truth.shape[-1]
        assert row["slices"]["slices_with_tumour"] == int(truth.any(axis=(0, 1)).sum())
    assert report["overall_slices"]["slices"] == sum(
        r["slices"]["slices"] for r in report["cases"].values())


def test_out_of_fold_with_mirroring_averages_the_in_plane_flips(tmp_path):
    """With the campaign's ``mirroring``, each patient's prediction is the mean of the
    network's output on the 4 in-plane mirrorings (worked out here flip by flip), kept apart
    from the unmirrored one, and the chosen plan records it for predict.py."""
    ids, split, models = two_fold_lgg(tmp_path, patients=2, slices=3, data_seed=4,
                                      model_seed=10)
    plain = predict_out_of_fold(split, models, tmp_path / "data", tmp_path / "oof",
                                log=lambda _: None)
    mirrored = predict_out_of_fold(split, models, tmp_path / "data", tmp_path / "oof",
                                   log=lambda _: None, mirroring=True)
    for k, fold in enumerate(split):
        model = load_artifact(models[k], precision=resolve_precision("auto"))  # as oof's
        once = WindowPredictor(model.predict_fn, stride=model.stride,
                               patch_size=model.patch_size, spatial_dims=2, mode="whole")
        case = find_any_case(tmp_path / "data" / fold["val"][0], modalities=model.modalities,
                             require_label=True)
        image, label, _, _ = load_case_for_model(case)
        cropped, _, _ = preprocess_case(image, label, model.normalization)
        flips = [(), (0,), (1,), (0, 1)]
        mean = sum(np.flip(once(np.ascontiguousarray(np.flip(cropped, axes))), axes)
                   for axes in flips) / 4
        expected = probabilities_to_classes(mean, model.output_mode)
        case_id = fold["val"][0]
        np.testing.assert_array_equal(mirrored[case_id]["classes"], expected)
        assert plain[case_id]["classes"].shape == expected.shape
    assert any(not np.array_equal(plain[c]["classes"], mirrored[c]["classes"]) for c in ids)
    report = out_of_fold_report(mirrored, ("WT",), slices=True, mirroring=True)
    assert report["plan_values"]["mirroring"] is True
    assert report["plan"].startswith("mirrored inputs averaged")
