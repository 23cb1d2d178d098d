#!/usr/bin/env python
"""Train the Isensee et al. 2017 3D U-Net on a BraTS folder (or synthetic data).

Examples:
    python train.py --data /data/MICCAI_BraTS_2020_TrainingData --out runs/exp1
    python train.py --config configs/demo.yaml --out runs/demo
    python train.py --out runs/exp1 --resume
    python train.py --data /data/brats --out runs/exp2 --strategy mirrored --batch-size 4
    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \
        python train.py --data /data/brats --out runs/exp3 --strategy multiworker
    tensorboard --logdir runs/exp1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_generators.labels import MODALITIES
from unet3d.artifacts.keras_file import read_model_config
from unet3d.artifacts.shipped import DEFAULT_NAME
from unet3d.config import (
    SLICE_PATCH_SIZE,
    VOLUME_PATCH_SIZE,
    ConfigError,
    TrainConfig,
    load_config_file,
)
from unet3d.env import prepare_backend
from unet3d.precision import resolve_precision
from unet3d.training.finetune import source_path
from unet3d.training.run import train
from unet3d.training.rundir import load_resume_config
from unet3d.training.signals import Preempted
from unet3d_base.errors import InputError

# CLI option -> TrainConfig (or ModelConfig) field
OVERRIDES = {
    "data": "data", "out": "out", "epochs": "epochs", "steps_per_epoch": "steps_per_epoch",
    "patch_size": "patch_size", "batch_size": "batch_size", "base_filters": "base_filters",
    "depth": "depth", "learning_rate": "learning_rate", "val_fraction": "val_fraction",
    "folds": "folds", "fold": "fold", "seed": "seed", "workers": "workers",
    "output_mode": "output_mode", "loss": "loss",
    "cache_dir": "cache_dir", "label_convention": "label_convention",
    "strategy": "strategy", "init_from": "init_from",
    "freeze_encoder_epochs": "freeze_encoder_epochs", "spatial_dims": "spatial_dims",
    "checkpoint_every": "checkpoint_every",
    "attention_gates": "attention_gates", "input_stride": "input_stride",
}
# TrainConfig (or ModelConfig) field -> the option that sets it, for error messages
FLAGS = {field: "--" + option.replace("_", "-") for option, field in OVERRIDES.items()} | {
    "modalities": "--modalities", "precision": "--precision"}
# taken from the --init-from model's own config unless --config sets them
INHERITED = ("model", "patch_size", "modalities")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train a 3D U-Net (Isensee et al. 2017) for brain tumor segmentation.")
    parser.add_argument("--data", help="BraTS folder of case folders (default: synthetic data)")
    parser.add_argument("--out", help="run directory (default: runs/exp)")
    parser.add_argument("--config", help="JSON or YAML file of TrainConfig options")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps-per-epoch", type=int)
    parser.add_argument("--patch-size", type=int, nargs="+", metavar="N",
                        help="one size for every axis, or three sizes D H W (two, H W, for "
                             "--spatial-dims 2; default 192 192 there)")
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3),
                        help="3: the 3D network (default); 2: the same blocks in 2D, trained "
                             "on axial slices and run slice by slice")
    parser.add_argument("--attention-gates", action=argparse.BooleanOptionalAction,
                        help="additive attention gates on the skip connections (Oktay et al. "
                             "2018)")
    parser.add_argument("--input-stride", type=int, choices=(1, 2),
                        help="2D only: 2 runs the network at half the slice's resolution "
                             "(average pooling in, bilinear upsampling out; default 1)")
    parser.add_argument("--modalities", nargs="+", metavar="NAME",
                        help=f"input sequences, in channel order (any of {', '.join(MODALITIES)};"
                             " default all four)")
    parser.add_argument("--batch-size", type=int,
                        help="global batch, split evenly over the replicas")
    parser.add_argument("--base-filters", type=int)
    parser.add_argument("--depth", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--val-fraction", type=float)
    parser.add_argument("--folds", type=int)
    parser.add_argument("--fold", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workers", type=int, help="PyDataset loader threads")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"),
                        help="what training computes in: fp32, bf16 (mixed_bfloat16; only "
                             "where the CPU has avx512_bf16 or amx_bf16, or on a GPU), fp16 "
                             "(mixed_float16, a GPU) or auto (bf16 exactly where native); "
                             "default: the config's precision (fp32)")
    parser.add_argument("--mixed-precision", choices=("off", "bf16", "fp16"),
                        help=argparse.SUPPRESS)  # the older name: off = fp32
    parser.add_argument("--output-mode", choices=("regions", "labels"))
    parser.add_argument("--loss", choices=("dice", "dice_ce"))
    parser.add_argument("--label-convention", help="brats2017 (default), brats2023 or msd")
    parser.add_argument("--cache-dir", help="preprocessed cache (default ~/.cache/unet3d)")
    parser.add_argument("--no-augment", action="store_true", help="turn augmentation off")
    parser.add_argument("--export", nargs="+", choices=("fp32", "fp16", "int8"),
                        metavar="PRECISION",
                        help="after training, export best.keras to LiteRT: best_<p>.tflite "
                             "(fp32, fp16 and/or int8, calibrated on the run's training data)")
    parser.add_argument("--strategy", choices=("default", "mirrored", "multiworker"),
                        help="default: one device; mirrored: all local GPUs (or logical "
                             "CPU devices); multiworker: the workers of $TF_CONFIG")
    parser.add_argument("--init-from", metavar="MODEL.keras",
                        help="fine-tune: start from this model's weights (e.g. the shipped "
                             f"models/{DEFAULT_NAME}.keras); its architecture, patch size "
                             "and modalities are the defaults")
    parser.add_argument("--freeze-encoder-epochs", type=int, metavar="N",
                        help="with --init-from: train only the decoder for the first N epochs")
    parser.add_argument("--checkpoint-every", type=int, metavar="N",
                        help="also write a step checkpoint (step.keras) every N steps, so a "
                             "SIGKILL loses at most N steps (default 0: only on SIGTERM or "
                             "SIGINT, which always keep the step in flight)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (a step "
                             "checkpoint when it is newer than the last complete epoch)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace) -> TrainConfig:
    """Defaults < --config file < command-line options."""
    values = load_config_file(args.config) if args.config else {}
    if args.init_from:
        values = {**inherited_values(args.init_from), **values}
    config = TrainConfig.from_dict(values, source=args.config or "config")
    changes = {field: getattr(args, opt) for opt, field in OVERRIDES.items()
               if getattr(args, opt) is not None}
    dims = changes.get("spatial_dims", config.model.spatial_dims)
    if "patch_size" in changes:
        sizes = changes["patch_size"]
        if len(sizes) not in (1, dims):
            count = {2: "two", 3: "three"}[dims]
            raise InputError(f"--patch-size takes one or {count} sizes for a {dims}D network, "
                             f"got {len(sizes)}")
        changes["patch_size"] = tuple(sizes * dims if len(sizes) == 1 else sizes)
    elif len(config.patch_size) != dims and "patch_size" not in values:
        changes["patch_size"] = SLICE_PATCH_SIZE if dims == 2 else VOLUME_PATCH_SIZE
    if args.modalities:
        changes["modalities"] = tuple(name.lower() for name in args.modalities)
        changes["in_channels"] = len(args.modalities)
    if args.no_augment:
        changes["augment"] = False
    if args.precision:
        changes["precision"] = (args.precision if args.precision == "fp16"
                                else resolve_precision(args.precision))
    elif args.mixed_precision:
        changes["mixed_precision"] = args.mixed_precision  # read as precision
    return config.replace(**changes) if changes else config


def inherited_values(model_path: str) -> dict:
    """Architecture, patch size and modalities of a pretrained ``.keras`` model."""
    embedded = read_model_config(source_path(model_path)) or {}
    return {key: embedded[key] for key in INHERITED if key in embedded}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prepare_backend()
    try:
        if args.resume:
            if not args.out:
                raise InputError("--resume needs --out, the run directory to continue")
            if not (Path(args.out) / "config.json").is_file():
                raise InputError(f"--resume: {args.out} holds no config.json to resume from")
            config = load_resume_config(Path(args.out), epochs=args.epochs)
            if args.strategy is not None:  # resuming on other hardware is fine
                config = config.replace(strategy=args.strategy)
        else:
            config = build_config(args)
        result = train(config, resume=args.resume)
        if args.export and result.is_chief:
            from unet3d.export import export_litert, format_report  # TensorFlow only

            for precision in args.export:
                report = export_litert(result.run_dir / "best.keras",
                                       result.run_dir / f"best_{precision}.tflite", precision)
                print(format_report(report))
    except ConfigError as err:  # names config fields: the options that set them instead
        print(f"train.py: error: {err.naming(FLAGS)}", file=sys.stderr)
        return 2
    except InputError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        out = Path(config.out)
        if stop.step:
            print(f"train.py: {stop} at step {stop.step} of epoch {stop.epochs_done + 1}; "
                  f"{out}/step.keras holds every step up to it; continue with: python "
                  f"train.py --out {out} --resume", file=sys.stderr)
        elif stop.epochs_done == 0 and not (out / "last.keras").is_file():
            print(f"train.py: {stop} during epoch 1, before any checkpoint: nothing to resume; "
                  f"start again with another --out (or after removing {out})",
                  file=sys.stderr)
        else:
            print(f"train.py: {stop} during epoch {stop.epochs_done + 1}; {out}/last.keras"
                  f" holds epoch {stop.epochs_done}; continue with: python train.py --out "
                  f"{out} --resume", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:  # before training started
        print("train.py: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # through the entry point, which answers a full disk too
    from unet3d.cli import train_main

    sys.exit(train_main())
