"""Frozen configuration dataclasses: every default lives here, once.

``ModelConfig`` (:mod:`unet3d.config.model`) drives :func:`unet3d.models.unet.build_unet3d`;
``TrainConfig`` (:mod:`unet3d.config.train`) holds it plus everything ``train.py`` needs
and is saved as JSON beside a run. Their errors (:class:`ConfigError`) name config
fields; the command lines map them to their options.
"""

from data_generators.labels import MODALITIES
from unet3d.config.checks import ConfigError
from unet3d.config.files import load_config_file
from unet3d.config.model import NORMS, OUTPUT_MODES, ModelConfig
from unet3d.config.train import (
    LOSSES,
    PRECISIONS,
    SLICE_PATCH_SIZE,
    STRATEGIES,
    VOLUME_PATCH_SIZE,
    TrainConfig,
)

__all__ = ["LOSSES", "MODALITIES", "NORMS", "OUTPUT_MODES", "PRECISIONS", "SLICE_PATCH_SIZE",
           "STRATEGIES", "VOLUME_PATCH_SIZE", "ConfigError", "ModelConfig", "TrainConfig",
           "load_config_file"]
