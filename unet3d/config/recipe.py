"""The recipe of a training run: :class:`Recipe`, what a model was trained with. It
travels inside every model file; the machine settings (:mod:`unet3d.config.settings`) do not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from data_generators.labels import MODALITIES, resolve_convention
from data_generators.normalization import DEFAULT_NORMALIZATION, NORMALIZATIONS
from unet3d.config.checks import ConfigError, choice, positive
from unet3d.config.model import ModelConfig
from unet3d_base.errors import InputError

PRECISIONS = ("fp32", "bf16", "fp16")  # what training computes in (Keras dtype policies)
LOSSES = ("dice", "dice_ce")
MONITORS = ("val_dice_mean", "val_dice_wt", "val_dice_tc", "val_dice_et")
VOLUME_PATCH_SIZE = (128, 128, 128)  # the paper's
SLICE_PATCH_SIZE = (192, 192)  # a 2D network's default: most of a cropped BraTS slice


@dataclass(frozen=True)
class Recipe:
    """The data description, model, loss, schedule and precision of a run.

    Defaults are the paper's: Adam 5e-4 decayed by 0.985 per epoch, batch 2,
    128^3 patches, a third of patches centred on tumor.

    Args:
        model: ModelConfig. The architecture.
        modalities: tuple of str. Input channel order (recorded with the model).
        label_convention: str, default "brats2017".
        epochs, steps_per_epoch, batch_size: the schedule (``batch_size`` global).
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
        precision: "fp32", "bf16" (mixed_bfloat16: a GPU or a CPU with native bf16)
            or "fp16" (mixed_float16, a GPU). Older configs' ``mixed_precision``
            (``off`` = fp32) is read as this field.
        synthetic_cases, synthetic_shape: the generated dataset when the run's
            ``data`` is None.
        init_from: str or None. A ``.keras`` model whose weights start the
            run (fine-tuning); layers are matched by name and shape, and only
            the first convolution and the segmentation heads may differ (other
            modalities, another output mode).
        freeze_encoder_epochs: int, default 0. With ``init_from``, train only
            the decoder for this many epochs, then everything.
        monitor: str, default "val_dice_mean". The validation metric that picks
            ``best.keras`` (higher is better); ``val_dice_wt`` for data whose only
            region is the whole tumour (the Kaggle LGG masks), where the empty TC and
            ET would only add noise to the mean.
    """

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
    normalization: str = DEFAULT_NORMALIZATION
    val_fraction: float = 0.2
    folds: int = 1
    fold: int = 0
    validation_cases: tuple[str, ...] | None = None
    val_patches_per_case: int = 2
    foreground_fraction: float = 1.0 / 3.0
    augment: bool = True
    augment_strength: float = 1.0
    seed: int = 42
    precision: str = "fp32"
    synthetic_cases: int = 12
    synthetic_shape: tuple[int, int, int] = (96, 96, 80)
    init_from: str | None = None
    freeze_encoder_epochs: int = 0
    monitor: str = "val_dice_mean"

    def __post_init__(self) -> None:
        positive(self, "epochs", "steps_per_epoch", "batch_size", "folds",
                 "val_patches_per_case", "synthetic_cases")
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
        choice(self, "loss", LOSSES)
        choice(self, "monitor", MONITORS)
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
