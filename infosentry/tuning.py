"""Process tuning that `serve`, `worker` and `demo` apply before they work (the environment always wins)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from typing import Any

_M_ARENA_MAX = -8  # glibc's mallopt parameter
TRIM_EVERY_SECONDS = 5.0


def _libc() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_last_trim = 0.0


def release_free_heap() -> None:
    """Hand the heap an embedding round freed back to the system, at most every TRIM_EVERY_SECONDS: glibc keeps
    freed memory below the top of each arena, and a round's batches, vectors and similarity matrices are freed
    all at once. A trim takes well under a millisecond; not glibc: nothing to do."""
    global _last_trim
    now = time.monotonic()
    if now - _last_trim < TRIM_EVERY_SECONDS or not hasattr(_LIBC, "malloc_trim"):
        return
    _last_trim = now
    _LIBC.malloc_trim(0)


def _few_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own heap arena and keeps what they free: the embedding and
    parse threads of a long-running process held ~20 MiB more under load than with two arenas, at no
    measured cost in speed (`bin/bench memory`; MALLOC_ARENA_MAX in the environment still wins)."""
    if "MALLOC_ARENA_MAX" in os.environ or not hasattr(_LIBC, "mallopt"):  # not glibc: nothing to tune
        return
    _LIBC.mallopt(_M_ARENA_MAX, 2)


# Thread-count variables a BLAS library reads; when the operator set one, it is theirs.
_BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _one_blas_thread() -> Any:
    """numpy's OpenBLAS starts a thread per core and lets it spin between calls; matching multiplies small
    matrices (a batch of items by the goals), so the extra thread only burned a core that Postgres and the
    other processes needed: matching 2,000 items against 1,000 goals took the same time with 1.7 instead of
    3.4 CPU seconds (`bin/bench match`). OPENBLAS_NUM_THREADS or OMP_NUM_THREADS in the environment still wins."""
    if any(os.environ.get(name) for name in _BLAS_THREAD_VARS):
        return None
    import numpy  # noqa: F401  (the limit reaches only libraries already loaded: `bin/bench match` loaded it later)
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def tune_process() -> None:
    """What serve, worker and demo set up before they work: two malloc arenas, one BLAS thread."""
    _few_malloc_arenas()
    _one_blas_thread()
