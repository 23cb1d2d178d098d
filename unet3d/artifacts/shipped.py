"""The pretrained model shipped in ``models/`` (see ``models/<name>.md``).

``predict.py`` uses it when no ``--model`` is given, and ``train.py
--init-from`` fine-tunes it. Each shipped model has four files beside its
card: ``<name>.keras`` (the config embedded), ``<name>_int8.tflite`` and
``<name>_fp16.tflite`` (each with its ``.tflite.json``) and
``<name>.config.json``, the training config that reproduces it, and
``<name>.split.json``. The post-processing chosen on its validation cases is
stored inside the files themselves (:mod:`unet3d.artifacts.plan_file`).
``brats18_unet3d_b8`` (the first shipped model, 80^3 patches) stays beside it:
the current model was fine-tuned from it.
"""

from __future__ import annotations

import os
from pathlib import Path

from unet3d_base.errors import InputError

# the checkout's models/ (an editable install, or running from the repository);
# a wheel installed elsewhere finds them through UNET3D_MODELS
REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
DEFAULT_NAME = "brats_unet3d_cv5"


def models_dir() -> Path:
    """``$UNET3D_MODELS`` if set, else the repository's ``models/``."""
    return Path(os.environ.get("UNET3D_MODELS") or REPO_MODELS)


def shipped_path(name: str = DEFAULT_NAME, suffix: str = ".keras") -> Path:
    """``models/<name><suffix>``; InputError if the file is not there."""
    path = models_dir() / f"{name}{suffix}"
    if not path.is_file():
        raise InputError(f"{path}: the shipped model is missing (restore it with "
                         "`git checkout models/`, set UNET3D_MODELS to the folder holding "
                         "it, or pass --model)")
    return path
