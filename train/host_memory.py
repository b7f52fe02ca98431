"""How a training process's host memory is reused: the CPU counterpart of a GPU caching allocator.

PyTorch's CPU tensors come from glibc's malloc. Blocks above its mmap threshold (32 MiB at most)
are mmap'ed on allocation and unmapped on free, so every step's fresh activations, logits and
gradients of that size are page-faulted in again. On a virtual machine a fault is expensive: a
SmolLM2 GRPO learner step spent 1-12 s of its 7-15 s in the kernel (system time, ~300k faults per
step), and that system time is most of the run-to-run noise of the benchmarks on that machine.

`keep_freed_memory()` tells glibc (mallopt) to serve every block from the heap and never give the
heap's top back: once the heap has grown to a step's peak (two or three steps), steps take no
faults. The price is the usual one of a caching allocator: the process keeps its footprint until
it exits, and holes the allocation pattern cannot reuse add to it (a SmolLM2 learner: 4.12 GiB
after its second step, 4.36 GiB after its twelfth, against a 4.26 GiB peak under the defaults).
SFT trainers, GRPO learners and rollout workers call it at start-up (`train.keep_freed_memory`,
on by default); data preparation does not. A no-op where glibc is not the C library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_NEVER_TRIM = 2**31 - 1  # mallopt takes an int: the heap's free top is trimmed only past 2 GiB


@functools.cache
def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version") else None


def keep_freed_memory(enabled: bool = True) -> bool:
    """Serve all allocations from the heap and keep freed memory for reuse (enabled), or put back
    glibc's default limits for new blocks (enabled=False, for comparisons: the 128 KiB mmap
    threshold then stays fixed instead of adapting). Returns whether glibc accepted the settings
    (False elsewhere). Training processes with `train.keep_freed_memory: false` never call it."""
    libc = _libc()
    if libc is None:
        return False
    mmap_max, trim = (0, _NEVER_TRIM) if enabled else (65536, 128 * 1024)
    return bool(libc.mallopt(_M_MMAP_MAX, mmap_max)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, trim))
