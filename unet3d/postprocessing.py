"""Post-processing of predicted class maps, chosen on validation and stored with the model.

As nnU-Net does, the post-processing a model is used with is decided on its
validation cases and travels with the model file, so the same file gives the
same result wherever it is copied: inside a ``.keras`` zip as
``unet3d_postprocessing.json``, and in a ``.tflite``'s ``.tflite.json``
report under ``"postprocessing"``.

Steps, in this order:

* keep the largest 26-connected whole-tumor component (nnU-Net's
  ``remove_all_but_largest_component``), or, milder, drop only components of
  fewer than ``min_component_voxels`` voxels (scattered false positives far
  from the tumor, while a tumor core split from its edema survives);
* relabel an enhancing tumor of fewer than ``et_min_voxels`` voxels as
  necrosis (Isensee et al., BraTS 2018: a handful of ET voxels in a case with
  none costs a Dice of 0).

``unet3d-postprocess --model M --data DIR --cases ...`` scores
every candidate on the given validation cases and, with ``--write``, stores
the best in the model file (and in the ``.tflite`` exports named with
``--also``).
"""

from __future__ import annotations

import itertools
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from data_generators.errors import InputError
from data_generators.fileio import atomic_path, atomic_write_text
from data_generators.labels import CLASSES, REGIONS, classes_to_regions
from unet3d.evaluation.scores import region_dice

ENTRY = "unet3d_postprocessing.json"
ET_THRESHOLDS = (0, 200, 500, 1000)
MIN_COMPONENT_SIZES = (1000, 5000, 20000)


