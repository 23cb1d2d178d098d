"""Frozen configuration dataclasses: every default lives here, once.

``ModelConfig`` drives :func:`unet3d.models.unet.build_unet3d`; ``TrainConfig``
holds it plus everything ``train.py`` needs and is saved as JSON beside a run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data_generators.labels import MODALITIES, resolve_convention
from data_generators.normalization import NORMALIZATIONS
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text

OUTPUT_MODES = ("regions", "labels")
NORMS = ("instance", "none")
MIXED_PRECISION = ("off", "bf16", "fp16")
LOSSES = ("dice", "dice_ce")
STRATEGIES = ("default", "mirrored", "multiworker")
SLICE_PATCH_SIZE = (192, 192)  # a 2D network's default: most of a cropped BraTS slice


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the Isensee et al. 2017 3D U-Net.

    Args:
        in_channels: int, default 4. Input modalities, channels-last.
        base_filters: int, default 16. Filters at full resolution; level ``i``
            has ``base_filters * 2**i``.
        depth: int, default 5. Number of resolution levels; spatial input
            sizes must be divisible by ``2**(depth - 1)``.
        segmentation_levels: int, default 3. Decoder levels whose 1x1x1
            segmentation outputs are summed (deep supervision).
        dropout: float, default 0.3. Dropout inside each context module.
        norm: str, default "instance". ``instance`` or ``none``.
        leaky_slope: float, default 0.01. Negative slope of the leaky ReLU.
        output_mode: str, default "regions". ``regions``: 3 sigmoid channels
            (WT, TC, ET); ``labels``: softmax over background + 3 classes.
        l2: float, default 0.0. L2 weight decay on conv kernels (paper: 1e-5).
        spatial_dims: int, default 3. 3: the paper's 3D network on volumes;
            2: the same blocks in 2D, on axial slices.
        attention_gates: bool, default False. Additive attention gates on the
            skip connections (Oktay et al. 2018).
    """

    in_channels: int = 4
    base_filters: int = 16
    depth: int = 5
    segmentation_levels: int = 3
    dropout: float = 0.3
    norm: str = "instance"
    leaky_slope: float = 0.01
    output_mode: str = "regions"
    l2: float = 0.0
    spatial_dims: int = 3
    attention_gates: bool = False

    def __post_init__(self) -> None:
        _positive(self, "in_channels", "base_filters", "depth")
        if self.spatial_dims not in (2, 3):
            raise InputError(f"--spatial-dims must be 2 or 3, got {self.spatial_dims!r}")
        if not 1 <= self.segmentation_levels <= self.depth:
            raise InputError(
                f"segmentation_levels must lie in 1..depth ({self.depth}), "
                f"got {self.segmentation_levels}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must lie in [0, 1), got {self.dropout}")
        _choice(self, "norm", NORMS)
        _choice(self, "output_mode", OUTPUT_MODES)
        if self.l2 < 0:
            raise InputError(f"l2 must be >= 0, got {self.l2}")

    @property
    def out_channels(self) -> int:
        return 3 if self.output_mode == "regions" else 4

    @property
    def stride(self) -> int:
        """Spatial sizes must be multiples of this."""
        return 2 ** (self.depth - 1)


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
        mixed_precision: "off", "bf16" or "fp16".
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
    patch_size: tuple[int, ...] = (128, 128, 128)
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
    mixed_precision: str = "off"
    strategy: str = "default"
    cache_dir: str | None = None
    synthetic_cases: int = 12
    synthetic_shape: tuple[int, int, int] = (96, 96, 80)
    init_from: str | None = None
    freeze_encoder_epochs: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        _positive(self, "epochs", "steps_per_epoch", "batch_size", "folds",
                  "val_patches_per_case", "max_queue_size", "synthetic_cases")
        if self.workers < 0:
            raise InputError(f"--workers must be >= 0, got {self.workers}")
        if self.checkpoint_every < 0:
            raise InputError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.freeze_encoder_epochs < 0:
            raise InputError(
                f"--freeze-encoder-epochs must be >= 0, got {self.freeze_encoder_epochs}")
        if self.freeze_encoder_epochs and not self.init_from:
            raise InputError("--freeze-encoder-epochs needs --init-from (a pretrained model)")
        dims = self.model.spatial_dims
        if len(self.patch_size) != dims or any(int(p) <= 0 for p in self.patch_size):
            raise InputError(f"--patch-size needs {('two', 'three')[dims - 2]} positive sizes "
                             f"for a {dims}D network, got {self.patch_size}")
        bad = [p for p in self.patch_size if p % self.model.stride]
        if bad:
            raise InputError(
                f"--patch-size {'x'.join(map(str, self.patch_size))} is not divisible by "
                f"2^(depth-1) = {self.model.stride} (depth {self.model.depth})"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise InputError(f"--val-fraction must lie in (0, 1), got {self.val_fraction}")
        if not 0 <= self.fold < self.folds:
            raise InputError(f"--fold must lie in 0..{self.folds - 1}, got {self.fold}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise InputError(
                f"foreground_fraction must lie in [0, 1], got {self.foreground_fraction}"
            )
        if self.learning_rate <= 0 or not 0 < self.lr_decay <= 1:
            raise InputError("--learning-rate must be > 0 and lr_decay in (0, 1]")
        _choice(self, "mixed_precision", MIXED_PRECISION)
        _choice(self, "strategy", STRATEGIES)
        _choice(self, "loss", LOSSES)
        _choice(self, "normalization", NORMALIZATIONS)
        if self.augment_strength < 0:
            raise InputError(f"augment_strength must be >= 0, got {self.augment_strength}")
        try:
            resolve_convention(self.label_convention)
        except ValueError as err:
            raise InputError(f"label_convention: {err}") from None
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise InputError(f"--modalities {' '.join(self.modalities)}: give each of "
                             f"{', '.join(MODALITIES)} at most once")
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
        values = dict(values)
        model_values = values.pop("model", {}) or {}
        _check_keys(cls, values, source)
        _check_keys(ModelConfig, model_values, f"{source} [model]")
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
        for key, value in changes.items():
            if key in {f.name for f in dataclasses.fields(ModelConfig)}:
                merged["model"][key] = value
            else:
                merged[key] = value
        return TrainConfig.from_dict(merged, source="overrides")

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON or YAML config file into a dict (validated later)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as err:  # any parse error means a bad file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a valid config file ({first})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config file must hold a mapping of options")
    return values


__all__ = ["MODALITIES", "ModelConfig", "TrainConfig", "load_config_file"]


def _check_keys(cls: type, values: dict[str, Any], source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}")


def _positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag} must be a positive integer, got {value!r}")


def _choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
