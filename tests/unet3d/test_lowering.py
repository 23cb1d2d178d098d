"""LiteRT export, the fast part: each layer's lowering and the lowered graph of a tiny
U-Net compared with Keras, and window checks. Nothing is converted to ``.tflite``
(that is :mod:`tests.unet3d.test_export`, marked slow); every test takes well under
a second, so these run in ``make test-fast``."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from unet3d.export import check_window, lower_layer, lower_model
from unet3d.export.ops import conv3d_as_conv2d, upsample_conv3d, upsample_conv_kernels
from unet3d_base.errors import InputError

WINDOW = (8, 16, 8)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-12))


def _run_layer(layer: keras.layers.Layer, *volumes: np.ndarray) -> np.ndarray:
    """Applies the lowering of ``layer`` to `(1, D, H, W, C)` volumes, returns 5D."""
    fn = lower_layer(layer)
    out = fn([tf.constant(v[0]) for v in volumes])
    return out.numpy()[None]


def _random(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


# ---- per-layer equivalence ---------------------------------------------------
@pytest.mark.parametrize(
    "shape,kernel,stride",
    [((5, 7, 9), 3, 1), ((1, 4, 3), 3, 1), ((4, 6, 8), 3, 2), ((2, 2, 2), 3, 2),
     ((5, 7, 9), 1, 1), ((6, 4, 2), 1, 1), ((5, 7, 9), 3, 2)],
)
def test_conv3d_lowering_matches_keras(shape, kernel, stride):
    x = _random((1, *shape, 3))
    layer = keras.layers.Conv3D(5, kernel, strides=stride, padding="same",
                                bias_initializer="random_normal")
    expected = layer(x).numpy()
    got = _run_layer(layer, x)
    assert got.shape == expected.shape
    assert _rel_err(expected, got) < 1e-5


def test_conv3d_padding_edges_are_zero_padded():
    # a kernel reading only the last depth tap: output slice d = input slice d + 1,
    # and the last slice sees the zero padding
    x = _random((1, 4, 5, 6, 2), seed=1)
    layer = keras.layers.Conv3D(2, 3, padding="same", use_bias=False)
    layer.build(x.shape)
    kernel = np.zeros((3, 3, 3, 2, 2), np.float32)
    kernel[2, 1, 1] = np.eye(2)
    layer.set_weights([kernel])
    got = _run_layer(layer, x)
    np.testing.assert_allclose(got[0, :-1], x[0, 1:], atol=1e-6)
    np.testing.assert_allclose(got[0, -1], 0.0, atol=1e-6)
    np.testing.assert_allclose(got, layer(x).numpy(), atol=1e-6)


@pytest.mark.parametrize("split", [None, 1])
def test_conv3d_split_into_depth_taps_matches_keras(split):
    # split_channels=1: every stride-1 3x3x3 conv is three CONV_2D summed, one per depth tap
    x = _random((1, 5, 6, 7, 4), seed=11)
    layer = keras.layers.Conv3D(3, 3, padding="same", bias_initializer="random_normal")
    expected = layer(x).numpy()
    kernel, bias = layer.get_weights()
    fn = tf.function(lambda t: conv3d_as_conv2d(t, kernel, bias, 1, split_channels=split))
    got = fn(tf.constant(x[0])).numpy()[None]
    assert _rel_err(expected, got) < 1e-5
    convs = [op for op in fn.get_concrete_function(tf.constant(x[0])).graph.get_operations()
             if op.type == "Conv2D"]
    assert len(convs) == (1 if split is None else 3)


def test_upsample_conv_kernels_sum_the_taps_each_phase_reads():
    # worked out by hand, per axis: fine phase 0 reads coarse taps (i-1, i) with the
    # 3-tap kernel's weights (k0, k1 + k2); phase 1 reads (i, i+1) with (k0 + k1, k2)
    kernel = np.zeros((3, 3, 3, 1, 1), np.float32)
    kernel[:, 1, 1, 0, 0] = [1.0, 10.0, 100.0]  # depth taps only, at the centre of h and w
    even, odd = upsample_conv_kernels(kernel)
    assert even.shape == odd.shape == (2, 2, 2, 4)
    # output group (a, b) = (1, 1) holds height and width phase 0, whose taps u = v = 1
    # (the coarse voxel itself) carry the centre
    np.testing.assert_array_equal(even[1, 1, :, 3], [1.0, 110.0])  # depth taps d-1, d
    np.testing.assert_array_equal(odd[1, 1, :, 3], [11.0, 100.0])  # depth taps d, d+1
    assert even[0, :, :, 3].sum() == even[:, 0, :, 3].sum() == 0


def test_upsample_conv3d_reads_the_nearest_coarse_voxel():
    # a kernel that only reads offset (-1, -1, -1): fine voxel z gets coarse (z - 1) // 2
    # on every axis, and zero where z - 1 < 0
    x = _random((3, 4, 5, 2), seed=12)
    kernel = np.zeros((3, 3, 3, 2, 2), np.float32)
    kernel[0, 0, 0] = np.eye(2)
    got = tf.function(lambda t: upsample_conv3d(t, kernel, None))(tf.constant(x)).numpy()
    padded = np.pad(x, [(1, 0), (1, 0), (1, 0), (0, 0)])
    idx = [np.arange(2 * n) // 2 + (np.arange(2 * n) % 2) for n in x.shape[:3]]
    expected = padded[np.ix_(*idx)]  # padded[(z + 1) // 2] = x[(z - 1) // 2], 0 at z = 0
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 4), (4, 4, 4), (1, 2, 3)])
def test_upsample_conv3d_matches_keras(shape):
    x = _random((1, *shape, 3), seed=13)
    up = keras.layers.UpSampling3D(size=2)
    conv = keras.layers.Conv3D(5, 3, padding="same", bias_initializer="random_normal")
    expected = conv(up(x)).numpy()
    kernel, bias = conv.get_weights()
    got = upsample_conv3d(tf.constant(x[0]), kernel, bias).numpy()[None]
    assert got.shape == expected.shape
    assert _rel_err(expected, got) < 1e-5


@pytest.mark.parametrize("shape", [(5, 7, 9), (4, 4, 4)])
def test_instance_norm_matches_keras(shape):
    x = 3.0 + 2.0 * _random((1, *shape, 6), seed=2)
    layer = keras.layers.GroupNormalization(groups=-1, epsilon=1e-5,
                                            gamma_initializer="random_normal",
                                            beta_initializer="random_normal")
    expected = layer(x).numpy()
    assert _rel_err(expected, _run_layer(layer, x)) < 1e-5


def test_upsampling_leaky_relu_add_concat_activations():
    x = _random((1, 3, 5, 4, 2), seed=4)
    y = _random((1, 3, 5, 4, 2), seed=5)
    up = keras.layers.UpSampling3D(size=2)
    np.testing.assert_array_equal(_run_layer(up, x), up(x).numpy())
    relu = keras.layers.LeakyReLU(negative_slope=0.01)
    np.testing.assert_allclose(_run_layer(relu, x), relu(x).numpy(), atol=1e-7)
    for layer in (keras.layers.Add(), keras.layers.Concatenate()):
        np.testing.assert_allclose(_run_layer(layer, x, y), layer([x, y]).numpy(), atol=1e-7)
    for name in ("sigmoid", "softmax"):
        layer = keras.layers.Activation(name)
        np.testing.assert_allclose(_run_layer(layer, x), layer(x).numpy(), atol=1e-6)
    np.testing.assert_array_equal(_run_layer(keras.layers.Dropout(0.5), x), x)


def test_slice_and_attention_layers_match_keras():
    # a 2D network's tensors are `(1, H, W, C)`: _run_layer's `v[0]` of `(1, 1, H, W, C)`
    x = _random((1, 1, 6, 10, 3), seed=8)
    conv = keras.layers.Conv2D(4, 3, strides=2, padding="same", bias_initializer="random_normal")
    expected = conv(x[0]).numpy()[None]  # builds the layer: lowering reads its weights
    np.testing.assert_allclose(_run_layer(conv, x), expected, atol=1e-5)
    up = keras.layers.UpSampling2D(size=2)
    np.testing.assert_array_equal(_run_layer(up, x), up(x[0]).numpy()[None])
    relu = keras.layers.ReLU()
    np.testing.assert_array_equal(_run_layer(relu, x), relu(x).numpy())
    gate = _random((1, 1, 6, 10, 1), seed=9)
    multiply = keras.layers.Multiply()
    np.testing.assert_allclose(_run_layer(multiply, x, gate), x * gate, atol=1e-7)


def test_unsupported_layer_is_refused():
    with pytest.raises(InputError, match="no LiteRT lowering"):
        lower_layer(keras.layers.MaxPooling3D())
    with pytest.raises(InputError, match="size=2"):
        lower_layer(keras.layers.UpSampling3D(size=3))
    with pytest.raises(InputError, match="only 'same', undilated, ungrouped Conv3D"):
        lower_layer(keras.layers.Conv3D(2, 3, padding="valid"))
    with pytest.raises(InputError, match="fused activation 'relu'"):
        layer = keras.layers.Conv3D(2, 3, padding="same", activation="relu")
        layer.build((1, 4, 4, 4, 2))
        lower_layer(layer)
    with pytest.raises(InputError, match="Conv2D"):
        lower_layer(keras.layers.Conv2D(2, 3, padding="same", activation="relu"))
    with pytest.raises(InputError, match="plain ReLU"):
        lower_layer(keras.layers.ReLU(max_value=6.0))
    with pytest.raises(InputError, match="activation 'tanh'"):
        lower_layer(keras.layers.Activation("tanh"))
    with pytest.raises(InputError, match="channel concatenation"):
        lower_layer(keras.layers.Concatenate(axis=1))


# ---- a tiny whole model, lowered (not converted) -------------------------------------
@pytest.mark.parametrize("mode", ["regions", "labels"])
def test_lowered_graph_matches_keras(tiny_models, mode):
    model = tiny_models[mode]
    x = _random((1, *WINDOW, 4), seed=6)
    lowered = lower_model(model, WINDOW)
    got = lowered(tf.constant(x)).numpy()
    expected = model(x, training=False).numpy()
    assert got.shape == expected.shape == (1, *WINDOW, 3 if mode == "regions" else 4)
    assert _rel_err(expected, got) <= 1e-4
    op_types = [op.type for op in lowered.graph.get_operations()]
    assert not any("3D" in t for t in op_types), op_types
    # each decoder level's UpSampling3D + Conv3D is one sub-pixel convolution (two depth
    # phases); only the deep-supervision logits are still resized
    assert op_types.count("DepthToSpace") == 2 * (3 - 1)
    assert op_types.count("ResizeNearestNeighbor") == 1


def test_lowered_graph_with_split_taps_matches_keras():
    """From SPLIT_TAPS_CHANNELS input channels on, a stride-1 3x3x3 conv is three CONV_2D
    summed: a network wide enough for that (16, 32, 64 filters) still equals Keras."""
    from unet3d.config import ModelConfig
    from unet3d.export.ops import SPLIT_TAPS_CHANNELS
    from unet3d.models.unet import build_unet3d

    keras.utils.set_random_seed(8)
    model = build_unet3d(ModelConfig(base_filters=16, depth=3))
    x = _random((1, *WINDOW, 4), seed=9)
    lowered = lower_model(model, WINDOW)
    expected = model(x, training=False).numpy()
    assert _rel_err(expected, lowered(tf.constant(x)).numpy()) <= 1e-4
    conv3d = [layer for layer in model.layers if type(layer).__name__ == "Conv3D"]
    after_upsampling = [layer for layer in conv3d if type(
        layer.input._keras_history.operation).__name__ == "UpSampling3D"]
    split = [layer for layer in conv3d if layer not in after_upsampling
             and layer.kernel_size == (3, 3, 3) and layer.strides == (1, 1, 1)
             and layer.input.shape[-1] >= SPLIT_TAPS_CHANNELS]
    assert split and after_upsampling  # the test means something
    convs = sum(op.type == "Conv2D" for op in lowered.graph.get_operations())
    # three per split conv, one per other conv, a second depth phase per sub-pixel conv
    assert convs == 3 * len(split) + (len(conv3d) - len(split)) + len(after_upsampling)


def test_window_validation():
    assert check_window([8], 4) == (8, 8, 8)
    assert check_window((8, 16, 4), 4) == (8, 16, 4)
    with pytest.raises(InputError, match="divisible"):
        check_window((8, 10, 8), 4)
    with pytest.raises(InputError, match="--window"):
        check_window((8, 8), 4)
