"""Inference on new cases.

* :mod:`unet3d.inference.predictor`: whole-volume and sliding-window
  prediction, mirroring TTA, over any ``predict_fn``.
* :mod:`unet3d.inference.pipeline`: a case folder in, label map NIfTI (in
  the input's own geometry), report, preview and mesh out.
* :mod:`unet3d.inference.report`: volumes, preview montage, surface mesh.
"""

from unet3d.inference.pipeline import PredictSettings, predict_case
from unet3d.inference.predictor import Predictor

__all__ = ["PredictSettings", "Predictor", "predict_case"]
