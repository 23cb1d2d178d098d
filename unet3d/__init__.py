"""Isensee et al. 2017 3D U-Net for brain tumor segmentation, in Keras 3.

Importing this package runs nothing: no global Keras state is changed.
"""

__version__ = "0.1.0"
