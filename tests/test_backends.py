"""Backend smoke test: the same small real-data run under TensorFlow, JAX and PyTorch on CPU.

Each backend runs in its own process (Keras picks its backend at import):
train a tiny network for a few steps on three real cases, reload its
``.keras`` files with ``safe_mode=True``, and segment a real case with the
shipped model (trained under TensorFlow), which must label the voxels as
TensorFlow does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import unet3d.cli.predict as predict_cli

pytestmark = pytest.mark.slow

CASES = ("Brats18_CBICA_AOZ_1", "Brats18_CBICA_AQO_1", "Brats18_TCIA05_396_1")
PREDICTED = "Brats18_CBICA_AQO_1"
CONFIG = {"model": {"base_filters": 4, "depth": 3, "segmentation_levels": 2}, "epochs": 2,
          "steps_per_epoch": 2, "batch_size": 1, "patch_size": [32, 32, 32],
          "validation_cases": [PREDICTED], "val_patches_per_case": 1, "seed": 1,
          "workers": 1}
SCRIPTS = Path(sys.executable).parent
RELOAD = """
import sys, keras
import unet3d.models  # registers the losses and metrics
for path in sys.argv[1:]:
    model = keras.saving.load_model(path, safe_mode=True, compile=True)
    print(keras.backend.backend(), path, model.count_params())
"""


@pytest.fixture(scope="module")
def three_cases(brats_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    for case in CASES:
        (root / case).symlink_to(brats_dir / case)
    return root


@pytest.fixture(scope="module")
def tensorflow_labels(three_cases, tmp_path_factory):
    out = tmp_path_factory.mktemp("tf")
    assert predict_cli.main(["--input", str(three_cases / PREDICTED), "--out", str(out),
                             "--precision", "fp32"]) == 0
    return np.asarray(nib.load(out / f"{PREDICTED}.nii.gz").dataobj)


def _run(backend: str, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend}
    done = subprocess.run([*argv], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_train_reload_and_predict_under(backend, three_cases, tensorflow_labels, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG))
    run = tmp_path / "run"
    _run(backend, str(SCRIPTS / "unet3d-train"), "--config", str(config),
         "--data", str(three_cases), "--out", str(run))
    log = (run / "log.csv").read_text().splitlines()
    assert len(log) == 1 + CONFIG["epochs"] and "val_dice_wt" in log[0]
    assert list((run / "tensorboard" / "train").glob("events.out.tfevents.*"))
    reloaded = _run(backend, sys.executable, "-c", RELOAD, str(run / "best.keras"),
                    str(run / "last.keras")).stdout.split("\n")
    assert [line.split()[0] for line in reloaded if line] == [backend, backend]

    out = tmp_path / "pred"
    _run(backend, str(SCRIPTS / "unet3d-predict"), "--input", str(three_cases / PREDICTED),
         "--out", str(out), "--precision", "fp32")
    labels = np.asarray(nib.load(out / f"{PREDICTED}.nii.gz").dataobj)
    assert labels.shape == tensorflow_labels.shape
    assert (labels > 0).sum() > 10_000  # a tumor, not an empty map
    assert np.mean(labels == tensorflow_labels) >= 0.999


def test_jax_data_parallel_through_keras_distribution(tmp_path):
    """--strategy mirrored on JAX: keras.distribution.DataParallel over the devices (two
    CPU devices here, as XLA can split a host), one batch spread over both."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**CONFIG, "synthetic_cases": 4,
                                  "synthetic_shape": [48, 48, 40], "validation_cases": None,
                                  "val_fraction": 0.3, "batch_size": 2,
                                  "val_patches_per_case": 2}))
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([str(SCRIPTS / "unet3d-train"), "--config", str(config),
                           "--strategy", "mirrored", "--out", str(tmp_path / "run"),
                           "--cache-dir", str(tmp_path / "cache")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "keras.distribution.DataParallel over cpu:0, cpu:1" in done.stdout
    assert (tmp_path / "run" / "best.keras").is_file()
