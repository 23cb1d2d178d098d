"""Training: :func:`train` runs a :class:`~unet3d.config.TrainConfig` end to end.

* :mod:`unet3d.training.trainer`: the :class:`Trainer` holding a run's state: checks,
  run folder, split (:func:`data_generators.case_split.resolve_split`), cache, fit, scoring.
* :mod:`unet3d.training.callbacks`: atomic checkpoints, epoch seeds, images;
  :mod:`~unet3d.training.run_callbacks` orders them for a run.
* :mod:`unet3d.training.signals`: stopping at a step on SIGTERM / SIGINT, step checkpoints;
  :mod:`~unet3d.training.resume`: which checkpoint ``--resume`` continues from.
* :mod:`unet3d.training.summaries`: TensorBoard event files without TensorFlow.
* :mod:`unet3d.training.finetune`: ``--init-from`` and encoder freezing.
* :mod:`unet3d.training.distribute`: ``tf.distribute`` and ``keras.distribution``.
* :mod:`unet3d.training.hparams`: a TensorBoard HParams trial per run.
"""

from unet3d.training.result import TrainResult
from unet3d.training.run import train
from unet3d.training.trainer import Trainer

__all__ = ["TrainResult", "Trainer", "train"]
