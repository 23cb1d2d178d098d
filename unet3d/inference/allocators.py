"""The process's allocator, where a prediction's memory goes when it is freed.

:func:`return_freed_heap_tops`: glibc's malloc gives each thread that allocates its own
heap (an arena) and returns memory freed at the top of one only above a threshold that
it raises as the process frees large blocks: by the time a case is read, to 64 MiB. The
loader decodes the modalities in four threads (:func:`data_generators.nifti.load_case`),
whose freed read buffers then stayed resident for good: 4 x 37.5 MB of the 0.25 GB a
loaded and cropped BraTS case left behind, all of it held through the network pass
(``malloc_trim`` does not reach the top of a thread's heap).

TensorFlow's own tensors (with oneDNN: every one of 4 KiB or more) come from an arena that
never gives memory back, so the process holds a pass's peak after it. Measured and left
to the user, not set by default: ``TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1`` (before TensorFlow
loads) serves them from malloc instead, which returns each freed full-size map at once:
on a whole BraTS case with the default network, bf16, the pass peaked at 1.63 GB instead
of 1.90 with :func:`unet3d.models.lean.lean_forward`, and held 1.02 GB instead of 1.76
after it, but took 34% more CPU time (every large tensor is fresh pages from the system).
"""

from __future__ import annotations

import ctypes
import functools
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameter (malloc.h)
TRIM_THRESHOLD_BYTES = 4 * 2**20


@functools.cache
def return_freed_heap_tops() -> bool:
    """Sets glibc's trim threshold to :data:`TRIM_THRESHOLD_BYTES`, once per process, so
    that freed memory above it at the top of any thread's heap goes back to the system;
    whether it could (False off Linux or without ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
