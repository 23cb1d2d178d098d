"""The post-processing plan stored with a model file: inside a ``.keras`` zip, beside a
``.tflite`` in its report."""

from __future__ import annotations

import json
import zipfile

from unet3d.artifacts.plan_file import read_plan, write_plan
from unet3d.postprocessing import PostProcessing


def test_plan_travels_inside_the_keras_file_and_beside_a_tflite(tmp_path):
    keras_file = tmp_path / "m.keras"
    with zipfile.ZipFile(keras_file, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\x00" * 10)
    assert read_plan(keras_file) is None
    plan = PostProcessing(largest_component=True, et_min_voxels=200, chosen_on=["a", "b"])
    write_plan(keras_file, plan)
    write_plan(keras_file, plan)  # replaced, not duplicated
    with zipfile.ZipFile(keras_file) as archive:
        names = archive.namelist()
        assert archive.read("model.weights.h5") == b"\x00" * 10
    assert sorted(names) == ["config.json", "model.weights.h5", "unet3d_postprocessing.json"]
    assert read_plan(keras_file) == plan
    # a copy elsewhere carries it: nothing depends on the folder
    copy = tmp_path / "elsewhere" / "copy.keras"
    copy.parent.mkdir()
    copy.write_bytes(keras_file.read_bytes())
    assert read_plan(copy) == plan

    tflite = tmp_path / "m.tflite"
    tflite.write_bytes(b"TFL3")
    (tmp_path / "m.tflite.json").write_text(json.dumps({"precision": "int8"}))
    write_plan(tflite, plan)
    assert read_plan(tflite) == plan
    assert json.loads((tmp_path / "m.tflite.json").read_text())["precision"] == "int8"
