import numpy as np
import pytest

from data_generators import labels

# label value -> expected (WT, TC, ET), worked out from the BraTS definitions
TABLE = [
    ("brats2017", {0: (0, 0, 0), 1: (1, 1, 0), 2: (1, 0, 0), 4: (1, 1, 1)}),
    ("brats2023", {0: (0, 0, 0), 1: (1, 1, 0), 2: (1, 0, 0), 3: (1, 1, 1)}),
    ("msd", {0: (0, 0, 0), 1: (1, 0, 0), 2: (1, 1, 0), 3: (1, 1, 1)}),
]


@pytest.mark.parametrize(("convention", "table"), TABLE)
def test_labels_to_regions_table(convention, table):
    values = np.array(list(table), dtype=np.int16)
    regions = labels.labels_to_regions(values, convention)
    assert regions.dtype == np.uint8
    np.testing.assert_array_equal(regions, np.array(list(table.values())))


@pytest.mark.parametrize(("convention", "table"), TABLE)
def test_regions_round_trip(convention, table):
    rng = np.random.default_rng(0)
    label_map = rng.choice(list(table), size=(5, 6, 7)).astype(np.int16)
    back = labels.regions_to_labels(labels.labels_to_regions(label_map, convention), convention)
    np.testing.assert_array_equal(back, label_map)


def test_regions_to_labels_priority_and_threshold():
    # ET wins over TC over WT; probabilities are thresholded at 0.5
    probs = np.array([[0.9, 0.9, 0.9], [0.9, 0.6, 0.1], [0.7, 0.2, 0.0],
                      [0.1, 0.2, 0.3], [0.2, 0.2, 0.8]], dtype=np.float32)
    np.testing.assert_array_equal(labels.regions_to_labels(probs, "brats2017"), [4, 1, 2, 0, 4])
    np.testing.assert_array_equal(labels.regions_to_labels(probs, "2023"), [3, 1, 2, 0, 3])


@pytest.mark.parametrize(("convention", "bad"), [("brats2017", 3), ("brats2023", 4),
                                                 ("msd", 4), ("brats2017", 7)])
def test_unknown_label_raises(convention, bad):
    with pytest.raises(ValueError, match=f"label values {bad} are not in"):
        labels.labels_to_regions(np.array([0, 1, bad]), convention)


def test_aliases_and_unknown_convention():
    assert labels.resolve_convention("2019") == "brats2017"
    assert labels.resolve_convention("2023") == "brats2023"
    assert labels.resolve_convention("Decathlon") == "msd"
    with pytest.raises(ValueError, match="unknown label convention"):
        labels.resolve_convention("brats1999")


def test_classes_round_trip_and_range():
    classes = np.array([0, 1, 2, 3], dtype=np.uint8)
    np.testing.assert_array_equal(labels.classes_to_labels(classes, "msd"), [0, 2, 1, 3])
    with pytest.raises(ValueError, match="class indices"):
        labels.classes_to_labels(np.array([4]))
