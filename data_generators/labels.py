"""BraTS label conventions and their conversion to and from tumor regions.

This module is the only place that knows which integer means which tissue.

Conventions (background is always 0):

* ``brats2017`` (BraTS 2017-2021): 1 necrosis / non-enhancing core, 2 edema,
  4 enhancing tumor.
* ``brats2023`` (BraTS 2023+): as above but enhancing tumor is 3.
* ``msd`` (Medical Segmentation Decathlon Task01_BrainTumour): 1 edema,
  2 non-enhancing tumor, 3 enhancing tumor.

Regions, in channel order ``REGIONS``: whole tumor (WT, every tumor label),
tumor core (TC, core + enhancing) and enhancing tumor (ET).

Classes (the ``labels`` output mode) are convention-free indices:
0 background, 1 necrosis / non-enhancing core, 2 edema, 3 enhancing.
"""

from __future__ import annotations

import numpy as np

# the four BraTS sequences, in channel order
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
CLASSES: tuple[str, ...] = ("background", "necrosis", "edema", "enhancing")

# tissue name -> label value, per convention
CONVENTIONS: dict[str, dict[str, int]] = {
    "brats2017": {"necrosis": 1, "edema": 2, "enhancing": 4},
    "brats2023": {"necrosis": 1, "edema": 2, "enhancing": 3},
    "msd": {"edema": 1, "necrosis": 2, "enhancing": 3},
}
_ALIASES = {
    **{str(year): "brats2017" for year in range(2017, 2022)},
    **{str(year): "brats2023" for year in range(2023, 2031)},
    "brats2018": "brats2017",
    "brats2019": "brats2017",
    "brats2020": "brats2017",
    "brats2021": "brats2017",
    "decathlon": "msd",
}

# which tissues make up each region
_REGION_TISSUES = {
    "WT": ("necrosis", "edema", "enhancing"),
    "TC": ("necrosis", "enhancing"),
    "ET": ("enhancing",),
}


# display colours (RGB) of the classes necrosis, edema, enhancing: the BraTS figures' red,
# green and yellow
CLASS_COLOURS = {1: (230, 40, 40), 2: (40, 200, 60), 3: (255, 220, 0)}


def resolve_convention(name: str) -> str:
    """Returns the canonical convention name for ``name`` or an alias (``"2021"``).

    Raises:
        ValueError: for an unknown convention.
    """
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in CONVENTIONS:
        known = ", ".join(sorted(CONVENTIONS) + sorted(_ALIASES))
        raise ValueError(f"unknown label convention {name!r} (known: {known})")
    return key


def allowed_labels(convention: str = "brats2017") -> tuple[int, ...]:
    """The label values that may appear in a label map, background included."""
    table = CONVENTIONS[resolve_convention(convention)]
    return (0, *sorted(table.values()))


def check_labels(label_map: np.ndarray, convention: str = "brats2017") -> None:
    """Raises ``ValueError`` naming the values not allowed in ``convention``."""
    allowed = allowed_labels(convention)
    flat = np.asarray(label_map).ravel()
    if flat.dtype.kind in "iu" and flat.size and flat.min() >= 0 and flat.max() < 2**16:
        values = np.flatnonzero(np.bincount(flat))  # integer maps: a count, not a sort
    else:
        values = np.unique(flat)
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        raise ValueError(
            f"label values {shown} are not in the {resolve_convention(convention)} "
            f"convention (allowed: {', '.join(map(str, allowed))})"
        )


def labels_to_classes(label_map: np.ndarray, convention: str = "brats2017") -> np.ndarray:
    """Maps a label map to class indices 0..3 (``CLASSES`` order), as uint8."""
    check_labels(label_map, convention)
    table = CONVENTIONS[resolve_convention(convention)]
    classes = np.zeros(label_map.shape, dtype=np.uint8)
    for index, tissue in enumerate(CLASSES[1:], start=1):
        classes[label_map == table[tissue]] = index
    return classes


def classes_to_labels(classes: np.ndarray, convention: str = "brats2017") -> np.ndarray:
    """Inverse of :func:`labels_to_classes`; returns uint8 labels."""
    classes = np.asarray(classes)
    if classes.size and (classes.min() < 0 or classes.max() >= len(CLASSES)):
        raise ValueError(f"class indices must lie in 0..{len(CLASSES) - 1}")
    table = CONVENTIONS[resolve_convention(convention)]
    lookup = np.array([0] + [table[t] for t in CLASSES[1:]], dtype=np.uint8)
    return lookup[classes.astype(np.intp)]


def classes_to_regions(classes: np.ndarray) -> np.ndarray:
    """Class indices (..., ) -> multi-hot regions (..., 3) as uint8."""
    classes = np.asarray(classes)
    out = np.zeros(classes.shape + (len(REGIONS),), dtype=np.uint8)
    for channel, region in enumerate(REGIONS):
        members = [CLASSES.index(t) for t in _REGION_TISSUES[region]]
        out[..., channel] = np.isin(classes, members)
    return out


def labels_to_regions(label_map: np.ndarray, convention: str = "brats2017") -> np.ndarray:
    """Label map (...) -> multi-hot regions (..., 3) [WT, TC, ET] as uint8.

    Raises:
        ValueError: if the map holds a value outside ``convention``.
    """
    return classes_to_regions(labels_to_classes(label_map, convention))


def regions_to_classes(regions: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Regions (..., 3) -> class indices, nested as the challenge defines them.

    Enhancing where ET, else necrosis / core where TC, else edema where WT,
    else background. ``regions`` may be probabilities; they are thresholded.
    """
    regions = np.asarray(regions)
    if regions.shape[-1] != len(REGIONS):
        raise ValueError(f"regions need {len(REGIONS)} channels, got shape {regions.shape}")
    on = regions > threshold if regions.dtype.kind == "f" else regions.astype(bool)
    classes = np.zeros(regions.shape[:-1], dtype=np.uint8)
    classes[on[..., 0]] = CLASSES.index("edema")
    classes[on[..., 1]] = CLASSES.index("necrosis")
    classes[on[..., 2]] = CLASSES.index("enhancing")
    return classes


def regions_to_labels(
    regions: np.ndarray, convention: str = "brats2017", threshold: float = 0.5
) -> np.ndarray:
    """Regions (..., 3) -> label map in ``convention`` (see regions_to_classes)."""
    return classes_to_labels(regions_to_classes(regions, threshold), convention)
