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


def require_shared(folder: Path, what: str) -> Path:
    """A folder of ``../shared/data``. Missing or empty, the test fails on CI
    (``CI=true``) and is skipped elsewhere with one line saying what is missing."""
    if folder.is_dir() and any(folder.iterdir()):
        return folder
    message = f"{what} not found at {folder}"
    if on_ci():
        pytest.fail(message + " (on CI the real-data tests never skip)")
    pytest.skip(message)


def require_brats() -> Path:
    """The shared BraTS 2018 folder (23 cases)."""
    return require_shared(BRATS_DIR, "real BraTS cases")


@pytest.fixture(scope="session")
def brats_dir() -> Path:
    return require_brats()


def require_lgg() -> Path:
    """The shared Kaggle LGG folder (21 patients)."""
    return require_shared(LGG_DIR, "real Kaggle LGG patients")


@pytest.fixture(scope="session")
def lgg_dir() -> Path:
    return require_lgg()
