"""Each private Keras use of unet3d.keras_compat still does what unet3d needs.

These fail on the first Keras release that renames or changes one.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.conftest import REPO
from unet3d import keras_compat
from unet3d.config import ModelConfig
from unet3d.models import build_unet3d, make_loss, region_metrics

TINY = ModelConfig(base_filters=4, depth=2, segmentation_levels=1, dropout=0.5)


def test_version_check():
    # the pinned release is a tested one; another installed Keras is judged by the private
    # uses below (and warns at run time), not refused here
    pinned = next(line.split("==")[1] for line in (REPO / "requirements.txt").read_text()
                  .splitlines() if line.startswith("keras=="))
    assert keras_compat.version_is_tested(pinned), (
        f"Keras {pinned} is pinned but not in TESTED_KERAS {keras_compat.TESTED_KERAS}: run "
        "this file, then add it")
    assert not keras_compat.version_is_tested("2.15.0")
    assert keras_compat.version_is_tested("3.15.9")


def test_seed_state_drives_dropout():
    model = build_unet3d(TINY)
    dropout = next(layer for layer in model.layers if isinstance(layer, keras.layers.Dropout))
    state = keras_compat.seed_state(dropout.seed_generator)
    x = keras.ops.ones((1, 8, 8, 8, 4))

    def mask(seed):
        state.assign(keras.ops.cast(np.array([seed, 0]), state.dtype))
        return keras.ops.convert_to_numpy(dropout(x, training=True))

    np.testing.assert_array_equal(mask(7), mask(7))  # the state alone decides the draw
    assert not np.array_equal(mask(7), mask(8))


def test_symbolic_build_and_strategy_attribute():
    model = build_unet3d(TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=make_loss("dice", "regions"),
                  metrics=region_metrics("regions"))
    assert not model.optimizer.built
    metric_variables = len(model.metrics_variables)
    sample = (np.zeros((1, 8, 8, 8, 4), np.float32), np.zeros((1, 8, 8, 8, 3), np.float32))
    keras_compat.build_for_strategy(model, sample)
    # Adam: its step count and learning rate, then a first and second moment per weight
    assert model.optimizer.built
    assert len(model.optimizer.variables) == 2 + 2 * len(model.trainable_variables)
    assert len(model.metrics_variables) > metric_variables  # the Dice metrics' totals
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the strategy attribute is the TensorFlow trainer's")
    keras_compat.set_model_strategy(model, None)
    assert model.distribute_strategy is not None  # falls back to the default strategy
    default = model.distribute_strategy
    keras_compat.set_model_strategy(model, default)
    assert model.distribute_strategy is default
