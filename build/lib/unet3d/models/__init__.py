"""The network and what trains it, in ``keras.ops`` (any Keras backend).

* :mod:`unet3d.models.layers`: the Isensee blocks (context, upsampling, localization).
* :mod:`unet3d.models.unet`: :func:`build_unet3d` from a :class:`~unet3d.config.ModelConfig`.
* :mod:`unet3d.models.losses`: weighted soft Dice, Dice + CE.
* :mod:`unet3d.models.metrics`: Dice per region as Keras metrics.
* :mod:`unet3d.models.forward`: the compiled forward pass as a ``predict_fn``.
"""

from unet3d.models.losses import DiceCELoss, SoftDiceLoss, make_loss
from unet3d.models.metrics import RegionDice, region_metrics
from unet3d.models.unet import build_unet3d, conv_flops

__all__ = ["DiceCELoss", "RegionDice", "SoftDiceLoss", "build_unet3d", "conv_flops",
           "make_loss", "region_metrics"]
