"""The model's voxel space, and the way there and back for scans in another geometry.

The networks are trained on BraTS volumes: 1 mm isotropic voxels whose array
axes run to the patient's Left, Posterior and Superior (``LPS`` in nibabel's
axis codes; BraTS ships them so). A scan stored otherwise (RAS or permuted
axes, 2 mm or anisotropic voxels, a slightly oblique grid) is brought to that
space before the network sees it, as nnU-Net and MONAI do:

1. **reoriented** exactly (axis flips and transposes, no interpolation) to the
   closest LPS axes (:func:`nibabel.orientations.io_orientation`);
2. **resampled** to 1 mm when its spacing differs by more than
   :data:`SPACING_TOLERANCE_MM` (images trilinear; label maps one channel
   per class, trilinear, then the most likely class, as nnU-Net does).

A segmentation made in that space goes back the same way, onto exactly the
input's own grid: same shape, same affine. Grids the model cannot be trusted
on are refused with one line instead: voxels coarser than
:data:`MAX_SPACING_MM`, axes more than :data:`MAX_OBLIQUE_DEGREES` off the
scanner's, or an affine that is not a valid voxel-to-world map.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from skimage.transform import resize

from data_generators.io import CaseFiles
from data_generators.layouts import LggCase, load_any_case
from unet3d_base.errors import InputError

MODEL_AXES = ("L", "P", "S")  # BraTS' voxel axes
MODEL_SPACING_MM = 1.0
SPACING_TOLERANCE_MM = 0.05  # closer than this to 1 mm: used as it is, not resampled
MAX_SPACING_MM = 3.0  # coarser voxels would be upsampled more than 3x: refused
MAX_OBLIQUE_DEGREES = 30.0  # axes further off: which one is "axial" is no longer clear


@dataclass(frozen=True)
class Geometry:
    """How one input grid maps to the model's space.

    Args:
        shape: the input's array shape (3 spatial sizes).
        axes: the input's axis codes, e.g. ``("R", "A", "S")``.
        spacing_mm: voxel sizes along the input's axes.
        oblique_degrees: the largest angle between a voxel axis and the scanner axis
            closest to it.
    """

    shape: tuple[int, int, int]
    axes: tuple[str, str, str]
    spacing_mm: tuple[float, float, float]
    oblique_degrees: float

    @property
    def _to_model(self) -> np.ndarray:
        return ornt_transform(axcodes2ornt(self.axes), axcodes2ornt(MODEL_AXES))

    @property
    def reoriented(self) -> bool:
        return tuple(self.axes) != MODEL_AXES

    def _in_model_order(self, values):
        """Per-axis ``values`` of the input, in the model's axis order."""
        out = [values[0]] * 3
        for source, target in enumerate(self._to_model[:, 0].astype(int)):
            out[target] = values[source]
        return tuple(out)

    @property
    def oriented_shape(self) -> tuple[int, int, int]:
        """The shape once reoriented, before resampling."""
        return self._in_model_order(self.shape)

    @property
    def oriented_spacing(self) -> tuple[float, float, float]:
        return self._in_model_order(self.spacing_mm)

    @property
    def resampled(self) -> bool:
        return any(abs(s - MODEL_SPACING_MM) > SPACING_TOLERANCE_MM for s in self.spacing_mm)

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """The array shape the network sees (before cropping to the brain)."""
        if not self.resampled:
            return self.oriented_shape
        return tuple(max(1, int(round(n * s / MODEL_SPACING_MM)))
                     for n, s in zip(self.oriented_shape, self.oriented_spacing, strict=True))

    def image_to_model(self, image: np.ndarray) -> np.ndarray:
        """``(X, Y, Z[, C])`` float image on the input grid -> the model's grid (float32)."""
        image = apply_orientation(image, self._to_model)
        if self.resampled:
            image = _resize(image, self.model_shape, order=1)
        return np.ascontiguousarray(image, dtype=np.float32)

    def labels_to_model(self, labels: np.ndarray) -> np.ndarray:
        """Integer label map on the input grid -> the model's grid."""
        labels = apply_orientation(labels, self._to_model)
        if self.resampled:
            labels = resample_labels(labels, self.model_shape)
        return np.ascontiguousarray(labels)

    def labels_from_model(self, labels: np.ndarray) -> np.ndarray:
        """Integer label map on the model's grid -> exactly the input's grid."""
        if tuple(labels.shape) != self.model_shape:
            raise ValueError(f"label map {labels.shape} is not on the model grid "
                             f"{self.model_shape}")
        if self.resampled:
            labels = resample_labels(labels, self.oriented_shape)
        back = ornt_transform(axcodes2ornt(MODEL_AXES), axcodes2ornt(self.axes))
        return np.ascontiguousarray(apply_orientation(labels, back))

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for reports."""
        return {"axes": "".join(self.axes), "spacing_mm": [round(s, 4) for s in self.spacing_mm],
                "oblique_degrees": round(self.oblique_degrees, 2),
                "reoriented_to": "".join(MODEL_AXES) if self.reoriented else None,
                "resampled_to_mm": MODEL_SPACING_MM if self.resampled else None,
                "model_shape": list(self.model_shape)}


def plan_geometry(shape: tuple[int, ...], affine: np.ndarray, path: str | Path) -> Geometry:
    """The way from the grid ``(shape, affine)`` of file ``path`` to the model's space.

    Raises:
        InputError: naming ``path``: an affine that is not finite or not
            invertible, voxels coarser than :data:`MAX_SPACING_MM`, or axes more
            than :data:`MAX_OBLIQUE_DEGREES` off the scanner's.
    """
    affine = np.asarray(affine, dtype=float)
    linear = affine[:3, :3]
    if not np.isfinite(affine).all() or abs(np.linalg.det(linear)) < 1e-6:
        raise InputError(f"{path}: its affine is not a valid voxel-to-world transform "
                         "(singular or not finite)")
    spacing = tuple(float(s) for s in np.sqrt((linear ** 2).sum(axis=0)))
    coarse = max(spacing)
    if coarse > MAX_SPACING_MM:
        raise InputError(f"{path}: voxels of {_mm(spacing)} mm are coarser than the "
                         f"{MAX_SPACING_MM:g} mm this model can be trusted on (it was trained on "
                         "1 mm); resample the scans to 1 mm first")
    oblique = float(np.degrees(nib.affines.obliquity(affine)).max())
    if oblique > MAX_OBLIQUE_DEGREES:
        raise InputError(f"{path}: its voxel axes are {oblique:.0f} degrees off the scanner's "
                         f"(at most {MAX_OBLIQUE_DEGREES:g} accepted); resample the scans to an "
                         "axis-aligned grid first")
    axes = tuple(str(a) for a in nib.orientations.ornt2axcodes(io_orientation(affine)))
    return Geometry(shape=tuple(int(n) for n in shape[:3]), axes=axes, spacing_mm=spacing,
                    oblique_degrees=oblique)


def load_case_for_model(case: CaseFiles | LggCase, label_convention: str = "brats2017"
                        ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], Geometry]:
    """:func:`data_generators.nifti.load_case` (or a Kaggle LGG patient,
    :mod:`data_generators.layouts`), brought to the model's space.

    Returns:
        ``image`` and ``label`` on the model's grid, the input's ``properties``
        (shape and affine of its own grid) with ``geometry`` added (see
        :meth:`Geometry.describe`), and the :class:`Geometry` that maps a
        segmentation back onto the input's grid.

    Raises:
        InputError: as :func:`load_case`, or a grid :func:`plan_geometry` refuses.
    """
    image, label, properties = load_any_case(case, label_convention)
    geometry = plan_geometry(properties["original_shape"], np.asarray(properties["affine"]),
                             case.images[0])
    image = geometry.image_to_model(image)
    if label is not None:
        label = geometry.labels_to_model(label)
    return image, label, {**properties, "geometry": geometry.describe()}, geometry


def resample_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """An integer label map resized to ``shape``: each class's indicator is interpolated
    (trilinear) and every voxel takes the class with the highest value, as nnU-Net
    resamples segmentations. Memory: two float32 arrays of the output size."""
    values = np.unique(labels)
    best = np.full(shape, -1.0, dtype=np.float32)
    out = np.zeros(shape, dtype=labels.dtype)
    for value in values:
        weight = _resize((labels == value).astype(np.float32), shape, order=1)
        take = weight > best
        out[take] = value
        best[take] = weight[take]
    return out


def _resize(array: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """Resizes the 3 spatial axes (channels, if any, last) so voxel edges line up."""
    full = tuple(shape) + tuple(array.shape[3:])
    return resize(array.astype(np.float32, copy=False), full, order=order, mode="edge",
                  anti_aliasing=False, preserve_range=True).astype(np.float32)


def _mm(spacing) -> str:
    return " x ".join(f"{s:g}" for s in np.round(spacing, 3))
