"""Connected components of predicted class maps: the operations post-processing is made of.

Components are 26-connected (``np.ones((3, 3, 3))``), as nnU-Net's
``remove_all_but_largest_component``. :class:`unet3d.postprocessing.PostProcessing`
decides which of them a model's plan applies.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def tumor_components(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """The 26-connected whole-tumor components: a label map and their count."""
    return ndimage.label(classes > 0, structure=np.ones((3, 3, 3), bool))


def largest_label(components: np.ndarray) -> int:
    """The label of the largest component of an ``ndimage.label`` map (the first on a tie)."""
    return 1 + int(np.argmax(np.bincount(components.ravel())[1:]))


def keep_largest_component(classes: np.ndarray) -> tuple[np.ndarray, int]:
    """Zeroes every tumor voxel outside the largest 26-connected whole-tumor component.

    Returns:
        The class map and the number of components removed.
    """
    components, count = tumor_components(classes)
    if count <= 1:
        return classes, 0
    largest = largest_label(components)
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


def remove_distant_components(classes: np.ndarray, max_distance: float
                              ) -> tuple[np.ndarray, int]:
    """Zeroes every tumor component whose nearest voxel lies farther than ``max_distance``
    voxels (Euclidean) from the largest component.

    Returns:
        The class map and the number of components removed.
    """
    components, count = tumor_components(classes)
    if count <= 1:
        return classes, 0
    largest = largest_label(components)
    distance = ndimage.distance_transform_edt(components != largest)
    others = [i for i in range(1, count + 1) if i != largest]
    nearest = np.asarray(ndimage.minimum(distance, components, index=others))
    far = [i for i, d in zip(others, nearest, strict=True) if d > max_distance]
    if not far:
        return classes, 0
    return np.where(np.isin(components, far), 0, classes).astype(classes.dtype), len(far)


def keep_largest_of(classes: np.ndarray, members: tuple[int, ...], demote_to: int
                    ) -> np.ndarray:
    """Keeps the largest 26-connected component of the region made of the ``members``
    classes; that region's voxels elsewhere become class ``demote_to``."""
    region = np.isin(classes, members)
    components, count = ndimage.label(region, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return classes
    largest = largest_label(components)
    out = classes.copy()
    out[region & (components != largest)] = demote_to
    return out


def remove_small_of(classes: np.ndarray, members: tuple[int, ...], demote_to: int,
                    min_voxels: int) -> np.ndarray:
    """The 26-connected components of the region made of the ``members`` classes that hold
    fewer than ``min_voxels`` voxels become class ``demote_to``; the largest component
    stays whatever its size (a small region is not erased, only its specks)."""
    region = np.isin(classes, members)
    components, count = ndimage.label(region, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return classes
    sizes = np.bincount(components.ravel())
    small = np.flatnonzero(sizes < min_voxels)
    small = small[(small > 0) & (small != largest_label(components))]
    if small.size == 0:
        return classes
    out = classes.copy()
    out[np.isin(components, small)] = demote_to
    return out
