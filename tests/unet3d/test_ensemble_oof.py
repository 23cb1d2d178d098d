"""``unet3d-ensemble``: several cross-validated networks scored out of fold, alone and as
their ensemble, and the manifest predict.py runs."""

from __future__ import annotations

import dataclasses
import json
import re

import keras
import numpy as np
import pytest

from data_generators.geometry import load_case_for_model
from data_generators.layouts import find_any_case
from data_generators.lgg_synthetic import write_synthetic_lgg
from data_generators.preprocessing import preprocess_case
from unet3d.artifacts import load_artifact
from unet3d.artifacts.keras_file import save_model
from unet3d.cli import ensemble as cli
from unet3d.config import ModelConfig, TrainConfig
from unet3d.inference.pipeline import probabilities_to_classes
from unet3d.inference.predictor import WindowPredictor
from unet3d.models.unet import build_unet3d
from unet3d.precision import resolve_precision

CONFIG = TrainConfig(model=ModelConfig(base_filters=4, depth=3, dropout=0.0, spatial_dims=2,
                                       in_channels=1, output_mode="regions"),
                     modalities=("flair",), patch_size=(32, 32))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Four synthetic LGG patients, a 2-fold split, three networks' fold models: ``a`` and
    ``b`` (seeded differently) and ``a_copy`` (``a``'s weights), and final models."""
    root = tmp_path_factory.mktemp("ens")
    data = root / "data"
    patients = sorted(p.name for p in write_synthetic_lgg(data, patients=4, slices=3, size=64))
    split = [{"train": patients[2:], "val": patients[:2]},
             {"train": patients[:2], "val": patients[2:]}]
    (root / "split.json").write_text(json.dumps(split))
    t1 = CONFIG.replace(modalities=("t1",))
    for name, seed, config in (("a", 1, CONFIG), ("b", 2, CONFIG), ("a_copy", 1, CONFIG),
                               ("t1", 3, t1)):
        (root / name).mkdir()
        for k in range(2):
            keras.utils.set_random_seed(seed * 10 + k)
            save_model(build_unet3d(config.model), root / name / f"fold_{k}.keras",
                       config.to_dict())
        keras.utils.set_random_seed(seed * 100)
        save_model(build_unet3d(config.model), root / name / "all.keras", config.to_dict())
    return root, data, split


def run(root, data, members, *extra, out=None):
    out = out or root / "out" / "_".join(members)
    return cli.main(["--members", *[str(root / m / "fold_{fold}.keras") for m in members],
                     "--split", str(root / "split.json"), "--data", str(data), "--regions",
                     "WT", "--out", str(out), *extra])


def probabilities(model_path, case_dir):
    model = load_artifact(model_path, precision=resolve_precision("auto"))
    case = find_any_case(case_dir, modalities=model.modalities, require_label=True)
    image, label, _, _ = load_case_for_model(case, model.label_convention)
    cropped, _, _ = preprocess_case(image, label, model.normalization)
    return WindowPredictor(model.predict_fn, stride=model.stride, patch_size=model.patch_size,
                           base_filters=model.base_filters, spatial_dims=2)(cropped)


def test_ensemble_of_a_network_with_itself_scores_as_the_network(setup, capsys):
    root, data, _ = setup
    assert run(root, data, ["a", "a_copy"]) == 0, capsys.readouterr().err
    reports = json.loads((root / "out" / "a_a_copy" / "oof.json").read_text())["reports"]
    assert list(reports) == ["member 0", "member 1", "ensemble"]
    for name in ("member 1", "ensemble"):
        assert reports[name]["cases"] == reports["member 0"]["cases"]
    table = (root / "out" / "a_a_copy" / "results.md").read_text()
    assert table.count("\n| ") == 4  # the header and three rows


def test_ensemble_segments_with_the_mean_of_its_members_and_ships_a_manifest(setup, capsys):
    root, data, split = setup
    manifest = root / "shipped" / "e.json"
    manifest.parent.mkdir()
    assert run(root, data, ["a", "b"], "--final", str(root / "a" / "all.keras"),
               str(root / "b" / "all.keras"), "--manifest", str(manifest)) == 0
    out = root / "out" / "a_b"
    for k, fold in enumerate(split):
        for case_id in fold["val"]:
            mean = (probabilities(root / "a" / f"fold_{k}.keras", data / case_id)
                    + probabilities(root / "b" / f"fold_{k}.keras", data / case_id)) / 2
            expected = probabilities_to_classes(mean, "regions")
            with np.load(out / "ensemble" / f"{case_id}.npz") as stored:
                # equal but for voxels within rounding of the threshold
                assert np.mean(stored["classes"] == expected) > 0.999
    values = json.loads(manifest.read_text())
    assert values["members"] == ["../a/all.keras", "../b/all.keras"]
    report = json.loads((out / "oof.json").read_text())["reports"]["ensemble"]
    shipped = load_artifact(manifest)
    assert shipped.members == 2
    assert dataclasses.asdict(shipped.postprocessing) == report["plan_values"]
    assert sorted(shipped.postprocessing.chosen_on) == sorted(c for f in split
                                                              for c in f["val"])


@pytest.mark.parametrize("members, extra, message", [
    (["a", "b"], ["--final", "x.keras"], "--manifest and --final go together"),
    (["a", "b"], ["--final", "x.keras", "--manifest", "m.json"], "names 1 models for 2"),
    (["a", "missing"], [], r"missing/fold_0.keras: member model not found"),
    (["a", "b"], ["--final", "{root}/a/all.keras", "{root}/b/all.keras", "--manifest",
                  "m.keras"], "m.keras: an ensemble manifest's name ends in .json"),
    (["a", "b"], ["--final", "{root}/a/all.keras", "{root}/t1/all.keras", "--manifest",
                  "m.json"], r"t1/all.keras: modalities \('t1',\) differs"),
])
def test_bad_arguments_end_in_one_line_and_write_nothing(setup, capsys, members, extra,
                                                         message):
    root, data, _ = setup
    out = root / "refused" / message[:4]
    extra = [e.format(root=root) for e in extra]
    assert run(root, data, members, *extra, out=out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("unet3d-ensemble: error:")
    assert re.search(message, err), err
    assert not out.exists()


def test_a_member_without_fold_in_its_path_is_refused(setup, capsys):
    root, data, _ = setup
    code = cli.main(["--members", str(root / "a" / "all.keras"), "--split",
                     str(root / "split.json"), "--data", str(data), "--out",
                     str(root / "out" / "nofold")])
    assert code == 2 and "a path template with {fold}" in capsys.readouterr().err
