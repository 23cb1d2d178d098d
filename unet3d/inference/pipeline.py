"""End-to-end prediction of one case: files in, a NIfTI label map in the input's space out."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.geometry import load_case_for_model
from data_generators.labels import (
    REGIONS,
    classes_to_labels,
    classes_to_regions,
    regions_to_classes,
    resolve_convention,
)
from data_generators.layouts import Layout, layout_of
from data_generators.preprocessing import preprocess_case, uncrop
from unet3d.artifacts import Artifact
from unet3d.evaluation.flags import uncertain_fraction
from unet3d.evaluation.scores import dice
from unet3d.inference.allocators import return_freed_heap_tops
from unet3d.inference.predictor import WindowPredictor
from unet3d.inference.report import preview_montage, region_mesh, region_volumes, write_mesh
from unet3d.models.forward import memory_saving
from unet3d.postprocessing import PostProcessing
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_write_text


@dataclass(frozen=True)
class PredictSettings:
    """Options of ``predict.py`` that shape the output.

    Args:
        labels: str, default "brats2017". Label convention of the written map.
        tta: bool or None. Mirroring test-time augmentation; None: the model's stored
            plan (:attr:`unet3d.postprocessing.PostProcessing.mirroring`), else off.
        mode: str, default "auto". ``whole``, ``sliding`` or ``auto``.
        patch_size: tuple of int or None. Sliding window: one size for every axis,
            or one per axis of the network (3, or 2 for a slice network); None: the model's
            training patch size.
        overlap: float, default 0.5.
        postprocess: bool, default True. False: no post-processing at all.
        et_min_voxels: int or None. Enhancing tumors below this many voxels
            become necrosis (Isensee et al., BraTS 2018); None: the model's
            stored plan (:mod:`unet3d.postprocessing`), else 500.
        largest_component: bool or None. Keep only the largest connected
            tumor component (26-connected), as nnU-Net's post-processing
            does when it helps on validation; None: the model's stored plan,
            else off.
        preview: bool, default False. Write a PNG montage.
        mesh: str or None. ``stl`` or ``obj``: a surface mesh per region.
        threads: int, default 2. LiteRT interpreter threads.
        overwrite: bool, default False. Replace existing outputs.
        max_memory_gb: float, default 4.0. Above this, ``auto`` slides.
    """

    labels: str = "brats2017"
    tta: bool | None = None
    mode: str = "auto"
    patch_size: tuple[int, ...] | None = None
    overlap: float = 0.5
    postprocess: bool = True
    et_min_voxels: int | None = None
    largest_component: bool | None = None
    preview: bool = False
    mesh: str | None = None
    overwrite: bool = False
    max_memory_gb: float = 4.0
    threads: int = 2


def probabilities_to_classes(probs: np.ndarray, output_mode: str) -> np.ndarray:
    """Model output `(X, Y, Z, K)` -> class indices (ET > TC > WT nesting for regions)."""
    if output_mode == "regions":
        return regions_to_classes(probs)
    return np.argmax(probs, axis=-1).astype(np.uint8)


def resolve_plan(stored: PostProcessing | None, settings: PredictSettings
                 ) -> tuple[PostProcessing, str]:
    """The plan a prediction applies and where it came from (options > model > defaults)."""
    if not settings.postprocess:
        return PostProcessing(largest_component=False, et_min_voxels=0), "off (--no-postprocess)"
    plan, source = (stored, "model") if stored is not None else (PostProcessing(), "default")
    if settings.largest_component is not None or settings.et_min_voxels is not None:
        lc = plan.largest_component if settings.largest_component is None \
            else settings.largest_component
        et = plan.et_min_voxels if settings.et_min_voxels is None else settings.et_min_voxels
        plan, source = PostProcessing(largest_component=lc, et_min_voxels=et,
                                      min_component_voxels=plan.min_component_voxels), "options"
    return plan, source


def resolve_tta(stored: PostProcessing | None, settings: PredictSettings) -> bool:
    """Whether the mirrorings are averaged: ``--tta`` / ``--no-tta``, else the model's
    stored plan, else not."""
    if settings.tta is not None:
        return settings.tta
    return bool(stored is not None and stored.mirroring)


def output_paths(out_dir: Path, case_dir: Path, settings: PredictSettings,
                 layout: Layout | None = None) -> dict[str, Path]:
    """Every file written for the case in ``case_dir``, keyed by kind; ``segmentation`` is
    its layout's prediction file (the last of them, for one written per slice)."""
    case_id = Path(case_dir).name
    layout = layout or layout_of(case_dir)
    paths = {"segmentation": layout.segmentation_path(out_dir, Path(case_dir)),
             "report": out_dir / f"{case_id}.json"}
    if settings.preview:
        paths["preview"] = out_dir / f"{case_id}_preview.png"
    if settings.mesh:
        for region in REGIONS:
            paths[f"mesh_{region}"] = out_dir / f"{case_id}_{region}.{settings.mesh}"
    return paths


