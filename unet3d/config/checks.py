"""The config layer's error and the checks its dataclasses share."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from unet3d_base.errors import InputError


class ConfigError(InputError):
    """A value a config cannot take. The message names config fields; ``fields`` lists
    them, so that a command line can name its own options instead (:meth:`naming`)."""

    def __init__(self, message: str, *fields: str) -> None:
        super().__init__(message)
        self.fields = fields

    def naming(self, names: dict[str, str]) -> str:
        """The message with each of its fields that ``names`` maps renamed."""
        text = str(self)
        for name in self.fields:
            if name in names:
                text = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", names[name], text)
        return text


def check_keys(cls: type, values: dict[str, Any], source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}")


def positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}", name)


def choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(obj, name)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}", name)
