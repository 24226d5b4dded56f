"""The C heap under torch's CPU tensors (glibc only; no torch here, so the launcher can call it first).

:func:`share_one_heap` makes every thread allocate from glibc's main heap. It must run before other threads
start: glibc gives each new thread that allocates its own arena, made of 64 MiB heaps, and a block larger
than that is mapped afresh from the kernel at every use whatever the mmap threshold, so the worker thread's
VAE activations (64-128 MiB at 512x512) would fault in fresh pages at every decode even with
:func:`sdweb.engine.devices.configure_heap_reuse`. One heap for all threads is also glibc's usual advice
against per-thread fragmentation in long-running servers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from typing import Any

logger = logging.getLogger(__name__)

_M_ARENA_MAX = -8


def glibc() -> Any:
    """Glibc through ctypes, or None (another OS or C library)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def share_one_heap() -> bool:
    """All threads allocate from the main heap (glibc ``M_ARENA_MAX`` = 1); call before threads start.
    Returns whether it was set.
    """
    libc = glibc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, 1))
