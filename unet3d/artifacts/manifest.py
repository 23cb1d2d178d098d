"""Ensemble manifests: a ``.json`` file naming the member models whose probabilities an
ensemble averages, and the post-processing chosen for the ensemble
(:func:`unet3d.artifacts.loader.load_manifest` loads one)."""

from __future__ import annotations

import json
from pathlib import Path

from unet3d.postprocessing import PostProcessing
from unet3d_base.errors import InputError

MANIFEST_FORMAT = "unet3d-ensemble"


def read_manifest(path: Path) -> tuple[list[Path], PostProcessing | None]:
    """The member files and the plan of an ensemble manifest ``{"format":
    "unet3d-ensemble", "members": [paths relative to the manifest's folder],
    "postprocessing": plan}``; InputError naming ``path`` for anything else. Members are
    ``.keras`` or ``.tflite`` files (not folders or other manifests)."""
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON file ({str(err).splitlines()[0]})"
                         ) from None
    if not isinstance(values, dict) or values.get("format") != MANIFEST_FORMAT:
        raise InputError(f"{path}: not an ensemble manifest (expected a JSON object with "
                         f'"format": "{MANIFEST_FORMAT}")')
    names = values.get("members")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise InputError(f'{path}: "members" must be a non-empty list of model paths')
    members = [path.parent / name for name in names]
    for member in members:
        if member.suffix.lower() not in (".keras", ".tflite"):
            raise InputError(f"{path}: member {member} is not a .keras or .tflite file")
        if not member.is_file():
            raise InputError(f"{path}: member {member} not found")
    plan = values.get("postprocessing")
    if plan is None:
        return members, None
    if not isinstance(plan, dict):
        raise InputError(f'{path}: "postprocessing" must be a plan (a JSON object)')
    return members, PostProcessing.from_dict(plan, f"{path} postprocessing")
