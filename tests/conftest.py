import importlib

import numpy as np
import pytest


def rel_err(a, b):
    """Relative RMS error ||a - b|| / ||b|| (the flash-linear-attention metric), 0 when both vanish."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    return float(num / den) if den > 0 else float(num)


@pytest.fixture
def rng():
    return np.random.default_rng(20250121)


@pytest.fixture
def threads(monkeypatch):
    """``run(fn, n)``: ``fn()`` with the host methods at one thread, then with ``n`` threads (the BLAS
    count ``_host_threads`` reads is faked: CI may have one core). Both runs hold the BLAS at one thread,
    as a split's shares do: a product's bits may depend on the BLAS's own thread count (OpenBLAS
    splits large products), which is not what the split is tested for."""
    import threadpoolctl

    from ttr_stats.methods import _host_threads
    from ttr_stats.methods.delta import chunked as delta_chunked
    from ttr_stats.methods.identity import chunked as identity_chunked
    from ttr_stats.methods.rls import chunked as rls_chunked

    # the small test problems are below the methods' break-even sizes: split them anyway
    monkeypatch.setattr(identity_chunked, "THREAD_MIN_WORK", 0)
    monkeypatch.setattr(rls_chunked, "THREAD_MIN_WORK", 0)
    monkeypatch.setattr(delta_chunked, "THREAD_MIN_WORK", 0)
    splits = []
    real_split = _host_threads.split_rows
    monkeypatch.setattr(
        _host_threads, "split_rows", lambda rows, parts: splits.append(parts) or real_split(rows, parts)
    )

    def run(fn, n):
        monkeypatch.setattr(_host_threads, "MAX_THREADS", 1)
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            one = fn()
        monkeypatch.setattr(_host_threads, "MAX_THREADS", None)
        monkeypatch.setattr(_host_threads, "_blas_threads", lambda: n)
        assert _host_threads.n_threads(6) == min(n, 6)
        splits.clear()
        # the BLAS at one thread here too (the count the split reads is faked above): the products a
        # method runs outside its split then round as in the one-thread run, so the runs differ by the
        # split alone (tiled local linear at 2 BLAS threads outside its split: 1.04e-13 apart)
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            many = fn()
        assert splits and max(splits) > 1, "the call never split its rows over threads"
        return one, many

    return run


def make_qkv(rng, batch=(2,), T=24, d_k=5, d_v=3, dtype=np.float64, unit=False):
    Q = rng.standard_normal(batch + (T, d_k))
    K = rng.standard_normal(batch + (T, d_k))
    V = rng.standard_normal(batch + (T, d_v))
    if unit:
        Q /= np.linalg.norm(Q, axis=-1, keepdims=True)
        K /= np.linalg.norm(K, axis=-1, keepdims=True)
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)


# --- array namespaces: numpy, array_api_strict (CPU, catches non-standard calls) and cupy (GPU only) --------
def _cupy_available():
    try:
        cp = importlib.import_module("cupy")
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no CuPy, no driver or no device all mean: skip
        return False


def _gxx():
    """Whether tests/cuda_on_host.py can run CUDA sources on the host (it needs g++)."""
    try:
        import cuda_on_host
    except ImportError:
        return False
    return cuda_on_host.available()


#: the mark of tests that run a kernel's CUDA source on the host
host_cuda = pytest.mark.skipif(not _gxx(), reason="g++ not found (tests/cuda_on_host.py needs it)")


BACKENDS = [
    "numpy",
    pytest.param(
        "array_api_strict",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("array_api_strict") is None, reason="array_api_strict not installed"
        ),
    ),
    pytest.param(
        "cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")]
    ),
]


class Backend:
    """An array library under test: ``put`` NumPy data there, ``get`` results back, ``is_native`` checks."""

    def __init__(self, name):
        self.name = name
        self.mod = importlib.import_module(name)

    def put(self, a):
        return None if a is None else self.mod.asarray(a)

    def get(self, a):
        if self.name == "cupy":
            return a.get()
        return np.asarray(a)

    def is_native(self, a):
        if self.name == "numpy":
            return isinstance(a, np.ndarray)
        return type(a).__module__.split(".")[0] == self.name


@pytest.fixture(params=BACKENDS)
def backend(request):
    return Backend(request.param)
