"""Isensee et al. 2017 3D U-Net for brain tumor segmentation, in Keras 3.

Importing this package changes no environment variable, file descriptor or
Keras state. Layers, bottom to top (each imports only those below it):

* :mod:`unet3d_base`: errors and atomic, locked file I/O (both packages import it).
* :mod:`data_generators` (a package of its own): labels, NIfTI
  cases, preprocessing, augmentation and patch datasets.
* :mod:`unet3d.config` (Recipe, RunSettings, TrainConfig), :mod:`unet3d.env`,
  :mod:`unet3d.keras_compat`, :mod:`unet3d.precision`, :mod:`unet3d.memory`,
  :mod:`unet3d.components`, :mod:`unet3d.evaluation`: configuration, machine, scores.
* :mod:`unet3d.models`: layers, the network, losses and metrics.
* :mod:`unet3d.artifacts`: a trained model on disk (``.keras`` or ``.tflite``)
  with everything stored in it (recipe, post-processing plan), and one loader;
  :mod:`unet3d.postprocessing`: the plan's rules.
* :mod:`unet3d.inference` (the ``Predictor`` API).
* :mod:`unet3d.training` (``train``, the ``Trainer``), :mod:`unet3d.export` (LiteRT).
* :mod:`unet3d.cli`: the command lines (``unet3d-train``, ``unet3d-predict``,
  ``unet3d-evaluate``, ``unet3d-export``, ``unet3d-postprocess``, ``unet3d-campaign``).
"""

__version__ = "0.2.0"