@dataclass(frozen=True)
class PostProcessing:
    """A post-processing plan.

    Args:
        largest_component: bool, default False. Keep only the largest
            26-connected tumor component.
        et_min_voxels: int, default 500. Fewer enhancing voxels than this
            become necrosis; 0 turns the rule off.
        min_component_voxels: int, default 0. Tumor components smaller than
            this are removed; 0 keeps them all.
        chosen_on: list of str. Validation case ids the plan was chosen on.
        scores: dict. Mean validation Dice per candidate, for the record.
    """

    largest_component: bool = False
    et_min_voxels: int = 500
    min_component_voxels: int = 0
    chosen_on: list[str] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)

    def apply(self, classes: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The post-processed class map and what changed."""
        removed, relabelled = 0, False
        if self.largest_component:
            classes, removed = keep_largest_component(classes)
        elif self.min_component_voxels > 0:
            classes, removed = remove_small_components(classes, self.min_component_voxels)
        if self.et_min_voxels > 0:
            classes, relabelled = suppress_small_enhancing(classes, self.et_min_voxels)
        return classes, {"components_removed": removed, "small_enhancing_relabelled": relabelled}

    def describe(self) -> str:
        if self.largest_component:
            parts = ["largest component"]
        elif self.min_component_voxels:
            parts = [f"components >= {self.min_component_voxels} voxels"]
        else:
            parts = ["all components"]
        parts.append(f"ET < {self.et_min_voxels} voxels -> necrosis" if self.et_min_voxels
                     else "no ET relabelling")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> PostProcessing:
        try:
            plan = cls(**values)
        except TypeError as err:
            raise InputError(f"{source}: not a post-processing plan ({err})") from None
        for name in ("et_min_voxels", "min_component_voxels"):
            value = getattr(plan, name)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"{source}: {name} must be an integer >= 0")
        return plan


def suppress_small_enhancing(classes: np.ndarray, min_voxels: int) -> tuple[np.ndarray, bool]:
    """Isensee et al.'s BraTS 2018 rule: fewer than ``min_voxels`` ET voxels become necrosis."""
    enhancing = classes == CLASSES.index("enhancing")
    count = int(enhancing.sum())
    if 0 < count < min_voxels:
        classes = classes.copy()
        classes[enhancing] = CLASSES.index("necrosis")
        return classes, True
    return classes, False


def tumor_components(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """The 26-connected whole-tumor components: a label map and their count."""
    return ndimage.label(classes > 0, structure=np.ones((3, 3, 3), bool))


def keep_largest_component(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """Zeroes every tumor voxel outside the largest 26-connected whole-tumor component.

    Returns:
        The class map and the number of components removed.
    """
    components, count = tumor_components(classes)
    if count <= 1:
        return classes, 0
    largest = 1 + int(np.argmax(np.bincount(components.ravel())[1:]))
    return np.where(components == largest, classes, 0).astype(classes.dtype), count - 1


def remove_small_components(classes: np.ndarray, min_voxels: int) -> tuple[np.ndarray, int]:
    """Zeroes every 26-connected tumor component of fewer than ``min_voxels`` voxels.

    Returns:
        The class map and the number of components removed.
    """
    components, count = tumor_components(classes)
    if count == 0:
        return classes, 0
    sizes = np.bincount(components.ravel())
    small = np.flatnonzero(sizes < min_voxels)
    small = small[small > 0]
    if small.size == 0:
        return classes, 0
    return np.where(np.isin(components, small), 0, classes).astype(classes.dtype), int(small.size)


def read_plan(model_path: str | Path) -> PostProcessing | None:
    """The plan stored with a ``.keras`` or ``.tflite`` model, or None."""
    path = Path(model_path)
    if path.suffix.lower() == ".tflite":
        from unet3d.artifacts.litert_file import report_path  # artifacts imports this module

        report = report_path(path)
        if not report.is_file():
            return None
        try:
            values = json.loads(report.read_text()).get("postprocessing")
        except (json.JSONDecodeError, AttributeError):
            return None
        return PostProcessing.from_dict(values, str(report)) if values else None
    try:
        with zipfile.ZipFile(path) as archive:
            if ENTRY not in archive.namelist():
                return None
            values = json.loads(archive.read(ENTRY))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError):
        return None
    return PostProcessing.from_dict(values, f"{path} [{ENTRY}]")


def write_plan(model_path: str | Path, plan: PostProcessing) -> None:
    """Stores ``plan`` with the model, replacing any earlier one, atomically."""
    path = Path(model_path)
    if path.suffix.lower() == ".tflite":
        from unet3d.artifacts.litert_file import report_path  # artifacts imports this module

        report = report_path(path)
        values = json.loads(report.read_text()) if report.is_file() else {}
        values["postprocessing"] = plan.to_dict()
        atomic_write_text(report, json.dumps(values, indent=2) + "\n")
        return
    with zipfile.ZipFile(path) as source, atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if item.filename != ENTRY:
                    target.writestr(item, source.read(item.filename))
            target.writestr(ENTRY, json.dumps(plan.to_dict(), indent=2) + "\n")


def candidates() -> list[PostProcessing]:
    """Every plan tried: all components, small ones dropped, or the largest only, x ET
    thresholds."""
    components = [(False, 0), *((False, size) for size in MIN_COMPONENT_SIZES), (True, 0)]
    return [PostProcessing(largest_component=lc, et_min_voxels=t, min_component_voxels=size)
            for (lc, size), t in itertools.product(components, ET_THRESHOLDS)]


def choose(class_maps: dict[str, np.ndarray], truths: dict[str, np.ndarray]
           ) -> tuple[PostProcessing, dict[str, dict[str, float]]]:
    """The candidate with the best mean validation Dice (WT, TC, ET averaged).

    Ties go to the earlier, simpler candidate. Returns the plan (with its
    cases and scores recorded) and the mean Dice per region of every
    candidate.
    """

    truth_regions = {case_id: classes_to_regions(truths[case_id]).astype(bool)
                     for case_id in class_maps}
    table: dict[str, dict[str, float]] = {}
    best, best_score = None, -1.0
    for plan in candidates():
        dice = []
        for case_id, classes in class_maps.items():
            processed, _ = plan.apply(classes)
            pred = classes_to_regions(processed).astype(bool)
            dice.append(region_dice(pred, truth_regions[case_id]))
        means = dict(zip(REGIONS, np.mean(dice, axis=0).tolist(), strict=True))
        means["mean"] = float(np.mean([means[r] for r in REGIONS]))
        table[plan.describe()] = means
        if means["mean"] > best_score + 1e-9:
            best, best_score = plan, means["mean"]
    assert best is not None
    chosen = PostProcessing(best.largest_component, best.et_min_voxels,
                            best.min_component_voxels, chosen_on=sorted(class_maps), scores=table)
    return chosen, table
