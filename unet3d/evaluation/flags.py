"""What a reviewer should look at in a segmentation: flags computed from the label map, the
scan and predict.py's report, each with the reason in words.

Every flag is a dict ``{"code": ..., "why": ...}``; :func:`case_flags` returns them in
the order of :data:`FLAG_CODES` (the most telling first).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

FAR_MM = 20.0  # a component this far from the largest one is flagged
FAR_MIN_VOXELS = 50  # smaller specks are not worth a reviewer's look
UNCERTAIN_FRACTION = 0.25  # share of the tumour's voxels with probability in (0.25, 0.75)

FLAG_CODES = ("no_tumour", "far_component", "touches_border", "no_enhancing",
              "low_confidence", "resampled", "reoriented")
_AXIS_NAMES = {"L": "left", "R": "right", "A": "anterior", "P": "posterior",
               "S": "superior", "I": "inferior"}


def far_components(wt: np.ndarray, spacing: Sequence[float], far_mm: float = FAR_MM,
                   min_voxels: int = FAR_MIN_VOXELS) -> list[tuple[int, float]]:
    """``(voxels, distance in mm)`` of each whole-tumour component (26-connected) of at
    least ``min_voxels`` whose nearest voxel lies more than ``far_mm`` from the largest
    component, largest first."""
    extent = _extent(wt)
    if extent is None:
        return []
    box = tuple(slice(lo, hi + 1) for lo, hi in extent)  # every component lies inside
    components, count = ndimage.label(wt[box], structure=np.ones((3, 3, 3), bool))
    if count < 2:
        return []
    sizes = np.bincount(components.ravel())[1:]
    largest = int(np.argmax(sizes)) + 1
    distance = ndimage.distance_transform_edt(components != largest,
                                              sampling=[float(s) for s in spacing[:3]])
    labels = np.arange(1, count + 1)
    nearest = ndimage.minimum(distance, components, labels)
    found = [(int(size), float(mm))
             for label, size, mm in zip(labels, sizes, nearest, strict=True)
             if label != largest and size >= min_voxels and mm > far_mm]
    return sorted(found, reverse=True)


def _extent(mask: np.ndarray) -> list[tuple[int, int]] | None:
    """First and last index along each axis where ``mask`` holds, or None if empty."""
    extent = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        where = np.flatnonzero(mask.any(axis=others))
        if where.size == 0:
            return None
        extent.append((int(where[0]), int(where[-1])))
    return extent


def border_sides(wt: np.ndarray, scan: np.ndarray, axes: str) -> list[str]:
    """The sides (``"superior"``, ...) where the tumour reaches the edge of the brain's
    bounding box (the scan's nonzero voxels), i.e. where it may continue outside the
    volume the model saw. ``axes``: the array axes' orientation codes (``"LPS"``)."""
    tumour, brain = _extent(wt), _extent(scan != 0)
    if tumour is None or brain is None:
        return []
    opposite = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}
    sides = []
    for axis, code in enumerate(axes[:3]):
        if tumour[axis][0] <= brain[axis][0]:  # index 0 end: away from ``code``
            sides.append(_AXIS_NAMES[opposite[code]])
        if tumour[axis][1] >= brain[axis][1]:
            sides.append(_AXIS_NAMES[code])
    return sides


def case_flags(classes: np.ndarray, scan: np.ndarray, spacing: Sequence[float], axes: str,
               report: dict[str, Any] | None = None) -> list[dict[str, str]]:
    """The flags of one case.

    Args:
        classes: `(X, Y, Z)` class map 0..3 (necrosis, edema, enhancing) on the scan's grid.
        scan: `(X, Y, Z)` one sequence on the same grid (zero outside the head).
        spacing: voxel size in mm.
        axes: orientation codes of the array axes (nibabel's ``aff2axcodes``), e.g. "LPS".
        report: predict.py's JSON report of the case, or None (geometry and model
            confidence are then unknown).
    """
    wt = classes > 0
    flags = []
    if not wt.any():
        flags.append({"code": "no_tumour", "why": "no tumour found: an empty label map"})
    far = far_components(wt, spacing)
    if far:
        what = ", ".join(f"{size:,} voxels at {mm:.0f} mm" for size, mm in far)
        flags.append({"code": "far_component",
                      "why": f"{len(far)} component{'s' * (len(far) > 1)} more than "
                             f"{FAR_MM:g} mm from the main tumour ({what}): a false positive?"})
    sides = border_sides(wt, scan, axes)
    if sides:
        flags.append({"code": "touches_border",
                      "why": f"the tumour reaches the edge of the brain's bounding box "
                             f"({', '.join(sides)}): it may continue outside the scan"})
    if wt.any() and not (classes == 3).any():
        flags.append({"code": "no_enhancing",
                      "why": "no enhancing tumour: a low-grade tumour, or check the T1ce"})
    report = report or {}
    uncertain = (report.get("confidence") or {}).get("uncertain_fraction")
    if uncertain is not None and uncertain > UNCERTAIN_FRACTION:
        flags.append({"code": "low_confidence",
                      "why": f"{uncertain:.0%} of the voxels the network gives a whole-tumour "
                             f"probability above 0.25 stay below 0.75 (flagged above "
                             f"{UNCERTAIN_FRACTION:.0%})"})
    geometry = report.get("geometry") or {}
    if geometry.get("resampled_to_mm"):
        spacing_in = "x".join(f"{s:g}" for s in geometry.get("spacing_mm", []))
        flags.append({"code": "resampled",
                      "why": f"the scan ({spacing_in} mm voxels) was resampled to "
                             f"{geometry['resampled_to_mm']:g} mm for the model and the result "
                             "back: borders are interpolated"})
    if geometry.get("reoriented_to"):
        flags.append({"code": "reoriented",
                      "why": f"the scan's axes ({geometry.get('axes')}) were reoriented to "
                             f"{geometry['reoriented_to']} for the model (exact, no "
                             "interpolation)"})
    return flags


def uncertain_fraction(p_wt: np.ndarray) -> float:
    """Share of the voxels with a whole-tumour probability above 0.25 whose probability
    stays below 0.75: 0 for a confident map, near 1 for a hesitant one."""
    candidate = p_wt > 0.25
    total = int(candidate.sum())
    return float((candidate & (p_wt < 0.75)).sum() / total) if total else 0.0
