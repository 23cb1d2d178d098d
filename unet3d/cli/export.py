"""Command line: ``unet3d-export MODEL.keras --precision int8 --out m.tflite``.

Prints the export report (size, ops, agreement with Keras) and writes it as
``<out>.json``. Bad input prints ``export: error: <message>`` on stderr and
exits with status 2, leaving no output file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from unet3d.env import prepare_backend
from unet3d_base.errors import InputError

PROG = "export"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage block
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses the command line (see ``--help``)."""
    parser = _Parser(prog=PROG, description="Export a trained 3D U-Net to LiteRT (.tflite) "
                     "with its 3D convolutions lowered to 2D ones (XNNPACK, int8); a 2D "
                     "(slice) network exports as it is.")
    parser.add_argument("model", type=Path, help="trained .keras model")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="fp32; fp16 weights; int8 weights and activations (default fp32)")
    parser.add_argument("--out", type=Path, required=True, help="output .tflite file")
    parser.add_argument("--window", type=int, nargs="+", metavar="N",
                        help="static input size D H W (H W for a 2D network), or one N for "
                        "every axis (default: the training patch size); divisible by the "
                        "model stride")
    parser.add_argument("--calibration-data", type=Path, default=None, metavar="DIR",
                        help="BraTS folder of case folders to draw calibration patches from "
                        "(default: the run's training cases)")
    parser.add_argument("--calibration-patches", type=int, default=8, metavar="N",
                        help="patches for int8 calibration and the agreement check (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT threads (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return parser.parse_args(None if argv is None else list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input).

    Args:
        argv: the arguments, without the program name; ``sys.argv[1:]`` if None.
    """
    args = parse_args(argv)
    backend = prepare_backend()
    try:
        if backend != "tensorflow":
            raise InputError(f"LiteRT export runs on the TensorFlow backend only (this is "
                             f"KERAS_BACKEND={backend}); run it with KERAS_BACKEND=tensorflow")
        if args.out.exists() and not args.overwrite:
            raise InputError(f"--out {args.out}: exists; pass --overwrite to replace it")
        if args.threads <= 0:
            raise InputError(f"--threads must be positive, got {args.threads}")
        # the TensorFlow-only backend: loaded after the backend check, so that on JAX or
        # PyTorch the refusal above is the only line on stderr (TensorFlow's start-up
        # chatter is silenced only when prepare_backend loads it, on its own backend)
        from unet3d.export.convert import export_litert, format_report

        report = export_litert(
            args.model, args.out, args.precision, window=args.window, threads=args.threads,
            calibration_data=args.calibration_data, calibration_patches=args.calibration_patches,
            overwrite=args.overwrite,
        )
    except InputError as err:
        message = " ".join(str(err).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    print(format_report(report))
    return 0


if __name__ == "__main__":  # through the entry point, which answers a full disk too
    from unet3d.cli import export_main

    sys.exit(export_main())
