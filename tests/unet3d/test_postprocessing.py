"""Post-processing of class maps: the component rules, the small-ET rule, choosing a plan."""

from __future__ import annotations

import numpy as np
import pytest

from unet3d.components import (
    keep_largest_component,
    remove_distant_components,
    remove_small_components,
)
from unet3d.inference.pipeline import PredictSettings, resolve_plan, resolve_tta
from unet3d.postprocessing import PostProcessing, choose, suppress_small_enhancing
from unet3d_base.errors import InputError


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


def test_options_override_the_stored_plan():
    stored = PostProcessing(largest_component=True, et_min_voxels=200)
    assert resolve_plan(stored, PredictSettings()) == (stored, "model")
    assert resolve_plan(None, PredictSettings()) == (PostProcessing(), "default")
    plan, source = resolve_plan(stored, PredictSettings(largest_component=False))
    assert (plan.largest_component, plan.et_min_voxels, source) == (False, 200, "options")
    plan, _ = resolve_plan(stored, PredictSettings(postprocess=False))
    assert not plan.largest_component and plan.et_min_voxels == 0


def test_choose_prefers_what_helps_on_validation():
    truth = np.zeros((20, 20, 20), np.uint8)
    truth[4:10, 4:10, 4:10] = 2
    truth[6:8, 6:8, 6:8] = 3  # 8 ET voxels: the small-ET rule would destroy a correct ET
    pred = truth.copy()
    pred[15:18, 15:18, 15:18] = 2  # a stray false-positive blob
    plan, table = choose({"c": pred}, {"c": truth})
    # the blob's nearest voxel (15, 15, 15) is 6 * sqrt(3) = 10.4 mm from the cube's (9, 9, 9):
    # the first rule that removes it is the 10 mm one, tried before keeping the largest only
    assert plan.max_distance_mm == 10.0 and not plan.largest_component
    assert plan.et_min_voxels == 0 and not plan.tc_largest_component
    assert table[plan.describe()]["WT"] == 1.0 and plan.chosen_on == ["c"]
    assert table["largest component, no ET relabelling"]["WT"] == 1.0
    assert table["components within 20 mm of the largest, no ET relabelling"]["WT"] == \
        pytest.approx(432 / 459)
    # WT Dice without the step: 2 * 216 / (216 + 243) by hand
    assert table["all components, no ET relabelling"]["WT"] == pytest.approx(432 / 459)


def test_small_components_are_dropped_and_large_ones_kept():
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


def test_distant_components_are_dropped_near_ones_kept():
    classes = np.zeros((60, 20, 20), np.uint8)
    classes[0:10, 0:10, 0:10] = 2      # the largest component, x 0..9
    classes[14:16, 0:2, 0:2] = 1       # nearest voxel x 14: 5 voxels away
    classes[40:50, 0:5, 0:5] = 2       # 250 voxels, nearest x 40: 31 voxels away
    kept, removed = remove_distant_components(classes, 10)
    assert removed == 1 and int((kept > 0).sum()) == 1000 + 8
    kept, removed = remove_distant_components(classes, 31)  # exactly 31: kept
    assert removed == 0 and np.array_equal(kept, classes)
    kept, removed = remove_distant_components(classes, 4.9)
    assert removed == 2 and int((kept > 0).sum()) == 1000
    both = PostProcessing(min_component_voxels=9, max_distance_mm=20, et_min_voxels=0)
    assert both.describe() == ("components >= 9 voxels, components within 20 mm of the "
                               "largest, no ET relabelling")
    out, changes = both.apply(classes)  # the 8-voxel one is small, the 250-voxel one far
    assert changes["components_removed"] == 2 and int((out > 0).sum()) == 1000


def test_largest_core_and_enhancing_components():
    classes = np.zeros((30, 30, 30), np.uint8)
    classes[2:20, 2:20, 2:20] = 2         # edema around everything
    classes[4:10, 4:10, 4:10] = 1         # core A: 216 voxels of necrosis ...
    classes[5:7, 5:7, 5:7] = 3            # ... with 8 ET voxels
    classes[14:16, 14:16, 14:16] = 3      # core B: 8 ET voxels alone
    tc = PostProcessing(tc_largest_component=True, et_min_voxels=0).apply(classes)[0]
    assert (tc[14:16, 14:16, 14:16] == 2).all()  # core B became edema
    assert np.array_equal(tc[4:10, 4:10, 4:10], classes[4:10, 4:10, 4:10])
    et = PostProcessing(et_largest_component=True, et_min_voxels=0).apply(classes)[0]
    # two ET components of 8 voxels: the first found (core A's) is kept, B's becomes necrosis
    assert (et[14:16, 14:16, 14:16] == 1).all() and (et[5:7, 5:7, 5:7] == 3).all()
    assert int((et == 2).sum()) == int((classes == 2).sum())


