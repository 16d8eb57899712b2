"""The fused moments-to-output kernel of tiled local linear attention (``methods/kernel_smoother/_fused_solve.py``).

* on the host with g++ (skipped without): the CUDA source run by ``tests/cuda_on_host.py`` (every thread a
  coroutine, dynamic shared memory poisoned with NaN) equals the array route of ``_tiled_moments.solve`` on
  NumPy, on the same moment rows: outputs and flags, on odd sizes (d in {1, 7, 16, 63, 64}, m in {1, 5, 16,
  64, 65}), with rows of a batch element strided apart (a view of a step's array), an empty memory (s0 = 0),
  a query whose moments cancel (flagged by both), a NaN (flagged);
* the layer with the host-compiled kernel in place of the CuPy one equals the library route and the
  ``parallel`` reference, also when the kernel flags queries (they take the exact path);
* on a GPU (CuPy; skipped without): tiled local linear with the kernel equals it with the kernel switched
  off and the NumPy ``parallel`` reference (float64 and float32 inputs; the moments are float64 for both, the
  kernel's one dtype), and its matrix stays in registers.

Tolerances: the moments are built with condition numbers of C + ridge I below ~100, so Gauss-Jordan without
pivoting and LU with partial pivoting agree to about ``d * cond * eps``: float64 1e-11 (64 * 100 * 2.2e-16
= 1.4e-12, with room for the sums' order).
"""

from types import SimpleNamespace

import numpy as np
import pytest
from conftest import _cupy_available

from ttr_stats.methods.kernel_smoother import _fused_solve as FS
from ttr_stats.methods.kernel_smoother import _tiled_moments as TM
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot

RIDGE = 1e-2


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _moments(rng, nb, c, d, m, n=48, dtype=np.float64):
    """Moment rows (nb, c, nf) of c queries a batch element, each with its own random positive weights on
    n keys around the batch element's centre (its first key), the centre (nb, 1, d) / (nb, 1, m) and the
    queries (nb, c, d)."""
    K, V = rng.standard_normal((nb, n, d)), rng.standard_normal((nb, n, m))
    ck, cv = K[:, :1], V[:, :1]
    F = TM._features(np, K - ck, V - cv)
    S = rng.random((nb, c, n)) @ F
    Q = rng.standard_normal((nb, c, d))
    return tuple(x.astype(dtype) for x in (S, ck, cv, Q))


def _array_route(S, ck, cv, Q):
    """``_tiled_moments.solve`` on NumPy (the array route): outputs (nb, c, m) and flags (nb, c)."""
    plan = SimpleNamespace(nbatch=1, Qb=Q[:, None])
    reg = LocalPolynomial(1, ExpDot(), RIDGE)
    y, ok = TM.solve(np, reg, plan, [S], [(ck, cv)], (0, 1), ck.shape[-1], cv.shape[-1])
    return y[:, 0], ok[:, 0]


def _host(dtype, d, m):
    cuda_on_host = pytest.importorskip("cuda_on_host")
    if not cuda_on_host.available():
        pytest.skip("no g++")
    t = "float" if dtype == np.float32 else "double"
    rr, cc = FS.shape(d, m)
    types = [
        f"const {t}*",
        "long long",
        f"const {t}*",
        "long long",
        f"const {t}*",
        f"const {t}*",
        f"{t}*",
        "int*",
    ]
    kern = cuda_on_host.compile_kernel(
        FS._SOURCE, f"ll_output<{t}, {rr}, {cc}>", types + ["int"] * 3 + [t, t]
    )

    def run(S, s_batch, c, Q, q_batch, ck, cv):
        """The kernel on (nb, rows, nf) moments of which the first c rows of each batch element count."""
        nb = ck.shape[0]
        Y = np.full((nb, c, m), np.nan, dtype)  # NaN: an entry no thread writes shows
        info = np.full((nb, c), -7, np.int32)
        args = [np.ascontiguousarray(x, dtype) for x in (S, Q, ck, cv)]
        kern((nb * c,), (FS.NT * FS.NT,), FS.shared_bytes(rr, cc, np.dtype(dtype).itemsize), args[0], s_batch,
             args[1], q_batch, args[2], args[3], Y, info, c, d, m, RIDGE, TM.MAX_CANCELLATION)  # fmt: skip
        return Y, info

    return run


def _kernel(S, ck, cv, Q):
    nb, c, nf = S.shape
    d, m = ck.shape[-1], cv.shape[-1]
    return _host(S.dtype.type, d, m)(S, c * nf, c, Q, c * d, ck[:, 0], cv[:, 0])


@pytest.mark.parametrize(("d", "m"), [(1, 1), (7, 5), (16, 16), (63, 65), (64, 64), (17, 1)])
def test_source_on_the_host_equals_the_array_route(rng, d, m):
    S, ck, cv, Q = _moments(rng, 2, 2 if d > 32 else 3, d, m, n=max(48, 3 * d))
    Y, info = _kernel(S, ck, cv, Q)
    y, ok = _array_route(S, ck, cv, Q)
    assert ok.all() and (info == 0).all()
    assert rel(Y, y) < 1e-11


