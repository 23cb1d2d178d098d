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
    op_types = {op.type for op in lowered.graph.get_operations()}
    assert not any("3D" in t for t in op_types), op_types


def test_window_validation():
    assert check_window([8], 4) == (8, 8, 8)
    assert check_window((8, 16, 4), 4) == (8, 16, 4)
    with pytest.raises(InputError, match="divisible"):
        check_window((8, 10, 8), 4)
    with pytest.raises(InputError, match="--window"):
        check_window((8, 8), 4)
