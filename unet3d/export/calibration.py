"""Real BraTS patches for int8 calibration and for checking exported models.

Patches come from :class:`data_generators.dataset.ValidationPatchDataset`
(fixed, seeded centres: tumor centroid, tumor voxels, random voxels) over
cases preprocessed into the same cache training uses, so a run's cache is
reused. :func:`choose_patches` picks an export's patches: given ones, a data
folder's, the run's training cases, or (fp32/fp16 only) random ones.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.cache import cache_for, default_cache_root
from data_generators.dataset import ValidationPatchDataset
from data_generators.layouts import find_any_cases
from data_generators.synthetic import cached_synthetic_dataset
from unet3d.config import MODALITIES, TrainConfig
from unet3d_base.errors import InputError

# preprocessing a case takes seconds; a few cases give enough variety
MAX_CASES = 4


def draw_patches(
    data_dir: str | Path,
    window: Sequence[int],
    count: int,
    config: dict[str, Any] | None = None,
    case_ids: Sequence[str] | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Draws ``count`` fixed patches from a folder of BraTS case folders.

    Args:
        data_dir: folder of case folders (images and segmentation).
        window: (D, H, W) patch size.
        count: int. Number of patches.
        config: TrainConfig dict or None: modalities, label convention,
            output mode and cache folder (defaults otherwise).
        case_ids: restrict to these cases (e.g. a run's training split).
        seed: seeds the patch centres.

    Returns:
        ``count`` float32 arrays `(1, D, H, W, C)`.

    Raises:
        InputError: missing folder, no (matching) cases, unreadable images.
    """

    config = config or {}
    data_dir = Path(data_dir)
    modalities = tuple(config.get("modalities") or MODALITIES)
    convention = config.get("label_convention", "brats2017")
    output_mode = (config.get("model") or {}).get("output_mode", "regions")
    cases = find_any_cases(data_dir, modalities)
    if case_ids is not None:
        wanted = set(case_ids)
        cases = [c for c in cases if c.case_id in wanted]
        if not cases:
            raise InputError(f"{data_dir}: none of the run's training cases found")
    picks = np.linspace(0, len(cases) - 1, min(len(cases), MAX_CASES, count)).round()
    cases = [cases[int(i)] for i in dict.fromkeys(picks)]
    cache = cache_for(data_dir, config.get("cache_dir"), config.get("normalization"))
    prepared = [cache.get(case, convention) for case in cases]
    dataset = ValidationPatchDataset(prepared, tuple(window), batch_size=1,
                                     patches_per_case=math.ceil(count / len(prepared)),
                                     output_mode=output_mode, seed=seed)
    order = np.argsort([i % math.ceil(count / len(prepared)) for i in range(len(dataset.centres))],
                       kind="stable")[:count]
    return [np.ascontiguousarray(dataset.patch(int(i))[0][None], dtype=np.float32)
            for i in order]


def run_patches(model_path: Path, config: dict[str, Any] | None, window: Sequence[int],
                count: int) -> list[np.ndarray]:
    """Patches from the training cases of the run that saved ``model_path``.

    The run directory (the model's folder) holds ``split.json`` with the
    ``train`` case ids; the data folder is the config's ``data`` (or the
    synthetic dataset training generated).

    Raises:
        InputError: no config, no split.json, or the data is gone.
    """
    if config is None:
        raise InputError(f"{model_path}: no training config found (embedded or config.json)")
    split_file = model_path.parent / "split.json"
    if not split_file.is_file():
        raise InputError(f"{model_path}: no split.json beside it to find training cases")
    try:
        train_ids = json.loads(split_file.read_text())["train"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{split_file}: not a valid split file") from None
    run_file = model_path.parent / "config.json"  # the run's settings: where its data is
    if run_file.is_file():
        try:
            config = {**config, **json.loads(run_file.read_text())}
        except json.JSONDecodeError:
            raise InputError(f"{run_file}: not valid JSON") from None
    data = config.get("data")
    if data is None:
        train_config = TrainConfig.from_dict(config, source=str(model_path))
        root = Path(config["cache_dir"]) if config.get("cache_dir") else default_cache_root()
        data = cached_synthetic_dataset(root, train_config.synthetic_cases,
                                        train_config.synthetic_shape, train_config.seed,
                                        log=lambda _message: None)
    return draw_patches(data, window, count, config, case_ids=train_ids)


def random_patches(window: Sequence[int], channels: int, count: int,
                   seed: int = 0) -> list[np.ndarray]:
    """Seeded standard-normal float32 patches `(1, D, H, W, C)` (z-scored-like inputs)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, *window, channels), dtype=np.float32) for _ in range(count)]


def choose_patches(calibration, calibration_data, count, model_path, config, window,
                   channels, precision) -> tuple[list[np.ndarray], str]:
    """The patches an export calibrates on and checks with, and where they came from.

    In order: ``calibration`` (given patches, `(1, *window, C)` or `(*window, C)`),
    patches drawn from ``calibration_data``, from the run's training cases beside
    ``model_path``, else (fp32/fp16 only) seeded random patches.

    Returns:
        (float32 patches `(1, *window, C)`, a description of their source).

    Raises:
        InputError: a patch of the wrong shape, no patches, unreadable
            ``--calibration-data``, or int8 without real patches.
    """
    if calibration is not None:
        patches = []
        for patch in calibration:
            patch = np.asarray(patch, dtype=np.float32)
            if patch.ndim == len(window) + 1:
                patch = patch[None]
            if patch.shape != (1, *window, channels):
                raise InputError(f"calibration patch of shape {patch.shape}, expected "
                                 f"{(1, *window, channels)}")
            patches.append(patch)
        if not patches:
            raise InputError("calibration holds no patches")
        return patches, "given"
    if calibration_data is not None:
        path = Path(calibration_data)
        try:
            return draw_patches(path, window, count, config), f"--calibration-data {path}"
        except InputError as err:
            raise InputError(f"--calibration-data: {err}") from None
    reason = "no model file"
    if model_path is not None:
        try:
            return (run_patches(model_path, config, window, count),
                    f"training cases of {model_path.parent}")
        except InputError as err:
            reason = str(err)
    if precision == "int8":
        raise InputError(f"int8 needs real calibration patches: {reason}; "
                         "pass --calibration-data DIR")
    return random_patches(window, channels, min(count, 2)), f"random ({reason})"
