"""A 2D network trained on, and predicting, files in the Kaggle LGG layout (generated:
the dataset itself is not reachable here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

import unet3d.cli.predict as predict_cli
from data_generators.lgg import find_lgg_patients
from data_generators.lgg_synthetic import write_synthetic_lgg
from unet3d.artifacts.keras_file import load_model
from unet3d.config import ModelConfig, TrainConfig
from unet3d.training.run import train
from unet3d_base.errors import InputError

PATIENTS, SLICES, SIZE = 4, 6, 64


def check_written_masks(out, patient, size: int) -> tuple[float, np.ndarray]:
    """Reads the ``<patient>_<n>_pred.tif`` predict.py wrote for every slice of ``patient``
    (``size`` x ``size``, 0 or 255) and checks the Dice its report gives against the
    masks, recomputed here: returns that Dice and the stacked prediction."""
    prediction, truth = [], []
    for index, mask in enumerate(patient.masks, start=1):
        pred = tifffile.imread(out / f"{patient.patient_id}_{index}_pred.tif")
        assert pred.shape == (size, size) and pred.dtype == np.uint8
        assert set(np.unique(pred)) <= {0, 255}
        prediction.append(pred > 0)
        truth.append(tifffile.imread(mask) > 127)
    prediction, truth = np.stack(prediction), np.stack(truth)
    both = prediction.sum() + truth.sum()
    dice = 2 * (prediction & truth).sum() / both if both else 1.0
    report = json.loads((out / f"{patient.patient_id}.json").read_text())
    assert report["dice_wt_vs_masks"] == pytest.approx(dice, abs=1e-9)
    return float(dice), prediction


@pytest.fixture(scope="module")
def lgg_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lgg")
    write_synthetic_lgg(root / "data", patients=PATIENTS, slices=SLICES, size=SIZE, seed=1)
    config = TrainConfig(data=str(root / "data"), out=str(root / "run"),
                         cache_dir=str(root / "cache"),
                         model=ModelConfig(base_filters=4, depth=3, dropout=0.0, in_channels=3,
                                           spatial_dims=2),
                         modalities=("t1", "flair", "t1ce"), epochs=2, steps_per_epoch=3,
                         batch_size=4, patch_size=(32, 32), learning_rate=0.01,
                         val_fraction=0.25, val_patches_per_case=2, workers=1, seed=0)
    train(config, log=lambda *_: None)
    return root


@pytest.mark.slow
def test_lgg_training_and_prediction_write_tif_masks(lgg_run, tmp_path, capsys):
    model = lgg_run / "run" / "best.keras"
    assert load_model(model).input_shape == (None, None, None, 3)  # 2D, three sequences
    out = tmp_path / "preds"
    code = predict_cli.main(["--model", str(model), "--input", str(lgg_run / "data"),
                             "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    for patient in find_lgg_patients(lgg_run / "data"):
        written = sorted(out.glob(f"{patient.patient_id}_*_pred.tif"))
        assert len(written) == SLICES
        check_written_masks(out, patient, SIZE)
    # a second run finds every patient done
    capsys.readouterr()
    assert predict_cli.main(["--model", str(model), "--input", str(lgg_run / "data"),
                             "--out", str(out)]) == 0
    assert f"0 segmented, {PATIENTS} already done" in capsys.readouterr().out


@pytest.mark.slow
def test_zero_padded_slice_names_are_found_done_on_a_re_run(lgg_run, tmp_path, capsys):
    """Slices named <patient>_03.tif: masks are written as <patient>_3_pred.tif, and the
    re-run must recognise that name rather than segment the patient again."""
    source = find_lgg_patients(lgg_run / "data")[0]
    patient = tmp_path / "data" / source.patient_id
    patient.mkdir(parents=True)
    for index, (image, mask) in enumerate(zip(source.slices, source.masks, strict=True), 1):
        (patient / f"{source.patient_id}_0{index}.tif").write_bytes(image.read_bytes())
        (patient / f"{source.patient_id}_0{index}_mask.tif").write_bytes(mask.read_bytes())
    args = ["--model", str(lgg_run / "run" / "best.keras"), "--input", str(patient.parent),
            "--out", str(tmp_path / "preds")]
    assert predict_cli.main(args) == 0, capsys.readouterr().err
    names = sorted(p.name for p in (tmp_path / "preds").glob("*_pred.tif"))
    assert names == sorted(f"{source.patient_id}_{i}_pred.tif" for i in range(1, SLICES + 1))
    report = json.loads((tmp_path / "preds" / f"{source.patient_id}.json").read_text())
    assert report["segmentation"].endswith(f"{source.patient_id}_{SLICES}_pred.tif")
    capsys.readouterr()
    assert predict_cli.main(args) == 0
    assert "0 segmented, 1 already done" in capsys.readouterr().out


@pytest.mark.slow
def test_a_3d_network_is_refused_on_lgg_slices(lgg_run, tmp_path, capsys):
    config = TrainConfig(data=str(lgg_run / "data"), out=str(tmp_path / "run"),
                         model=ModelConfig(base_filters=2, depth=2, segmentation_levels=1,
                                           in_channels=3),
                         modalities=("t1", "flair", "t1ce"), patch_size=(16, 16, 16))
    with pytest.raises(InputError, match="train a 2D network on them"):
        train(config, log=lambda *_: None)
