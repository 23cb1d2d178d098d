"""Trained-model artifacts: save, read and load ``.keras`` and ``.tflite`` models.

* :func:`load_artifact`: the one loader; returns an :class:`Artifact`.
* :func:`save_model` / :func:`load_model`: ``.keras`` files with the config embedded.
* :func:`read_plan` / :func:`write_plan`: the post-processing plan stored with a model file.
* :func:`shipped_path`: the pretrained models under ``models/``.
"""

from unet3d.artifacts.keras_file import load_model, read_model_config, save_model
from unet3d.artifacts.loader import Artifact, load_artifact, with_precision
from unet3d.artifacts.plan_file import read_plan, write_plan
from unet3d.artifacts.shipped import DEFAULT_NAME, shipped_path

__all__ = ["DEFAULT_NAME", "Artifact", "load_artifact", "load_model", "read_model_config",
           "read_plan", "save_model", "shipped_path", "with_precision", "write_plan"]
