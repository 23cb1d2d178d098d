"""Everything a training run needs: :class:`TrainConfig`, a :class:`Recipe` and the
:class:`RunSettings` of one machine, saved together as the run's ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet3d.config.checks import ConfigError, check_keys
from unet3d.config.model import ModelConfig
from unet3d.config.recipe import SLICE_PATCH_SIZE, Recipe
from unet3d.config.settings import RUN_FIELDS, RunSettings
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text

LEGACY_PRECISION = {"off": "fp32"}  # the older field mixed_precision: off / bf16 / fp16
TUPLE_FIELDS = ("patch_size", "synthetic_shape", "modalities", "validation_cases")


@dataclass(frozen=True, init=False)
class TrainConfig:
    """A training run: its :class:`Recipe` (what travels with the model) and its
    :class:`RunSettings` (paths, loading and strategy of this machine).

    Built from either or from their fields by name, ``TrainConfig(data=..., epochs=...)``;
    every field of both reads as an attribute (``config.epochs``, ``config.out``).
    ``to_dict()`` is the run's ``config.json``; :meth:`recipe_dict` what a model file holds.
    """

    recipe: Recipe
    settings: RunSettings

    def __init__(self, recipe: Recipe | None = None, settings: RunSettings | None = None,
                 **fields: Any) -> None:
        run = {key: fields.pop(key) for key in RUN_FIELDS if key in fields}
        recipe = recipe or Recipe()
        settings = settings or RunSettings()
        try:
            recipe = dataclasses.replace(recipe, **fields) if fields else recipe
            settings = dataclasses.replace(settings, **run) if run else settings
        except TypeError as err:
            raise InputError(f"TrainConfig: {err}") from None
        object.__setattr__(self, "recipe", recipe)
        object.__setattr__(self, "settings", settings)

    def __getattr__(self, name: str) -> Any:
        if name in ("recipe", "settings"):  # not set yet (copying, unpickling)
            raise AttributeError(name)
        part = self.settings if name in RUN_FIELDS else self.recipe
        return getattr(part, name)

    # ---- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The recipe's fields and the settings' fields, flat (``config.json``)."""
        return {**dataclasses.asdict(self.recipe), **dataclasses.asdict(self.settings)}

    def recipe_dict(self) -> dict[str, Any]:
        """The recipe alone: what a saved model carries (no path or machine setting)."""
        return dataclasses.asdict(self.recipe)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Builds a config from a (possibly partial) flat dict; unknown keys raise."""
        values = _legacy_keys(dict(values), source)
        model_values = values.pop("model", {}) or {}
        known = {f.name for f in dataclasses.fields(Recipe)} | set(RUN_FIELDS)
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}")
        check_keys(ModelConfig, model_values, f"{source} [model]")
        if values.get("patch_size") is None and model_values.get("spatial_dims") == 2:
            values["patch_size"] = SLICE_PATCH_SIZE  # the 3D default cannot apply
        for key in TUPLE_FIELDS:
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        run = {key: values.pop(key) for key in RUN_FIELDS if key in values}
        try:
            return cls(Recipe(model=ModelConfig(**model_values), **values), RunSettings(**run))
        except TypeError as err:
            raise InputError(f"{source}: {err}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with recipe, setting or ``model`` fields changed (unknown raise)."""
        merged = self.to_dict()
        for key, value in _legacy_keys(dict(changes), "overrides").items():
            if key in {f.name for f in dataclasses.fields(ModelConfig)}:
                merged["model"][key] = value
            else:
                merged[key] = value
        return TrainConfig.from_dict(merged, source="overrides")

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def _legacy_keys(values: dict[str, Any], source: str) -> dict[str, Any]:
    """Older configs' ``mixed_precision`` (off / bf16 / fp16) as ``precision``."""
    if "mixed_precision" not in values:
        return values
    legacy = values.pop("mixed_precision")
    mapped = LEGACY_PRECISION.get(legacy, legacy)
    if values.setdefault("precision", mapped) != mapped:
        raise ConfigError(f"{source}: mixed_precision {legacy!r} and precision "
                          f"{values['precision']!r} disagree; give precision alone",
                          "precision")
    return values
