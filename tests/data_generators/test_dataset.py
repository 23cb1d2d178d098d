"""Tests for data_generators.dataset: patch datasets and the case split."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data_generators.augmentation import AugmentationConfig
from data_generators.case_split import split_cases
from data_generators.dataset import BratsPatchDataset, EpochSpan, ValidationPatchDataset
from data_generators.labels import labels_to_classes
from data_generators.preprocessing import PreprocessedCase, foreground_coords, preprocess_case
from data_generators.synthetic import make_synthetic_case
from unet3d_base.errors import InputError


@pytest.fixture(scope="module")
def cases():
    out = []
    for i in range(3):
        image, label = make_synthetic_case((40, 40, 32), np.random.default_rng([5, i]))
        img, lab, box = preprocess_case(image, labels_to_classes(label))
        out.append(PreprocessedCase(f"S{i}", img, lab, {"crop_box": box}, foreground_coords(lab)))
    return out


def test_batch_shapes_and_values(cases):
    ds = BratsPatchDataset(cases, patch_size=(16, 16, 8), batch_size=3, steps_per_epoch=5)
    assert len(ds) == 5
    x, y = ds[0]
    assert x.shape == (3, 16, 16, 8, 4) and x.dtype == np.float32
    assert y.shape == (3, 16, 16, 8, 3) and y.dtype == np.float32
    assert set(np.unique(y).tolist()) <= {0.0, 1.0}
    # regions are nested: ET inside TC inside WT
    assert np.all(y[..., 2] <= y[..., 1]) and np.all(y[..., 1] <= y[..., 0])
    labels = BratsPatchDataset(cases, patch_size=(16, 16, 8), batch_size=2,
                               output_mode="labels")
    x, y = labels[1]
    assert y.shape == (2, 16, 16, 8, 4) and y.dtype == np.float32
    assert np.all(y.sum(axis=-1) == 1.0)
    with pytest.raises(IndexError):
        ds[5]


def test_foreground_fraction_one_centres_on_tumor(cases):
    ds = BratsPatchDataset(cases, patch_size=(9, 8, 6), batch_size=4, steps_per_epoch=10,
                           foreground_fraction=1.0)
    for i in range(len(ds)):
        _, y = ds[i]
        assert np.all(y[:, 4, 4, 3, 0] == 1.0)  # centre voxel (p // 2) is whole tumor


def test_foreground_fraction_half_is_binomial(cases):
    ds = BratsPatchDataset(cases, patch_size=(4, 4, 4), batch_size=8, steps_per_epoch=75,
                           foreground_fraction=0.5)
    hits = 0
    n = 0
    for i in range(len(ds)):
        _, y = ds[i]
        hits += int(y[:, 2, 2, 2, 0].sum())
        n += len(y)
    # uniform centres hit tumor with the tumor's volume share (cases drawn uniformly)
    share = np.mean([float((c.label > 0).mean()) for c in cases])
    p = 0.5 + 0.5 * share
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) < 4 * sigma, (hits, n, p)
    assert hits < n  # not always tumor


def test_sample_centres_match_batches(cases):
    ds = BratsPatchDataset(cases, patch_size=(5, 5, 5), batch_size=4, foreground_fraction=0.5)
    x, _ = ds[3]
    for b, (k, centre, _) in enumerate(ds.sample_centres(3)):
        c = tuple(int(v) for v in centre)
        assert x[b, 2, 2, 2, 0] == cases[k].image[c + (0,)]


def test_determinism_per_epoch_and_index(cases):
    aug = AugmentationConfig()
    kwargs = dict(patch_size=(16, 16, 8), batch_size=2, augmentation=aug, seed=3)
    a = BratsPatchDataset(cases, **kwargs)
    b = BratsPatchDataset(cases, **kwargs)
    xa, ya = a[2]
    xb, yb = b[2]
    assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    x_again, _ = a[2]
    assert np.array_equal(xa, x_again)  # no hidden state advanced
    assert not np.array_equal(a[1][0], xa)
    a.on_epoch_end()
    assert a.epoch == 1
    assert not np.array_equal(a[2][0], xa)
    b.set_epoch(1)
    assert np.array_equal(a[2][0], b[2][0])
    other_seed = BratsPatchDataset(cases, **{**kwargs, "seed": 4})
    assert not np.array_equal(other_seed[2][0], xa)


def test_bad_arguments(cases):
    with pytest.raises(InputError, match="output_mode"):
        BratsPatchDataset(cases, patch_size=(8, 8, 8), output_mode="nope")
    with pytest.raises(InputError, match="no cases"):
        BratsPatchDataset([], patch_size=(8, 8, 8))
    unlabeled = PreprocessedCase("U", cases[0].image, None, {}, np.zeros((0, 3), np.int32))
    with pytest.raises(InputError, match="U"):
        ValidationPatchDataset([unlabeled], patch_size=(8, 8, 8))


def test_validation_dataset(cases):
    ds = ValidationPatchDataset(cases, patch_size=(8, 8, 8), batch_size=4, patches_per_case=3,
                                seed=1)
    assert len(ds.centres) == 9 and len(ds) == 3
    for k, case in enumerate(cases):
        k0, centre = ds.centres[3 * k]
        assert k0 == k
        assert np.array_equal(centre, np.round(case.foreground.mean(axis=0)).astype(int))
        _, second = ds.centres[3 * k + 1]
        assert case.label[tuple(second)] > 0  # a tumor voxel
    again = ValidationPatchDataset(cases, patch_size=(8, 8, 8), batch_size=4,
                                   patches_per_case=3, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(ds.centres, again.centres, strict=True))
    x, y = ds[0]
    assert x.shape == (4, 8, 8, 8, 4) and y.shape == (4, 8, 8, 8, 3)
    assert x.dtype == np.float32 and y.dtype == np.float32
    x_last, y_last = ds[2]
    assert x_last.shape[0] == 1
    px, py = ds.patch(8)
    assert np.array_equal(px, x_last[0]) and np.array_equal(py, y_last[0])
    assert np.array_equal(ds[0][0], x)


def test_split_cases():
    ids = [f"case{i:02d}" for i in range(10)]
    train, val = split_cases(ids, val_fraction=0.2, seed=1)
    assert len(val) == 2 and len(train) == 8
    assert not set(train) & set(val) and set(train) | set(val) == set(ids)
    assert split_cases(list(reversed(ids)), 0.2, seed=1) == (train, val)
    assert any(split_cases(ids, 0.2, seed=s)[1] != val for s in range(2, 6))
    folds = [split_cases(ids, seed=1, folds=3, fold=f)[1] for f in range(3)]
    assert sorted(sum(folds, [])) == ids
    assert [len(f) for f in folds] == [4, 3, 3]
    train, val = split_cases(["a", "b"], val_fraction=0.1)
    assert len(train) == 1 and len(val) == 1
    with pytest.raises(InputError, match="at least 2"):
        split_cases(["a"])
    with pytest.raises(InputError, match="fold"):
        split_cases(ids, folds=3, fold=3)


def test_keras_fit_consumes_dataset_with_threads(cases):
    import keras

    ds = BratsPatchDataset(cases, patch_size=(8, 8, 8), batch_size=2, steps_per_epoch=3,
                           workers=2, use_multiprocessing=False, max_queue_size=2)
    inputs = keras.Input((8, 8, 8, 4))
    model = keras.Model(inputs, keras.layers.Conv3D(3, 1, activation="sigmoid")(inputs))
    model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(ds, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    # Keras calls on_epoch_end after each epoch (and once more when it resets its iterator)
    assert ds.epoch >= 2


def test_epoch_span_is_a_pure_function_of_position(cases):
    import keras

    base = BratsPatchDataset(cases, patch_size=(8, 8, 8), batch_size=2, steps_per_epoch=3,
                             seed=5)
    span = EpochSpan(base, initial_epoch=5, epochs=7, workers=2, max_queue_size=2)
    assert len(span) == 6
    assert span.workers == 1 and span.prefetch_threads == 2  # Keras reads in order; we prefetch
    for k in range(6):
        expected = base.batch_at(5 + k // 3, k % 3)
        np.testing.assert_array_equal(span[k][0], expected[0])
    # the batches fit consumes, in order, whatever Keras prefetches or calls on_epoch_end
    consumed = []

    class Probe(keras.Model):
        def train_step(self, data):
            x, _ = data
            return {"first": keras.ops.sum(x[0, 0, 0, 0])}

    inputs = keras.Input((8, 8, 8, 4))
    model = Probe(inputs, keras.layers.Conv3D(3, 1)(inputs))
    model.compile(optimizer="adam", loss="mse")

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            consumed.append(float(logs["first"]))

    model.fit(span, epochs=7, initial_epoch=5, steps_per_epoch=3, shuffle=False, verbose=0,
              callbacks=[Record()])
    expected = [float(base.batch_at(5 + k // 3, k % 3)[0][0, 0, 0, 0].sum()) for k in range(6)]
    np.testing.assert_allclose(consumed, expected, rtol=1e-6)
    span.close()
