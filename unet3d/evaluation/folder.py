"""Scores a folder of predicted segmentations against BraTS ground truth.

Usage::

    unet3d-evaluate --pred PRED_DIR --gt GT_DIR [--csv OUT.csv]
        [--labels brats2017|brats2023] [--overwrite]

Predictions are ``PRED_DIR/<case_id>.nii.gz`` (or ``.nii``) label maps; the
ground truth is ``GT_DIR/<case_id>/<case_id>_seg.nii.gz`` (the BraTS layout,
image files may be there too). Cases are matched by id; the ones found on only
one side are reported as a warning and the rest evaluated. Both sides use the
label convention of ``--labels``. HD95 uses the ground truth's voxel spacing.

Writes one CSV row per case (default ``PRED_DIR/evaluation.csv``) and prints
the mean, standard deviation and median of every metric per region.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_generators.io import find_cases
from data_generators.labels import check_labels, resolve_convention
from data_generators.nifti import read_volume
from unet3d.evaluation.case_scores import SCORE_KEYS, score_case, summarize
from unet3d.evaluation.lesionwise import LESION_KEYS, lesionwise_case
from unet3d_base.errors import InputError
from unet3d_base.fileio import atomic_path

PROG = "evaluate"
DEFAULT_CSV = "evaluation.csv"
_SUFFIXES = (".nii.gz", ".nii")
_MAX_LISTED = 10


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _case_list(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_MAX_LISTED])
    more = len(ids) - _MAX_LISTED
    return shown + (f" (+{more} more)" if more > 0 else "")


def find_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """Maps case id to prediction file for every ``<case_id>.nii[.gz]`` in a folder.

    Hidden files (such as unfinished atomic writes) are ignored.

    Args:
        pred_dir: the prediction folder.

    Returns:
        ``{case_id: path}``, sorted by case id.

    Raises:
        InputError: the folder is missing, holds no NIfTI file, or holds both
            ``<case>.nii`` and ``<case>.nii.gz``.
    """
    pred_dir = Path(pred_dir)
    if not pred_dir.exists():
        raise InputError(f"{pred_dir}: prediction folder not found")
    if not pred_dir.is_dir():
        raise InputError(f"{pred_dir}: not a folder")
    found: dict[str, Path] = {}
    for path in sorted(pred_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        suffix = next((s for s in _SUFFIXES if path.name.lower().endswith(s)), None)
        if suffix is None:
            continue
        case_id = path.name[: -len(suffix)]
        if case_id in found:
            raise InputError(f"{path}: a second prediction for case {case_id} ({found[case_id]})")
        found[case_id] = path
    if not found:
        raise InputError(f"{pred_dir}: no predictions (<case_id>.nii.gz) found")
    return dict(sorted(found.items()))


def find_ground_truth(gt_dir: str | Path) -> dict[str, Path]:
    """Maps case id to segmentation file for the BraTS case folders of ``gt_dir``.

    Case folders without a ``*_seg.nii[.gz]`` are left out (their predictions
    are then reported as lacking ground truth).

    Args:
        gt_dir: folder of ``<case>/<case>_seg.nii.gz`` case folders.

    Returns:
        ``{case_id: path}``, sorted by case id.

    Raises:
        InputError: the folder is missing or holds no case folder.
    """
    cases = find_cases(gt_dir, modalities=(), require_label=False)
    return {c.case_id: Path(c.label) for c in cases if c.label is not None}


def load_label_map(
    path: str | Path, convention: str = "brats2017"
) -> tuple[np.ndarray, tuple[float, ...]]:
    """Loads a 3D label map and checks its values.

    Args:
        path: a NIfTI file.
        convention: the label convention its values must belong to.

    Returns:
        The labels as uint8 ``(X, Y, Z)`` and the voxel size from the header zooms.

    Raises:
        InputError: naming ``path``, if it is missing, unreadable, not 3D, or
            holds values that are not labels of ``convention``.
    """
    path = Path(path)
    data, img = read_volume(path, "label map")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise InputError(f"{path}: label map holds NaN or infinite values")
        if not np.array_equal(data, np.round(data)):
            raise InputError(f"{path}: label map holds non-integer values")
    try:
        check_labels(data, convention)
    except ValueError as err:
        raise InputError(f"{path}: {err}") from None
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return data.astype(np.uint8), zooms


def _check_csv(csv_path: Path, overwrite: bool) -> None:
    if csv_path.is_dir():
        raise InputError(f"{csv_path}: is a folder, expected a CSV file path")
    if csv_path.exists() and not overwrite:
        raise InputError(f"{csv_path}: already exists; pass --overwrite to replace it")
    parent = csv_path.parent  # fail before scoring, and say why
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{csv_path}: cannot write the CSV ({parent} is not a folder)")


def write_csv(rows: Sequence[dict[str, object]], csv_path: str | Path) -> Path:
    """Writes per-case rows (``case`` then ``SCORE_KEYS``) to a CSV, atomically.

    Args:
        rows: dicts with a ``case`` key and every key of ``SCORE_KEYS``.
        csv_path: the file to write (replaced if present).

    Returns:
        ``csv_path`` as a Path.

    Raises:
        InputError: if the file cannot be written.
    """
    csv_path = Path(csv_path)
    keys = [*SCORE_KEYS, *(k for k in LESION_KEYS if rows and k in rows[0])]
    try:
        with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["case", *keys])
            for row in rows:
                writer.writerow([row["case"], *(repr(float(row[k])) for k in keys)])
    except OSError as err:
        raise InputError(f"{csv_path}: cannot write the CSV ({err.strerror or err})") from None
    return csv_path


def evaluate_folder(
    pred_dir: str | Path,
    gt_dir: str | Path,
    csv_path: str | Path | None = None,
    convention: str = "brats2017",
    overwrite: bool = False,
    lesionwise: bool = False,
) -> tuple[list[dict[str, object]], dict[str, dict[str, float]]]:
    """Scores every prediction that has ground truth and writes the per-case CSV.

    Cases present on only one side are reported on stderr, one line per side.

    Args:
        pred_dir: folder of ``<case_id>.nii[.gz]`` predicted label maps.
        gt_dir: folder of BraTS case folders with ``<case_id>_seg.nii[.gz]``.
        csv_path: the per-case CSV; ``pred_dir/evaluation.csv`` if None.
        convention: label convention of both predictions and ground truth.
        overwrite: replace an existing CSV instead of refusing.
        lesionwise: add the BraTS 2023 lesion-wise columns
            (:mod:`unet3d.evaluation.lesionwise`, ``LesionDice_WT``, ...).

    Returns:
        The per-case rows (``{"case": id, "Dice_WT": ..., ...}``, sorted by
        case id) and their :func:`~unet3d.evaluation.case_scores.summarize` summary.

    Raises:
        InputError: naming the file or option: unknown convention, missing
            folders, no case in common, unreadable or non-3D files, shapes
            that differ, label values outside the convention, or an existing
            CSV without ``overwrite``.
    """
    try:
        convention = resolve_convention(convention)
    except ValueError as err:
        raise InputError(f"--labels: {err}") from None
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    csv_path = Path(csv_path) if csv_path is not None else pred_dir / DEFAULT_CSV
    predictions = find_predictions(pred_dir)
    truths = find_ground_truth(gt_dir)
    _check_csv(csv_path, overwrite)

    no_truth = [c for c in predictions if c not in truths]
    no_pred = [c for c in truths if c not in predictions]
    common = [c for c in predictions if c in truths]
    if not common:
        raise InputError(
            f"{pred_dir}: no prediction matches a ground-truth case in {gt_dir} "
            f"(predictions: {_case_list(list(predictions))})"
        )
    if no_truth:
        _warn(f"{len(no_truth)} prediction(s) without ground truth: {_case_list(no_truth)}")
    if no_pred:
        _warn(f"{len(no_pred)} ground-truth case(s) without prediction: {_case_list(no_pred)}")

    rows: list[dict[str, object]] = []
    for case_id in common:
        pred_path, gt_path = predictions[case_id], truths[case_id]
        truth, spacing = load_label_map(gt_path, convention)
        pred, _ = load_label_map(pred_path, convention)
        if pred.shape != truth.shape:
            raise InputError(
                f"{pred_path}: shape {_shape(pred.shape)} differs from the ground truth "
                f"{gt_path.name} ({_shape(truth.shape)})"
            )
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise InputError(f"{gt_path}: invalid voxel spacing {spacing} in the header")
        row = {"case": case_id, **score_case(pred, truth, spacing, convention)}
        if lesionwise:
            row.update(lesionwise_case(pred, truth, spacing, convention))
        rows.append(row)
    write_csv(rows, csv_path)
    return rows, summarize(rows)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def format_summary(summary: dict[str, dict[str, float]], n_cases: int | None = None) -> str:
    """The summary as a text table: one row per metric and region; mean, std, median.

    Args:
        summary: from :func:`~unet3d.evaluation.case_scores.summarize`.
        n_cases: the number of cases, shown in the heading when given.

    Returns:
        The table, lines joined by newlines, without a trailing newline.
    """
    width = max([len("metric"), *(len(k) for k in summary)])
    heading = f"{'metric':<{width}}  {'mean':>9}  {'std':>9}  {'median':>9}"
    if n_cases is not None:
        heading += f"    ({n_cases} case{'s' if n_cases != 1 else ''})"
    lines = [heading]
    for key, stats in summary.items():
        lines.append(
            f"{key:<{width}}  {stats['mean']:9.4f}  {stats['std']:9.4f}  {stats['median']:9.4f}"
        )
    return "\n".join(lines)
