import keras
import numpy as np
import pytest

from unet3d.config import ModelConfig
from unet3d.models.losses import make_loss
from unet3d.models.metrics import region_metrics
from unet3d.models.unet import build_unet3d


def expected_params(cfg: ModelConfig) -> int:
    """Parameter count worked out by hand from the paper's architecture."""

    def conv(k, cin, cout):
        return k**3 * cin * cout + cout

    def norm(c):
        return 2 * c  # instance norm: scale and offset per channel

    total = 0
    for level in range(cfg.depth):
        f = cfg.base_filters * 2**level
        cin = cfg.in_channels if level == 0 else f // 2
        total += conv(3, cin, f)  # level entry conv (stride 2 below level 0)
        total += 2 * (norm(f) + conv(3, f, f))  # context module
        if level < cfg.depth - 1:
            total += norm(f)  # skip connection's norm
    for level in range(cfg.depth - 1):
        f = cfg.base_filters * 2**level
        total += conv(3, 2 * f, f) + norm(f)  # upsampling module
        total += conv(3, 2 * f, f) + norm(f) + conv(1, f, f) + norm(f)  # localization
        if level < cfg.segmentation_levels:
            total += conv(1, f, cfg.out_channels)  # segmentation layer
    return total


@pytest.mark.parametrize("cfg", [ModelConfig(), ModelConfig(base_filters=8, depth=4),
                                 ModelConfig(base_filters=4, depth=3, output_mode="labels",
                                             segmentation_levels=2)])
def test_parameter_count(cfg):
    model = build_unet3d(cfg)
    assert model.count_params() == expected_params(cfg)


def test_default_model_is_the_papers():
    model = build_unet3d()
    assert model.count_params() == 8_269_049  # the hand formula, evaluated for base 16, depth 5
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    assert max(layer.filters for layer in convs) == 256
    acts = [layer for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)]
    assert acts and all(layer.negative_slope == pytest.approx(0.01) for layer in acts)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.GroupNormalization)]
    # instance norm: one group per channel
    assert norms and all(layer.groups == layer.input.shape[-1] for layer in norms)
    drops = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(drops) == 5 and all(layer.rate == pytest.approx(0.3) for layer in drops)
    assert all(isinstance(layer.kernel_initializer, keras.initializers.HeNormal) for layer in convs)
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    assert not model.compiled  # never compiled inside the builder


@pytest.mark.parametrize(("mode", "channels"), [("regions", 3), ("labels", 4)])
def test_output_shapes_any_divisible_size(mode, channels):
    model = build_unet3d(ModelConfig(base_filters=4, depth=3, output_mode=mode))
    x = np.random.default_rng(0).normal(size=(2, 16, 8, 12, 4)).astype(np.float32)
    y = keras.ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, 16, 8, 12, channels)
    assert y.dtype == np.float32
    assert np.all((y >= 0) & (y <= 1))
    if mode == "labels":
        np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_save_reload_safe_mode_identical(tmp_path):
    cfg = ModelConfig(base_filters=4, depth=3, output_mode="regions", l2=1e-5)
    model = build_unet3d(cfg)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("dice_ce", "regions"),
                  metrics=region_metrics("regions"))
    x = np.random.default_rng(1).normal(size=(1, 8, 8, 8, 4)).astype(np.float32)
    y = (x[..., :3] > 0).astype(np.float32)
    model.fit(x, y, epochs=1, verbose=0)  # optimizer state exists and is saved
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x, training=False)),
                                  keras.ops.convert_to_numpy(loaded(x, training=False)))
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert {"loss", "dice_wt", "dice_tc", "dice_et", "dice_mean"} <= set(after)
    for key, value in before.items():
        assert after[key] == pytest.approx(value, rel=1e-6)
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 1


def test_mixed_precision_keeps_float32_output():
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_unet3d(ModelConfig(base_filters=4, depth=2, segmentation_levels=2))
    finally:
        keras.config.set_dtype_policy("float32")
    y = model(np.zeros((1, 8, 8, 8, 4), np.float32))
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    assert model.get_layer("enc0_conv").compute_dtype == "bfloat16"


def test_conv_flops_by_hand():
    from unet3d.models.unet import conv_flops

    cfg = ModelConfig(in_channels=4, base_filters=2, depth=2, segmentation_levels=1,
                      output_mode="regions")
    model = build_unet3d(cfg, spatial_shape=(8, 8, 8))
    full, half = 8**3, 4**3  # voxels at level 0 and level 1
    macs = (full * 27 * 4 * 2          # enc0 conv 4 -> 2
            + 2 * full * 27 * 2 * 2    # enc0 context, two 2 -> 2
            + half * 27 * 2 * 4        # enc1 stride-2 conv 2 -> 4
            + 2 * half * 27 * 4 * 4    # enc1 context
            + full * 27 * 4 * 2        # dec0 upsampling conv 4 -> 2
            + full * 27 * 4 * 2        # dec0 localization 3x3x3, 4 -> 2
            + full * 2 * 2             # dec0 localization 1x1x1
            + full * 2 * 3)            # segmentation 1x1x1, 2 -> 3
    assert conv_flops(model) == 2 * macs
