"""The 2D form of the network from the one builder, attention gates, and the slice
machinery around them: sampling, slice-by-slice inference, LiteRT export."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest
from keras import layers

from data_generators.augmentation import AugmentationConfig
from data_generators.dataset import BratsPatchDataset, ValidationPatchDataset
from data_generators.preprocessing import PreprocessedCase
from unet3d.config import ModelConfig, TrainConfig
from unet3d.inference.predictor import WindowPredictor, slice_predict_fn
from unet3d.models.layers import attention_gate
from unet3d.models.unet import build_unet3d
from unet3d_base.errors import InputError

TINY = {"base_filters": 2, "depth": 2, "segmentation_levels": 1, "dropout": 0.0}


def conv_kernels(model) -> dict[str, tuple[int, ...]]:
    return {layer.name: tuple(layer.kernel.shape) for layer in model.layers
            if isinstance(layer, (layers.Conv2D, layers.Conv3D))}


def test_one_builder_makes_the_same_network_in_2d_and_3d():
    two = build_unet3d(ModelConfig(spatial_dims=2, **TINY))
    three = build_unet3d(ModelConfig(**TINY))
    kinds2 = {type(layer).__name__ for layer in two.layers}
    kinds3 = {type(layer).__name__ for layer in three.layers}
    assert {"Conv2D", "UpSampling2D"} <= kinds2 and not {"Conv3D", "UpSampling3D"} & kinds2
    assert {"Conv3D", "UpSampling3D"} <= kinds3 and not {"Conv2D", "UpSampling2D"} & kinds3
    # the same layers, each 2D kernel the 3D one without its depth axis
    k2, k3 = conv_kernels(two), conv_kernels(three)
    assert k2.keys() == k3.keys()
    for name, shape in k3.items():
        assert k2[name] == shape[1:], name
    # hand count of the tiny 2D network (4 inputs, 2 then 4 filters, 3 region outputs):
    # convs 3x3 4->2, 3x3 2->2 x2 (context 0), stride-2 3x3 2->4, 3x3 4->4 x2 (context 1),
    # upsampling 3x3 4->2, localization 3x3 4->2 and 1x1 2->2, segmentation 1x1 2->3;
    # instance norms (gamma, beta): 2 + 1 skip at level 0, 2 at level 1, 1 + 2 in the decoder
    convs = [(9, 4, 2), (9, 2, 2), (9, 2, 2), (9, 2, 4), (9, 4, 4), (9, 4, 4), (9, 4, 2),
             (9, 4, 2), (1, 2, 2), (1, 2, 3)]
    norms = [2, 2, 2, 4, 4, 2, 2, 2]
    expected = sum(k * i * o + o for k, i, o in convs) + sum(2 * c for c in norms)
    assert two.count_params() == expected
    x = np.zeros((1, 16, 16, 4), np.float32)
    assert two(x).shape == (1, 16, 16, 3)


def test_attention_gate_scales_the_skip_by_its_coefficient(tmp_path):
    skip = keras.Input((8, 8, 3))
    gating = keras.Input((4, 4, 5))
    model = keras.Model([skip, gating], attention_gate(skip, gating, 4, name="gate"))
    # gate convs: 2x2 stride-2 3->4, 1x1 5->4, 1x1 4->1 (psi), each with a bias
    assert model.count_params() == (4 * 3 * 4 + 4) + (5 * 4 + 4) + (4 + 1)
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            kernel, bias = layer.get_weights()
            layer.set_weights([np.zeros_like(kernel),
                               np.full_like(bias, 0.7 if layer.name == "gate_psi" else 0.0)])
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((2, 8, 8, 3)), rng.standard_normal((2, 4, 4, 5))
    np.testing.assert_allclose(model([x, g]), x / (1 + np.exp(-0.7)), rtol=1e-5)

    # random weights: the gate worked out in numpy, one coefficient per 2x2 block of the skip
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            layer.set_weights([rng.standard_normal(w.shape).astype("float32")
                               for w in layer.get_weights()])
    (k_skip, b_skip), (k_gate, b_gate), (k_psi, b_psi) = (
        model.get_layer(f"gate_{n}").get_weights() for n in ("skip", "gating", "psi"))
    blocks = x.reshape(2, 4, 2, 4, 2, 3).transpose(0, 1, 3, 2, 4, 5)  # (b, i, j, di, dj, c)
    theta = np.einsum("bijuvc,uvcf->bijf", blocks, k_skip) + b_skip
    joint = np.maximum(theta + g @ k_gate + b_gate, 0)
    coefficient = 1 / (1 + np.exp(-(joint @ k_psi + b_psi)))  # (2, 4, 4, 1)
    expected = x * coefficient.repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_allclose(model([x, g]), expected, rtol=1e-4, atol=1e-5)
    assert coefficient.std() > 0.05  # the coefficients do vary over the plane


@pytest.mark.parametrize("dims", [2, 3])
def test_attention_unet_reloads_with_safe_mode(dims, tmp_path):
    config = ModelConfig(spatial_dims=dims, attention_gates=True, **TINY)
    keras.utils.set_random_seed(1)
    model = build_unet3d(config)
    plain = build_unet3d(dataclasses.replace(config, attention_gates=False))
    # one gate at the one skip: 2x2(x2) stride-2 conv 2->2, 1x1 conv 4->2, 1x1 conv 2->1
    kernel = 2 ** dims
    assert model.count_params() - plain.count_params() == (kernel * 2 * 2 + 2) + (4 * 2 + 2) \
        + (2 + 1)
    path = tmp_path / "att.keras"
    model.save(path)
    again = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(2).standard_normal((1, *([8] * dims), 4)).astype(np.float32)
    np.testing.assert_array_equal(model(x), again(x))


def test_config_checks_dimensions_and_modalities():
    with pytest.raises(InputError, match="^spatial_dims must be 2 or 3"):
        ModelConfig(spatial_dims=4)
    with pytest.raises(InputError, match="two positive sizes"):
        TrainConfig(model=ModelConfig(spatial_dims=2), patch_size=(64, 64, 64))
    assert TrainConfig(model=ModelConfig(in_channels=1), modalities=("flair",)).modalities \
        == ("flair",)
    for bad in (("flair", "flair"), ("dwi",)):
        with pytest.raises(InputError, match="^modalities "):
            TrainConfig(model=ModelConfig(in_channels=len(bad)), modalities=bad)



def test_a_2d_config_file_without_a_patch_size_gets_the_slice_default(tmp_path):
    from unet3d.cli.train import build_config, parse_args

    path = tmp_path / "slices.json"
    path.write_text(json.dumps({"model": {"spatial_dims": 2, "depth": 4}}))
    config = build_config(parse_args(["--config", str(path), "--out", str(tmp_path / "run")]))
    assert config.model.spatial_dims == 2 and config.patch_size == (192, 192)
    config = build_config(parse_args(["--config", str(path), "--patch-size", "64",
                                      "--out", str(tmp_path / "run")]))
    assert config.patch_size == (64, 64)

def z_volume() -> PreprocessedCase:
    """Every voxel holds 100 + its z index; a tumor blob in slices 5-9 at the centre of a
    slice wide enough that transformed patches around it never reach the volume's edge."""
    shape = (90, 90, 14)
    z = np.broadcast_to(np.arange(100, 100 + shape[2], dtype=np.float32), shape)
    image = np.repeat(z[..., None], 4, axis=-1).copy()
    label = np.zeros(shape, np.uint8)
    label[40:50, 40:50, 5:10] = 2
    return PreprocessedCase("z", image, label, {}, np.argwhere(label > 0))


