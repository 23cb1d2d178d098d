"""Post-processing of class maps: the largest tumor component, the small-ET rule."""

from __future__ import annotations

import numpy as np

from unet3d.prediction import keep_largest_component, suppress_small_enhancing


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
