"""The seeded train / validation split of a dataset's cases (one split, or k folds)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet3d_base.errors import InputError


def split_cases(
    case_ids: Sequence[str],
    val_fraction: float = 0.2,
    seed: int = 42,
    folds: int = 1,
    fold: int = 0,
) -> tuple[list[str], list[str]]:
    """Splits case ids into training and validation sets.

    The ids are sorted, then shuffled with ``seed``, so the split does not
    depend on the input order.

    Args:
        case_ids: all case ids (unique).
        val_fraction: validation share when ``folds == 1``.
        seed: shuffle seed.
        folds: number of folds; > 1 gives a k-fold split.
        fold: the fold held out for validation.

    Returns:
        ``(train_ids, val_ids)``, each sorted, disjoint, non-empty.

    Raises:
        InputError: fewer than 2 cases, duplicated ids or a bad fold.
    """
    ids = sorted(str(c) for c in case_ids)
    if len(set(ids)) != len(ids):
        raise InputError("case ids are not unique")
    n = len(ids)
    if n < 2:
        raise InputError(f"need at least 2 cases to split into training and validation, got {n}")
    if folds < 1 or not 0 <= fold < folds:
        raise InputError(f"--fold must lie in 0..{folds - 1}, got {fold}")
    if folds > n:
        raise InputError(f"--folds {folds} is more than the {n} cases")
    order = np.random.default_rng(seed).permutation(n)
    if folds > 1:
        val_idx = np.array_split(order, folds)[fold]
    else:
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"--val-fraction must lie in (0, 1), got {val_fraction}")
        n_val = min(max(1, int(round(n * val_fraction))), n - 1)
        val_idx = order[:n_val]
    val = set(val_idx.tolist())
    return [ids[i] for i in range(n) if i not in val], [ids[i] for i in sorted(val)]


def resolve_split(ids: Sequence[str], data_dir: str | Path,
                  validation_cases: Sequence[str] | None = None, val_fraction: float = 0.2,
                  seed: int = 42, folds: int = 1, fold: int = 0, distributed: bool = False,
                  saved: dict[str, Any] | None = None) -> tuple[list[str], list[str]]:
    """``(train ids, validation ids)`` of a run over the cases ``ids`` of ``data_dir``.

    A run's saved ``split.json`` (``saved``, when resuming) wins; then an explicit
    ``validation_cases`` list (empty: every case trains, on one process only); else
    :func:`split_cases` with the seed, fraction and folds.

    Raises:
        InputError: listed or saved cases that are not in ``data_dir``, or no training case.
    """
    if saved is not None:
        train_ids, val_ids = list(saved["train"]), list(saved["validation"])
    elif validation_cases is not None:
        unknown = sorted(set(validation_cases) - set(ids))
        if unknown:
            raise InputError(f"validation_cases: {', '.join(unknown)} not found in {data_dir}")
        val_ids = sorted(validation_cases)
        train_ids = sorted(set(ids) - set(val_ids))
        if not train_ids:
            raise InputError(f"validation_cases: every case of {data_dir} is held out")
        if not val_ids and distributed:
            raise InputError("validation_cases: [] (no validation) runs on one process only")
    else:
        train_ids, val_ids = split_cases(list(ids), val_fraction, seed, folds, fold)
    missing = sorted(set(train_ids + val_ids) - set(ids))
    if missing:
        raise InputError(f"{data_dir}: cases of the saved split are missing: {', '.join(missing)}")
    return train_ids, val_ids
