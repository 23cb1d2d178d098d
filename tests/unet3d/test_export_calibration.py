"""int8 export calibrated on real BraTS patches (needs /work/shared/data/brats2018)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.conftest import require_brats
from unet3d.artifacts.litert_file import LiteRTModel, read_litert_config
from unet3d.config import ModelConfig, TrainConfig
from unet3d.export import export_litert
from unet3d.export.calibration import draw_patches
from unet3d.models.unet import build_unet3d

pytestmark = pytest.mark.slow  # converts, trains or runs real cases: not in make test-fast

WINDOW = (16, 16, 16)


def test_int8_calibrated_on_real_patches(tmp_path):
    brats = require_brats()
    config = TrainConfig(model=ModelConfig(base_filters=4, depth=3), patch_size=WINDOW,
                         cache_dir=str(tmp_path / "cache")).to_dict()
    patches = draw_patches(brats, WINDOW, 3, config)
    assert len(patches) == 3
    assert all(p.shape == (1, *WINDOW, 4) and p.dtype == np.float32 for p in patches)
    assert np.abs(np.mean(patches)) < 2.0  # z-scored intensities, not raw ones

    keras.utils.set_random_seed(2)
    model = build_unet3d(ModelConfig(base_filters=4, depth=3))
    out = tmp_path / "m_int8.tflite"
    report = export_litert(model, out, "int8", calibration_data=brats, calibration_patches=3,
                           config=config)
    assert report["calibration"] == {"source": f"--calibration-data {brats}", "patches": 3}
    assert "CONV_3D" not in report["ops"] and "QUANTIZE" in report["ops"]
    assert report["agreement"]["dice_wt"] > 0.5
    runner = LiteRTModel(out)
    probs = runner.predict_fn(np.concatenate(patches[:2]))
    assert probs.shape == (2, *WINDOW, 3) and 0 <= probs.min() and probs.max() <= 1
    assert read_litert_config(out)["patch_size"] == list(WINDOW)
