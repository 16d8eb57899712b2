"""The host fast paths of the tiled kernel smoothers (issue 10, CPU): what makes set regressions 20x
statsmodels ``KernelReg`` (``benchmarks/cpu_tiled.py``).

* threads over query blocks (``_tiles.in_threads``) for non-causal NumPy calls: the values of one thread
  to rounding (1e-13 relative), for Nadaraya-Watson, local linear (one-pass and its exact fallback) and local quadratic;
* long key blocks of non-causal host calls (``_tiles.key_block``): equal to the dense ``"parallel"``
  reference whether the keys make one block or several (1e-10 relative, float64: the same weighted sums
  in another order; 1e-10 is the suite's float64 tolerance for the tiled methods);
* the non-causal shared centre of the one-pass local linear form (the key nearest the keys' mean);
* the NumPy augmented-product squared distances (``similarity.sq_distances``) against explicit
  differences;
* ``_array.psd_solve``'s inverse shortcut on well-conditioned float64 batches against the
  eigendecomposition, and its fallbacks (ill-conditioned, singular, indefinite matrices; float32).
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats import _array
from ttr_stats.methods import _host_threads
from ttr_stats.methods.kernel_smoother import _tiled_moments, _tiles
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot, Gaussian, sq_distances


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def layer(order, sim, weights=None, ridge=0.0):
    return tt.TestTimeRegression(
        weights=weights or tt.weights.Uniform(), regressor=LocalPolynomial(order, sim, ridge)
    )


def set_data(rng, n, d, dv=1, shape=()):
    X = rng.uniform(-1, 1, shape + (n, d))
    Y = np.concatenate([np.sin(3 * X).sum(-1, keepdims=True), rng.standard_normal(shape + (n, dv - 1))], -1)
    return X, Y


@pytest.mark.parametrize(
    "order, sim, n_threads",
    [(0, Gaussian(0.5), 2), (0, ExpDot(), 3), (1, Gaussian(0.5), 2), (1, Gaussian(0.05), 3), (2, Gaussian(0.7), 2)],
)
def test_threads_over_query_blocks_give_the_same_values(rng, threads, monkeypatch, order, sim, n_threads):
    # 1100 x 1100 pairs is past THREAD_MIN_PAIRS; h = 0.05 at d = 3 leaves far queries on few keys, so
    # some go through the exact fallback inside their thread
    monkeypatch.setattr(_tiles, "THREAD_MIN_PAIRS", 2**20)
    n = 1100 if order < 2 else 700
    if order == 2:
        monkeypatch.setattr(_tiles, "THREAD_MIN_PAIRS", 1)
    X, Y = set_data(rng, n, 3, dv=2)
    L = layer(order, sim)
    one, many = threads(lambda: L(X, X, Y, causal=False, method="tiled"), n_threads)
    # not bit for bit: a thread's share groups its blocks into other steps (other product shapes and
    # alignments, so other SIMD sum orders); the same sums, 1e-13 relative (rounding, float64)
    assert rel(many, one) < 1e-13
    assert np.isfinite(one).all()


def test_threads_are_used_and_only_for_large_non_causal_numpy_calls(rng, monkeypatch):
    seen = []
    real = _host_threads.run_split

    def spy(fn, rows, work=None, min_work=0):
        seen.append((rows, work is not None and work >= min_work))  # (query blocks, may split)
        return real(fn, rows, work=work, min_work=min_work)

    monkeypatch.setattr(_host_threads, "run_split", spy)
    X, Y = set_data(rng, 1100, 2)
    L = layer(0, Gaussian(0.5))
    L(X, X, Y, causal=False, method="tiled")
    assert seen == [(-(-1100 // 128), True)]  # every query block, split by run_split
    seen.clear()
    L(X, X, Y, causal=True, method="tiled")  # causal: one thread (the blocks' work differs)
    assert seen == []
    L(X[:300], X[:300], Y[:300], causal=False, method="tiled")  # below THREAD_MIN_PAIRS: one share
    assert seen == [(-(-300 // 128), False)]


@pytest.mark.parametrize("n", [1, 63, 65, 1000])
@pytest.mark.parametrize("d", [1, 7])
@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("key_bytes", [None, 1])
def test_long_and_short_key_blocks_equal_parallel(rng, monkeypatch, n, d, order, key_bytes):
    """``key_bytes=1``: the smallest budget, key blocks of one query block's length (many blocks, the
    online normaliser across them); None: the defaults (all keys in one block here)."""
    if key_bytes is not None:
        monkeypatch.setattr(_tiled_moments, "KEY_BYTES", key_bytes)
        monkeypatch.setattr(_tiles, "STEP_BYTES", key_bytes)
        monkeypatch.setattr(tt.methods.kernel_smoother.tiled, "STEP_BYTES", key_bytes)
    X, Y = set_data(rng, n, d, dv=3)
    Xq = rng.uniform(-1, 1, (n + 5, d))  # more queries than keys, and not the keys
    L = layer(order, Gaussian(0.6), ridge=1e-3 if d == 7 else 0.0)
    ours = L(Xq, X, Y, causal=False, method="tiled")
    ref = L(Xq, X, Y, causal=False, method="parallel")
    assert rel(ours, ref) < 1e-10


def test_key_block_lengths():
    class P:  # the fields key_block reads
        causal, device, n_batch, itemsize = False, "cpu", 1, 8

        class K:
            shape = (5000, 3)

    assert _tiles.key_block(P, 128, 4, 32 * 2**20) == 5000  # 128 x 8192 x 4 x 8 bytes fit: every key
    assert _tiles.key_block(P, 128, 4, 128 * 4 * 8 * 1000) == 896  # 1000 keys fit: a multiple of 128
    assert _tiles.key_block(P, 128, 4, 1) == 128  # at least one query block's length
    P.causal = True
    assert _tiles.key_block(P, 128, 4, 32 * 2**20) is None  # causal tiles stay square


def test_shared_centre_is_the_key_nearest_the_mean(rng):
    K = rng.standard_normal((2, 50, 3)) + 1e3
    V = rng.standard_normal((2, 50, 2))
    k, v = _tiled_moments._nearest_to_mean(np, K, V)
    for b in range(2):
        i = int(np.argmin(((K[b] - K[b].mean(0)) ** 2).sum(-1)))
        assert np.array_equal(k[b, 0], K[b, i]) and np.array_equal(v[b, 0], V[b, i])


def test_far_cluster_set_regression_keeps_its_digits(rng):
    """Keys in a cluster of spread 1e-3 at 1e4 from the origin: the shared centre is a key of the cluster,
    so raw moments do not cancel; the answer equals the exact reference."""
    X = 1e4 + 1e-3 * rng.standard_normal((400, 2))
    Y = np.sin(1e3 * (X - 1e4)).sum(-1, keepdims=True)
    L = layer(1, Gaussian(2e-3))
    assert rel(L(X, X, Y, causal=False, method="tiled"), L(X, X, Y, causal=False, method="parallel")) < 1e-9


@pytest.mark.parametrize("shift", [0.0, 1e3])
@pytest.mark.parametrize("d", [1, 2, 9])
def test_numpy_squared_distances_match_explicit_differences(rng, shift, d):
    X = shift + rng.standard_normal((3, 40, d))
    Y = shift + rng.standard_normal((1, 50, d))
    got = sq_distances(np, X, Y)
    ref = ((X[..., :, None, :] - Y[..., None, :, :]) ** 2).sum(-1)
    assert got.shape == (3, 40, 50) and (got >= 0).all()
    # the expansion's absolute error: eps (||x - y_0||^2 + ||y - y_0||^2) times a few (y_0 = Y's first row)
    scale = ((X - Y[..., :1, :]) ** 2).sum(-1)[..., :, None] + ((Y - Y[..., :1, :]) ** 2).sum(-1)[..., None, :]
    assert (np.abs(got - ref) <= 8 * np.finfo(float).eps * (scale + 1e-300)).all()
    assert np.all(sq_distances(np, X[0], X[0]).diagonal() <= 8 * np.finfo(float).eps * 4 * ((X[0] - X[0, :1]) ** 2).sum(-1))


def _eigh_solve(R, b, rtol):
    return _array._psd_solve_eigh(np, R, b, rtol)


def test_psd_solve_inverse_shortcut_matches_the_eigendecomposition(rng):
    A = rng.standard_normal((300, 6, 18))
    R = A @ np.swapaxes(A, -1, -2)  # well conditioned (cond ~ 10)
    b = rng.standard_normal((300, 6, 2))
    rtol = 100 * 6 * np.finfo(float).eps
    got = _array.psd_solve(np, R, b)
    ref = _eigh_solve(R, b, rtol)
    # both solve a system of condition < FAST_COND = 1e4: they differ by rounding, ~cond eps
    assert rel(got, ref) < 1e-11
    # b broadcast against the batch
    got1 = _array.psd_solve(np, R, b[:1])
    assert got1.shape == (300, 6, 2) and rel(got1, _eigh_solve(R, np.broadcast_to(b[:1], b.shape), rtol)) < 1e-11


def test_psd_solve_sends_ill_conditioned_and_rank_deficient_matrices_to_the_eigendecomposition(rng):
    A = rng.standard_normal((40, 5, 5))
    R = A @ np.swapaxes(A, -1, -2)
    U = np.linalg.qr(rng.standard_normal((5, 5)))[0]
    R[3] = U @ np.diag([1.0, 1.0, 1.0, 1.0, 1e-14]) @ U.T  # numerically rank 4: the cut drops 1e-14
    R[7] = U @ np.diag([1.0, 1.0, 1.0, 1.0, 1e-6]) @ U.T  # positive definite, cond 1e6 > FAST_COND
    b = rng.standard_normal((40, 5, 1))
    rtol = 100 * 5 * np.finfo(float).eps
    got = _array.psd_solve(np, R, b)
    ref = _eigh_solve(R, b, rtol)
    assert np.array_equal(got[[3, 7]], _eigh_solve(R[[3, 7]], b[[3, 7]], rtol))  # the eigh path itself
    assert rel(got, ref) < 1e-11
    # an exactly singular matrix (Cholesky fails) and an indefinite one: the whole batch by eigh
    for bad in (np.zeros((5, 5)), U @ np.diag([1.0, 1.0, 1.0, 1.0, -0.5]) @ U.T):
        R2 = R.copy()
        R2[0] = bad
        assert np.array_equal(_array.psd_solve(np, R2, b), _eigh_solve(R2, b, rtol))


def test_psd_solve_float32_and_single_matrices_keep_the_eigendecomposition(rng):
    A = rng.standard_normal((20, 4, 12))
    R = A @ np.swapaxes(A, -1, -2)
    b = rng.standard_normal((20, 4, 1))
    R32, b32 = R.astype(np.float32), b.astype(np.float32)
    rtol32 = 100 * 4 * float(np.finfo(np.float32).eps)
    assert np.array_equal(_array.psd_solve(np, R32, b32), _eigh_solve(R32, b32, rtol32))
    rtol = 100 * 4 * np.finfo(float).eps
    assert np.array_equal(_array.psd_solve(np, R[0], b[0]), _eigh_solve(R[0], b[0], rtol))


@pytest.mark.parametrize("causal", [False, True])
def test_solves_in_several_batches_equal_parallel(rng, monkeypatch, causal):
    """``SOLVE_BYTES = 1``: one query block a batched solve (the GPU's setting at d = 64) instead of all."""
    monkeypatch.setattr(_tiled_moments, "SOLVE_BYTES", 1)
    X, Y = set_data(rng, 700, 3, dv=2)
    L = layer(1, Gaussian(0.6))
    ours = L(X, X, Y, causal=causal, method="tiled")
    assert rel(ours, L(X, X, Y, causal=causal, method="parallel")) < 1e-10


class _CachedZeros(tt.similarity.Similarity):
    """Uniform weights as a read-only broadcast of one cached (n_q, n_k) array: the in-place tile
    arithmetic must neither write into it nor fail on its shape."""

    def __init__(self, qk_norm=False):
        self.qk_norm = qk_norm

    def log_weights(self, xp, Q, K):
        z = np.zeros((Q.shape[-2], K.shape[-2]))
        z.flags.writeable = False
        return np.broadcast_to(z, np.broadcast_shapes(Q.shape[:-2], K.shape[:-2]) + z.shape)


def test_a_similarity_returning_a_read_only_view_is_not_modified(rng):
    X, Y = set_data(rng, 300, 2)
    L = layer(0, _CachedZeros())
    ours = L(X, X, Y, causal=False, method="tiled")
    assert rel(ours, np.broadcast_to(Y.mean(0), Y.shape)) < 1e-12  # uniform weights: every output the mean
