"""Post-processing of class maps: the largest tumor component, the small-ET rule."""

from __future__ import annotations

import numpy as np
import pytest

from unet3d.postprocessing import keep_largest_component, suppress_small_enhancing


def test_largest_component_keeps_the_biggest_blob_with_its_classes():
    classes = np.zeros((20, 20, 20), np.uint8)
    classes[2:8, 2:8, 2:8] = 2          # 216 voxels of edema ...
    classes[4:6, 4:6, 4:6] = 3          # ... around 8 of enhancing tumor
    classes[12:15, 12:15, 12:15] = 1    # 27 voxels: a separate, smaller blob
    classes[8, 8, 8] = 2                # touches the big blob only at a corner: 26-connected
    classes[18, 0, 0] = 3               # one stray voxel
    kept, removed = keep_largest_component(classes)
    assert removed == 2
    expected = classes.copy()
    expected[12:15, 12:15, 12:15] = 0
    expected[18, 0, 0] = 0
    np.testing.assert_array_equal(kept, expected)
    assert kept.dtype == classes.dtype
    assert int((kept == 3).sum()) == 8 and int((kept > 0).sum()) == 216 + 1


def test_largest_component_leaves_single_and_empty_maps_alone():
    empty = np.zeros((5, 5, 5), np.uint8)
    assert keep_largest_component(empty)[1] == 0
    one = empty.copy()
    one[1:3, 1:3, 1:3] = 2
    kept, removed = keep_largest_component(one)
    assert removed == 0 and np.array_equal(kept, one)


def test_small_enhancing_tumor_becomes_necrosis():
    classes = np.zeros((10, 10, 10), np.uint8)
    classes[0:2, 0:2, 0:2] = 3  # 8 enhancing voxels < 500
    relabelled, changed = suppress_small_enhancing(classes, 500)
    assert changed and int((relabelled == 1).sum()) == 8 and not (relabelled == 3).any()
    kept, changed = suppress_small_enhancing(classes, 8)  # not fewer than 8: kept
    assert not changed and np.array_equal(kept, classes)


def test_plan_travels_inside_the_keras_file_and_beside_a_tflite(tmp_path):
    import json
    import zipfile

    from unet3d.postprocessing import PostProcessing, read_plan, write_plan

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


def test_options_override_the_stored_plan():
    from unet3d.inference.pipeline import PredictSettings, resolve_plan
    from unet3d.postprocessing import PostProcessing

    stored = PostProcessing(largest_component=True, et_min_voxels=200)
    assert resolve_plan(stored, PredictSettings()) == (stored, "model")
    assert resolve_plan(None, PredictSettings()) == (PostProcessing(), "default")
    plan, source = resolve_plan(stored, PredictSettings(largest_component=False))
    assert (plan.largest_component, plan.et_min_voxels, source) == (False, 200, "options")
    plan, _ = resolve_plan(stored, PredictSettings(postprocess=False))
    assert not plan.largest_component and plan.et_min_voxels == 0


def test_choose_prefers_what_helps_on_validation():
    from unet3d.postprocessing import choose

    truth = np.zeros((20, 20, 20), np.uint8)
    truth[4:10, 4:10, 4:10] = 2
    truth[6:8, 6:8, 6:8] = 3  # 8 ET voxels: the small-ET rule would destroy a correct ET
    pred = truth.copy()
    pred[15:18, 15:18, 15:18] = 2  # a stray false-positive blob
    plan, table = choose({"c": pred}, {"c": truth})
    assert plan.largest_component and plan.et_min_voxels == 0
    assert table[plan.describe()]["WT"] == 1.0 and plan.chosen_on == ["c"]
    # WT Dice without the step: 2 * 216 / (216 + 243) by hand
    assert table["all components, no ET relabelling"]["WT"] == pytest.approx(432 / 459)


def test_small_components_are_dropped_and_large_ones_kept():
    from unet3d.postprocessing import PostProcessing, remove_small_components

    classes = np.zeros((30, 30, 30), np.uint8)
    classes[2:12, 2:12, 2:12] = 2      # 1000 voxels of edema
    classes[20:25, 20:25, 20:25] = 3   # 125 voxels: a separate core, kept at min 100
    classes[0, 29, 29] = 2             # 1 stray voxel
    kept, removed = remove_small_components(classes, 100)
    assert removed == 1 and kept[0, 29, 29] == 0 and int((kept > 0).sum()) == 1125
    kept, removed = remove_small_components(classes, 126)
    assert removed == 2 and int((kept > 0).sum()) == 1000
    plan = PostProcessing(min_component_voxels=126, et_min_voxels=0)
    assert plan.describe() == "components >= 126 voxels, no ET relabelling"
    assert plan.apply(classes)[1]["components_removed"] == 2
