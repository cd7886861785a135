"""Keep freed memory in the process: a CPU training step then reuses its pages instead of faulting in new ones.

glibc's malloc serves every block above 32 MiB with a fresh `mmap` and returns it to the system when freed, and it
trims the heap's top whenever more than 128 KiB lies free there. A CPU training step allocates and frees the same
large tensors every update (SmolLM2's 113 MB embedding gradient, AdamW's temporaries, each layer's activations),
so every update touches hundreds of megabytes of brand-new pages, each a page fault the kernel zero-fills. Measured
on SmolLM2 (2 cores, a DPO update of 2 HH pairs at 128 tokens): 3.1-3.6 s per update with glibc's defaults,
2.4-2.7 s with mmap off and no trimming (`benchmarks/train_throughput.py`); peak memory is unchanged (4.0 GB),
since the process reaches the same peak either way and only stops giving pages back between updates.

`keep_freed_memory()` sets this through `mallopt`, so it applies to whatever the process allocates next. The
`ldyn` command calls it before any heavy work; a training script of your own (a TRL or Trainer run with ldyn's
callbacks) can call it first thing, or set MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 in the
environment. It is a no-op where the C library is not glibc (macOS, musl) and when LDYN_MALLOC=default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4  # glibc's <malloc.h> parameter numbers


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to serve large blocks from the heap and never trim it; True where that took effect."""
    if not sys.platform.startswith("linux") or os.environ.get("LDYN_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return all(
        mallopt(param, value) == 1
        for param, value in ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1), (M_TOP_PAD, 64 << 20))
    )
