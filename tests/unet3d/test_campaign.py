"""The training campaign: its split, its committed fold models, the flat-curve rule and a
whole tiny campaign (study, then folds extended until their cap) run through train.py."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from data_generators.synthetic import write_synthetic_dataset
from tests.conftest import REPO
from unet3d.artifacts.keras_file import read_model_config
from unet3d.artifacts.plan_file import read_plan
from unet3d.cli import campaign as cli
from unet3d.config import TrainConfig
from unet3d.postprocessing import PostProcessing
from unet3d.training import campaign as cp
from unet3d.training.hparams import flat_hparams

CAMPAIGN = REPO / "campaigns" / "brats_cv5" / "campaign.json"


def test_shipped_split_partitions_the_23_real_cases(brats_dir):
    campaign = cp.load_campaign(CAMPAIGN, data=brats_dir)
    split = cp.read_split(campaign)
    cases = sorted(p.name for p in brats_dir.iterdir() if p.is_dir())
    assert len(cases) == 23 and len(split) == 5
    vals = [set(f["val"]) for f in split]
    assert sorted(len(v) for v in vals) == [4, 4, 5, 5, 5]
    assert sorted(set().union(*vals)) == cases  # every case validates exactly once ...
    assert sum(len(v) for v in vals) == 23
    for fold, val in zip(split, vals, strict=True):  # ... and trains in the other four folds
        assert not set(fold["train"]) & val
        assert sorted(set(fold["train"]) | val) == cases
    # the file is what the seeded split gives: it can be made again
    assert split == cp.make_split(cases, campaign["split_folds"], campaign["split_seed"])


def test_committed_fold_models_agree_with_split_and_status(brats_dir):
    """Every fold model in the repository validated on exactly its fold's cases, the status
    file calls it done, and the campaign file's recipe is the one it was trained with."""
    campaign = cp.load_campaign(CAMPAIGN, data=brats_dir)
    split = cp.read_split(campaign)
    status = json.loads((CAMPAIGN.parent / "status.json").read_text())
    planned = {r["name"] for stage in ("study",) for r in cp.planned_runs(campaign, stage)}
    if campaign["recipe"]:
        planned |= {r["name"] for stage in ("folds", "final")
                    for r in cp.planned_runs(campaign, stage)}
    assert set(status["runs"]) <= planned  # the status speaks of this campaign's runs only
    for name, entry in status["runs"].items():
        if name.startswith("study/") and entry["state"] == "done":  # trained as planned
            arm = name.split("/")[1]
            config = {**campaign["study"]["base"], **campaign["study"]["arms"][arm]}
            assert entry["val_dice"] and entry["cpu_hours"] > 0, name
            assert f"/{name}" in entry["command"], name
            assert config  # the arm still exists in the campaign file
    models = sorted(campaign["_models"].glob("fold_*.keras"))
    assert not models or campaign["recipe"], "fold models without a recipe"
    for model in models:
        k = int(model.stem.split("_")[1])
        config = read_model_config(model)
        assert sorted(config["validation_cases"]) == split[k]["val"], model
        assert status["runs"][f"folds/fold{k}"]["state"] == "done"
        for key, value in campaign["recipe"].items():
            if key not in ("epochs", "steps_per_epoch", "workers"):
                expected = tuple(value) if isinstance(value, list) else value
                got = config[key]
                got = tuple(got) if isinstance(got, list) else got
                if isinstance(value, dict):
                    assert {**got, **value} == got, (model, key)
                else:
                    assert got == expected, (model, key)
    for name, entry in status["runs"].items():  # a done fold is committed
        if name.startswith("folds/") and entry["state"] == "done":
            assert (campaign["_models"] / f"fold_{name[len('folds/fold'):]}.keras").is_file()


def weight_groups(path: Path) -> list[str]:
    """Top-level groups of a ``.keras`` file's weights (``optimizer`` when it holds its state)."""
    with zipfile.ZipFile(path) as archive:
        return sorted(h5py.File(io.BytesIO(archive.read("model.weights.h5"))).keys())