@pytest.mark.parametrize("in_plane", [True, False])
def test_slices_are_augmented_in_their_plane(in_plane):
    case = z_volume()
    strong = AugmentationConfig(p_rotation=1.0, max_rotation_deg=30, p_scale=1.0, p_elastic=1.0,
                                elastic_alpha=(3.0, 4.0), p_gamma=0, p_brightness=0,
                                p_contrast=0, in_plane=in_plane)
    data = BratsPatchDataset([case], patch_size=(24, 24, 1), batch_size=8, steps_per_epoch=2,
                             foreground_fraction=1.0, augmentation=strong, seed=3)
    x, _ = data[0]
    mixed = 0
    for sample in x:
        mixed += len(np.unique(np.round(sample[..., 0], 4))) > 1
    # a depth-1 3D patch rotated out of plane reads neighbouring slices (and interpolates)
    assert (mixed == 0) if in_plane else (mixed > 0)


def test_slice_batches_are_2d_and_reproducible():
    case = z_volume()
    data = BratsPatchDataset([case], patch_size=(24, 24), batch_size=4, steps_per_epoch=2,
                             augmentation=AugmentationConfig(), seed=3)
    x, y = data[1]
    assert x.shape == (4, 24, 24, 4) and y.shape == (4, 24, 24, 3)
    for sample in x:  # in-plane: each slice holds one z value (or zero outside)
        values = np.unique(np.round(sample[..., 0], 4))
        assert len(values[values >= 100]) <= 1
    again, _ = data.batch_at(0, 1)
    np.testing.assert_array_equal(x, again)
    val = ValidationPatchDataset([case], patch_size=(24, 24), patches_per_case=2)
    image, target = val.patch(0)
    assert image.shape == (24, 24, 4) and target.shape == (24, 24, 3)
    assert np.all(image[..., 0] == 107)  # the tumor centroid's slice, z index 7