def test_choose_takes_a_step_only_where_it_helps():
    """Two cases: a spurious second core in one and a correct second core in the other, the
    spurious one twice as large: dropping it (TC largest) helps case 1 more than it costs
    case 2, so the step is taken; the distance rules change nothing and are not."""
    truth1 = np.zeros((30, 30, 30), np.uint8)
    truth1[2:20, 2:20, 2:20] = 2
    truth1[4:10, 4:10, 4:10] = 1
    pred1 = truth1.copy()
    pred1[13:17, 13:17, 13:17] = 1        # 64 spurious core voxels inside the edema
    truth2 = truth1.copy()
    truth2[14:16, 14:16, 14:16] = 1       # a real 8-voxel second core
    pred2 = truth2.copy()
    plan, table = choose({"a": pred1, "b": pred2}, {"a": truth1, "b": truth2})
    # dropping TC components under 200 voxels does exactly what the largest-only rule does
    # here and is tried first (milder): the tie keeps it
    assert plan.tc_min_component_voxels == 200 and not plan.tc_largest_component
    assert not plan.largest_component
    assert plan.max_distance_mm == 0 and plan.min_component_voxels == 0
    # TC Dice by hand: without the step a: 2*216/(280+216), b: 1; with it a: 1, b: 2*216/440
    without = (432 / 496 + 1) / 2
    with_step = (1 + 432 / 440) / 2
    assert table["all components, no ET relabelling"]["TC"] == pytest.approx(without)
    assert table["all components, largest TC component, no ET relabelling"]["TC"] == \
        pytest.approx(with_step)
    assert table["all components, TC components >= 200 voxels, no ET relabelling"]["TC"] == \
        pytest.approx(with_step)
    # under 50 voxels drops only case b's real 8-voxel core: worse than nothing
    assert table["all components, TC components >= 50 voxels, no ET relabelling"]["TC"] == \
        pytest.approx((432 / 496 + 2 * 216 / 440) / 2)


def test_small_core_and_enhancing_specks_are_demoted():
    """Specks of core become edema and specks of enhancing tumor necrosis; components at or
    above the size stay, and the whole tumor keeps every voxel."""
    classes = np.zeros((30, 30, 30), np.uint8)
    classes[2:22, 2:22, 2:22] = 2
    classes[4:10, 4:10, 4:10] = 1         # core: 216 voxels
    classes[5:8, 5:8, 5:8] = 3            # ET in it: 27 voxels
    classes[15:17, 15:17, 15:17] = 3      # an ET speck, 8 voxels (also a core speck)
    classes[19, 19, 19] = 1               # a one-voxel core speck
    out = PostProcessing(et_min_voxels=0, tc_min_component_voxels=10).apply(classes)[0]
    assert (out[15:17, 15:17, 15:17] == 2).all() and out[19, 19, 19] == 2
    assert int((out == 3).sum()) == 27 and int((out == 1).sum()) == 216 - 27
    out = PostProcessing(et_min_voxels=0, et_min_component_voxels=10).apply(classes)[0]
    assert (out[15:17, 15:17, 15:17] == 1).all() and int((out == 3).sum()) == 27
    assert out[19, 19, 19] == 1  # the core speck is not the ET rule's
    out = PostProcessing(et_min_voxels=0, et_min_component_voxels=8).apply(classes)[0]
    assert int((out == 3).sum()) == 27 + 8  # 8 voxels is not under 8
    assert int((out > 0).sum()) == int((classes > 0).sum())


def test_mirroring_follows_the_stored_plan_unless_an_option_says():
    stored = PostProcessing(largest_component=True, mirroring=True)
    assert resolve_tta(stored, PredictSettings()) is True
    assert resolve_tta(stored, PredictSettings(tta=False)) is False
    assert resolve_tta(PostProcessing(), PredictSettings()) is False
    assert resolve_tta(None, PredictSettings()) is False
    assert resolve_tta(None, PredictSettings(tta=True)) is True
    # an older plan file, without the key, loads as unmirrored; a non-boolean is refused
    values = stored.to_dict()
    del values["mirroring"]
    assert PostProcessing.from_dict(values, "old.json").mirroring is False
    with pytest.raises(InputError, match="plan.json: mirroring must be true or false"):
        PostProcessing.from_dict({**stored.to_dict(), "mirroring": "yes"}, "plan.json")


def test_predict_mirrors_as_the_model_file_says(tmp_path):
    """A real 2D model file whose stored plan says mirroring: predict_case averages the
    flips unless --no-tta, and the report says which it did."""
    import keras

    from data_generators.lgg_synthetic import write_synthetic_lgg
    from unet3d.artifacts import load_artifact
    from unet3d.artifacts.keras_file import save_model
    from unet3d.artifacts.plan_file import write_plan
    from unet3d.config import ModelConfig, TrainConfig
    from unet3d.inference.pipeline import predict_case
    from unet3d.models.unet import build_unet3d

    folder = write_synthetic_lgg(tmp_path / "data", patients=1, slices=3, size=32, seed=2)[0]
    config = ModelConfig(base_filters=2, depth=2, segmentation_levels=1, in_channels=3,
                         spatial_dims=2, dropout=0.0)
    keras.utils.set_random_seed(7)
    path = save_model(build_unet3d(config), tmp_path / "m.keras",
                      TrainConfig(model=config, modalities=("t1", "flair", "t1ce"),
                                  patch_size=(16, 16)).to_dict())
    write_plan(path, PostProcessing(et_min_voxels=0, mirroring=True))
    model = load_artifact(path, precision="fp32")
    runs = {}
    for name, tta in (("stored", None), ("on", True), ("off", False)):
        report = predict_case(folder, tmp_path / name, model, PredictSettings(tta=tta))
        runs[name] = (report["settings"]["resolved_tta"],
                      [np.asarray(p.read_bytes()) for p in sorted((tmp_path / name).glob("*.tif"))])
    assert [runs[n][0] for n in ("stored", "on", "off")] == [True, True, False]
    assert runs["stored"][1] == runs["on"][1]
