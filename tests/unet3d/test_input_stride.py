"""A 2D network that works at half the slice's resolution (``ModelConfig.input_stride``):
average pooling in, bilinear upsampling of the logits out, checked against the same
weights run at full resolution on a pooled slice."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from scipy import ndimage

from unet3d.config import ModelConfig, TrainConfig
from unet3d.export.convert import model_stride
from unet3d.models.unet import build_unet3d
from unet3d_base.errors import InputError

CONFIG = ModelConfig(spatial_dims=2, base_filters=4, depth=3, segmentation_levels=2,
                     dropout=0.0, in_channels=1, input_stride=2)


def strided_model(seed: int = 4) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_unet3d(CONFIG)


def test_the_network_runs_on_the_pooled_slice_and_upsamples_its_logits():
    model = strided_model()
    inner = build_unet3d(dataclasses.replace(CONFIG, input_stride=1))
    inner.set_weights(model.get_weights()[:-1])  # the same layers, less the smoothing
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 32, 48, 1)).astype(np.float32)
    out = np.asarray(model(image))
    assert out.shape == (2, 32, 48, 3)

    pooled = image.reshape(2, 16, 2, 24, 2, 1).mean(axis=(2, 4))  # 2x2 block means
    probabilities = np.asarray(inner(pooled), dtype=np.float64)
    logits = np.log(probabilities) - np.log1p(-probabilities)
    # x2 nearest, then the binomial kernel with zeros beyond the slice
    nearest = logits.repeat(2, axis=1).repeat(2, axis=2)
    kernel = np.outer([1, 2, 1], [1, 2, 1])[None, :, :, None] / 16
    smoothed = ndimage.correlate(nearest, kernel, mode="constant")
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-smoothed)), atol=2e-5)
    # inside the slice that is bilinear interpolation, pixel centres at (i + 0.5) / 2
    bilinear = np.stack([np.stack([ndimage.zoom(logits[b, ..., c], 2, order=1,
                                                grid_mode=True, mode="nearest")
                                   for c in range(3)], axis=-1) for b in range(2)])
    np.testing.assert_allclose(smoothed[:, 1:-1, 1:-1], bilinear[:, 1:-1, 1:-1], atol=1e-9)
    # not the same as the network at full resolution: the stride changed the answer
    assert np.abs(out - np.asarray(inner(image))).max() > 1e-2


def test_sizes_must_be_multiples_of_the_stride_times_the_encoder_stride():
    assert CONFIG.stride == 2 * 2 ** 2
    assert model_stride(strided_model()) == 8
    with pytest.raises(InputError, match="patch_size"):
        # 36 = 4 * 9, not a multiple of 8
        TrainConfig(model=CONFIG, patch_size=(36, 36), modalities=("flair",))
    TrainConfig(model=CONFIG, patch_size=(40, 40), modalities=("flair",))
    with pytest.raises(InputError, match="2D network"):
        ModelConfig(input_stride=2)  # 3D
    with pytest.raises(InputError, match="1 or 2"):
        dataclasses.replace(CONFIG, input_stride=3)


def test_a_strided_model_file_reloads_with_safe_mode(tmp_path):
    model = strided_model()
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    image = np.random.default_rng(1).standard_normal((1, 24, 16, 1)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(again(image)), np.asarray(model(image)))


@pytest.mark.slow
def test_a_strided_network_exports_to_litert_as_keras_computes(tmp_path):
    from unet3d.artifacts.litert_file import LiteRTModel
    from unet3d.export import export_litert

    model = strided_model()
    rng = np.random.default_rng(6)
    patches = [rng.standard_normal((1, 48, 48, 1)).astype(np.float32) for _ in range(2)]
    config = TrainConfig(model=CONFIG, patch_size=(48, 48), modalities=("flair",))
    report = export_litert(model, tmp_path / "m.tflite", precision="fp32", window=(48, 48),
                           calibration=patches, config=config.to_dict())
    assert {"AVERAGE_POOL_2D", "DEPTHWISE_CONV_2D"} <= set(report["ops"])
    runner = LiteRTModel(tmp_path / "m.tflite")
    for patch in patches:
        np.testing.assert_allclose(runner.predict_fn(patch), model(patch), atol=2e-4)
