"""Shared fixtures: the real BraTS cases, which on CI must be present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unet3d.env import apply_defaults

apply_defaults()  # TensorFlow environment defaults, before TF loads

REPO = Path(__file__).resolve().parents[1]
BRATS_DIR = REPO.parent / "shared" / "data" / "brats2018"


def require_brats() -> Path:
    """The shared BraTS 2018 folder. Missing, it fails the test, unless
    ``UNET3D_SKIP_REAL_DATA=1`` asks to skip (never on CI)."""
    if BRATS_DIR.is_dir() and any(BRATS_DIR.iterdir()):
        return BRATS_DIR
    message = f"real BraTS cases not found at {BRATS_DIR}"
    on_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if os.environ.get("UNET3D_SKIP_REAL_DATA") == "1" and not on_ci:
        pytest.skip(message + " (UNET3D_SKIP_REAL_DATA=1)")
    pytest.fail(message + "; set UNET3D_SKIP_REAL_DATA=1 to skip the real-data tests")


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    return require_brats()
