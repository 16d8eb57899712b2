"""``method="blocked"`` of kernel ridge (a Cholesky factor grown a block of keys at a time, issue 10)
against the row-by-row reference (``"recurrent"``), the whole-factor ``"parallel"`` and scikit-learn.

Tolerance 1e-10 relative (float64): every method solves the same prefix systems
:math:`(\\kappa_t + \\lambda I)\\alpha = V_t` through a Cholesky factor of the same matrix, so they differ by
rounding amplified by the condition number of the prefix Gram matrices; with ridge 0.1 and these kernels
that is below ~1e3, i.e. < 1e-12 (measured 1e-13 .. 5e-13 against the reference). Causality is bit for bit.
"""

import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge as SkKernelRidge

import ttr_stats as tt
from ttr_stats.methods.kernel_ridge import blocked as blocked_mod
from ttr_stats.regressors.kernel_ridge import KERNELS

F64 = 1e-10


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def data(rng, T, d, batch=(2,), d_v=3):
    return tuple(rng.standard_normal(batch + (T, n)) for n in (d, d, d_v))


def layer(kernel="rbf", ridge=0.1, **kw):
    return tt.recipes.kernel_regression(kernel, ridge, **kw)


@pytest.mark.parametrize("T", [1, 63, 65, 257])
@pytest.mark.parametrize("d", [1, 7])
def test_blocked_equals_the_reference_on_odd_shapes(rng, T, d):
    Q, K, V = data(rng, T, d)
    L = layer()
    ref = L(Q, K, V, method="recurrent")
    par = L(Q, K, V, method="parallel")
    # blocks of one key (the reference's own loop, slow: T <= 65 only) up to one block for everything
    for chunk_size in (None, 16, 64, 1000) + ((1,) if T <= 65 else ()):
        got = L(Q, K, V, method="blocked", chunk_size=chunk_size)
        assert got.shape == ref.shape
        assert rel(got, ref) < F64, chunk_size
        assert rel(got, par) < F64, chunk_size


@pytest.mark.parametrize("kernel", KERNELS)
def test_every_kernel(rng, kernel):
    """Each kernel of the regressor, batch dims (2, 3), T = 150 with blocks of 32 (a partial last one)."""
    Q, K, V = data(rng, 150, 4, batch=(2, 3))
    Q, K = Q / 2, K / 2  # exp-dot / polynomial Gram entries of moderate size
    L = layer(kernel, ridge=1.0 if kernel in ("linear", "polynomial") else 0.1)
    got = L(Q, K, V, method="blocked", chunk_size=32)
    assert rel(got, L(Q, K, V, method="recurrent")) < F64


def test_equals_sklearn_refitted_on_every_prefix(rng):
    Q, K, V = data(rng, 90, 3, batch=())
    L = layer("rbf", 0.1, gamma=0.5)
    got = L(Q, K, V, method="blocked", chunk_size=16)
    ref = np.stack(
        [
            SkKernelRidge(alpha=0.1, kernel="rbf", gamma=0.5)
            .fit(K[: t + 1], V[: t + 1])
            .predict(Q[t : t + 1])[0]
            for t in range(90)
        ]
    )
    assert rel(got, ref) < F64


def test_lengths_and_non_causal(rng):
    Q, K, V = data(rng, 100, 3, batch=(3,))
    L = layer()
    lengths = np.array([0, 37, 100])
    got = L(Q, K, V, method="blocked", chunk_size=16, lengths=lengths)
    assert rel(got, L(Q, K, V, method="recurrent", lengths=lengths)) < F64
    assert np.all(got[0] == 0) and np.all(got[1, 37:] == 0)
    got = L(Q, K, V, method="blocked", causal=False)
    assert rel(got, L(Q, K, V, method="parallel", causal=False)) < F64


