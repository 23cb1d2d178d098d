"""Inference in less memory (unet3d.models.lean.lean_forward, shared input, allocator):
the same probabilities, bit for bit, as the plain compiled forward pass."""

import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from unet3d.config import ModelConfig
from unet3d.inference.allocators import return_freed_heap_tops
from unet3d.inference.predictor import WindowPredictor, aligned_zeros, pad_to
from unet3d.models.forward import ALIGN_BYTES, keras_predict_fn
from unet3d.models.lean import _tileable, lean_forward
from unet3d.models.unet import build_unet3d
from unet3d.precision import policy_scope

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                                reason="the memory saving is TensorFlow's")


def _predict_fn(model, monkeypatch, saving: bool):
    monkeypatch.setenv("UNET3D_MEMORY_SAVING", "1" if saving else "0")
    return keras_predict_fn(model)


def _built(precision: str, **config) -> keras.Model:
    keras.utils.set_random_seed(5)
    with policy_scope(precision):
        return build_unet3d(ModelConfig(base_filters=4, **config))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("config", [
    {"depth": 3},
    {"depth": 3, "output_mode": "labels"},
    {"depth": 3, "attention_gates": True},
    {"depth": 2, "segmentation_levels": 2},
])
def test_lean_forward_gives_the_plain_probabilities(monkeypatch, precision, config):
    model = _built(precision, **config)
    plain = _predict_fn(model, monkeypatch, saving=False)
    lean = _predict_fn(model, monkeypatch, saving=True)
    rng = np.random.default_rng(0)
    # 4 rows: slabs of one row; 2 rows at half resolution: two slabs of the upsampling empty
    for shape in [(1, 16, 24, 8, 4), (1, 24, 8, 16, 4), (1, 4, 8, 8, 4)]:
        x = rng.normal(size=shape).astype(np.float32)
        np.testing.assert_array_equal(lean(pad_to(x[0], shape[1:4])[0][None]), plain(x))


def test_lean_forward_of_a_slice_network(monkeypatch):
    model = _built("fp32", depth=3, spatial_dims=2)
    x = np.random.default_rng(1).normal(size=(1, 24, 16, 4)).astype(np.float32)
    lean = _predict_fn(model, monkeypatch, saving=True)
    np.testing.assert_array_equal(lean(x), _predict_fn(model, monkeypatch, saving=False)(x))


def test_the_full_resolution_pairs_of_the_default_network():
    model = _built("fp32", depth=3)
    pairs = {model.get_layer(name): into for name, into in [
        ("dec0_upsampling_up", None), ("dec0_concat", 0)]}
    # the upsampling before dec0's convolution, written into a new map; the concatenation
    # of skip and upsampled maps, written into the skip map (its first input, 4 channels)
    assert _tileable(model) == {id(layer): into for layer, into in pairs.items()}
    inputs = keras.Input((None, None, None, 2))
    plain = keras.Model(inputs, keras.layers.Conv3D(3, 3, padding="same")(inputs))
    assert lean_forward(plain) is None  # nothing to tile


def test_whole_sliding_and_mirroring_labels_are_unchanged(monkeypatch):
    model = _built("fp32", depth=3)
    image = np.random.default_rng(2).normal(size=(21, 18, 13, 4)).astype(np.float32)
    results = []
    for saving in (False, True):
        fn = _predict_fn(model, monkeypatch, saving)
        results.append([WindowPredictor(fn, stride=4, patch_size=(8, 8, 8), mode=mode, tta=tta,
                                        base_filters=4)(image)
                        for mode, tta in [("whole", False), ("whole", True), ("sliding", False)]])
    for off, on in zip(*results, strict=True):
        np.testing.assert_array_equal(on, off)


def test_pad_to_gives_an_aligned_zero_padded_copy():
    image = np.arange(3 * 5 * 2 * 2, dtype=np.float32).reshape(3, 5, 2, 2) + 1
    padded, region = pad_to(image, (4, 4, 4), multiple=4)
    assert padded.shape == (4, 8, 4, 2) and padded.ctypes.data % ALIGN_BYTES == 0
    np.testing.assert_array_equal(padded[region], image)
    # 1 + 3 + 2 rows of zeros around the image: nothing but the image is non-zero
    assert np.count_nonzero(padded) == image.size
    assert region == (slice(0, 3), slice(1, 6), slice(1, 3))
    zeros = aligned_zeros((7, 3), np.uint8)
    assert zeros.ctypes.data % ALIGN_BYTES == 0 and not zeros.any()


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.skipif(not return_freed_heap_tops(), reason="glibc's malloc")
def test_a_threads_freed_memory_goes_back():
    def churn():  # 40 MB in blocks of 100 kB: below the mmap threshold, in the thread's heap
        blocks = [bytearray(100_000) for _ in range(400)]
        del blocks

    before = _rss_mb()
    thread = threading.Thread(target=churn)
    thread.start()
    thread.join()
    # the trim threshold (4 MiB) is all a heap keeps of what was freed at its top
    assert _rss_mb() - before < 16