def is_complete(paths: dict[str, Path]) -> bool:
    """Whether a case's outputs are all there: its segmentation and, written last, its report."""
    return paths["segmentation"].exists() and paths["report"].exists()


@dataclass
class Segmentation:
    """A case segmented in the model's space (:func:`segment_in_model_space`)."""

    classes: np.ndarray  # class indices on the model's grid (LPS, 1 mm), post-processed
    plan: PostProcessing
    plan_source: str
    changes: dict[str, Any]
    confidence: dict[str, float]
    mode: str  # "whole" or "sliding"
    tta: bool = False  # whether the mirrorings were averaged


def check_patch_size(model: Artifact, settings: PredictSettings) -> tuple[int, ...]:
    """The sliding-window size ``settings`` asks of ``model``, one size per axis.

    Raises:
        InputError: a size count or size the network cannot take.
    """
    patch_size = tuple(settings.patch_size or model.patch_size)
    if len(patch_size) == 1:  # one size for every axis of the network
        patch_size *= model.spatial_dims
    if len(patch_size) != model.spatial_dims:
        raise InputError(f"--patch-size {' '.join(map(str, patch_size))}: the {model.path.name} "
                         f"network is {model.spatial_dims}D, give 1 or {model.spatial_dims} sizes")
    if any(p % model.stride for p in patch_size):
        raise InputError(f"--patch-size {patch_size} is not divisible by the "
                         f"network's stride {model.stride}")
    if model.fixed_window and patch_size != tuple(model.patch_size):
        raise InputError(f"{model.path}: takes {model.patch_size} windows only, not "
                         f"--patch-size {patch_size}")
    return patch_size


@dataclass
class Cropped:
    """A case's image cropped to the brain and normalised, as the network sees it."""

    image: np.ndarray  # (x, y, z, C) float32
    box: tuple[slice, ...]  # where it lies on the model's grid
    grid_shape: tuple[int, int, int]  # the model's grid (LPS, 1 mm)


def crop_for_model(image: np.ndarray, model: Artifact, source: str) -> Cropped:
    """Crops ``image`` (`(X, Y, Z, C)` on the model's grid, in the model's modality order,
    :func:`data_generators.geometry.load_case_for_model`) to the brain and normalises it
    as in training. The caller may free ``image`` afterwards.

    Raises:
        InputError: no brain in the image (``source`` names it).
    """
    try:
        cropped, _, box = preprocess_case(image, None, model.normalization)
    except ValueError as err:
        raise InputError(f"{source}: {err}") from None
    return Cropped(cropped, box, tuple(image.shape[:3]))


def segment_cropped(cropped: Cropped, model: Artifact, settings: PredictSettings
                    ) -> Segmentation:
    """Runs the network on a :class:`Cropped` image, turns its output into classes,
    post-processes them and un-crops them onto the model's grid. ``cropped.image`` is
    released as soon as the network has run.

    Raises:
        InputError: settings the model cannot take, or a pass that cannot fit in memory.
    """
    patch_size = check_patch_size(model, settings)
    tta = resolve_tta(model.postprocessing, settings)
    predictor = WindowPredictor(model.predict_fn, stride=model.stride, patch_size=patch_size,
                                overlap=settings.overlap,
                                mode="sliding" if model.fixed_window else settings.mode,
                                tta=tta, base_filters=model.base_filters,
                                max_memory_gb=settings.max_memory_gb,
                                spatial_dims=model.spatial_dims)
    mode = predictor.resolved_mode(cropped.image.shape)
    handed, cropped.image = [cropped.image], None  # freed once padded (whole volume)
    probs = predictor(handed)
    classes = probabilities_to_classes(probs, model.output_mode)
    # how sure the network is of its whole tumour (the review page flags hesitant maps)
    p_wt = probs[..., 0] if model.output_mode == "regions" else 1.0 - probs[..., 0]
    confidence = {"uncertain_fraction": round(uncertain_fraction(p_wt), 4)}
    del p_wt, probs
    plan, plan_source = resolve_plan(model.postprocessing, settings)
    classes, changes = plan.apply(classes)
    return Segmentation(uncrop(classes, cropped.box, cropped.grid_shape), plan, plan_source,
                        changes, confidence, mode, tta)


