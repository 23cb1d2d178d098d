"""Data pipeline for BraTS: NIfTI I/O, preprocessing cache, augmentation, patch datasets.

Modules:

* :mod:`data_generators.io`: find BraTS case folders and their files.
* :mod:`data_generators.nifti`: load and save NIfTI volumes.
* :mod:`data_generators.lgg`, :mod:`data_generators.lgg_predictions`,
  :mod:`data_generators.lgg_synthetic`, :mod:`data_generators.lgg_channels`: the Kaggle
  LGG layout: find and read patients (channels that copy FLAIR found and refused), write
  predictions, write a synthetic dataset.
* :mod:`data_generators.layouts`: either layout, one interface.
* :mod:`data_generators.geometry`: to the model's voxel space and back.
* :mod:`data_generators.normalization`: per-sequence intensity normalisation.
* :mod:`data_generators.preprocessing`: brain cropping and normalisation.
* :mod:`data_generators.cache`: the on-disk cache of preprocessed cases.
* :mod:`data_generators.augmentation`: patch extraction with spatial and
  intensity augmentation.
* :mod:`data_generators.patches`: patch shapes, targets and centres.
* :mod:`data_generators.dataset`: Keras ``PyDataset`` patch samplers.
* :mod:`data_generators.case_split`: the train / validation split.
* :mod:`data_generators.synthetic`: a small BraTS-like synthetic dataset.

Arrays use the channels-last layout ``(X, Y, Z, C)`` throughout.
"""
