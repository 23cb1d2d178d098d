"""The command lines. Each entry point applies the environment defaults
(:func:`unet3d.env.prepare_backend`) before Keras loads, then runs its module's ``main``.

======================  ==========================  ==============================
console script          module                      what it does
======================  ==========================  ==============================
``unet3d-train``        :mod:`unet3d.cli.train`     train, fine-tune or resume
``unet3d-predict``      :mod:`unet3d.cli.predict`   segment cases into NIfTI files
``unet3d-evaluate``     :mod:`unet3d.cli.evaluate`  score predictions (Dice, HD95)
``unet3d-export``       :mod:`unet3d.cli.export`    LiteRT export (TensorFlow only)
``unet3d-postprocess``  :mod:`unet3d.cli.postprocess`  choose and store post-processing
======================  ==========================  ==============================
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from unet3d.env import prepare_backend


def _run(module: str, argv: Sequence[str] | None) -> int:
    prepare_backend()
    return importlib.import_module(f"unet3d.cli.{module}").main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    return _run("train", argv)


def predict_main(argv: Sequence[str] | None = None) -> int:
    return _run("predict", argv)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    return _run("evaluate", argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run("export", argv)


def postprocess_main(argv: Sequence[str] | None = None) -> int:
    return _run("postprocess", argv)
