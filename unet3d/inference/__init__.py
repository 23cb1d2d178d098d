"""Inference on new cases.

* :mod:`unet3d.inference.api`: :class:`Predictor`, a loaded model that segments
  arrays in memory, a case folder or a folder of cases (what ``predict.py`` runs).
* :mod:`unet3d.inference.predictor`: whole-volume and sliding-window
  prediction, mirroring TTA, over any ``predict_fn`` (:class:`WindowPredictor`).
* :mod:`unet3d.inference.pipeline`: a case folder in, label map NIfTI (in
  the input's own geometry), report, preview and mesh out.
* :mod:`unet3d.inference.report`: volumes, preview montage, surface mesh.
"""

from unet3d.inference.api import FolderResult, Predictor
from unet3d.inference.pipeline import PredictSettings, predict_case
from unet3d.inference.predictor import WindowPredictor

__all__ = ["FolderResult", "PredictSettings", "Predictor", "WindowPredictor", "predict_case"]
