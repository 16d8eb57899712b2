"""Host (NumPy) methods split their batch over threads: each thread runs the same loop on its rows.

The chunked host loops are chains of small matmuls (a (32, 64) block per head and chunk) that the BLAS
runs on one core each, so the heads of a call are split into :func:`n_threads` slices, each looped over
in its own thread (NumPy releases the GIL inside matmul and the ufuncs). Every row is computed by the
very same calls on its slice as on the whole batch, so the result does not depend on the thread count,
bit for bit (tests/test_cpu_fast_threads.py).

The thread count follows the BLAS: the smallest thread count of the loaded BLAS libraries
(``threadpoolctl``, so ``OPENBLAS_NUM_THREADS=1`` and ``threadpool_limits(1)`` give one thread), at most
:data:`MAX_THREADS` (``None``: no cap beyond the BLAS's). Set ``MAX_THREADS = 1`` to run single-threaded.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["MAX_THREADS", "n_threads", "split_rows", "run_split", "one_blas_thread"]

#: the most threads a host method uses (None: as many as the BLAS libraries are set to use)
MAX_THREADS = None

_PREFIX = "ttr_stats_host"
_lock = threading.Lock()
_local = threading.local()
_pool = None
_pool_pid = None
_controller = None


def _blas_threads() -> int:
    global _controller
    try:
        if _controller is None:
            import scipy.linalg  # noqa: F401 - load SciPy's own BLAS first, so that the controller sees it
            import threadpoolctl

            _controller = threadpoolctl.ThreadpoolController()
        counts = [c.num_threads for c in _controller.lib_controllers if c.user_api == "blas"]
    except Exception:  # no threadpoolctl, or a library it cannot query: one thread
        return 1
    return max(1, min(counts)) if counts else 1


def n_threads(rows: int) -> int:
    """Threads for ``rows`` independent rows (heads times sequences): at most one per row."""
    if rows < 2 or MAX_THREADS == 1 or getattr(_local, "inside", False):
        return 1  # (inside a split's share: no nested splits, so a pool thread never waits on the pool)
    n = _blas_threads()
    if MAX_THREADS is not None:
        n = min(n, int(MAX_THREADS))
    return max(1, min(n, rows))


def split_rows(rows: int, parts: int):
    """``parts`` contiguous slices covering ``range(rows)``, sizes differing by at most one."""
    base, extra = divmod(rows, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def run_split(fn, rows: int, work=None, min_work=0):
    """``[fn(sl) for sl in slices]`` over :func:`split_rows` of ``rows``, the slices in threads.

    ``fn(slice)`` must touch only its rows of any shared output. Returns the results in slice order;
    the first exception raised by any slice is re-raised. ``work`` below ``min_work`` (the caller's
    measure of the call's size and its measured break-even) runs one share in the calling thread:
    dispatching to the pool and limiting the BLAS cost ~0.3-0.7 ms a call on the 2-core host, more than
    a small call's own time. The results are the same either way, bit for bit.
    """
    parts = n_threads(rows) if work is None or work >= min_work else 1
    slices = split_rows(rows, parts)
    if parts == 1:
        return [fn(slices[0])]

    def share(sl):
        _local.inside = True
        try:
            return fn(sl)
        finally:
            _local.inside = False

    global _pool
    global _pool_pid
    with _lock:
        # a forked child inherits the pool object but not its threads: it makes its own
        if _pool is None or _pool._max_workers < parts or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=parts, thread_name_prefix=_PREFIX)
            _pool_pid = os.getpid()
        pool = _pool
    # the threads take the cores the BLAS would have used: it runs one thread per call meanwhile (two
    # multithreaded BLAS calls at once oversubscribe the cores: the RLS chunked method ran 1.7x slower)
    with _one_blas_thread():
        futures = [pool.submit(share, sl) for sl in slices[1:]]
        try:
            first = share(slices[0])  # the calling thread does a share too
        finally:
            rest = [f.exception() or f.result() for f in futures]  # every slice done before the limit ends
    for r in rest:
        if isinstance(r, BaseException):
            raise r
    return [first] + rest


def one_blas_thread(when=True):
    """Context: the loaded BLAS libraries at one thread each, restored after (``threadpoolctl``); with
    ``when`` false, a context that changes nothing.

    For host loops that alternate small products between NumPy's and SciPy's BLAS (each wheel bundles its
    own OpenBLAS, each with a thread pool): the idle threads of one library spin while the other works, and
    on the 2-core host they took most of the cores. Kernel ridge ``"blocked"`` (T = 1000, d = 8): 0.10 s
    with two threads a library against 0.040 s with one.
    """
    if not when:
        return contextlib.nullcontext()
    _blas_threads()  # the controller, made on first use
    return _one_blas_thread()


def _one_blas_thread():
    """Context: the BLAS libraries limited to one thread (``threadpoolctl``), restored after."""
    try:
        return _controller.limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - no controller: nothing to limit
        return contextlib.nullcontext()