def test_make_split_sizes_and_seed():
    ids = [f"c{i:02d}" for i in range(23)]
    split = cp.make_split(list(reversed(ids)), 5, 42)
    assert [len(f["val"]) for f in split] == [5, 5, 5, 4, 4]
    assert split == cp.make_split(ids, 5, 42)  # input order does not matter
    assert split != cp.make_split(ids, 5, 43)
    order = np.random.default_rng(42).permutation(23)
    assert split[0]["val"] == sorted(ids[i] for i in order[:5])


@pytest.mark.parametrize(("values", "flat"), [
    ([0.1, 0.2, 0.3, 0.4, 0.5], False),  # still rising: the last fifth holds the best
    ([0.1, 0.5, 0.6, 0.6, 0.6], True),  # last fifth (one epoch) no better than before
    ([0.1, 0.5, 0.6, 0.6, 0.604], True),  # within the tolerance 0.005
    ([0.1, 0.5, 0.6, 0.6, 0.61], False),
    ([0.1, 0.2, 0.7, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.69], True),  # tail: 2 of 10
    ([0.1, 0.6, 0.6, 0.6], False),  # fewer than min_epochs
])
def test_is_flat(values, flat):
    assert cp.is_flat(values, 0.2, 0.005) is flat


def test_split_that_does_not_partition_is_refused(tmp_path):
    folder = tmp_path / "campaigns" / "x"
    folder.mkdir(parents=True)
    (folder / "campaign.json").write_text(json.dumps(
        {"name": "x", "data": "d", "split": "s.json", "study": {}, "folds": {}}))
    (folder / "s.json").write_text(json.dumps([{"train": ["a", "b"], "val": ["c"]},
                                               {"train": ["a", "c"], "val": ["c"]}]))
    with pytest.raises(cp.InputError, match="fold 1 does not partition"):
        cp.read_split(cp.load_campaign(folder / "campaign.json"))


