"""Saving and loading ``.keras`` models together with the run's configuration.

The resolved :class:`~unet3d.config.TrainConfig` (modalities and their order,
output mode, label convention, patch size, architecture) travels inside the
``.keras`` zip as ``unet3d_config.json``, so a model file copied on its own
still says how to feed it; a ``config.json`` beside it is the fallback.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import keras

import unet3d.models.losses
import unet3d.models.metrics  # noqa: F401  (registers the Dice metrics)
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_path

CONFIG_ENTRY = "unet3d_config.json"
STATE_ENTRY = "unet3d_state.json"


def save_model(model, path: str | Path, config: dict[str, Any] | None = None,
               state: dict[str, Any] | None = None, backup: str | Path | None = None) -> Path:
    """Saves ``model`` atomically as ``.keras``, with ``config`` embedded.

    Args:
        model: keras.Model.
        path: str or Path ending in ``.keras``.
        config: dict or None. Usually ``TrainConfig.recipe_dict()`` (no machine setting).
        state: dict or None. A training checkpoint's own state (completed
            epochs, best score), embedded so the file says what it holds
            whatever happens to ``state.json`` beside it.
        backup: str, Path or None. Keep the file ``path`` held under this name.

    Raises:
        OutputError: the storage refused the write; ``path`` is unchanged.
    """
    path = Path(path)
    with atomic_path(path, backup=backup) as tmp:
        model.save(tmp)
        if config is not None or state is not None:
            with zipfile.ZipFile(tmp, "a") as archive:
                if config is not None:
                    archive.writestr(CONFIG_ENTRY, json.dumps(config, indent=2))
                if state is not None:
                    archive.writestr(STATE_ENTRY, json.dumps(state, indent=2))
    return path


def read_checkpoint_state(path: str | Path) -> dict[str, Any] | None:
    """The training state embedded in a checkpoint by :func:`save_model`, or None."""
    try:
        with zipfile.ZipFile(path) as archive:
            if STATE_ENTRY in archive.namelist():
                return json.loads(archive.read(STATE_ENTRY))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError, UnicodeDecodeError):
        pass
    return None


def read_model_config(path: str | Path) -> dict[str, Any] | None:
    """The config embedded in a ``.keras`` file, else ``config.json`` beside it, else None."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if CONFIG_ENTRY in archive.namelist():
                return json.loads(archive.read(CONFIG_ENTRY))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError):
        pass
    sibling = path.parent / "config.json"
    if sibling.is_file():
        try:
            return json.loads(sibling.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{sibling}: not valid JSON") from None
    return None


def load_model(path: str | Path, compile: bool = False):
    """Loads a ``.keras`` model with ``safe_mode=True``; bad files raise InputError.

    Importing the loss and metric modules registers them, so compiled models
    load without ``custom_objects``. A file holding a ``Lambda`` layer is
    refused by safe loading instead of executed.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a .keras model file")
    if not path.is_file():
        raise InputError(f"{path}: model file not found")
    if path.suffix != ".keras" or not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a .keras model file")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=compile)
    except Exception as err:  # any failure to load means the file is not a usable model
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        detail = detail.split(". ")[0].rstrip(".")  # first sentence: no cut-off words
        raise InputError(f"{path}: cannot be loaded as a Keras model ({detail[:200]})") from None
