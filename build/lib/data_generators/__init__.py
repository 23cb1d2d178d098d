"""Data pipeline for BraTS: NIfTI I/O, preprocessing cache, augmentation, patch datasets.

Modules:

* :mod:`data_generators.io`: find BraTS case folders, load and save NIfTI volumes.
* :mod:`data_generators.preprocessing`: brain cropping, z-scoring, on-disk cache.
* :mod:`data_generators.augmentation`: patch extraction with spatial and
  intensity augmentation.
* :mod:`data_generators.dataset`: Keras ``PyDataset`` patch samplers and the
  train / validation split.
* :mod:`data_generators.synthetic`: a small BraTS-like synthetic dataset.

Arrays use the channels-last layout ``(X, Y, Z, C)`` throughout.
"""
