"""Reading a JSON or YAML config file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from unet3d_base.errors import InputError


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a JSON or YAML config file into a dict (validated later)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as err:  # any parse error means a bad file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: not a valid config file ({first})") from None
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config file must hold a mapping of options")
    return values
