"""One loader for a trained-model artifact, ``.keras`` and LiteRT ``.tflite`` alike.

An artifact is the network's weights, the ``TrainConfig`` it was trained
with (modalities and their order, label convention, window) and the
post-processing chosen for it on validation cases (:mod:`unet3d.postprocessing`;
:mod:`unet3d.artifacts.plan_file` stores it). A ``.keras`` file embeds the config
(:mod:`unet3d.artifacts.keras_file`); a ``.tflite`` file keeps it in
``<file>.json`` beside it (:mod:`unet3d.artifacts.litert_file`).

A folder of ``fold_<k>.keras`` models (a cross-validation campaign's, as
nnU-Net's model folders) is one artifact too: the ensemble, whose
probabilities are the mean of its members'. So is a ``.json`` manifest naming
members that may be different networks (:func:`load_manifest`), as nnU-Net
ensembles its configurations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from unet3d.artifacts.keras_file import load_model, read_model_config
from unet3d.artifacts.litert_file import LiteRTModel, report_path
from unet3d.artifacts.manifest import read_manifest
from unet3d.artifacts.plan_file import read_plan
from unet3d.config import TrainConfig
from unet3d.models.forward import keras_predict_fn
from unet3d.models.unet import build_unet3d
from unet3d.postprocessing import PostProcessing
from unet3d.precision import dtype_policy, policy_scope
from unet3d_base.errors import InputError


@dataclass
class Artifact:
    """A trained model ready for inference: its forward pass, the inputs it expects
    (modalities, label convention, window), its output and its post-processing plan."""

    path: Path
    predict_fn: Any
    modalities: tuple[str, ...]
    output_mode: str
    stride: int
    base_filters: int
    patch_size: tuple[int, ...]  # (D, H, W), or (H, W) for a 2D network
    label_convention: str
    spatial_dims: int = 3  # 2: a slice network, run axial slice by slice
    fixed_window: bool = False  # LiteRT files take exactly one window size
    precision: str = "fp32"  # what a .keras network computes in; "litert" for .tflite files
    postprocessing: PostProcessing | None = None  # the plan stored with the model file
    normalization: str = "zscore"  # the intensity normalisation it was trained on
    members: int = 1  # models averaged (a folder of fold models, an ensemble manifest)


def load_artifact(path: str | Path, threads: int = 2, precision: str = "fp32") -> Artifact:
    """Loads a ``.keras`` or LiteRT ``.tflite`` model with its config and post-processing.

    The config is embedded in a ``.keras`` file (or in ``config.json``
    beside it); an exported ``.tflite`` keeps it in ``<file>.json`` beside.
    A ``.keras`` model is rebuilt in ``precision`` whatever it was trained in
    (the weights are float32 either way) and runs compiled
    (:func:`unet3d.models.forward.keras_predict_fn`).

    Args:
        path: str or Path of the model.
        threads: int, default 2. LiteRT interpreter threads.
        precision: str, default "fp32". ``fp32`` or ``bf16``, already
            resolved (:func:`unet3d.precision.resolve_precision`); ignored
            for ``.tflite`` files.

    Raises:
        InputError: the file is not a model, has no config, or its input
            channels disagree with the configured modalities.
    """
    path = Path(path)
    if path.is_dir():
        return load_ensemble(path, precision=precision)
    if path.suffix.lower() == ".json":
        return load_manifest(path, precision=precision)
    if path.suffix.lower() == ".tflite":
        return _load_litert(path, threads)
    model = load_model(path)
    values = read_model_config(path)
    if values is None:
        raise InputError(f"{path}: holds no unet3d config and there is no config.json beside "
                         "it; the modality order cannot be known")
    config = TrainConfig.from_dict(values, source=f"{path} config")
    channels = model.input_shape[-1]
    if channels != len(config.modalities):
        raise InputError(f"{path}: the model takes {channels} input channels but its config "
                         f"lists {len(config.modalities)} modalities {list(config.modalities)}")
    if model.output_shape[-1] != config.model.out_channels:
        raise InputError(f"{path}: the model has {model.output_shape[-1]} outputs but its config "
                         f"says output mode {config.model.output_mode!r}")
    model = with_precision(model, config.model, precision)
    return Artifact(path=path, predict_fn=keras_predict_fn(model),
                       modalities=tuple(config.modalities), output_mode=config.model.output_mode,
                       stride=config.model.stride, base_filters=config.model.base_filters,
                       patch_size=tuple(config.patch_size),
                       label_convention=config.label_convention, precision=precision,
                       spatial_dims=config.model.spatial_dims, postprocessing=read_plan(path),
                       normalization=config.normalization)


ENSEMBLE_FIELDS = ("modalities", "output_mode", "label_convention", "spatial_dims",
                   "normalization")


def load_ensemble(folder: Path, precision: str = "fp32") -> Artifact:
    """The ``fold_*.keras`` models of ``folder`` as one artifact: probabilities averaged
    over the members; the post-processing plan is the members' (they must agree on it and
    on their inputs)."""
    members = sorted(folder.glob("fold_*.keras"))
    if not members:
        raise InputError(f"{folder}: is a folder without fold_<k>.keras models (a folder "
                         "model is their ensemble); expected a .keras or .tflite file, such "
                         "a folder or an ensemble .json file")
    return combine(folder, members, precision)


def load_manifest(path: Path, precision: str = "fp32") -> Artifact:
    """The ensemble a ``.json`` manifest names (:func:`read_manifest`). Its members may be
    different networks (widths, depths, input strides) trained on the same inputs; the
    plan is the ensemble's own, chosen on its out-of-fold predictions (without it, the
    members' plans, which must agree)."""
    members, plan = read_manifest(path)
    return combine(path, members, precision, plan)


