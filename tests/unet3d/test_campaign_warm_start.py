"""A campaign that continues another: each fold warm-started from the same fold of an
earlier campaign (``init_from`` with ``{fold}``), publishing its last epoch."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from data_generators.synthetic import write_synthetic_dataset
from unet3d.cli import campaign as cli
from unet3d.training import campaign as cp
from unet3d_base.errors import InputError

BASE = {"model": {"base_filters": 4, "depth": 3, "dropout": 0.0},
        "patch_size": [32, 32, 32], "batch_size": 2, "learning_rate": 0.01,
        "val_patches_per_case": 1, "seed": 3}
FOLDS = {"epochs": 1, "steps_per_epoch": 2, "extend_by": 1, "max_epochs": 1,
         "flat_fraction": 0.2, "tolerance": 0.0}


def write_campaign(root, name, split="../first/splits_final.json", **extra):
    folder = root / "campaigns" / name
    folder.mkdir(parents=True)
    definition = {"name": name, "data": "data", "split": split,
                  "split_folds": 2, "split_seed": 0, "models": f"models/{name}",
                  "study": {"folds": [], "base": {}, "arms": {}}, **extra}
    (folder / "campaign.json").write_text(json.dumps(definition))
    return str(folder / "campaign.json")


def weights(path):
    return keras.saving.load_model(path, safe_mode=True, compile=False).get_weights()


@pytest.mark.slow
def test_each_fold_starts_from_the_same_fold_of_another_campaign(tmp_path, monkeypatch):
    """With a learning rate of 1e-12 a warm-started fold ends where its source fold
    ended: fold k's published weights equal fold k's (not fold j's) of the first campaign,
    and what is published is the run's last epoch."""
    monkeypatch.setenv("UNET3D_MEMORY_GB", "64")
    root = tmp_path / "repo"
    write_synthetic_dataset(root / "data", n_cases=4, shape=(48, 48, 40), seed=4)
    recipe = {**BASE, "cache_dir": str(tmp_path / "cache")}
    first = write_campaign(root, "first", split="splits_final.json", recipe=recipe,
                           folds=FOLDS)
    assert cli.main(["split", first]) == 0
    runs1 = tmp_path / "runs1"
    assert cli.main(["run", first, "--runs", str(runs1), "--stage", "folds"]) == 0

    second = write_campaign(
        root, "second", recipe={**recipe, "learning_rate": 1e-12},
        folds={**FOLDS, "publish": "last"},
        init_from={"folds": str(runs1 / "folds" / "fold{fold}" / "last.keras")})
    runs2 = tmp_path / "runs2"
    assert cli.main(["run", second, "--runs", str(runs2), "--stage", "folds"]) == 0
    sources = [weights(runs1 / "folds" / f"fold{k}" / "last.keras") for k in (0, 1)]
    assert not all(np.array_equal(a, b) for a, b in zip(*sources, strict=True))
    for k in (0, 1):
        config = json.loads((runs2 / "folds" / f"fold{k}" / "config.json").read_text())
        assert config["init_from"] == str(runs1 / "folds" / f"fold{k}" / "last.keras")
        published = weights(runs2 / "published" / f"fold_{k}.keras")
        for got, start in zip(published, sources[k], strict=True):
            np.testing.assert_allclose(got, start, atol=1e-6)
        for got, last in zip(published, weights(runs2 / "folds" / f"fold{k}" / "last.keras"),
                             strict=True):
            np.testing.assert_array_equal(got, last)


def test_warm_start_paths_and_publish_are_read_from_the_campaign_file(tmp_path):
    root = tmp_path / "repo"
    (root / "campaigns").mkdir(parents=True)
    (root / "campaigns" / "first").mkdir()
    (root / "campaigns" / "first" / "splits_final.json").write_text(json.dumps(
        [{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}]))
    file = write_campaign(root, "second", recipe=BASE, folds={**FOLDS, "publish": "last"},
                          init_from={"folds": "models/first/fold_{fold}.keras",
                                     "final": "~/elsewhere/all.keras"})
    campaign = cp.load_campaign(file)
    folds = cp.planned_runs(campaign, "folds")
    assert [r["config"]["init_from"] for r in folds] == [
        str(root / "models" / "first" / f"fold_{k}.keras") for k in (0, 1)]
    final = cp.planned_runs(campaign, "final")[0]["config"]["init_from"]
    assert final == str((tmp_path.home() / "elsewhere" / "all.keras").resolve())
    assert cp.published_checkpoint(campaign) == "last.keras"
    good = json.loads(open(file).read())
    for bad, message in (({"folds": {**FOLDS, "publish": "first"}}, "'best' or 'last'"),
                         ({"init_from": {"study": "x.keras"}}, "'folds' and/or 'final'")):
        definition = {**good, **bad}
        (root / "campaigns" / "second" / "campaign.json").write_text(json.dumps(definition))
        with pytest.raises(InputError, match=message):
            cp.load_campaign(file)
