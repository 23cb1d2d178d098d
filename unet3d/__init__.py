"""Isensee et al. 2017 3D U-Net for brain tumor segmentation, in Keras 3.

Importing this package changes no Keras state; it only sets TensorFlow's
environment defaults (oneDNN CPU kernels on, quiet C++ logs) in case
TensorFlow has not loaded yet: see :mod:`unet3d.tf_env`.
"""

import unet3d.tf_env  # noqa: F401

__version__ = "0.1.0"
