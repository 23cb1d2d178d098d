"""Everything a training run needs: :class:`TrainConfig`, saved as ``config.json``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_generators.labels import MODALITIES, resolve_convention
from data_generators.normalization import NORMALIZATIONS
from unet3d.config.checks import ConfigError, check_keys, choice, positive
from unet3d.config.model import ModelConfig
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text

PRECISIONS = ("fp32", "bf16", "fp16")  # what training computes in (Keras dtype policies)
LEGACY_PRECISION = {"off": "fp32"}  # the older field mixed_precision: off / bf16 / fp16
LOSSES = ("dice", "dice_ce")
STRATEGIES = ("default", "mirrored", "multiworker")
VOLUME_PATCH_SIZE = (128, 128, 128)  # the paper's
SLICE_PATCH_SIZE = (192, 192)  # a 2D network's default: most of a cropped BraTS slice


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; saved as ``config.json`` in the run.

    Defaults are the paper's: Adam 5e-4 decayed by 0.985 per epoch, batch 2,
    128^3 patches, a third of patches centred on tumor.

    Args:
        data: str or None. BraTS folder; None trains on a synthetic dataset.
        out: str, default "runs/exp". Run directory.
        model: ModelConfig. The architecture.
        modalities: tuple of str. Input channel order (fixed, recorded).
        label_convention: str, default "brats2017".
        epochs, steps_per_epoch, batch_size: the schedule.
        patch_size: (D, H, W) training patch ((H, W) axial slices for a 2D network),
            divisible by the model stride.
        learning_rate, lr_decay: Adam's initial rate and per-epoch factor.
        loss: "dice" (weighted soft Dice) or "dice_ce" (plus (B)CE).
        batch_dice: pool the Dice sums over the batch (nnU-Net's batch Dice)
            instead of averaging per-sample Dice.
        normalization: "zscore" (inside the brain), "percentile" (clip to
            the 0.5-99.5 percentiles, then z-score) or "n4" (N4 bias-field
            correction, then z-score); inference applies the model's own.
        val_fraction: share of cases held out; ignored when ``folds`` > 1.
        folds, fold: k-fold split and the fold used for validation.
        validation_cases: tuple of str or None. An explicit validation set
            (case ids); every other case trains. Overrides ``val_fraction``
            and ``folds`` (as nnU-Net's ``splits_final.json``). An empty tuple
            trains on every case without validation (nnU-Net's fold "all"),
            for the final model of a recipe chosen on a split: ``best.keras``
            is then the last epoch's model.
        val_patches_per_case: fixed validation patches per case.
        foreground_fraction: share of patches centred on a tumor voxel.
        augment: apply the paper's augmentations to training patches.
        augment_strength: float, default 1.0. Multiplies the probability of
            every augmentation but mirroring (capped at 1): 2.0 draws each
            twice as often.
        seed: seeds the split, patch sampling and augmentation.
        workers, use_multiprocessing, max_queue_size: PyDataset loading.
        precision: "fp32", "bf16" (mixed_bfloat16: a GPU or a CPU with native bf16)
            or "fp16" (mixed_float16, a GPU). Older configs' ``mixed_precision``
            (``off`` = fp32) is read as this field.
        strategy: "default" (one device), "mirrored" (all local GPUs, or
            all logical CPU devices) or "multiworker" (the workers of
            ``TF_CONFIG``); ``batch_size`` and ``learning_rate`` are global.
        cache_dir: preprocessed cache root; None: ``$UNET3D_CACHE``, else
            ``~/.cache/unet3d`` (a subfolder per data folder).
        synthetic_cases, synthetic_shape: the generated dataset when
            ``data`` is None.
        init_from: str or None. A ``.keras`` model whose weights start the
            run (fine-tuning); layers are matched by name and shape, and only
            the first convolution and the segmentation heads may differ (other
            modalities, another output mode).
        freeze_encoder_epochs: int, default 0. With ``init_from``, train only
            the decoder for this many epochs, then everything.
        checkpoint_every: int, default 0. Write a step checkpoint
            (``step.keras``) every this many steps, so that even a SIGKILL
            loses at most that many; 0: only on SIGTERM or SIGINT. Epoch
            checkpoints are written either way.
    """

    data: str | None = None
    out: str = "runs/exp"
    model: ModelConfig = field(default_factory=ModelConfig)
    modalities: tuple[str, ...] = MODALITIES
    label_convention: str = "brats2017"
    epochs: int = 300
    steps_per_epoch: int = 100
    batch_size: int = 2
    patch_size: tuple[int, ...] = VOLUME_PATCH_SIZE
    learning_rate: float = 5e-4
    lr_decay: float = 0.985
    loss: str = "dice"
    batch_dice: bool = False
    normalization: str = "zscore"
    val_fraction: float = 0.2
    folds: int = 1
    fold: int = 0
    validation_cases: tuple[str, ...] | None = None
    val_patches_per_case: int = 2
    foreground_fraction: float = 1.0 / 3.0
    augment: bool = True
    augment_strength: float = 1.0
    seed: int = 42
    workers: int = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 8
    precision: str = "fp32"
    strategy: str = "default"
    cache_dir: str | None = None
    synthetic_cases: int = 12
    synthetic_shape: tuple[int, int, int] = (96, 96, 80)
    init_from: str | None = None
    freeze_encoder_epochs: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        positive(self, "epochs", "steps_per_epoch", "batch_size", "folds",
                  "val_patches_per_case", "max_queue_size", "synthetic_cases")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}", "workers")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}",
                              "checkpoint_every")
        if self.freeze_encoder_epochs < 0:
            raise ConfigError(
                f"freeze_encoder_epochs must be >= 0, got {self.freeze_encoder_epochs}",
                "freeze_encoder_epochs")
        if self.freeze_encoder_epochs and not self.init_from:
            raise ConfigError("freeze_encoder_epochs needs init_from (a pretrained model)",
                              "freeze_encoder_epochs", "init_from")
        dims = self.model.spatial_dims
        if len(self.patch_size) != dims or any(int(p) <= 0 for p in self.patch_size):
            raise ConfigError(f"patch_size needs {('two', 'three')[dims - 2]} positive sizes "
                              f"for a {dims}D network, got {self.patch_size}", "patch_size")
        bad = [p for p in self.patch_size if p % self.model.stride]
        if bad:
            raise ConfigError(
                f"patch_size {'x'.join(map(str, self.patch_size))} is not divisible by "
                f"2^(depth-1) = {self.model.stride} (depth {self.model.depth})", "patch_size")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must lie in (0, 1), got {self.val_fraction}",
                              "val_fraction")
        if not 0 <= self.fold < self.folds:
            raise ConfigError(f"fold must lie in 0..{self.folds - 1}, got {self.fold}", "fold")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise InputError(
                f"foreground_fraction must lie in [0, 1], got {self.foreground_fraction}"
            )
        if self.learning_rate <= 0 or not 0 < self.lr_decay <= 1:
            raise ConfigError("learning_rate must be > 0 and lr_decay in (0, 1]",
                              "learning_rate")
        choice(self, "precision", PRECISIONS)
        choice(self, "strategy", STRATEGIES)
        choice(self, "loss", LOSSES)
        choice(self, "normalization", NORMALIZATIONS)
        if self.augment_strength < 0:
            raise InputError(f"augment_strength must be >= 0, got {self.augment_strength}")
        try:
            resolve_convention(self.label_convention)
        except ValueError as err:
            raise ConfigError(f"label_convention: {err}", "label_convention") from None
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ConfigError(f"modalities {' '.join(self.modalities)}: give each of "
                              f"{', '.join(MODALITIES)} at most once", "modalities")
        if len(self.modalities) != self.model.in_channels:
            raise InputError(
                f"{len(self.modalities)} modalities {list(self.modalities)} but the "
                f"model expects in_channels={self.model.in_channels}"
            )

    # ---- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Builds a config from a (possibly partial) dict; unknown keys raise."""
        values = _legacy_keys(dict(values), source)
        model_values = values.pop("model", {}) or {}
        check_keys(cls, values, source)
        check_keys(ModelConfig, model_values, f"{source} [model]")
        if values.get("patch_size") is None and model_values.get("spatial_dims") == 2:
            values["patch_size"] = SLICE_PATCH_SIZE  # the 3D default cannot apply
        for key in ("patch_size", "synthetic_shape", "modalities", "validation_cases"):
            if key in values and values[key] is not None:
                values[key] = tuple(values[key])
        try:
            return cls(model=ModelConfig(**model_values), **values)
        except TypeError as err:
            raise InputError(f"{source}: {err}") from None

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level or ``model`` fields changed (unknown raise)."""
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
