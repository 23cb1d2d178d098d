"""A folder of fold models is one artifact: its probabilities are the mean of its members'."""

from __future__ import annotations

import dataclasses
import json

import keras
import nibabel as nib
import numpy as np
import pytest

from data_generators.synthetic import write_synthetic_dataset
from unet3d.artifacts import load_artifact
from unet3d.artifacts.keras_file import save_model
from unet3d.artifacts.plan_file import read_plan, write_plan
from unet3d.config import ModelConfig, TrainConfig
from unet3d.models.unet import build_unet3d
from unet3d.postprocessing import PostProcessing
from unet3d.training.oof import model_stamp
from unet3d_base.errors import InputError

CONFIG = TrainConfig(model=ModelConfig(base_filters=4, depth=3, dropout=0.0),
                     patch_size=(32, 32, 32))


def member(path, seed, config=CONFIG, plan=PostProcessing(et_min_voxels=200)):
    keras.utils.set_random_seed(seed)
    model = build_unet3d(config.model)
    save_model(model, path, config.to_dict())
    write_plan(path, plan)
    return model


def test_ensemble_is_the_mean_of_its_members(tmp_path):
    folder = tmp_path / "cv"
    folder.mkdir()
    models = [member(folder / f"fold_{k}.keras", seed=k) for k in range(3)]
    (folder / "notes.keras.md").write_text("not a member")
    ensemble = load_artifact(folder)
    assert ensemble.members == 3 and ensemble.postprocessing.et_min_voxels == 200
    batch = np.random.default_rng(0).normal(size=(1, 32, 32, 32, 4)).astype(np.float32)
    each = [np.asarray(m(batch, training=False)) for m in models]
    assert not np.allclose(each[0], each[1])  # the members differ ...
    np.testing.assert_allclose(ensemble.predict_fn(batch), np.mean(each, axis=0), atol=1e-5)


def test_members_that_disagree_are_refused(tmp_path):
    folder = tmp_path / "cv"
    folder.mkdir()
    with pytest.raises(InputError, match="is a folder without fold_<k>.keras models"):
        load_artifact(folder)
    member(folder / "fold_0.keras", 0)
    member(folder / "fold_1.keras", 1, config=CONFIG.replace(normalization="n4"))
    with pytest.raises(InputError, match=r"fold_1.keras: normalization 'n4' differs"):
        load_artifact(folder)
    member(folder / "fold_1.keras", 1, plan=PostProcessing(largest_component=True))
    with pytest.raises(InputError, match="post-processing plan differs"):
        load_artifact(folder)


