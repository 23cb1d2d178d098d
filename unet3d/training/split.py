"""Which cases train and which validate: a saved split, an explicit list, or a seeded one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_generators.case_split import split_cases
from unet3d.config import TrainConfig
from unet3d_base.errors import InputError


def resolve_split(ids: list[str], config: TrainConfig, data_dir: Path, distributed: bool = False,
                  saved: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """``(train ids, validation ids)`` of a run over the cases ``ids`` of ``data_dir``.

    The run's saved ``split.json`` (``saved``, when resuming) wins; then
    ``config.validation_cases`` (an empty list: every case trains, one process only);
    else :func:`data_generators.case_split.split_cases` with the config's seed, fraction
    and folds.

    Raises:
        InputError: listed or saved cases that are not in ``data_dir``, or no training case.
    """
    if saved is not None:
        train_ids, val_ids = list(saved["train"]), list(saved["validation"])
    elif config.validation_cases is not None:
        unknown = sorted(set(config.validation_cases) - set(ids))
        if unknown:
            raise InputError(f"validation_cases: {', '.join(unknown)} not found in {data_dir}")
        val_ids = sorted(config.validation_cases)
        train_ids = sorted(set(ids) - set(val_ids))
        if not train_ids:
            raise InputError(f"validation_cases: every case of {data_dir} is held out")
        if not val_ids and distributed:
            raise InputError("validation_cases: [] (no validation) runs on one process only")
    else:
        train_ids, val_ids = split_cases(list(ids), config.val_fraction, config.seed,
                                         config.folds, config.fold)
    missing = sorted(set(train_ids + val_ids) - set(ids))
    if missing:
        raise InputError(f"{data_dir}: cases of the saved split are missing: {', '.join(missing)}")
    return train_ids, val_ids
