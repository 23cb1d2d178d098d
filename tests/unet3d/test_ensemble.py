"""A folder of fold models is one artifact: its probabilities are the mean of its members'."""

from __future__ import annotations

import keras
import nibabel as nib
import numpy as np
import pytest

from data_generators.synthetic import write_synthetic_dataset
from unet3d.artifacts import load_artifact
from unet3d.artifacts.keras_file import save_model
from unet3d.artifacts.plan_file import write_plan
from unet3d.config import ModelConfig, TrainConfig
from unet3d.models.unet import build_unet3d
from unet3d.postprocessing import PostProcessing
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
