"""Frozen configuration dataclasses: every default lives here, once.

``ModelConfig`` (:mod:`unet3d.config.model`) drives :func:`unet3d.models.unet.build_unet3d`.
A run's ``TrainConfig`` (:mod:`unet3d.config.train`) is two halves: the ``Recipe``
(:mod:`unet3d.config.recipe`: data description, model, loss, schedule, precision), which
travels inside every model file, and the ``RunSettings`` of one machine
(:mod:`unet3d.config.settings`: paths, loading, strategy), which stay with the run.
Their errors (:class:`ConfigError`) name config fields; the command lines map them to
their options.
"""

from data_generators.labels import MODALITIES
from unet3d.config.checks import ConfigError
from unet3d.config.files import load_config_file
from unet3d.config.model import NORMS, OUTPUT_MODES, ModelConfig
from unet3d.config.recipe import LOSSES, PRECISIONS, SLICE_PATCH_SIZE, VOLUME_PATCH_SIZE, Recipe
from unet3d.config.settings import RUN_FIELDS, STRATEGIES, RunSettings
from unet3d.config.train import TrainConfig

__all__ = ["LOSSES", "MODALITIES", "NORMS", "OUTPUT_MODES", "PRECISIONS", "RUN_FIELDS",
           "SLICE_PATCH_SIZE", "STRATEGIES", "VOLUME_PATCH_SIZE", "ConfigError", "ModelConfig",
           "Recipe", "RunSettings", "TrainConfig", "load_config_file"]
