"""Shared fixtures: the real BraTS cases and Kaggle LGG patients, which on CI must be
present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from unet3d.env import apply_defaults

apply_defaults()  # TensorFlow environment defaults, before TF loads

REPO = Path(__file__).resolve().parents[1]
BRATS_DIR = REPO.parent / "shared" / "data" / "brats2018"
LGG_DIR = REPO.parent / "shared" / "data" / "lgg" / "kaggle_3m"


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_brats() -> Path:
    """The shared BraTS 2018 folder. Missing, the test fails on CI (``CI=true``)
    and is skipped elsewhere with one line saying what is missing."""
    if BRATS_DIR.is_dir() and any(BRATS_DIR.iterdir()):
        return BRATS_DIR
    message = f"real BraTS cases not found at {BRATS_DIR}"
    if on_ci():
        pytest.fail(message + " (on CI the real-data tests never skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    return require_brats()


def require_lgg() -> Path:
    """The shared Kaggle LGG folder (21 patients). Missing, the test fails on CI
    (``CI=true``) and is skipped elsewhere with one line saying what is missing."""
    if LGG_DIR.is_dir() and any(LGG_DIR.iterdir()):
        return LGG_DIR
    message = f"real Kaggle LGG patients not found at {LGG_DIR}"
    if on_ci():
        pytest.fail(message + " (on CI the real-data tests never skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def lgg_dir() -> Path:
    return require_lgg()
