"""Property-based tests (hypothesis): label conversions and the crop/uncrop round trip."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_generators.labels import (
    CLASSES,
    CONVENTIONS,
    REGIONS,
    allowed_labels,
    classes_to_labels,
    classes_to_regions,
    labels_to_classes,
    labels_to_regions,
    regions_to_classes,
    regions_to_labels,
)
from data_generators.preprocessing import brain_bbox, crop, uncrop

SETTINGS = settings(max_examples=50, deadline=None)
CONVENTION_NAMES = sorted(CONVENTIONS)
shapes = hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=6)
WT, TC, ET = (REGIONS.index(r) for r in ("WT", "TC", "ET"))


@st.composite
def label_maps(draw, convention: str | None = None):
    """A (convention, label map) pair whose values all belong to the convention."""
    convention = convention or draw(st.sampled_from(CONVENTION_NAMES))
    dtype = draw(st.sampled_from([np.uint8, np.int16, np.int32, np.int64]))
    values = st.sampled_from(allowed_labels(convention))
    return convention, draw(hnp.arrays(dtype, shapes, elements=values))


@st.composite
def boxed_arrays(draw):
    """An (X, Y, Z[, C]) array and a box of at least one voxel inside it."""
    shape = draw(shapes)
    box = []
    for size in shape:
        lo = draw(st.integers(0, size - 1))
        hi = draw(st.integers(lo + 1, size))
        box.append((lo, hi))
    channels = draw(st.sampled_from([(), (1,), (3,)]))
    dtype = draw(st.sampled_from([np.float32, np.int16, np.uint8]))
    array = draw(hnp.arrays(dtype, shape + channels,
                            elements=st.integers(1, 100)))  # non-zero: 0 marks "outside"
    return array, tuple(box)


# ---- labels ---------------------------------------------------------------------------
@pytest.mark.parametrize("convention", CONVENTION_NAMES)
@SETTINGS
@given(data=st.data())
def test_labels_regions_round_trip(convention, data):
    _, labels = data.draw(label_maps(convention))
    regions = labels_to_regions(labels, convention)
    assert regions.shape == labels.shape + (len(REGIONS),) and regions.dtype == np.uint8
    np.testing.assert_array_equal(regions_to_labels(regions, convention), labels)
    # float probabilities on the right side of the threshold give the same labels
    probs = np.where(regions > 0, 0.9, 0.1).astype(np.float32)
    np.testing.assert_array_equal(regions_to_labels(probs, convention), labels)


@SETTINGS
@given(pair=label_maps())
def test_labels_classes_round_trip(pair):
    convention, labels = pair
    classes = labels_to_classes(labels, convention)
    assert classes.dtype == np.uint8 and classes.max(initial=0) < len(CLASSES)
    np.testing.assert_array_equal(classes_to_labels(classes, convention), labels)
    # background stays background, and only background
    np.testing.assert_array_equal(classes == 0, labels == 0)


@SETTINGS
@given(classes=hnp.arrays(np.uint8, shapes, elements=st.integers(0, len(CLASSES) - 1)),
       convention=st.sampled_from(CONVENTION_NAMES))
def test_classes_labels_round_trip(classes, convention):
    labels = classes_to_labels(classes, convention)
    assert set(np.unique(labels).tolist()) <= set(allowed_labels(convention))
    np.testing.assert_array_equal(labels_to_classes(labels, convention), classes)
    np.testing.assert_array_equal(regions_to_classes(classes_to_regions(classes)), classes)


def _assert_nested(regions: np.ndarray) -> None:
    on = regions.astype(bool)
    assert not (on[..., ET] & ~on[..., TC]).any(), "ET outside TC"
    assert not (on[..., TC] & ~on[..., WT]).any(), "TC outside WT"


@SETTINGS
@given(pair=label_maps())
def test_regions_of_labels_are_nested(pair):
    convention, labels = pair
    regions = labels_to_regions(labels, convention)
    _assert_nested(regions)
    np.testing.assert_array_equal(regions[..., WT] > 0, labels > 0)


@SETTINGS
@given(probs=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 5),
                                             st.integers(1, 5), st.just(len(REGIONS))),
                        elements=st.floats(0, 1, width=32)))
def test_any_region_output_decodes_to_nested_regions(probs):
    """Even un-nested network outputs (ET without TC, ...) give nested regions."""
    classes = regions_to_classes(probs)
    _assert_nested(classes_to_regions(classes))
    # ET wins wherever it is on; nothing is tumor where WT, TC and ET are all off
    np.testing.assert_array_equal(classes == CLASSES.index("enhancing"), probs[..., ET] > 0.5)
    np.testing.assert_array_equal(classes == 0, ~(probs > 0.5).any(axis=-1))


@SETTINGS
@given(pair=label_maps(), bad=st.integers(-5, 300))
def test_values_outside_the_convention_are_refused(pair, bad):
    convention, labels = pair
    assume(bad not in allowed_labels(convention))
    labels = labels.astype(np.int64)
    labels.flat[0] = bad
    with pytest.raises(ValueError, match=str(bad)):
        labels_to_regions(labels, convention)


# ---- crop / uncrop --------------------------------------------------------------------
@SETTINGS
@given(case=boxed_arrays())
def test_uncrop_of_crop_restores_the_box_and_zeros_outside(case):
    array, box = case
    shape = array.shape[:3]
    cropped = crop(array, box)
    assert cropped.shape[:3] == tuple(hi - lo for lo, hi in box)
    full = uncrop(cropped, box, shape)
    assert full.shape == array.shape and full.dtype == array.dtype
    inside = np.zeros(shape, bool)
    inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    np.testing.assert_array_equal(full[inside], array[inside])
    assert not full[~inside].any()


@SETTINGS
@given(case=boxed_arrays(), fill=st.integers(0, 3))
def test_uncrop_fill_value(case, fill):
    array, box = case
    full = uncrop(crop(array, box), box, array.shape[:3], fill=fill)
    inside = np.zeros(array.shape[:3], bool)
    inside[tuple(slice(lo, hi) for lo, hi in box)] = True
    assert (full[~inside] == np.asarray(fill, dtype=array.dtype)).all()


@SETTINGS
@given(case=boxed_arrays(), keep=st.data())
def test_crop_to_brain_bbox_loses_nothing(case, keep):
    """Cropping to ``brain_bbox`` and back restores any image with a non-zero voxel."""
    array, _ = case
    mask = keep.draw(hnp.arrays(bool, array.shape[:3]))
    mask.flat[keep.draw(st.integers(0, mask.size - 1))] = True  # at least one voxel
    image = np.where(mask.reshape(mask.shape + (1,) * (array.ndim - 3)), array, 0)
    box = brain_bbox(image)
    for (lo, hi), size in zip(box, image.shape[:3], strict=True):
        assert 0 <= lo < hi <= size
    np.testing.assert_array_equal(uncrop(crop(image, box), box, image.shape[:3]), image)