def test_rows_strided_apart(rng):
    """The rows of a batch element are contiguous, batch elements ``s_batch`` apart (the view of a step's
    (batch, n_blocks, c, nf) array): only the first c rows of each element's 2c are read."""
    d, m, c = 5, 3, 4
    S, ck, cv, Q = _moments(rng, 3, 2 * c, d, m)
    nf = S.shape[-1]
    Y, info = _host(np.float64, d, m)(S, 2 * c * nf, c, Q, 2 * c * d, ck[:, 0], cv[:, 0])
    y, ok = _array_route(np.ascontiguousarray(S[:, :c]), ck, cv, np.ascontiguousarray(Q[:, :c]))
    assert (info == 0).all()
    assert rel(Y, y) < 1e-11


def test_flags_and_empty_memories_match_the_array_route(rng):
    d, m, n = 4, 3, 48
    S, ck, cv, Q = _moments(rng, 2, 5, d, m, n=n)
    # query (0, 2): weight only on five keys far from the centre and 1e-4 apart, so its raw second
    # moments are ~1e10 times its centred ones: the cancellation check fails in both
    K = rng.standard_normal((n, d))
    K[5:10] = 100.0 + 1e-4 * rng.standard_normal((5, d))
    V = rng.standard_normal((n, m))
    p = np.zeros(n)
    p[5:10] = 1.0
    S[0, 2] = p @ TM._features(np, K - K[:1], V - V[:1])
    ck[0], cv[0] = K[:1], V[:1]
    S[0, 4] = 0.0  # no pair of positive weight: reads 0, passes
    S[1, 3, 1 + d + m] = np.nan  # a NaN on S_ee's diagonal: flagged by both
    S[1, 1, 1 + d + m + 2] = np.nan  # off the diagonal: the array route's check passes it (its output is
    # NaN, which the layer's output check refuses); the kernel's pivots flag it for the exact path
    Y, info = _kernel(S, ck, cv, Q)
    y, ok = _array_route(S, ck, cv, Q)
    assert info.tolist() == [[0, 0, 1, 0, 0], [0, 1, 0, 1, 0]]
    assert not np.isfinite(y[1, 1]).all()
    ok[1, 1] = False
    assert np.array_equal(info == 0, ok)
    assert (Y[0, 4] == 0).all() and (y[0, 4] == 0).all()
    assert rel(Y[ok], y[ok]) < 1e-11  # the flags of some queries do not spill over into the others


def test_shapes_and_applies():
    assert FS.shape(64, 64) == (4, 8)
    assert FS.shape(1, 1) == (1, 1)
    assert FS.shape(65, 1) is None and FS.shape(64, 65) is None and FS.shape(0, 3) is None
    assert not FS.applies(np, np.float64, 8, 8, RIDGE)  # NumPy: the array route
    assert (
        FS.output(np, np.zeros((2, 3, 10)), np.zeros((2, 1, 2)), np.zeros((2, 1, 1)), None, RIDGE, 1.0)
        is None
    )


def _local_linear(ridge=RIDGE):
    import ttr_stats as tt

    return tt.TestTimeRegression(weights=tt.weights.Uniform(), regressor=LocalPolynomial(1, ExpDot(), ridge))


def _host_output(monkeypatch, flag=None):
    """``_fused_solve.output`` run by the host-compiled source on NumPy arrays (``flag``: a function of the
    output's batch shape giving queries to report as failed, whatever the kernel said)."""
    cache, calls = {}, []

    def output(xp, S, ck, cv, Qr, ridge, max_cancellation):
        d, m = ck.shape[-1], cv.shape[-1]
        batch, (c, nf) = S.shape[:-2], S.shape[-2:]
        calls.append((d, m))
        run = cache.setdefault((d, m), _host(np.float64, d, m))
        flat = (lambda x, t: np.reshape(np.broadcast_to(x, batch + t), (-1,) + t))  # fmt: skip
        Y, info = run(flat(S, (c, nf)), c * nf, c, flat(Qr, (c, d)), c * d, flat(ck, (1, d))[:, 0],
                      flat(cv, (1, m))[:, 0])  # fmt: skip
        ok = np.reshape(info == 0, batch + (c,))
        if flag is not None:
            ok = ok & ~flag(batch + (c,))
        return np.reshape(Y, batch + (c, m)), ok

    monkeypatch.setattr(FS, "output", output)
    monkeypatch.setattr(FS, "applies", lambda xp, dtype, d, m, ridge: True)
    return calls


def test_tiled_local_linear_through_the_host_kernel_equals_the_library_solve(rng, monkeypatch):
    pytest.importorskip("cuda_on_host")
    L = _local_linear()
    Q, K, V = (rng.standard_normal((2, 70, 5)) for _ in range(3))
    lib = L(Q, K, V, method="tiled", chunk_size=32)
    ref = L(Q, K, V, method="parallel")
    calls = _host_output(monkeypatch)
    got = L(Q, K, V, method="tiled", chunk_size=32)
    assert calls and all(c == (5, 5) for c in calls)
    assert rel(got, lib) < 1e-11  # the two solves' rounding (cond of C + 1e-2 I)
    assert rel(got, ref) < 1e-10


