"""Which floating-point precision a run uses: ``auto``, ``fp32`` or ``bf16``.

bfloat16 pays only where the hardware computes it natively: CPUs with the
``avx512_bf16`` or ``amx_bf16`` flags, or a GPU. Measured on 2 cores: with
``avx512_bf16`` the default network's whole-volume pass is ~1.4x faster in
``mixed_bfloat16``; on an AVX2-only CPU oneDNN emulates bf16 and the same pass
is ~20x *slower*. So ``auto`` picks bf16 only on such hardware, and an
explicit ``bf16`` is refused elsewhere.

:func:`dtype_policy` names the Keras policy of a resolved precision and
:func:`policy_scope` applies it while a model is built.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

import keras

from unet3d_base.errors import InputError

PRECISIONS = ("auto", "fp32", "bf16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU feature flags of the first processor in ``path`` (empty if unreadable)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_gpu() -> bool:
    """Whether the Keras backend sees a GPU."""

    try:
        return bool(keras.distribution.list_devices("gpu"))
    except Exception:  # a backend without device listing, or no GPU runtime
        return False


def native_bf16(flags: Iterable[str] | None = None, gpu: bool | None = None) -> bool:
    """True where bfloat16 runs natively: a GPU, or a CPU with avx512_bf16 / amx_bf16."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    if any(flag in flags for flag in NATIVE_BF16_FLAGS):
        return True
    return has_gpu() if gpu is None else gpu


def resolve_precision(requested: str, flags: Iterable[str] | None = None,
                      gpu: bool | None = None, option: str = "--precision") -> str:
    """``fp32`` or ``bf16`` for a requested ``auto``, ``fp32`` or ``bf16``.

    Args:
        requested: str. ``auto`` picks bf16 where :func:`native_bf16` holds,
            else fp32.
        flags: iterable of str or None. CPU flags (None: read
            ``/proc/cpuinfo``); injectable for tests.
        gpu: bool or None. Whether a GPU is present (None: ask Keras).
        option: str. The option named in errors.

    Raises:
        InputError: an unknown precision, or ``bf16`` on hardware that would
            emulate it.
    """
    if requested not in PRECISIONS:
        raise InputError(f"{option} must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "fp32":
        return "fp32"
    native = native_bf16(flags, gpu)
    if requested == "bf16" and not native:
        raise InputError(f"{option} bf16: this machine has no GPU and its CPU lacks "
                         f"{' / '.join(NATIVE_BF16_FLAGS)}, so bf16 would be emulated (~20x "
                         "slower); use fp32 or auto")
    return "bf16" if native else "fp32"


def check_training_precision(precision: str) -> None:
    """Refuses a training precision this machine cannot run (fp16 needs a GPU)."""
    if precision == "fp16" and not has_gpu():
        raise InputError("precision fp16 needs a GPU; on a CPU use bf16 or fp32")


def dtype_policy(precision: str) -> str:
    """The Keras dtype policy of a resolved precision (``fp32``, ``bf16`` or ``fp16``)."""
    return POLICIES[precision]


@contextlib.contextmanager
def policy_scope(precision: str):
    """Sets Keras' global dtype policy for ``precision`` inside the block, then restores it."""

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy(precision))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
