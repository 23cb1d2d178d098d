import weakref

import numpy as np
import pytest

from unet3d.inference.predictor import (
    WindowPredictor,
    gaussian_importance_map,
    mirror_tta,
    pad_to,
    predict_sliding,
    predict_whole,
    sliding_window_steps,
)


def voxelwise(batch):
    """A 'network' whose output at a voxel depends on that voxel only."""
    return np.stack([np.tanh(batch[..., 0] - batch[..., 1]), batch[..., 2] ** 2], axis=-1)


def test_gaussian_importance_map():
    weights = gaussian_importance_map((16, 12, 8))
    assert weights.shape == (16, 12, 8) and weights.dtype == np.float32
    assert weights[8, 6, 4] == weights.max() == 1.0
    assert weights.min() > 0
    # symmetric about the centre voxel along each axis
    np.testing.assert_allclose(weights[7, 6, 4], weights[9, 6, 4])
    # sigma = size / 8 = 2 along the first axis: one sigma off-centre is exp(-1/2)
    assert weights[10, 6, 4] == pytest.approx(np.exp(-0.5), rel=0.02)


@pytest.mark.parametrize(("size", "patch", "overlap", "expected"), [
    (100, 64, 0.5, (0, 18, 36)),  # step <= 32: ceil(36 / 32) + 1 = 3 windows
    (64, 64, 0.5, (0,)),
    (128, 64, 0.5, (0, 32, 64)),
    (130, 64, 0.0, (0, 33, 66)),  # step <= 64: ceil(66 / 64) + 1 = 3
])
def test_sliding_window_steps(size, patch, overlap, expected):
    assert sliding_window_steps((size,), (patch,), overlap) == (expected,)


def test_sliding_window_steps_rejects_small_images_and_bad_overlap():
    with pytest.raises(ValueError):
        sliding_window_steps((10,), (16,), 0.5)
    with pytest.raises(ValueError):
        sliding_window_steps((32,), (16,), 1.0)


def test_pad_to_restores_region():
    image = np.random.default_rng(0).normal(size=(5, 7, 9, 2))
    padded, region = pad_to(image, (8, 8, 8), multiple=4)
    assert padded.shape == (8, 8, 12, 2)
    np.testing.assert_array_equal(padded[region], image)


def test_whole_and_sliding_agree_on_a_local_model():
    image = np.random.default_rng(1).normal(size=(37, 29, 22, 3)).astype(np.float32)
    whole = predict_whole(voxelwise, image, multiple=8)
    sliding = predict_sliding(voxelwise, image, (16, 16, 16), overlap=0.5, batch_size=3)
    np.testing.assert_allclose(whole, voxelwise(image[None])[0], rtol=1e-6)
    np.testing.assert_allclose(sliding, whole, rtol=1e-5, atol=1e-6)


def test_a_handed_over_volume_is_freed_before_the_pass():
    image = np.random.default_rng(5).normal(size=(13, 11, 9, 3)).astype(np.float32)
    expected = voxelwise(image[None])[0]
    handed = [image.copy()]
    alive = weakref.ref(handed[0])
    seen = []

    def network(batch):
        seen.append(alive() is None)  # the caller's volume, during the pass
        return voxelwise(batch)

    np.testing.assert_array_equal(predict_whole(network, handed, multiple=4), expected)
    assert handed == [] and seen == [True]
    # through the predictor: handed over in a whole pass, kept where mirroring needs it
    for tta, freed in ((False, True), (True, False)):
        handed, seen[:] = [image.copy()], []
        alive = weakref.ref(handed[0])
        out = WindowPredictor(network, stride=4, patch_size=(8, 8, 8), mode="whole",
                              tta=tta)(handed)
        np.testing.assert_allclose(out, expected, rtol=1e-6)
        assert set(seen) == {freed}


def test_mirror_tta():
    image = np.random.default_rng(2).normal(size=(6, 5, 4, 3)).astype(np.float32)
    # a voxelwise model commutes with flips: TTA changes nothing
    np.testing.assert_allclose(mirror_tta(lambda x: voxelwise(x[None])[0], image),
                               voxelwise(image[None])[0], rtol=1e-6)
    # a model that reads the position: the 8 flips average a ramp to its mean
    ramp = np.arange(6, dtype=np.float32)[:, None, None, None] * np.ones((6, 5, 4, 1))

    def positional(x):
        return ramp

    np.testing.assert_allclose(mirror_tta(positional, image), np.full((6, 5, 4, 1), 2.5))


def test_predictor_auto_mode_follows_memory_budget():
    # 64^3 x 16 maps x 8 x 4 B = 0.13 GB plus 1 GB runtime: fits 2 GB; 400^3 (32 GB) does not
    small = WindowPredictor(voxelwise, stride=8, patch_size=(16, 16, 16), max_memory_gb=2.0)
    assert small.resolved_mode((64, 64, 64)) == "whole"
    assert small.resolved_mode((400, 400, 400)) == "sliding"
    image = np.random.default_rng(3).normal(size=(20, 20, 20, 3)).astype(np.float32)
    for mode in ("whole", "sliding"):
        out = WindowPredictor(voxelwise, stride=8, patch_size=(16, 16, 16), mode=mode)(image)
        np.testing.assert_allclose(out, voxelwise(image[None])[0], rtol=1e-5, atol=1e-6)


def test_memory_refusals_name_the_option(monkeypatch):
    from unet3d_base.errors import InputError

    # 144x176x144 x 16 x 8 x 4 B = 1.74 GiB + 1 GiB runtime = 2.7 GB > 2 GB
    monkeypatch.setenv("UNET3D_MEMORY_GB", "2")
    whole = WindowPredictor(voxelwise, stride=16, patch_size=(128, 128, 128), mode="whole")
    with pytest.raises(InputError, match="--mode whole on a 144x176x144 volume needs about "
                                         r"2\.7 GB but only 2\.0 GB are available; use --mode"):
        whole.resolved_mode((138, 170, 144))
    sliding = WindowPredictor(voxelwise, stride=16, patch_size=(256, 256, 256), mode="sliding")
    with pytest.raises(InputError, match="lower --patch-size"):
        sliding.resolved_mode((138, 170, 144))
    # auto falls back to a sliding window that fits
    auto = WindowPredictor(voxelwise, stride=16, patch_size=(96, 96, 96), max_memory_gb=64)
    assert auto.resolved_mode((138, 170, 144)) == "sliding"


def test_mirror_tta_memory_is_about_two_passes():
    import tracemalloc

    image = np.random.default_rng(4).normal(size=(40, 36, 32, 2)).astype(np.float32)
    out_bytes = image[..., :1].nbytes * 3  # a 3-channel float32 output per pass

    def three_channels(x):
        return np.repeat(x[..., :1] * 2.0, 3, axis=-1)

    tracemalloc.start()
    result = mirror_tta(three_channels, image)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_allclose(result, three_channels(image), rtol=1e-6)
    # the running sum, one pass in flight (plus its temporaries) and one flipped input
    assert peak <= 2 * out_bytes + image[..., :1].nbytes * 2 + image.nbytes


def test_memory_estimates_by_hand():
    from unet3d.memory import inference_bytes, training_bytes

    gib = 2**30
    assert training_bytes((128, 128, 128), 2, 16) == 128**3 * 2 * 16 * 70 * 4 + gib
    assert inference_bytes((10, 10, 10), 8) == 1000 * 8 * 8 * 4 + gib