def test_a_flagged_query_takes_the_exact_path(rng, monkeypatch):
    """Queries the kernel flags are recomputed by the exact three passes: the output still equals the
    reference (the flag is forced here on every other query of each block)."""
    pytest.importorskip("cuda_on_host")
    from ttr_stats.methods.kernel_smoother import _tiled_poly

    L = _local_linear()
    Q, K, V = (rng.standard_normal((1, 70, 4)) for _ in range(3))
    ref = L(Q, K, V, method="parallel")
    exact = []
    group = _tiled_poly._group
    monkeypatch.setattr(_tiled_poly, "_group", lambda *a, **k: exact.append(a[3]) or group(*a, **k))
    _host_output(monkeypatch, flag=lambda shape: (np.arange(shape[-1]) % 2 == 1) * np.ones(shape, bool))
    got = L(Q, K, V, method="tiled", chunk_size=32)
    assert exact, "no block went to the exact path"
    assert rel(got, ref) < 1e-10


def test_no_ridge_or_a_subclass_keeps_the_array_route(monkeypatch):
    """ridge = 0 (the minimum-norm solve) and a regressor with its own coefficient solve never reach the
    kernel, whatever ``applies`` says."""
    monkeypatch.setattr(FS, "applies", lambda *a: True)
    assert not TM._ridge_kind(LocalPolynomial(1, ExpDot(), 0.0))

    class Own(LocalPolynomial):
        def _coef_solve(self, xp, C, rhs):
            return super()._coef_solve(xp, C, rhs)

    assert not TM._ridge_kind(Own(1, ExpDot(), RIDGE))
    assert TM._ridge_kind(LocalPolynomial(1, ExpDot(), RIDGE))


@pytest.mark.skipif(not _cupy_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.gpu
def test_the_augmented_matrix_stays_in_registers():
    """No local memory: a dynamically indexed ``a[j / 16]`` (the publish step once read the pivot row that
    way) made NVVM place the whole matrix in local memory (256 bytes a thread: 55 ms for a group of 65536 queries on an H100, no faster than the array route)."""
    fn = FS._function("double", *FS.shape(64, 64))
    assert fn.local_size_bytes == 0


@pytest.mark.skipif(not _cupy_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize(("T", "d", "dtype"), [(65, 7, "float64"), (300, 16, "float64"), (1000, 64, "float64"),
                                               (513, 64, "float32"), (257, 40, "float64")])  # fmt: skip
def test_tiled_local_linear_with_the_kernel_equals_without(rng, monkeypatch, T, d, dtype):
    import cupy as cp

    L = _local_linear()
    Q, K, V = (rng.standard_normal((2, 3, T, d)) for _ in range(3))
    dQ, dK, dV = (cp.asarray(x, dtype=dtype) for x in (Q, K, V))
    calls = []
    output = FS.output
    monkeypatch.setattr(FS, "output", lambda *a: calls.append(1) or output(*a))
    got = cp.asnumpy(L(dQ, dK, dV, method="tiled"))
    assert calls, "the kernel did not run"
    monkeypatch.setattr(FS, "ENABLED", False)
    lib = cp.asnumpy(L(dQ, dK, dV, method="tiled"))
    ref = L(*(cp.asnumpy(x).astype(np.float64) for x in (dQ, dK, dV)), method="parallel")
    # the moments are float64 also for float32 inputs: both float64-close to each other; float32 inputs
    # end in a float32 output (rounding 6e-8 relative, times the solve's condition)
    assert rel(got, lib) < (1e-11 if dtype == "float64" else 1e-6)
    assert rel(got, ref) < (1e-10 if dtype == "float64" else 1e-5)


@pytest.mark.skipif(not _cupy_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.gpu
@pytest.mark.parametrize(("T", "d", "c"), [(700, 9, 128), (1000, 64, 256)])
def test_in_place_rescaled_moments_equal_the_stacked_sum(rng, monkeypatch, T, d, c):
    """The online rescaling of S by one elementwise pass a block (``_tiled_moments.SCALED_ADD``) gives the
    outputs of the stacked product and sum, with several query blocks a step and a few steps a block."""
    import cupy as cp

    L = _local_linear()
    Q, K, V = (cp.asarray(rng.standard_normal((2, 2, T, d))) for _ in range(3))
    monkeypatch.setattr(FS, "ENABLED", False)
    got = cp.asnumpy(L(Q, K, V, method="tiled", chunk_size=c))
    monkeypatch.setattr(TM, "SCALED_ADD", False)
    stacked = cp.asnumpy(L(Q, K, V, method="tiled", chunk_size=c))
    ref = L(*(cp.asnumpy(x) for x in (Q, K, V)), method="parallel")
    # float64 moments one rounding apart (s * f + y fused or not), times the solve's condition
    assert rel(got, stacked) < 1e-11
    assert rel(got, ref) < 1e-10