def predict_case(case_dir: str | Path, out_dir: str | Path, model: Artifact,
                 settings: PredictSettings) -> dict[str, Any]:
    """Segments one case folder and writes its outputs; returns the JSON report.

    Steps: find and load the modalities in the model's order, bring them to
    the model's space (LPS axes, 1 mm: :mod:`data_generators.geometry`), crop
    to the brain and z-score (as in training), predict, turn regions into
    labels, post-process, un-crop, map back onto exactly the input's grid and
    write the label map with the T1's header and affine. Every file is
    written atomically; the report last.

    Raises:
        InputError: unusable input files, or outputs that exist without
            ``overwrite``.
    """

    start = time.perf_counter()
    out_dir = Path(out_dir)
    layout = layout_of(case_dir)
    case = layout.find_case(Path(case_dir), model.modalities, require_label=False)
    if layout.slices and model.spatial_dims != 2:
        raise InputError(f"{case_dir}: {layout.title} need a 2D network, not "
                         f"{model.path.name}")
    paths = output_paths(out_dir, Path(case_dir), settings, layout)
    # the report is written last: a case with it and its segmentation is complete; the
    # outputs of a case without them were left by an interrupted run, and are replaced
    if is_complete(paths) and not settings.overwrite:
        raise InputError(f"{paths['segmentation']}: exists; pass --overwrite to replace it")
    if memory_saving():  # the loader's threads free their read buffers for good
        return_freed_heap_tops()
    if not layout.own_masks:  # a BraTS folder's label map is scored by --gt, not read here
        case = replace(case, label=None)
    image, truth, properties, geometry = load_case_for_model(case)  # LPS, 1 mm
    # only the preview needs the raw scan
    flair = model.modalities.index("flair") if "flair" in model.modalities else -1
    preview_image = image[..., flair].copy() if settings.preview else None
    cropped = crop_for_model(image, model, str(case.images[0]))
    del image  # freed: it does not add to the network's peak
    loaded = time.perf_counter()
    seg = segment_cropped(cropped, model, settings)
    plan, plan_source, mode = seg.plan, seg.plan_source, seg.mode
    in_model_space = seg.classes
    full = geometry.labels_from_model(in_model_space)  # exactly onto the input's grid
    network = time.perf_counter()

    labels = classes_to_labels(full, resolve_convention(settings.labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    layout.save(full, labels, case, properties, out_dir)
    if settings.preview:
        preview_montage(preview_image, in_model_space, paths["preview"])  # axial: LPS z
    if settings.mesh:
        affine = np.asarray(properties["affine"])
        regions = classes_to_regions(full)
        for index, region in enumerate(REGIONS):
            verts, faces = region_mesh(regions[..., index], affine)
            write_mesh(verts, faces, paths[f"mesh_{region}"])
    written = time.perf_counter()

    report = {
        "case_id": case.case_id,
        "inputs": [str(p) for p in case.images],
        "segmentation": str(paths["segmentation"]),
        "label_convention": resolve_convention(settings.labels),
        "spacing_mm": properties["spacing"],
        "geometry": properties["geometry"],
        "volumes": region_volumes(full, properties["spacing"]),
        **({"dice_wt_vs_masks": dice(full > 0, geometry.labels_from_model(truth) > 0)}
           if truth is not None else {}),
        **seg.changes,
        "confidence": seg.confidence,
        "postprocessing": {**{k: v for k, v in plan.to_dict().items()
                              if k not in ("chosen_on", "scores")},
                           "source": plan_source, "rules": plan.describe()},
        "model": {"path": str(model.path), "modalities": list(model.modalities),
                  "output_mode": model.output_mode,
                  "precision": model.precision},
        "settings": {**asdict(settings), "resolved_mode": mode, "resolved_tta": seg.tta},
        "runtime_s": {"load_preprocess": loaded - start, "network": network - loaded,
                      "write": written - network, "total": written - start},
    }
    atomic_write_text(paths["report"], json.dumps(report, indent=2) + "\n")  # last: case done
    return report
