"""Fixtures shared by the export and lowering tests."""

from __future__ import annotations

import keras
import pytest

from unet3d.config import ModelConfig
from unet3d.models.unet import build_unet3d


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, keras.Model]:
    """A small network for each output mode, seeded."""
    keras.utils.set_random_seed(3)
    return {mode: build_unet3d(ModelConfig(base_filters=4, depth=3, output_mode=mode))
            for mode in ("regions", "labels")}