@pytest.mark.slow
def test_predict_cli_segments_with_a_folder_model(tmp_path, capsys):
    from unet3d.cli import predict as predict_cli

    folder = tmp_path / "cv"
    folder.mkdir()
    for k in range(2):
        member(folder / f"fold_{k}.keras", seed=k)
    write_synthetic_dataset(tmp_path / "data", n_cases=1, shape=(40, 40, 32), seed=4)
    case = next(p for p in (tmp_path / "data").iterdir() if p.is_dir())
    code = predict_cli.main(["--model", str(folder), "--input", str(case),
                             "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    seg = next((tmp_path / "out").glob("*.nii.gz"))
    source = next(case.glob("*_t1.nii.gz"))
    assert nib.load(seg).shape == nib.load(source).shape
    assert str(folder) in capsys.readouterr().out


SLICES = TrainConfig(model=ModelConfig(base_filters=4, depth=3, dropout=0.0, spatial_dims=2,
                                       in_channels=1, output_mode="regions"),
                     modalities=("flair",), patch_size=(32, 32))


def write_manifest(path, members, plan=None):
    values = {"format": "unet3d-ensemble", "members": members}
    if plan is not None:
        values["postprocessing"] = plan.to_dict()
    path.write_text(json.dumps(values))
    return path


def test_manifest_averages_different_networks(tmp_path):
    # a 4-filter 3-level network (stride 4) and a 6-filter 4-level one at half resolution
    # (stride 2 * 8 = 16, window 64x64): different networks, the same inputs and outputs
    network = dataclasses.replace(SLICES.model, base_filters=6, depth=4, input_stride=2)
    wide = dataclasses.replace(SLICES, model=network, patch_size=(64, 64))
    (tmp_path / "members").mkdir()
    models = [member(tmp_path / "members" / "a.keras", 0, config=SLICES),
              member(tmp_path / "b.keras", 1, config=wide)]
    plan = PostProcessing(largest_component=True, et_min_voxels=0)
    ensemble = load_artifact(write_manifest(tmp_path / "lgg.json", ["members/a.keras",
                                                                    "b.keras"], plan))
    assert (ensemble.members, ensemble.stride, ensemble.patch_size) == (2, 16, (64, 64))
    assert ensemble.postprocessing == plan  # the manifest's, not the members' (ET >= 200)
    batch = np.random.default_rng(1).normal(size=(2, 48, 32, 1)).astype(np.float32)
    each = [np.asarray(m(batch, training=False)) for m in models]
    assert not np.allclose(each[0], each[1])
    np.testing.assert_allclose(ensemble.predict_fn(batch), (each[0] + each[1]) / 2, atol=1e-5)


def test_manifest_without_a_plan_takes_the_members_agreed_one(tmp_path):
    member(tmp_path / "a.keras", 0, config=SLICES)
    member(tmp_path / "b.keras", 1, config=SLICES)
    ensemble = load_artifact(write_manifest(tmp_path / "e.json", ["a.keras", "b.keras"]))
    assert ensemble.postprocessing.et_min_voxels == 200 and ensemble.stride == 4


def test_bad_manifests_are_refused(tmp_path):
    member(tmp_path / "a.keras", 0, config=SLICES)
    member(tmp_path / "t1.keras", 1, config=SLICES.replace(modalities=("t1",)))
    bad = {"broken.json": ("{", "not a readable JSON file"),
           "other.json": ('{"members": ["a.keras"]}', "not an ensemble manifest"),
           "empty.json": ('{"format": "unet3d-ensemble", "members": []}',
                          '"members" must be a non-empty list'),
           "missing.json": ('{"format": "unet3d-ensemble", "members": ["a.keras", "b.keras"]}',
                            "member .*b.keras not found"),
           "mixed.json": ('{"format": "unet3d-ensemble", "members": ["a.keras", "t1.keras"]}',
                          r"t1.keras: modalities \('t1',\) differs from .*a.keras's"),
           "nested.json": ('{"format": "unet3d-ensemble", "members": ["a.keras", "e.json"]}',
                           "member .*e.json is not a .keras or .tflite file"),
           "folder.json": ('{"format": "unet3d-ensemble", "members": ["a.keras", "d.keras"]}',
                           "member .*d.keras not found"),
           "plan.json": ('{"format": "unet3d-ensemble", "members": ["a.keras"], '
                         '"postprocessing": []}', '"postprocessing" must be a plan')}
    (tmp_path / "d.keras").mkdir()  # a folder, not a model file
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=f"{name if name != 'mixed.json' else ''}.*"
                                             f"{message}"):
            load_artifact(tmp_path / name)
        if name != "mixed.json":  # what oof keys its stored predictions on: refused alike
            with pytest.raises(InputError, match=message):
                model_stamp(tmp_path / name)


def test_a_manifests_plan_is_read_and_written_in_it(tmp_path):
    member(tmp_path / "a.keras", 0, config=SLICES)
    manifest = write_manifest(tmp_path / "e.json", ["a.keras"])
    assert read_plan(manifest) is None
    plan = PostProcessing(largest_component=True, et_min_voxels=0, chosen_on=["x"])
    write_plan(manifest, plan)
    assert read_plan(manifest) == plan and load_artifact(manifest).postprocessing == plan
    assert json.loads(manifest.read_text())["members"] == ["a.keras"]


def test_manifest_stamp_follows_its_members_weights(tmp_path):
    member(tmp_path / "a.keras", 0, config=SLICES)
    member(tmp_path / "b.keras", 1, config=SLICES)
    manifest = write_manifest(tmp_path / "e.json", ["a.keras", "b.keras"])
    before = model_stamp(manifest)
    member(tmp_path / "b.keras", 2, config=SLICES)  # b retrained: other weights
    after = model_stamp(manifest)
    assert after != before
    write_manifest(manifest, ["a.keras", "b.keras"], PostProcessing(et_min_voxels=0))
    assert model_stamp(manifest) == after  # the plan does not count, only the weights


@pytest.mark.slow
def test_a_litert_member_fixes_the_window_of_the_ensemble(tmp_path):
    from unet3d.export import export_litert

    keras_model = member(tmp_path / "a.keras", 0, config=SLICES)
    export_litert(keras_model, tmp_path / "a.tflite", precision="fp32", window=(32, 32),
                  calibration=[np.zeros((1, 32, 32, 1), np.float32)],
                  config=SLICES.to_dict())
    write_plan(tmp_path / "a.tflite", PostProcessing(et_min_voxels=200))
    both = load_artifact(write_manifest(tmp_path / "e.json", ["a.keras", "a.tflite"]))
    assert both.fixed_window and both.patch_size == (32, 32) and both.precision == "fp32"
    wide = dataclasses.replace(SLICES, patch_size=(64, 64))
    member(tmp_path / "w.keras", 1, config=wide)
    for members in (["w.keras", "a.tflite"], ["a.tflite", "a.keras", "w.keras"]):
        with pytest.raises(InputError, match=r"w.keras: patch_size \(64, 64\) differs from "
                                             r".*a.tflite's \(32, 32\), a LiteRT file"):
            load_artifact(write_manifest(tmp_path / "bad.json", members))