@pytest.mark.slow
def test_tiny_campaign_study_then_folds(tmp_path, monkeypatch, capsys):
    """Two study arms on one fold, then two folds: a fold whose curve never flattens
    (tolerance -1) is resumed by ``extend_by`` epochs up to ``max_epochs``; finished folds
    are published without optimizer state and synced into the repository layout."""
    monkeypatch.setenv("UNET3D_MEMORY_GB", "64")
    root = tmp_path / "repo"
    write_synthetic_dataset(root / "data", n_cases=5, shape=(48, 48, 40), seed=2)
    folder = root / "campaigns" / "tiny"
    folder.mkdir(parents=True)
    base = {"model": {"base_filters": 4, "depth": 3, "dropout": 0.0},
            "patch_size": [32, 32, 32], "batch_size": 2, "learning_rate": 0.01,
            "val_patches_per_case": 1, "cache_dir": str(tmp_path / "cache"), "seed": 3}
    definition = {
        "name": "tiny", "data": "data", "split": "splits_final.json",
        "split_folds": 2, "split_seed": 0, "models": "models/tiny",
        "study": {"folds": [0], "base": base, "schedule": {"epochs": 1, "steps_per_epoch": 2},
                  "arms": {"a": {}, "b": {"loss": "dice", "batch_dice": True}}},
        "recipe": {**base, "loss": "dice"},
        "folds": {"epochs": 1, "steps_per_epoch": 2, "extend_by": 1, "max_epochs": 2,
                  "flat_fraction": 0.2, "tolerance": -1.0},
    }
    (folder / "campaign.json").write_text(json.dumps(definition))
    file = str(folder / "campaign.json")
    assert cli.main(["split", file]) == 0
    assert cli.main(["split", file]) == 2  # a campaign keeps its split
    runs = tmp_path / "runs"
    assert cli.main(["run", file, "--runs", str(runs)]) == 0

    status = json.loads((runs / "status.json").read_text())
    names = ["study/a/fold0", "study/b/fold0", "folds/fold0", "folds/fold1", "final/all"]
    assert sorted(status["runs"]) == sorted(names)
    assert all(status["runs"][n]["state"] == "done" for n in names)
    assert all(status["runs"][n]["cpu_hours"] > 0 for n in names)
    assert "--runs" in status["continue"]
    for k in (0, 1):
        entry = status["runs"][f"folds/fold{k}"]
        assert entry["epochs_done"] == 2 and entry["flat"] is False  # extended 1 -> 2
        assert entry["target_epochs"] == 2
    study = json.loads((runs / "study.json").read_text())
    assert sorted(study) == ["a", "b"]
    b = json.loads((runs / "study" / "b" / "fold0" / "config.json").read_text())
    assert b["loss"] == "dice" and b["batch_dice"] is True
    a_val = json.loads((runs / "study" / "a" / "fold0" / "validation.json").read_text())
    assert study["a"]["mean"]["WT"] == pytest.approx(
        np.mean([c["WT"] for c in a_val.values()]), abs=1e-4)
    a_cost = status["runs"]["study/a/fold0"]["cpu_hours"]  # one fold: per fold = in all
    assert study["a"]["cpu_hours_per_fold"] == pytest.approx(a_cost, abs=1e-3)
    assert study["a"]["dice_per_cpu_hour"] == pytest.approx(
        study["a"]["mean"]["mean"] / study["a"]["cpu_hours_per_fold"], rel=1e-3)

    split = json.loads((folder / "splits_final.json").read_text())
    for k in (0, 1):
        published = runs / "published" / f"fold_{k}.keras"
        model = keras.saving.load_model(published, safe_mode=True, compile=False)
        assert weight_groups(published) == ["layers", "vars"]  # no "optimizer"
        assert "optimizer" in weight_groups(runs / "folds" / f"fold{k}" / "best.keras")
        best = keras.saving.load_model(runs / "folds" / f"fold{k}" / "best.keras",
                                       safe_mode=True, compile=False)
        for w1, w2 in zip(model.get_weights(), best.get_weights(), strict=True):
            np.testing.assert_array_equal(w1, w2)
        embedded = read_model_config(published)
        assert embedded["validation_cases"] == split[k]["val"]
        assert not {"data", "cache_dir", "out", "workers"} & set(embedded)  # no machine paths

    # a second run finds everything done and trains nothing
    before = (runs / "status.json").read_text()
    assert cli.main(["run", file, "--runs", str(runs)]) == 0
    assert json.loads((runs / "status.json").read_text())["runs"] == json.loads(before)["runs"]

    # out of fold: every case once, by the fold that validated it; Dice worked out again
    assert cli.main(["oof", file, "--runs", str(runs)]) == 0
    oof = json.loads((runs / "oof.json").read_text())
    assert sorted(oof["cases"]) == sorted(c for f in split for c in f["val"])
    plan = PostProcessing(**oof["plan_values"])
    for case_id, row in oof["cases"].items():
        assert case_id in split[row["fold"]]["val"]
        with np.load(runs / "oof" / f"{case_id}.npz") as stored:
            classes, truth = stored["classes"], stored["truth"]
        processed = plan.apply(classes)[0]
        wt_pred, wt_true = processed > 0, truth > 0
        expected = (2 * (wt_pred & wt_true).sum() / (wt_pred.sum() + wt_true.sum())
                    if wt_pred.any() or wt_true.any() else 1.0)
        assert row["postprocessed"]["Dice_WT"] == pytest.approx(expected, abs=1e-6)
    wt = [row["postprocessed"]["Dice_WT"] for row in oof["cases"].values()]
    assert oof["overall_postprocessed"]["Dice_WT"]["mean"] == pytest.approx(np.mean(wt),
                                                                             abs=1e-4)
    assert oof["overall_postprocessed"]["Dice_WT"]["worst"] == pytest.approx(min(wt), abs=1e-4)
    for name in ("fold_0", "fold_1", "all"):  # the plan travels with every model
        stored_plan = read_plan(runs / "published" / f"{name}.keras")
        assert stored_plan.describe() == oof["plan"]
    # the final model: every case, no validation, the folds' median length (2 epochs)
    final = read_model_config(runs / "published" / "all.keras")
    assert final["validation_cases"] == [] and final["epochs"] == 2
    assert status["runs"]["final/all"]["epochs_done"] == 2
    assert cli.main(["plot", file, "--runs", str(runs)]) == 0
    png = (runs / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli.main(["sync", file, "--runs", str(runs)]) == 0
    assert (root / "models" / "tiny" / "fold_1.keras").is_file()
    assert (folder / "oof.json").is_file() and (folder / "curves.png").is_file()
    # each fold's config re-runs it with train.py: what it trained with, less the data path
    for k in (0, 1):
        rerun = json.loads((folder / "configs" / f"fold{k}.json").read_text())
        trained = json.loads((runs / "folds" / f"fold{k}" / "config.json").read_text())
        assert "data" not in rerun and rerun["epochs"] == len(cp.read_curve(
            runs / "folds" / f"fold{k}")["epoch"]) == 2
        assert rerun["validation_cases"] == split[k]["val"] == trained["validation_cases"]
        assert rerun["loss"] == trained["loss"] == "dice"
    assert json.loads((folder / "configs" / "all.json").read_text())["validation_cases"] == []
    for arm in ("a", "b"):  # the study's HParams trials, one per arm and fold
        events = list((folder / "study" / f"{arm}_fold0").glob("events.out.tfevents.*"))
        assert len(events) == 1
        tags = {v.tag for e in EventFileLoader(str(events[0])).Load() for v in e.summary.value}
        assert "validation/dice_wt" in tags
    results = (folder / "results.md").read_text()
    assert "| a | - |" in results and "| b | loss=dice, batch_dice=True |" in results
    assert "| fold0 | done | 2 | False |" in results
    mean_wt = oof["overall_postprocessed"]["Dice_WT"]["mean"]
    assert f"| postprocessed mean | {mean_wt:.3f} |" in results
    assert json.loads((folder / "status.json").read_text())["runs"] == status["runs"]
    # another machine, without the runs folder: the repository's status and models carry
    # the finished work, nothing is trained again, the curves are drawn from the status
    elsewhere = tmp_path / "elsewhere"
    assert cli.main(["run", file, "--runs", str(elsewhere)]) == 0
    seeded = json.loads((elsewhere / "status.json").read_text())
    assert sorted(seeded["runs"]) == sorted(names)
    assert all(e["state"] == "done" for e in seeded["runs"].values())
    assert not (elsewhere / "folds").exists() and not (elsewhere / "study").exists()
    assert sorted(p.name for p in (elsewhere / "published").iterdir()) == [
        "all.keras", "fold_0.keras", "fold_1.keras"]
    assert cli.main(["plot", file, "--runs", str(elsewhere)]) == 0
    assert (elsewhere / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["sync", file, "--runs", str(elsewhere)]) == 0  # the tables survive
    again = (folder / "results.md").read_text()
    assert "| a | - |" in again and f"| postprocessed mean | {mean_wt:.3f} |" in again

    # the final model shipped: every file written from the campaign's records
    assert cli.main(["ship", file, "--runs", str(runs)]) == 2  # --name is needed
    assert cli.main(["ship", file, "--runs", str(runs), "--name", "tiny_default"]) == 0
    shipped = root / "models" / "tiny_default.keras"
    final = keras.saving.load_model(runs / "published" / "all.keras", safe_mode=True,
                                    compile=False)
    for w1, w2 in zip(keras.saving.load_model(shipped, safe_mode=True, compile=False)
                      .get_weights(), final.get_weights(), strict=True):
        np.testing.assert_array_equal(w1, w2)
    assert read_plan(shipped).describe() == oof["plan"]
    recipe = json.loads((root / "models" / "tiny_default.config.json").read_text())
    assert recipe == read_model_config(shipped) and recipe["validation_cases"] == []
    assert TrainConfig.from_dict(recipe).recipe == TrainConfig.from_dict(
        json.loads((runs / "final" / "all" / "config.json").read_text())).recipe
    shipped_split = json.loads((root / "models" / "tiny_default.split.json").read_text())
    assert shipped_split["train"] == sorted(c for f in split for c in f["val"])
    assert shipped_split["validation"] == [] and shipped_split["decision_split"]["folds"] == split
    card = (root / "models" / "tiny_default.md").read_text()
    overall = oof["overall_postprocessed"]
    row = (f"| WT | {overall['Dice_WT']['mean']:.3f} | {overall['Dice_WT']['median']:.3f} | "
           f"{overall['Dice_WT']['worst']:.3f} | {overall['HD95_WT']['mean']:.1f} |")
    assert row in card and oof["plan"] in card and "| 0.90 | 0.80 | 0.73 |" in card
    total = sum(e["cpu_hours"] + e.get("cpu_hours_discarded", 0.0)
                for e in status["runs"].values())
    assert f"study included: {total:.1f} (user" in card
    assert f"| parameters | {final.count_params():,} |" in card
    assert "| patch_size | 32x32x32 |" in card and "| loss | dice |" in card

    capsys.readouterr()
    assert cli.main(["status", file, "--runs", str(runs)]) == 0
    shown = capsys.readouterr().out
    assert "folds/fold1" in shown and "done" in shown
    shutil.rmtree(runs)


def test_folds_stage_without_recipe_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "campaigns" / "x"
    folder.mkdir(parents=True)
    (folder / "campaign.json").write_text(json.dumps(
        {"name": "x", "data": "d", "split": "s.json", "study": {}, "folds": {},
         "recipe": None}))
    (folder / "s.json").write_text(json.dumps([{"train": ["a"], "val": ["b"]},
                                               {"train": ["b"], "val": ["a"]}]))
    code = cli.main(["run", str(folder / "campaign.json"), "--runs", str(tmp_path / "r"),
                    "--stage", "folds"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no 'recipe' yet" in err
    assert not Path(tmp_path / "r" / "folds").exists()


def test_recipe_fields_are_checked_and_recorded():
    config = TrainConfig(normalization="n4", batch_dice=True, augment_strength=2.0)
    again = TrainConfig.from_dict(config.to_dict())
    assert again == config
    flat = flat_hparams(config.to_dict())
    assert (flat["normalization"], flat["batch_dice"], flat["augment_strength"]) == (
        "n4", True, 2.0)
    with pytest.raises(cp.InputError, match="normalization"):
        TrainConfig(normalization="minmax")
    with pytest.raises(cp.InputError, match="augment_strength"):
        TrainConfig(augment_strength=-1.0)
    # an older config file without the new keys keeps the old behaviour
    old = {k: v for k, v in config.to_dict().items()
           if k not in ("normalization", "batch_dice", "augment_strength")}
    restored = TrainConfig.from_dict(old)
    assert (restored.normalization, restored.batch_dice, restored.augment_strength) == (
        "zscore", False, 1.0)


@pytest.mark.slow
def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    """train.py refuses an --out that holds a config.json but no checkpoint (and --resume
    has nothing to resume): the campaign clears such a run and starts it again."""
    monkeypatch.setenv("UNET3D_MEMORY_GB", "64")
    root = tmp_path / "repo"
    write_synthetic_dataset(root / "data", n_cases=4, shape=(48, 48, 40), seed=5)
    folder = root / "campaigns" / "one"
    folder.mkdir(parents=True)
    base = {"model": {"base_filters": 4, "depth": 3, "dropout": 0.0},
            "patch_size": [32, 32, 32], "val_patches_per_case": 1,
            "cache_dir": str(tmp_path / "cache")}
    (folder / "campaign.json").write_text(json.dumps({
        "name": "one", "data": "data", "split": "splits_final.json", "split_folds": 2,
        "split_seed": 0, "study": {"folds": [0], "base": base,
                                   "schedule": {"epochs": 1, "steps_per_epoch": 2},
                                   "arms": {"a": {}}},
        "folds": {}}))
    file = str(folder / "campaign.json")
    assert cli.main(["split", file]) == 0
    runs = tmp_path / "runs"
    stale = runs / "study" / "a" / "fold0"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{}")  # what a run stopped in epoch 1 leaves
    (stale / "log.csv").write_text("epoch,loss\n")
    assert cli.main(["run", file, "--runs", str(runs), "--stage", "study"]) == 0
    entry = json.loads((runs / "status.json").read_text())["runs"]["study/a/fold0"]
    assert entry["state"] == "done" and entry["epochs_done"] == 1
    assert json.loads((stale / "config.json").read_text())["epochs"] == 1  # written anew
    assert (stale / "validation.json").is_file()
