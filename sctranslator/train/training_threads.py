"""The intra-op thread count a training call runs under: the same in every call of a process.

PyTorch's CPU build and Numba's `omp` threading layer share one OpenMP runtime. The first parallel
Numba kernel of a process starts Numba's thread pool, and starting it calls `omp_set_num_threads`
with Numba's thread count (every core) on the thread that ran the kernel; on the OpenMP backend that
is also PyTorch's intra-op thread count for that thread. Training reads and prepares cells with Numba
kernels, so the first `finetune` call of a process used to set its threads, have them reset by its
first kernel, and train with every core, while later calls (pool already started) trained with the
threads asked for: reductions split differently and the weights differed in the last bit.

`pin_training_threads` starts Numba's pool before setting the count, so nothing changes it during
the call; the caller restores its own count (returned) when the call ends.
"""

from __future__ import annotations

import numba
import torch


def pin_training_threads(threads: int | None) -> int:
    """Fix this thread's intra-op thread count for a training call, safe from Numba's pool start.

    Parameters
    ----------
    threads : int or None
        Intra-op threads to train with (`finetune(workers=...)`); None keeps the count the caller
        has now (so a caller's own `torch.set_num_threads` also holds in a process's first call).

    Returns
    -------
    int
        The caller's count before this call: pass it to `torch.set_num_threads` when training ends.
    """
    callers = torch.get_num_threads()
    numba.get_num_threads()  # starts Numba's thread pool now (once per process), before the count is set
    torch.set_num_threads(int(threads) if threads else callers)
    return callers