def combine(source: Path, members: list[Path], precision: str = "fp32",
            plan: PostProcessing | None = None) -> Artifact:
    """``members`` as one artifact whose probabilities are the mean of theirs. They must
    take the same inputs and give the same outputs. Where their strides and windows
    differ the ensemble pads to the least common multiple of the strides and its window
    is the largest, rounded up to it; LiteRT files take one window only, so a member
    that is one fixes the stride and window every other member must have. The plan is
    ``plan``, else the members' one, on which they must then agree."""
    loaded = [load_artifact(member, precision=precision) for member in members]
    first = loaded[0]
    fixed = [m for m in loaded if m.fixed_window]
    for other in loaded[1:]:
        for name in ENSEMBLE_FIELDS:
            if getattr(other, name) != getattr(first, name):
                raise InputError(f"{other.path}: {name} {getattr(other, name)!r} differs from "
                                 f"{first.path}'s {getattr(first, name)!r}")
        if plan is None and other.postprocessing != first.postprocessing:
            raise InputError(f"{other.path}: its post-processing plan differs from "
                             f"{first.path}'s; store one plan in every member "
                             "(unet3d-campaign oof does)")
    for other in loaded:
        for name in ("stride", "patch_size") if fixed else ():
            if getattr(other, name) != getattr(fixed[0], name):
                raise InputError(f"{other.path}: {name} {getattr(other, name)!r} differs from "
                                 f"{fixed[0].path}'s {getattr(fixed[0], name)!r}, a LiteRT "
                                 "file that takes that window only")
    functions = [member.predict_fn for member in loaded]
    stride = math.lcm(*(member.stride for member in loaded))
    window = tuple(-(-max(sizes) // stride) * stride
                   for sizes in zip(*(member.patch_size for member in loaded), strict=True))

    def predict_fn(batch):
        total = functions[0](batch).astype("float32")
        for fn in functions[1:]:
            total += fn(batch)
        return total / len(functions)

    return Artifact(path=source, predict_fn=predict_fn, modalities=first.modalities,
                    output_mode=first.output_mode, stride=stride,
                    base_filters=max(m.base_filters for m in loaded),  # the members run in turn
                    patch_size=window, label_convention=first.label_convention,
                    spatial_dims=first.spatial_dims, fixed_window=bool(fixed),
                    precision="litert" if len(fixed) == len(loaded) else precision,
                    postprocessing=plan if plan is not None else first.postprocessing,
                    normalization=first.normalization, members=len(loaded))


def with_precision(model, model_config, precision: str):
    """``model`` itself if it already computes in ``precision``, else a rebuilt copy.

    What a model computes in is its layers' policies, not the model's own: a
    ``.keras`` file saved from a ``mixed_bfloat16`` model loads with a float32
    model-level policy while its layers still compute in bfloat16 (and the
    reverse), so the layers holding weights (convolutions, normalisations) are
    checked; layers pinned to float32 by the architecture (the output
    activation) hold none.

    A model trained in ``mixed_bfloat16`` keeps float32 variables, so the
    copy takes the same weights in either direction.
    """
    if computes_in(model, precision):
        return model
    with policy_scope(precision):
        rebuilt = build_unet3d(model_config, name=model.name)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def computes_in(model, precision: str) -> bool:
    """Whether every layer of ``model`` holding weights computes in ``precision``'s dtype."""
    wanted = keras.DTypePolicy(dtype_policy(precision)).compute_dtype
    weighted = [layer for layer in _leaf_layers(model) if layer.weights]
    return bool(weighted) and all(layer.dtype_policy.compute_dtype == wanted
                                  for layer in weighted)


def _leaf_layers(model):
    """The layers of ``model``, those of nested models included (not the models)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _load_litert(path: Path, threads: int) -> Artifact:
    if threads <= 0:
        raise InputError(f"--threads must be a positive integer, got {threads}")
    runner = LiteRTModel(path, threads=threads)
    if runner.config is None:
        raise InputError(f"{path}: no {report_path(path).name} beside it; the modality order "
                         "cannot be known (re-export with unet3d-export)")
    config = TrainConfig.from_dict(runner.config, source=f"{report_path(path)} config")
    if runner.channels != len(config.modalities):
        raise InputError(f"{path}: the model takes {runner.channels} input channels but its "
                         f"config lists {len(config.modalities)} modalities")
    return Artifact(path=path, predict_fn=runner.predict_fn,
                       modalities=tuple(config.modalities), output_mode=config.model.output_mode,
                       stride=config.model.stride, base_filters=config.model.base_filters,
                       patch_size=tuple(runner.window), label_convention=config.label_convention,
                       spatial_dims=len(runner.window), fixed_window=True, precision="litert",
                       postprocessing=read_plan(path), normalization=config.normalization)
