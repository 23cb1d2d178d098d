"""The pretrained model shipped in ``models/`` (see ``models/<name>.md``).

``predict.py`` uses it when no ``--model`` is given, and ``train.py
--init-from`` fine-tunes it. Each shipped model has four files beside its
card: ``<name>.keras`` (the config embedded), ``<name>_int8.tflite`` and
``<name>_fp16.tflite`` (each with its ``.tflite.json``) and
``<name>.config.json``, the training config that reproduces it, and
``<name>.split.json``. The post-processing chosen on its validation cases is
stored inside the files themselves (:mod:`unet3d.postprocessing`).
``brats18_unet3d_b8`` (the first shipped model, 80^3 patches) stays beside it:
the current model was fine-tuned from it.
"""

from __future__ import annotations

from pathlib import Path

from unet3d.errors import InputError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_NAME = "brats_unet3d_b8_128"


def shipped_path(name: str = DEFAULT_NAME, suffix: str = ".keras") -> Path:
    """``models/<name><suffix>``; InputError if the file is not there."""
    path = MODELS_DIR / f"{name}{suffix}"
    if not path.is_file():
        raise InputError(f"{path}: the shipped model is missing (restore it with "
                         "`git checkout models/`, or pass --model)")
    return path
