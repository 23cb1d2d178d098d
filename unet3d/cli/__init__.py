"""The command lines. Each entry point applies the environment defaults
(:func:`unet3d.env.prepare_backend`) before Keras loads, then runs its module's ``main``;
``python -m unet3d.cli.<tool>`` applies them as this package loads.

======================  ==========================  ==============================
console script          module                      what it does
======================  ==========================  ==============================
``unet3d-train``        :mod:`unet3d.cli.train`     train, fine-tune or resume
``unet3d-predict``      :mod:`unet3d.cli.predict`   segment cases into NIfTI files
``unet3d-evaluate``     :mod:`unet3d.cli.evaluate`  score predictions (Dice, HD95)
``unet3d-export``       :mod:`unet3d.cli.export`    LiteRT export (TensorFlow only)
``unet3d-postprocess``  :mod:`unet3d.cli.postprocess`  choose and store post-processing
``unet3d-campaign``     :mod:`unet3d.cli.campaign`  cross-validation campaign
``unet3d-ensemble``     :mod:`unet3d.cli.ensemble`  score and ship an ensemble
======================  ==========================  ==============================
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from unet3d.env import prepare_backend
from unet3d_base.errors import OUTPUT_ERROR_EXIT, OutputError
from unet3d_base.fileio import STORAGE_ERRNOS

# ``python -m unet3d.cli.<tool>``: this package loads first, then the tool's module, which
# imports Keras; sys.argv[0] is "-m" exactly while the module is being located
if sys.argv[:1] == ["-m"]:
    prepare_backend()


def _run(module: str, argv: Sequence[str] | None) -> int:
    """Runs ``unet3d.cli.<module>.main``. A write the storage refused (disk full, quota,
    I/O error), wherever it happened, ends in one line and exit status 74; the file it
    names is unchanged (every output is written to a temporary name and renamed)."""
    prepare_backend()
    try:
        return importlib.import_module(f"unet3d.cli.{module}").main(argv)
    except OutputError as err:
        print(f"unet3d-{module}: error: {err}", file=sys.stderr)
    except OSError as err:
        if err.errno not in STORAGE_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        print(f"unet3d-{module}: error: {where}cannot write ({err.strerror}); outputs "
              "written before it are complete, the one in progress was not kept",
              file=sys.stderr)
    return OUTPUT_ERROR_EXIT


def train_main(argv: Sequence[str] | None = None) -> int:
    return _run("train", argv)


def predict_main(argv: Sequence[str] | None = None) -> int:
    return _run("predict", argv)


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    return _run("evaluate", argv)


def export_main(argv: Sequence[str] | None = None) -> int:
    return _run("export", argv)


def campaign_main(argv: Sequence[str] | None = None) -> int:
    return _run("campaign", argv)


def ensemble_main(argv: Sequence[str] | None = None) -> int:
    return _run("ensemble", argv)


def postprocess_main(argv: Sequence[str] | None = None) -> int:
    return _run("postprocess", argv)
