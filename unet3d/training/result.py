"""What a training run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: Path of the run directory.
        val_dice: dict region -> Dice of ``best.keras`` on the whole
            validation volumes, averaged over cases (``WT``, ``TC``, ``ET``,
            ``mean``); per case in ``validation.json``.
        history: dict metric -> list of per-epoch values (this session).
        best_epoch: int or None. 1-based epoch of ``best.keras``.
        seconds: float. Wall time of the run.
        model: keras.Model or None. The trained model (last epoch's weights).
        is_chief: bool. False on the workers of a multi-worker run that do
            not write ``run_dir``; their ``val_dice`` is empty.
    """

    run_dir: Path
    val_dice: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int | None = None
    seconds: float = 0.0
    model: Any = field(default=None, repr=False, compare=False)
    is_chief: bool = True
