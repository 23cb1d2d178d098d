"""Training: :func:`train` runs a :class:`~unet3d.config.TrainConfig` end to end.

* :mod:`unet3d.training.run`: run folder, split, cache, fit and final scoring.
* :mod:`unet3d.training.callbacks`: atomic checkpoints, epoch seeds, images.
* :mod:`unet3d.training.summaries`: TensorBoard event files without TensorFlow.
* :mod:`unet3d.training.finetune`: ``--init-from`` and encoder freezing.
* :mod:`unet3d.training.distribute`: ``tf.distribute`` and ``keras.distribution``.
* :mod:`unet3d.training.hparams`: a TensorBoard HParams trial per run.
"""

from unet3d.training.run import TrainResult, train

__all__ = ["TrainResult", "train"]
