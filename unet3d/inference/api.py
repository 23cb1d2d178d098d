"""The prediction API: a trained model in, label maps out, from arrays, a case or a folder.

    from unet3d.inference import Predictor
    predictor = Predictor.from_artifact()             # the shipped default model
    labels = predictor.predict_arrays(image, affine)  # (X, Y, Z, C) -> (X, Y, Z), BraTS labels

``predict.py`` parses its options and calls :meth:`Predictor.predict_folder`;
the label map :meth:`Predictor.predict_arrays` returns equals the file
``predict.py`` writes for the same scans.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_generators.geometry import plan_geometry
from data_generators.labels import classes_to_labels, resolve_convention
from data_generators.layouts import is_case_folder
from unet3d.artifacts import Artifact, load_artifact, shipped_path
from unet3d.inference.pipeline import (
    PredictSettings,
    check_patch_size,
    crop_for_model,
    is_complete,
    output_paths,
    predict_case,
    resolve_plan,
    segment_cropped,
)
from unet3d.postprocessing import PostProcessing
from unet3d.precision import resolve_precision
from unet3d_base.errors import InputError
from unet3d_base.fileio import remove_stale_temporaries


@dataclass
class FolderResult:
    """What :meth:`Predictor.predict_folder` did: case reports, skipped and failed cases."""

    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # complete already (no overwrite)
    failures: dict[str, str] = field(default_factory=dict)  # case -> one-line reason
    cases: list[Path] = field(default_factory=list)  # every case folder of the input


def part_of(cases: list[Path], num_parts: int, part_id: int) -> list[Path]:
    """Part ``part_id`` of ``num_parts``: every ``num_parts``-th case in name order. The parts
    of ``0 .. num_parts - 1`` are disjoint and together hold every case."""
    return sorted(cases, key=lambda p: p.name)[part_id::num_parts]


def case_outputs(out: Path, case_dir: Path, settings: PredictSettings) -> dict[str, Path]:
    """The files :meth:`Predictor.predict_case` writes for the case in ``case_dir``."""
    return output_paths(out, case_dir, settings)


class Predictor:
    """A loaded model and the settings of its predictions.

    Args:
        model: :class:`unet3d.artifacts.Artifact`, from :func:`unet3d.artifacts.load_artifact`
            or :meth:`from_artifact`.
        settings: :class:`PredictSettings` or None (the defaults).

    Raises:
        InputError: settings the model cannot take (a sliding-window size it refuses).
    """

    def __init__(self, model: Artifact, settings: PredictSettings | None = None):
        self.model = model
        self.settings = settings or PredictSettings()
        if self.settings.patch_size:
            check_patch_size(model, self.settings)

    @classmethod
    def from_artifact(cls, path: str | Path | None = None, *, precision: str = "auto",
                      **settings: Any) -> Predictor:
        """Loads a ``.keras`` or ``.tflite`` model, or a folder of fold models (their
        ensemble); None: the shipped default model.

        Args:
            path: str, Path or None.
            precision: str, default "auto". ``auto`` (bf16 where the CPU has it natively),
                ``fp32`` or ``bf16``; for ``.keras`` models.
            **settings: fields of :class:`PredictSettings` (``mode``, ``tta``, ``labels``,
                ``threads``, ...).

        Raises:
            InputError: a file that is not a model, or an unknown setting or precision.
        """
        unknown = sorted(set(settings) - set(PredictSettings.__dataclass_fields__))
        if unknown:
            raise InputError(f"Predictor.from_artifact: unknown settings {', '.join(unknown)}")
        options = PredictSettings(**settings)
        model = load_artifact(path if path is not None else shipped_path(),
                              threads=options.threads,
                              precision=resolve_precision(precision, option="precision"))
        return cls(model, options)

    @property
    def plan(self) -> tuple[PostProcessing, str]:
        """The post-processing applied, and where it came from (settings, model, default)."""
        return resolve_plan(self.model.postprocessing, self.settings)

    def predict_arrays(self, image: np.ndarray, affine: np.ndarray | None = None,
                       ) -> np.ndarray:
        """Segments one case held in memory.

        Args:
            image: `(X, Y, Z, C)` array, one channel per modality in the model's order
                (``predictor.model.modalities``), as NIfTI files hold them (skull-stripped,
                co-registered).
            affine: `(4, 4)` voxel-to-world matrix of the grid (NIfTI ``affine``); None: 1 mm
                voxels in RAS order.

        Returns:
            uint8 `(X, Y, Z)` label map on the same grid, in ``settings.labels``' convention
            (BraTS: 1 necrosis / non-enhancing core, 2 edema, 4 enhancing).

        Raises:
            InputError: an image of the wrong shape, a grid the model cannot use, or one with
                no brain.
        """
        image = np.asarray(image)
        channels = len(self.model.modalities)
        if image.ndim != 4 or image.shape[-1] != channels:
            raise InputError(f"predict_arrays: image of shape {image.shape}; expected "
                             f"(X, Y, Z, {channels}), channels {', '.join(self.model.modalities)}")
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise InputError(f"predict_arrays: affine of shape {affine.shape}; expected (4, 4)")
        geometry = plan_geometry(image.shape[:3], affine, "predict_arrays image")
        on_model_grid = geometry.image_to_model(image.astype(np.float32, copy=False))
        cropped = crop_for_model(on_model_grid, self.model, "predict_arrays image")
        del on_model_grid
        classes = geometry.labels_from_model(segment_cropped(cropped, self.model,
                                                             self.settings).classes)
        return classes_to_labels(classes, resolve_convention(self.settings.labels))

    def predict_case(self, folder: str | Path, out: str | Path) -> dict[str, Any]:
        """Segments one case folder (BraTS NIfTI files, or a Kaggle LGG patient's slices)
        into ``out``; returns its report (also written as ``out/<case>.json``).

        Raises:
            InputError: unusable input files, or outputs that exist without ``overwrite``.
        """
        return predict_case(folder, out, self.model, self.settings)

    def predict_folder(self, source: str | Path, out: str | Path, *, num_parts: int = 1,
                       part_id: int = 0, on_case: Callable[[int, int], None] | None = None,
                       log: Callable[[str], Any] = print) -> FolderResult:
        """Segments a case folder, or every case folder inside ``source``, into ``out``.
        Complete cases are skipped unless ``settings.overwrite``; a case that fails is
        recorded with its reason and the others go on.

        Args:
            num_parts, part_id: int. Segment only part ``part_id`` of ``num_parts`` (every
                ``num_parts``-th case in name order), for processes sharing a folder.
            on_case: called with (cases done, cases in this part) after each case.
            log: where progress lines go.

        Raises:
            InputError: ``source`` holds no case folders, or one case is given with parts.
        """
        source, out = Path(source), Path(out)
        result = FolderResult()
        if is_case_folder(source):
            if num_parts > 1:
                raise InputError(f"--input {source}: one case; --num-parts shares a folder of "
                                 "case folders")
            report = self.predict_case(source, out)
            result.reports[report["case_id"]] = report
            return result
        result.cases = sorted(p for p in source.iterdir() if p.is_dir())
        if not result.cases:
            raise InputError(f"--input {source}: holds no case folders")
        cases = part_of(result.cases, num_parts, part_id)
        if num_parts > 1:  # a killed process of this part left these; no other writes them
            log(f"part {part_id} of {num_parts}: {len(cases)} of the {len(result.cases)} "
                f"cases (every {num_parts}-th in name order)")
            remove_stale_temporaries(out, [path.name for case_dir in cases
                                           for path in case_outputs(out, case_dir,
                                                                    self.settings).values()])
        for index, case_dir in enumerate(cases, start=1):
            try:
                if not self.settings.overwrite and self.is_done(case_dir, out):
                    result.skipped.append(case_dir.name)
                else:
                    result.reports[case_dir.name] = self.predict_case(case_dir, out)
            except InputError as err:
                result.failures[case_dir.name] = str(err)
            if on_case:
                on_case(index, len(cases))
        return result

    def is_done(self, case_dir: Path, out: Path) -> bool:
        """Whether ``out`` holds the complete outputs of the case in ``case_dir``."""
        return is_complete(case_outputs(Path(out), Path(case_dir), self.settings))


__all__: Sequence[str] = ["FolderResult", "Predictor", "case_outputs", "part_of"]
