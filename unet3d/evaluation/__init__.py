"""BraTS metrics (numpy and scipy, no Keras).

* :mod:`unet3d.evaluation.scores`: Dice, IoU, sensitivity, specificity and
  HD95 of a pair of masks.
* :mod:`unet3d.evaluation.case_scores`: those per region, per case and summarized.
* :mod:`unet3d.evaluation.folder`: a folder of predictions against ground truth.
"""

from unet3d.evaluation.case_scores import score_case, summarize
from unet3d.evaluation.folder import evaluate_folder
from unet3d.evaluation.scores import hd95, region_dice

__all__ = ["evaluate_folder", "hd95", "region_dice", "score_case", "summarize"]
