"""Post-processing of predicted class maps, chosen on validation and stored with the model.

As nnU-Net does, the post-processing a model is used with is decided on its
validation cases and travels with the model file, so the same file gives the
same result wherever it is copied (:mod:`unet3d.artifacts.plan_file` stores it:
inside a ``.keras`` zip as ``unet3d_postprocessing.json``, and in a
``.tflite``'s ``.tflite.json`` report under ``"postprocessing"``).

Steps, in this order:

* whole tumor: keep the largest 26-connected component (nnU-Net's
  ``remove_all_but_largest_component``), or, milder, drop only components of
  fewer than ``min_component_voxels`` voxels and/or components farther than
  ``max_distance_mm`` from the largest one (false positives far from the
  tumor, while a tumor core split from its edema nearby survives);
* tumor core: keep its largest component, or drop its components under
  ``tc_min_component_voxels`` (the rest becomes edema);
* enhancing tumor: keep its largest component, or drop its components under
  ``et_min_component_voxels`` (the rest becomes necrosis);
* relabel an enhancing tumor of fewer than ``et_min_voxels`` voxels as
  necrosis (Isensee et al., BraTS 2018: a handful of ET voxels in a case with
  none costs a Dice of 0).

:func:`choose` decides the steps one after the other as nnU-Net does: each
is kept only where it raises the mean Dice of the cases it is chosen on
(ideally out-of-fold predictions of every training case). ``unet3d-postprocess
--model M --data DIR --cases ...`` runs it on the given validation cases and,
with ``--write``, stores the result in the model file (and in the ``.tflite``
exports named with ``--also``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from data_generators.labels import CLASSES, REGIONS, classes_to_regions
from unet3d.components import (
    keep_largest_component,
    keep_largest_of,
    remove_distant_components,
    remove_small_components,
    remove_small_of,
)
from unet3d.evaluation.scores import region_dice
from unet3d_base.errors import InputError

ET_THRESHOLDS = (0, 200, 500, 1000)
MIN_COMPONENT_SIZES = (1000, 5000, 20000)
MAX_DISTANCES_MM = (40.0, 20.0, 10.0)  # mildest first, as the sizes: ties keep the mildest
REGION_MIN_SIZES = (10, 50, 200)  # TC / ET specks: components under these many voxels


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
        max_distance_mm: float, default 0. Tumor components whose nearest
            voxel lies farther than this from the largest component are
            removed (the model's 1 mm grid); 0 keeps them all.
        tc_largest_component: bool, default False. Keep only the largest
            tumor-core component; other core voxels become edema.
        et_largest_component: bool, default False. Keep only the largest
            enhancing component; other enhancing voxels become necrosis.
        tc_min_component_voxels: int, default 0. Tumor-core components smaller
            than this become edema; 0 keeps them all.
        et_min_component_voxels: int, default 0. Enhancing components smaller
            than this become necrosis; 0 keeps them all.
        chosen_on: list of str. Validation case ids the plan was chosen on.
        scores: dict. Mean validation Dice per candidate, for the record.
        mirroring: bool, default False. The network's output is the mean over the
            input's axis mirrorings (test-time augmentation, as nnU-Net's): the
            prediction the plan was chosen on, and ``predict.py``'s default for the
            model (``--tta`` / ``--no-tta`` override it).
    """

    largest_component: bool = False
    et_min_voxels: int = 500
    min_component_voxels: int = 0
    max_distance_mm: float = 0.0
    tc_largest_component: bool = False
    et_largest_component: bool = False
    tc_min_component_voxels: int = 0
    et_min_component_voxels: int = 0
    chosen_on: list[str] = field(default_factory=list)
    scores: dict[str, Any] = field(default_factory=dict)
    mirroring: bool = False

    def apply(self, classes: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The post-processed class map and what changed."""
        removed, relabelled = 0, False
        if self.largest_component:
            classes, removed = keep_largest_component(classes)
        else:
            if self.min_component_voxels > 0:
                classes, removed = remove_small_components(classes, self.min_component_voxels)
            if self.max_distance_mm > 0:
                classes, far = remove_distant_components(classes, self.max_distance_mm)
                removed += far
        core = (CLASSES.index("necrosis"), CLASSES.index("enhancing"))
        if self.tc_largest_component:
            classes = keep_largest_of(classes, core, CLASSES.index("edema"))
        elif self.tc_min_component_voxels > 0:
            classes = remove_small_of(classes, core, CLASSES.index("edema"),
                                      self.tc_min_component_voxels)
        if self.et_largest_component:
            classes = keep_largest_of(classes, (CLASSES.index("enhancing"),),
                                      CLASSES.index("necrosis"))
        elif self.et_min_component_voxels > 0:
            classes = remove_small_of(classes, (CLASSES.index("enhancing"),),
                                      CLASSES.index("necrosis"), self.et_min_component_voxels)
        if self.et_min_voxels > 0:
            classes, relabelled = suppress_small_enhancing(classes, self.et_min_voxels)
        return classes, {"components_removed": removed, "small_enhancing_relabelled": relabelled}

    def describe(self) -> str:
        if self.largest_component:
            parts = ["largest component"]
        elif self.min_component_voxels or self.max_distance_mm:
            parts = []
            if self.min_component_voxels:
                parts.append(f"components >= {self.min_component_voxels} voxels")
            if self.max_distance_mm:
                parts.append(f"components within {self.max_distance_mm:g} mm of the largest")
        else:
            parts = ["all components"]
        if self.tc_largest_component:
            parts.append("largest TC component")
        elif self.tc_min_component_voxels:
            parts.append(f"TC components >= {self.tc_min_component_voxels} voxels")
        if self.et_largest_component:
            parts.append("largest ET component")
        elif self.et_min_component_voxels:
            parts.append(f"ET components >= {self.et_min_component_voxels} voxels")
        parts.append(f"ET < {self.et_min_voxels} voxels -> necrosis" if self.et_min_voxels
                     else "no ET relabelling")
        if self.mirroring:
            parts.insert(0, "mirrored inputs averaged")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> PostProcessing:
        try:
            plan = cls(**values)
        except TypeError as err:
            raise InputError(f"{source}: not a post-processing plan ({err})") from None
        for name in ("et_min_voxels", "min_component_voxels", "tc_min_component_voxels",
                     "et_min_component_voxels"):
            value = getattr(plan, name)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"{source}: {name} must be an integer >= 0")
        if not isinstance(plan.max_distance_mm, int | float) or plan.max_distance_mm < 0:
            raise InputError(f"{source}: max_distance_mm must be a number >= 0")
        if not isinstance(plan.mirroring, bool):
            raise InputError(f"{source}: mirroring must be true or false")
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


def candidates() -> list[PostProcessing]:
    """The whole-tumor rules tried first: all components, small ones dropped, distant ones
    dropped, or the largest only (ET relabelling off)."""
    rules = [PostProcessing(et_min_voxels=0)]
    rules += [PostProcessing(et_min_voxels=0, min_component_voxels=size)
              for size in MIN_COMPONENT_SIZES]
    rules += [PostProcessing(et_min_voxels=0, max_distance_mm=d) for d in MAX_DISTANCES_MM]
    rules.append(PostProcessing(largest_component=True, et_min_voxels=0))
    return rules


def _score(plan: PostProcessing, class_maps: dict[str, np.ndarray],
           truth_regions: dict[str, np.ndarray]) -> dict[str, float]:
    dice = []
    for case_id, classes in class_maps.items():
        processed, _ = plan.apply(classes)
        dice.append(region_dice(classes_to_regions(processed).astype(bool),
                                truth_regions[case_id]))
    means = dict(zip(REGIONS, np.mean(dice, axis=0).tolist(), strict=True))
    means["mean"] = float(np.mean([means[r] for r in REGIONS]))
    return means


def choose(class_maps: dict[str, np.ndarray], truths: dict[str, np.ndarray]
           ) -> tuple[PostProcessing, dict[str, dict[str, float]]]:
    """Decides the post-processing one step at a time, as nnU-Net does.

    1. the whole-tumor rule among :func:`candidates` with the best mean Dice
       (WT, TC, ET averaged);
    2. then, for the tumor core, its largest component only or its components
       under :data:`REGION_MIN_SIZES` voxels dropped, kept only if it raises
       the mean;
    3. then the same for the enhancing tumor;
    4. then the small-ET threshold among :data:`ET_THRESHOLDS`, likewise.

    Ties go to the earlier, simpler choice: a step is taken only where it
    raises the mean Dice. Returns the plan (with its cases and scores
    recorded) and the mean Dice per region of every plan scored, by its
    description.
    """

    truth_regions = {case_id: classes_to_regions(truths[case_id]).astype(bool)
                     for case_id in class_maps}
    table: dict[str, dict[str, float]] = {}

    def best_of(plans: list[PostProcessing]) -> PostProcessing:
        best, best_score = None, -1.0
        for plan in plans:
            key = plan.describe()
            if key not in table:
                table[key] = _score(plan, class_maps, truth_regions)
            means = table[key]
            if means["mean"] > best_score + 1e-9:
                best, best_score = plan, means["mean"]
        assert best is not None
        return best

    plan = best_of(candidates())
    plan = best_of([plan, *(replace(plan, tc_min_component_voxels=n) for n in REGION_MIN_SIZES),
                    replace(plan, tc_largest_component=True)])
    plan = best_of([plan, *(replace(plan, et_min_component_voxels=n) for n in REGION_MIN_SIZES),
                    replace(plan, et_largest_component=True)])
    plan = best_of([replace(plan, et_min_voxels=t) for t in ET_THRESHOLDS])
    chosen = replace(plan, chosen_on=sorted(class_maps), scores=table)
    return chosen, table