def fake_slice_fn(calls: list):
    """A 2D 'network' whose output depends on its own slice's mean: slices mixed up, or
    batched wrongly, give other numbers."""
    def run(batch):
        calls.append(batch.shape)
        mean = batch.mean(axis=(1, 2, 3), keepdims=True)
        return np.concatenate([batch[..., :1] * 2 + mean, batch[..., 1:2] - mean], axis=-1)
    return run


def test_slice_predict_fn_equals_one_call_per_slice():
    rng = np.random.default_rng(4)
    volume = rng.standard_normal((2, 12, 10, 37, 3)).astype(np.float32)  # 74 slices
    calls = []
    got = slice_predict_fn(fake_slice_fn(calls), batch_slices=16)(volume)
    assert all(shape[0] == 16 for shape in calls) and len(calls) == 5  # padded last chunk
    reference = fake_slice_fn([])
    for b in range(2):
        for z in range(37):
            expected = reference(volume[b, :, :, z][None])[0]
            np.testing.assert_allclose(got[b, :, :, z], expected, rtol=1e-6, atol=1e-6)


def test_2d_predictor_whole_sliding_and_in_plane_mirroring():
    rng = np.random.default_rng(5)
    volume = rng.standard_normal((20, 24, 7, 2)).astype(np.float32)

    def per_pixel(batch):  # no interaction between pixels: every path gives the same
        return np.tanh(batch[..., :1] * 3 + batch[..., 1:] ** 2)

    whole = WindowPredictor(per_pixel, stride=4, patch_size=(8, 8), mode="whole", spatial_dims=2,
                      max_memory_gb=1)(volume)
    sliding = WindowPredictor(per_pixel, stride=4, patch_size=(8, 8), mode="sliding",
                        spatial_dims=2, max_memory_gb=1)(volume)
    np.testing.assert_allclose(whole, np.tanh(volume[..., :1] * 3 + volume[..., 1:] ** 2),
                               rtol=1e-6)
    np.testing.assert_allclose(sliding, whole, rtol=1e-5, atol=1e-6)
    calls = []

    def counting(batch):
        calls.append(1)
        return per_pixel(batch)

    WindowPredictor(counting, stride=4, patch_size=(8, 8), mode="whole", spatial_dims=2, tta=True,
              max_memory_gb=1)(volume)
    assert len(calls) == 4  # 7 slices, one chunk each pass: 4 in-plane mirrorings

    def directional(batch):  # (B, X, Y, C): depends on position and direction in the plane
        columns = np.arange(batch.shape[2], dtype=np.float32)[None, None, :, None]
        return np.cumsum(batch[..., :1], axis=1) * 0.1 + batch[..., 1:] * columns

    def per_slice(image):
        return np.stack([directional(image[:, :, z][None])[0] for z in range(image.shape[2])],
                        axis=2)

    expected = np.mean([np.flip(per_slice(np.flip(volume, axes)), axes)
                        for axes in ((), (0,), (1,), (0, 1))], axis=0)
    tta = WindowPredictor(directional, stride=4, patch_size=(8, 8), mode="whole", spatial_dims=2,
                    tta=True, max_memory_gb=1)(volume)
    np.testing.assert_allclose(tta, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(per_slice(volume) - expected).max() > 0.1  # mirroring changed the answer


@pytest.mark.slow
def test_2d_network_exports_to_litert_as_keras_computes(tmp_path):
    from unet3d.artifacts.litert_file import LiteRTModel
    from unet3d.export import export_litert

    config = ModelConfig(spatial_dims=2, attention_gates=True, base_filters=4, depth=3,
                         dropout=0.0)
    keras.utils.set_random_seed(6)
    model = build_unet3d(config)
    rng = np.random.default_rng(6)
    patches = [rng.standard_normal((1, 48, 48, 4)).astype(np.float32) for _ in range(2)]
    report = export_litert(model, tmp_path / "m.tflite", precision="fp32", window=(48, 48),
                           calibration=patches,
                           config=TrainConfig(model=config, patch_size=(48, 48)).to_dict())
    assert "CONV_2D" in report["ops"] and not any("3D" in op for op in report["ops"])
    runner = LiteRTModel(tmp_path / "m.tflite")
    assert runner.window == (48, 48)
    for patch in patches:
        np.testing.assert_allclose(runner.predict_fn(patch), model(patch), atol=2e-4)
