"""The machine settings of one training run: :class:`RunSettings` (paths, loading,
strategy). They stay with the run (its ``config.json``) and never travel in a model file."""

from __future__ import annotations

from dataclasses import dataclass

from unet3d.config.checks import ConfigError, choice, positive

STRATEGIES = ("default", "mirrored", "multiworker")
RUN_FIELDS = ("data", "out", "cache_dir", "workers", "use_multiprocessing", "max_queue_size",
              "strategy", "checkpoint_every")


@dataclass(frozen=True)
class RunSettings:
    """Where one run reads and writes, and how this machine runs it.

    Args:
        data: str or None. BraTS (or Kaggle LGG) folder; None trains on the synthetic
            dataset the recipe describes.
        out: str, default "runs/exp". Run directory.
        cache_dir: preprocessed cache root; None: ``$UNET3D_CACHE``, else
            ``~/.cache/unet3d`` (a subfolder per data folder).
        workers, use_multiprocessing, max_queue_size: PyDataset loading.
        strategy: "default" (one device), "mirrored" (all local GPUs, or
            all logical CPU devices) or "multiworker" (the workers of
            ``TF_CONFIG``); the recipe's ``batch_size`` and ``learning_rate`` are global.
        checkpoint_every: int, default 0. Write a step checkpoint
            (``step.keras``) every this many steps, so that even a SIGKILL
            loses at most that many; 0: only on SIGTERM or SIGINT. Epoch
            checkpoints are written either way.
    """

    data: str | None = None
    out: str = "runs/exp"
    cache_dir: str | None = None
    workers: int = 1
    use_multiprocessing: bool = False
    max_queue_size: int = 8
    strategy: str = "default"
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        positive(self, "max_queue_size")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}", "workers")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be >= 0, got {self.checkpoint_every}",
                              "checkpoint_every")
        choice(self, "strategy", STRATEGIES)
