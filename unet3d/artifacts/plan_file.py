"""The post-processing plan stored with a model file.

As nnU-Net does, the post-processing a model is used with
(:class:`unet3d.postprocessing.PostProcessing`, chosen on its validation cases)
travels with the model file, so the same file gives the same result wherever
it is copied: inside a ``.keras`` zip as ``unet3d_postprocessing.json``, and in
a ``.tflite``'s ``.tflite.json`` report (:func:`unet3d.artifacts.litert_file.report_path`)
under ``"postprocessing"``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from unet3d.artifacts.litert_file import report_path
from unet3d.artifacts.manifest import read_manifest
from unet3d.postprocessing import PostProcessing
from unet3d_base.fileio import atomic_path, atomic_write_text

PLAN_ENTRY = "unet3d_postprocessing.json"


def read_plan(model_path: str | Path) -> PostProcessing | None:
    """The plan stored with a ``.keras`` or ``.tflite`` model or in an ensemble manifest
    (``.json``), or None."""
    path = Path(model_path)
    if path.suffix.lower() == ".json":
        return read_manifest(path)[1]
    if path.suffix.lower() == ".tflite":
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
            if PLAN_ENTRY not in archive.namelist():
                return None
            values = json.loads(archive.read(PLAN_ENTRY))
    except (zipfile.BadZipFile, OSError, json.JSONDecodeError):
        return None
    return PostProcessing.from_dict(values, f"{path} [{PLAN_ENTRY}]")


def write_plan(model_path: str | Path, plan: PostProcessing) -> None:
    """Stores ``plan`` with the model (or in the ensemble manifest), replacing any earlier
    one, atomically."""
    path = Path(model_path)
    if path.suffix.lower() == ".json":
        values = json.loads(path.read_text())
        values["postprocessing"] = plan.to_dict()
        atomic_write_text(path, json.dumps(values, indent=1) + "\n")
        return
    if path.suffix.lower() == ".tflite":
        report = report_path(path)
        values = json.loads(report.read_text()) if report.is_file() else {}
        values["postprocessing"] = plan.to_dict()
        atomic_write_text(report, json.dumps(values, indent=2) + "\n")
        return
    with zipfile.ZipFile(path) as source, atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                if item.filename != PLAN_ENTRY:
                    target.writestr(item, source.read(item.filename))
            target.writestr(PLAN_ENTRY, json.dumps(plan.to_dict(), indent=2) + "\n")
