"""The C heap under torch's CPU tensors (glibc only; torch is imported by no function the launcher calls).

:func:`configure_heap_reuse` (CPU runtimes on Linux with glibc) keeps freed blocks of up to 1 GiB in the
C heap for the next tensor of that size, instead of glibc's default of handing every block over 32 MiB
back to the kernel at once and faulting fresh zeroed pages in for the next one: on a 512x512 SD 1.5 image
that was ~230,000 page faults per UNet step and ~800,000 per VAE decode, measured at 18% of a step's and
38% of a decode's CPU time. :func:`trim_heap` gives the free part back after a model is unloaded, and
:func:`heap_returned` restores glibc's behaviour around budgeted passes (tiled VAE passes of large images).

:func:`share_one_heap` makes every thread allocate from glibc's main heap. It must run before other threads
start: glibc gives each new thread that allocates its own arena, made of 64 MiB heaps, and a block larger
than that is mapped afresh from the kernel at every use whatever the mmap threshold, so the worker thread's
VAE activations (64-128 MiB at 512x512) would fault in fresh pages at every decode even with
:func:`configure_heap_reuse`. One heap for all threads is also glibc's usual advice
against per-thread fragmentation in long-running servers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
from collections.abc import Iterator
from contextlib import contextmanager
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


#: glibc mallopt parameters and the sizes :func:`configure_heap_reuse` sets.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_REUSE_BYTES = 1 << 30


def configure_heap_reuse(device: Any) -> bool:
    """On a CPU runtime with glibc: serve tensors up to :data:`HEAP_REUSE_BYTES` from the heap and keep up to
    that much free at its top, so the next step's activations reuse the last step's pages (see the module
    docstring). Returns whether it was set; elsewhere (CUDA/MPS keep their own caches, other C libraries)
    nothing changes.
    """
    import torch

    if torch.device(device).type != "cpu":
        return False
    libc = glibc()
    if libc is None:
        return False
    share_one_heap()  # threads started from now on (the launcher calls it before any)
    done = _set_heap(libc, HEAP_REUSE_BYTES)
    _HEAP_REUSE[0] = done
    if done:
        logger.info("CPU heap: blocks up to %d MiB are reused, not returned to the kernel after each use",
                    HEAP_REUSE_BYTES >> 20)
    return done


def _set_heap(libc: Any, threshold: int) -> bool:
    mmap_set = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold))
    return mmap_set and bool(libc.mallopt(_M_TRIM_THRESHOLD, threshold))


#: Whether :func:`configure_heap_reuse` is in effect (one process-wide setting).
_HEAP_REUSE = [False]
#: While :func:`heap_returned` holds: glibc's largest default mmap threshold (blocks from it go back at once).
_RETURNED_BYTES = 32 << 20


@contextmanager
def heap_returned() -> Iterator[None]:
    """For passes whose memory is budgeted (tiled VAE passes of large images): inside the block large blocks
    go back to the kernel as soon as they are freed, as glibc does by default, so the pass's peak is what it
    holds, not also what earlier work left for reuse; the heap's free pages are given back first. Nothing
    changes where :func:`configure_heap_reuse` is not in effect.
    """
    libc = glibc() if _HEAP_REUSE[0] else None
    if libc is None:
        yield
        return
    _set_heap(libc, _RETURNED_BYTES)
    libc.malloc_trim(0)
    try:
        yield
    finally:
        libc.malloc_trim(0)
        _set_heap(libc, HEAP_REUSE_BYTES)


def trim_heap() -> None:
    """Give the heap's free pages back to the kernel (glibc ``malloc_trim``), e.g. after a model is unloaded;
    nothing without glibc.
    """
    libc = glibc()
    if libc is not None:
        libc.malloc_trim(0)
