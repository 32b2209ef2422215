"""glibc malloc settings that keep freed memory in the process for reuse.

By default glibc serves a block above its mmap threshold (128 KiB, rising with what the
process frees up to 32 MiB) by a fresh ``mmap`` and unmaps it when freed, and it returns
free memory above 128 KiB at the heap's top to the kernel. A training step allocates
and frees the same large temporaries at every step (a 10M-interaction GraphSAGE step:
~2.6 GB of tensors of up to 125 MB each), so each step page-faults them all in again: the
kernel zeroes every page first, and that was 40 % of a step's CPU time
(``experiments/README.md``). With a higher threshold those blocks come from the heap
and are kept there when freed, so the next step reuses them without a fault. The cost is
memory: the heap's free holes count in the process's RSS (a 10M GraphSAGE epoch: peak
RSS 3.76 -> 4.67 GB, flat over the epoch; 265.5 -> 142.3 s).

:func:`keep_freed_memory` applies the settings with ``mallopt`` (Linux with glibc; on
another C library it does nothing and says so). They are process-wide and last until
the process exits.

:func:`bound_onednn_caches` is the other memory setting of training: bf16 steps on the CPU
run their products through oneDNN, whose caches keep what they built for every new
shape, and a sampled block has new shapes at every step.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRAINING_LIMIT = 1 << 30  # bytes: above a 10M step's largest tensor (125 MB), a 50M one's


def keep_freed_memory(limit: int = 32 << 20, trim: int = 256 << 20) -> bool:
    """Serve blocks up to ``limit`` bytes from the heap (not ``mmap``) and keep up to
    ``trim`` free bytes at the heap's top; True when glibc took both settings (values
    up to 2**31 - 1)."""
    if not 0 < limit < 2**31 or not 0 < trim < 2**31:
        raise ValueError(f"limit and trim must be in [1, 2**31), got {limit} and {trim}")
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, limit)) and bool(mallopt(M_TRIM_THRESHOLD, trim))


# oneDNN's primitive cache and ideep's LRU cache (PyTorch's CPU bf16 products), each
# keyed by tensor shapes and holding up to 1024 entries by default.
ONEDNN_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0", "LRU_CACHE_CAPACITY": "1"}


def bound_onednn_caches() -> dict[str, str]:
    """Turn off oneDNN's and ideep's shape-keyed caches for this process, unless the
    environment already sets them; returns the variables set.

    A bf16 step on the CPU runs its matrix products through oneDNN (ideep), which caches
    the primitives (and their buffers) it builds for each new combination of shapes. A
    mini-batch block has new row counts at every step, so the caches never hit and only
    grow: a bf16 GraphSAGE epoch's memory grew by ~20 MB a step on 2M interactions
    (75 MB at 10M) until they held their 1024 entries each. Uncached, the epoch's RSS is
    flat and its steps as fast (experiments/README.md). Both libraries read the variables
    when they first build a primitive, so this has to run before the process's first bf16
    product (:class:`gnnrec.gnn.train.RankingStep` calls it for ``precision="bf16"``).
    """
    applied = {k: v for k, v in ONEDNN_CACHES.items() if k not in os.environ}
    os.environ.update(applied)
    return applied
