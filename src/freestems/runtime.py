"""Process-level tuning for CPU inference.

A forward pass of SCNet allocates and frees hundreds of megabytes of activations. With glibc's defaults,
every large block is a fresh ``mmap`` that the kernel must zero page by page, and is handed back with
``munmap`` when freed: on a 2-core machine that page-fault churn cost about a fifth of the inference time.
Raising malloc's mmap threshold to its maximum (32 MiB) and keeping freed memory in the heap lets blocks be
reused. Measured on the release model, one 11 s chunk per pass: 3.3 s -> 2.8 s wall, system time 1.2 s ->
0.4 s. (An allocator such as tcmalloc via ``LD_PRELOAD`` does slightly better still.)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc refuses larger values on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024


@functools.cache
def tune_allocator() -> bool:
    """Apply the malloc settings once per process (glibc on Linux only); True if they were applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
