"""The bottom layer both :mod:`data_generators` and :mod:`unet3d` import: the errors the
command lines turn into one-line messages (:mod:`unet3d_base.errors`) and atomic,
locked file I/O (:mod:`unet3d_base.fileio`). It imports nothing of the project."""
