"""The shipped 2D edge model: a 64 KB int8 LiteRT file that still segments a held-out case."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_generators.labels import labels_to_regions
from tests.conftest import REPO, require_brats
from unet3d.artifacts import load_artifact
from unet3d.artifacts.litert_file import op_names
from unet3d.artifacts.plan_file import read_plan, write_plan
from unet3d.cli.postprocess import main as postprocess_main
from unet3d.evaluation.scores import dice
from unet3d.inference.pipeline import PredictSettings, predict_case
from unet3d.postprocessing import PostProcessing

MODELS = REPO / "models"
KERAS = MODELS / "brats_unet2d_edge.keras"
INT8 = MODELS / "brats_unet2d_edge_int8.tflite"
HELD_OUT = "Brats18_CBICA_AQO_1"  # one of the split's 5 validation cases


def test_edge_files_are_small_and_slice_networks():
    assert INT8.stat().st_size <= 64_000
    ops = op_names(INT8)
    assert "CONV_2D" in ops and not any("3D" in name or name.startswith("Flex") for name in ops)
    keras_model, litert = load_artifact(KERAS), load_artifact(INT8)
    assert keras_model.spatial_dims == litert.spatial_dims == 2
    assert litert.patch_size == (240, 240) and litert.fixed_window
    assert keras_model.modalities == litert.modalities == ("t1", "t1ce", "t2", "flair")
    split = json.loads((MODELS / "brats_unet2d_edge.split.json").read_text())
    assert HELD_OUT in split["validation"] and HELD_OUT not in split["train"]


@pytest.mark.slow
def test_edge_int8_segments_a_held_out_case(tmp_path):
    """Measured when shipped: WT Dice 0.925 (int8) and 0.921 (Keras) on this case."""
    case = require_brats() / HELD_OUT
    truth = labels_to_regions(np.asarray(nib.load(case / f"{HELD_OUT}_seg.nii.gz").dataobj))
    scores = {}
    for name, path in (("int8", INT8), ("keras", KERAS)):
        report = predict_case(case, tmp_path / name, load_artifact(path), PredictSettings())
        labels = np.asarray(nib.load(report["segmentation"]).dataobj)
        scores[name] = dice(labels_to_regions(labels)[..., 0], truth[..., 0])
    assert scores["int8"] >= 0.88 and scores["keras"] >= 0.88, scores
    assert abs(scores["int8"] - scores["keras"]) < 0.03, scores


@pytest.mark.slow
def test_postprocess_chooses_a_plan_for_a_slice_network(tmp_path, capsys):
    """unet3d-postprocess segments slice by slice: its no-op row is predict.py's Dice."""
    case = require_brats() / HELD_OUT
    truth = labels_to_regions(np.asarray(nib.load(case / f"{HELD_OUT}_seg.nii.gz").dataobj))
    report = predict_case(case, tmp_path, load_artifact(KERAS), PredictSettings(postprocess=False))
    regions = labels_to_regions(np.asarray(nib.load(report["segmentation"]).dataobj))
    expected = [dice(regions[..., i], truth[..., i]) for i in range(3)]
    capsys.readouterr()
    assert postprocess_main(["--model", str(KERAS), "--data", str(case.parent),
                             "--cases", HELD_OUT]) == 0
    rows = dict(line.rsplit(maxsplit=4)[:1] + [line.rsplit(maxsplit=4)[1:4]]
                for line in capsys.readouterr().out.splitlines() if line.count(" ") > 4)
    scores = [float(v) for v in rows["all components, no ET relabelling"]]
    assert scores == pytest.approx(expected, abs=1.5e-3), (scores, expected)


@pytest.mark.slow
def test_postprocess_keeps_a_mirroring_model_mirroring(tmp_path, capsys):
    """A model whose stored plan mirrors is scored mirrored, and its new plan still says so:
    the no-op row is predict.py's Dice with the mirrorings averaged."""
    case = require_brats() / HELD_OUT
    model = tmp_path / "mirrored.keras"
    model.write_bytes(KERAS.read_bytes())
    write_plan(model, PostProcessing(et_min_voxels=0, mirroring=True))
    truth = labels_to_regions(np.asarray(nib.load(case / f"{HELD_OUT}_seg.nii.gz").dataobj))
    report = predict_case(case, tmp_path / "out", load_artifact(model),
                          PredictSettings(postprocess=False))
    assert report["settings"]["resolved_tta"] is True
    regions = labels_to_regions(np.asarray(nib.load(report["segmentation"]).dataobj))
    expected = [dice(regions[..., i], truth[..., i]) for i in range(3)]
    capsys.readouterr()
    assert postprocess_main(["--model", str(model), "--data", str(case.parent),
                             "--cases", HELD_OUT, "--write"]) == 0
    out = capsys.readouterr().out
    rows = dict(line.rsplit(maxsplit=4)[:1] + [line.rsplit(maxsplit=4)[1:4]]
                for line in out.splitlines() if line.count(" ") > 4)
    scores = [float(v) for v in rows["all components, no ET relabelling"]]
    assert scores == pytest.approx(expected, abs=1.5e-3), (scores, expected)
    assert "cases: mirrored inputs averaged, " in out
    assert read_plan(model).mirroring is True