@pytest.mark.parametrize("s", [1, 16, 17, 40, 63])
def test_causality_bit_for_bit(rng, s):
    Q, K, V = data(rng, 64, 3)
    L = layer()
    y = L(Q, K, V, method="blocked", chunk_size=16)
    Q2, K2, V2 = (x.copy() for x in (Q, K, V))
    for x in (Q2, K2, V2):
        x[:, s:] = rng.standard_normal(x[:, s:].shape) * 10
    y2 = L(Q2, K2, V2, method="blocked", chunk_size=16)
    assert np.array_equal(y[:, :s], y2[:, :s])
    assert not np.array_equal(y[:, s:], y2[:, s:])


@pytest.mark.parametrize("method", ["blocked", "parallel", "recurrent"])
def test_not_positive_definite_names_ridge(method):
    """Four copies of one key with a linear kernel and ridge 1e-300: the Gram matrix is singular to
    rounding. Every method raises the FloatingPointError that names ridge (``"parallel"`` used to let
    NumPy's LinAlgError through)."""
    K = np.ones((4, 2))
    with pytest.raises(FloatingPointError, match="^ridge: .*increase ridge"):
        layer("linear", 1e-300)(K, K, K[:, :1], method=method)


def test_auto_picks_blocked_from_the_measured_crossover(rng):
    L = layer()
    for T, expected in ((blocked_mod.AUTO_MIN_T // 2, "parallel"), (blocked_mod.AUTO_MIN_T, "blocked")):
        Q, K, V = data(rng, T, 3, batch=(1,))
        L(Q, K, V)
        assert L.method_ == expected, (T, L.method_)
    L(Q, K, V, causal=False)
    assert L.method_ == "parallel"  # the set regression reads once: no prefixes to grow


def test_memory_estimate_is_below_the_dense_form():
    from ttr_stats.methods.kernel_ridge._common import gram_bytes

    rng = np.random.default_rng(0)
    Q, K, V = data(rng, 2048, 3, batch=(1,))
    P = layer()._prepare(Q, K, V, None, None, None, None)
    assert blocked_mod.blocked_bytes(P) < gram_bytes(P) / 2


def test_host_call_runs_at_one_blas_thread_and_restores_it(rng, monkeypatch):
    """NumPy calls longer than a block run with every BLAS library at one thread (SciPy's solves alternate
    with NumPy's products: two spinning thread pools), and the thread counts are restored after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    seen = []
    real = blocked_mod.blockedcholesky

    def spy(*args, **kw):
        seen.append([c["num_threads"] for c in threadpoolctl.threadpool_info() if c["user_api"] == "blas"])
        return real(*args, **kw)

    before = [c["num_threads"] for c in threadpoolctl.threadpool_info() if c["user_api"] == "blas"]
    Q, K, V = data(rng, 40, 3)
    L = layer()
    ref = L(Q, K, V, method="recurrent")
    monkeypatch.setattr(blocked_mod, "blockedcholesky", spy)
    got = L(Q, K, V, method="blocked", chunk_size=16)
    assert seen and all(n == 1 for n in seen[0]), seen
    assert [c["num_threads"] for c in threadpoolctl.threadpool_info() if c["user_api"] == "blas"] == before
    assert rel(got, ref) < F64


def test_parallel_host_call_in_the_spinning_range_runs_at_one_blas_thread(rng, monkeypatch):
    """``"parallel"`` limits the BLAS libraries inside ``ONE_BLAS_THREAD_T`` only (below it the limit costs
    more than it saves; above it the whole-factor solve gains from the threads)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from ttr_stats.methods.kernel_ridge import parallel as par

    seen = []
    real = par._parallel

    def spy(*args, **kw):
        seen.append(max(c["num_threads"] for c in threadpoolctl.threadpool_info() if c["user_api"] == "blas"))
        return real(*args, **kw)

    monkeypatch.setattr(par, "_parallel", spy)
    monkeypatch.setattr(par, "ONE_BLAS_THREAD_T", (30, 50))
    L = layer()
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        for T in (20, 40, 60):
            Q, K, V = data(rng, T, 3)
            assert rel(L(Q, K, V, method="parallel"), L(Q, K, V, method="recurrent")) < F64
    assert seen[1] == 1 and seen[0] == seen[2] == 2, seen
