"""Keep freed activations in the C heap of a CPU process (glibc).

A CPU update allocates and frees the same activation buffers over and over: blocks of a
few MiB to a few hundred (a real batch's activations, their gradients, vmap's
temporaries, an evaluation network's 100-image batch). glibc's allocator hands such
blocks back to the kernel when they are freed (``mmap``'d blocks are unmapped; the top of
the heap is trimmed once more than a threshold is free), and the kernel zero-fills every
page again on the next touch: millions of minor page faults per run, counted as system
time. Once per process (``mallopt``) this module stops glibc from serving blocks by
``mmap`` (``M_MMAP_MAX`` 0: every block comes from a heap; above 32 MiB, glibc's largest
mmap threshold, there is no other way) and from trimming the heap below 1 GiB of free
memory, so freed blocks stay for the next update. What is computed does not change;
resident memory stays near the run's peak instead of falling between updates. Measured in
docs/performance.md ("The C heap").

Off where glibc is absent (macOS, musl), when ``MDK_KEEP_HEAP=0``, and when the user set
glibc's own ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``MALLOC_MMAP_MAX_``
(theirs stand).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: ``mallopt`` parameter numbers (glibc ``malloc.h``)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
#: glibc's largest allowed mmap threshold on 64-bit (``HEAP_MAX_SIZE / 2``), set as well
#: so that glibc's dynamic threshold stays out of the way
MMAP_THRESHOLD = 32 * 2**20
#: free memory at the top of the heap kept before it is returned to the kernel
TRIM_THRESHOLD = 2**30
#: the user's switch, and glibc's own variables that take precedence over this module
ENV_SWITCH = "MDK_KEEP_HEAP"
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_")

_done: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(device: object = "cpu") -> bool:
    """Stop glibc from serving blocks by mmap and from trimming its heap below 1 GiB of
    free memory, for this process (once); True when that is in effect. ``device`` (a
    ``torch.device`` or its name) is where the caller computes: anything but the CPU
    leaves the allocator alone. Idempotent and cheap to call from every entry point."""
    global _done
    if getattr(device, "type", device) != "cpu":
        return False
    if _done is not None:
        return _done
    if os.environ.get(ENV_SWITCH, "1") == "0" or any(v in os.environ for v in GLIBC_ENV):
        _done = False
        return _done
    libc = _glibc()
    _done = bool(libc is not None
                 and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
                 and libc.mallopt(M_MMAP_MAX, 0) == 1)
    return _done
