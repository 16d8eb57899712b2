"""The small-n host fast paths of the tiled kernel smoothers (issue 10, CPU: set regression n = 500 at 20x
statsmodels ``KernelReg``, ``benchmarks/cpu_tiled.py``).

* ``_array._sweep_solve``: the batched symmetric sweep that ``psd_solve`` takes for many small float64
  matrices instead of LAPACK's per-matrix Cholesky + inverse: the same inverse and condition bound to
  rounding, the lower triangle read, every non-positive-definite batch refused (the eigendecomposition
  then takes the whole batch, as after a failed Cholesky), ill-conditioned matrices still sent to it;
* ``similarity._expansion``: a Gaussian's factor -1 / (2 h^2) inside the augmented product;
* ``_tiles.unshifted_ok``: one-key-block non-causal steps exponentiate the log-weights without the row
  maxima where the sums are as good, and take the shifted path again on an underflow or an overflow;
* the first visit of a query block skips the online rescaling, an all-zero last log-weight is not added.
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats import _array
from ttr_stats.methods.kernel_smoother import _tiled_poly, _tiles, tiled
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot, Gaussian, sq_distances

EPS = np.finfo(np.float64).eps


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def layer(order, sim, weights=None):
    return tt.TestTimeRegression(
        weights=weights or tt.weights.Uniform(), regressor=LocalPolynomial(order, sim)
    )


def spd(rng, n, d, cond_factor=3):
    A = rng.standard_normal((n, d, cond_factor * d))
    return A @ np.swapaxes(A, -1, -2)  # condition ~ 10


def lapack(R, b):
    Rinv = np.linalg.inv(R)
    bound = np.sqrt(np.sum(Rinv * Rinv, axis=(-2, -1))) * np.trace(R, axis1=-2, axis2=-1)
    return Rinv @ b, bound


# --- the sweep --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("m", [1, 3])
def test_sweep_matches_the_lapack_inverse_and_its_bound(rng, d, m):
    R, b = spd(rng, 200, d), rng.standard_normal((200, d, m))
    x, bound = _array._sweep_solve(R, b)
    x_ref, bound_ref = lapack(R, b)
    # two inversions of systems of condition ~10-100: they differ by rounding, ~d cond eps <= 1e-13
    assert rel(x, x_ref) < 1e-12
    assert np.max(np.abs(bound / bound_ref - 1)) < 1e-12


def test_sweep_reads_the_lower_triangle_only(rng):
    R, b = spd(rng, 150, 6), rng.standard_normal((150, 6, 2))
    upper = np.triu_indices(6, 1)
    garbage = R.copy()
    garbage[:, upper[0], upper[1]] = rng.standard_normal((150, upper[0].size))  # not symmetric any more
    x, bound = _array._sweep_solve(R, b)
    xg, bound_g = _array._sweep_solve(garbage, b)
    # the same packed entries in the same operations: bit for bit
    assert np.array_equal(x, xg) and np.array_equal(bound, bound_g)


def test_sweep_chunks_are_independent(rng, monkeypatch):
    R, b = spd(rng, 300, 5), rng.standard_normal((300, 5, 1))
    x, bound = _array._sweep_solve(R, b)
    monkeypatch.setattr(_array, "SWEEP_CHUNK", 64)
    x64, bound64 = _array._sweep_solve(R, b)
    # each matrix's own elementwise operations and its own product: equal bit for bit in any chunk
    assert np.array_equal(x, x64) and np.array_equal(bound, bound64)


@pytest.mark.parametrize("kind", ["zero", "indefinite", "nan", "negative pivot late"])
def test_sweep_refuses_a_batch_with_a_matrix_that_is_not_positive_definite(rng, monkeypatch, kind):
    monkeypatch.setattr(_array, "SWEEP_CHUNK", 64)  # the bad matrix in the third chunk
    d, n = 5, 200
    R, b = spd(rng, n, d), rng.standard_normal((n, d, 1))
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    bad = {
        "zero": np.zeros((d, d)),
        "indefinite": U @ np.diag([1.0, 1.0, 1.0, 1.0, -0.5]) @ U.T,
        "nan": np.full((d, d), np.nan),
        "negative pivot late": np.diag([1.0, 1.0, 1.0, 1.0, -1e-3]),  # the last pivot only
    }[kind]
    R[150] = bad
    assert _array._sweep_solve(R, b) is None
    if kind == "nan":  # as after LAPACK's Cholesky: the eigendecomposition, which refuses NaN
        with pytest.raises(np.linalg.LinAlgError):
            _array.psd_solve(np, R, b)
        return
    rtol = 100 * d * EPS
    # psd_solve then takes the eigendecomposition for the whole batch, as after a failed Cholesky
    assert np.array_equal(_array.psd_solve(np, R, b), _array._psd_solve_eigh(np, R, b, rtol))


def test_psd_solve_takes_the_sweep_for_many_small_matrices_only(rng, monkeypatch):
    calls = []
    sweep = _array._sweep_solve

    def spy(R, b):
        calls.append(R.shape)
        return sweep(R, b)

    monkeypatch.setattr(_array, "_sweep_solve", spy)
    n0, dmax = _array.SWEEP_MIN_BATCH, _array.SWEEP_MAX_D
    for n, d, taken in [(n0, 4, True), (n0 - 1, 4, False), (n0, dmax, True), (n0, dmax + 1, False)]:
        calls.clear()
        R, b = spd(rng, n, d), rng.standard_normal((n, d, 2))
        got = _array.psd_solve(np, R, b)
        assert bool(calls) == taken, (n, d)
        # either way the minimum-norm solution of these well-conditioned systems: rounding, ~cond eps
        assert rel(got, _array._psd_solve_eigh(np, R, b, 100 * d * EPS)) < 1e-11


def test_psd_solve_sweep_sends_ill_conditioned_matrices_to_the_eigendecomposition(rng):
    d, n = 5, 200
    R, b = spd(rng, n, d), rng.standard_normal((2, n // 2, d, 1))  # batch dims of two, broadcast
    R = R.reshape(2, n // 2, d, d)
    U = np.linalg.qr(rng.standard_normal((d, d)))[0]
    R[0, 3] = U @ np.diag([1.0, 1.0, 1.0, 1.0, 1e-14]) @ U.T  # rank 4 numerically: the cut drops 1e-14
    R[1, 7] = U @ np.diag([1.0, 1.0, 1.0, 1.0, 1e-6]) @ U.T  # definite, cond 1e6 > FAST_COND
    rtol = 100 * d * EPS
    got = _array.psd_solve(np, R, b)
    for i, j in [(0, 3), (1, 7)]:  # the eigendecomposition's own values (a sweep would extrapolate 1e14)
        assert np.array_equal(got[i, j], _array._psd_solve_eigh(np, R[i, j], b[i, j], rtol))
    assert rel(got, _array._psd_solve_eigh(np, R, b, rtol)) < 1e-11


# --- the Gaussian's factor inside the product --------------------------------------------------------------
def test_gaussian_log_weights_are_the_scaled_expansion(rng):
    X, Y = rng.standard_normal((4, 64, 5)), rng.standard_normal((1, 90, 5))
    d2 = sq_distances(np, X, Y)
    # h = 0.5: the factor -2 is a power of two, so scaling Y's columns is exact: the same bits
    assert np.array_equal(Gaussian(0.5).log_weights(np, X, Y), -d2 / 0.5)
    for h in (0.7, 3.0):
        got, ref = Gaussian(h).log_weights(np, X, Y), -d2 / (2 * h * h)
        assert (got <= 0).all()
        # one more rounding per column of Y: within the expansion's own error, a few eps of its terms
        x0, y0 = ((X - Y[..., :1, :]) ** 2).sum(-1), ((Y - Y[..., :1, :]) ** 2).sum(-1)
        scale = x0[..., :, None] + y0[..., None, :]
        assert (np.abs(got - ref) <= 8 * EPS * scale / (2 * h * h)).all()


# --- unshifted exponentials of one-key-block steps ------------------------------------------------------
def _count_redo(monkeypatch):
    calls = []
    redo = _tiles.TilePlan.redo

    def spy(self, step):
        calls.append(step.q0)
        return redo(self, step)

    monkeypatch.setattr(_tiles.TilePlan, "redo", spy)
    return calls


@pytest.mark.parametrize("order", [0, 1])
def test_unshifted_sums_equal_the_shifted_ones(rng, monkeypatch, order):
    X = rng.uniform(-1, 1, (500, 3))
    Y = np.sin(3 * X).sum(-1, keepdims=True)
    L = layer(order, Gaussian(0.5))
    calls = _count_redo(monkeypatch)
    fast = L(X, X, Y, causal=False, method="tiled")
    assert not calls  # every step accepted
    monkeypatch.setattr(_tiles, "UNSHIFTED_RANGE", (np.inf, np.inf))  # every step rejected: shifted
    shifted = L(X, X, Y, causal=False, method="tiled")
    assert len(calls) == 1  # n = 500: one step of four query blocks, made again
    # the same weighted sums up to a factor e^m per row and rounding (float64): 1e-13
    assert rel(fast, shifted) < 1e-13
    assert rel(fast, L(X, X, Y, causal=False, method="parallel")) < 1e-12


@pytest.mark.parametrize("order", [0, 1])
def test_an_underflowing_row_takes_the_shifted_path(rng, monkeypatch, order):
    # h = 0.05 with queries 2-3 away from every key: log w ~ -1600 to -3600, exp underflows to 0 for every
    # key unshifted, while the shifted weights are those of the nearest keys (the NW / local linear value)
    K = rng.uniform(-1, 1, (300, 2))
    V = np.sin(3 * K).sum(-1, keepdims=True)
    Q = np.concatenate([rng.uniform(-1, 1, (40, 2)), 3.0 + rng.uniform(0, 0.5, (5, 2))])
    L = layer(order, Gaussian(0.05))
    calls = _count_redo(monkeypatch)
    got = L(Q, K, V, causal=False, method="tiled")
    assert calls  # rejected, made again
    ref = L(Q, K, V, causal=False, method="parallel")
    assert np.isfinite(got).all() and (np.abs(got[40:]) > 0).all()
    # float64, the suite's tolerance for the tiled methods against the dense reference
    assert rel(got, ref) < 1e-10


def test_an_overflowing_step_takes_the_shifted_path(rng, monkeypatch):
    # ExpDot logits q.k / sqrt(d) up to ~ 2000: exp overflows unshifted
    K = 30 * rng.standard_normal((200, 4))
    V = rng.standard_normal((200, 2))
    Q = 30 * rng.standard_normal((50, 4))
    L = layer(0, ExpDot())
    calls = _count_redo(monkeypatch)
    got = L(Q, K, V, causal=False, method="tiled")
    assert calls
    ref = L(Q, K, V, causal=False, method="parallel")
    assert np.isfinite(got).all() and rel(got, ref) < 1e-10


def test_unshifted_ok_refuses_out_of_range_and_non_finite_sums():
    lo, hi = _tiles.UNSHIFTED_RANGE
    ok = np.ones((2, 3))
    assert _tiles.unshifted_ok(ok[..., 0], ok)
    for norm in (lo / 2, hi * 2, 0.0, np.nan):
        bad = ok.copy()
        bad[1, 0] = norm
        assert not _tiles.unshifted_ok(bad[..., 0], bad)
    bad = ok.copy()
    bad[0, 2] = np.inf  # a sum overflowed, the normaliser did not
    assert not _tiles.unshifted_ok(bad[..., 0], bad)


def test_unshifted_only_for_one_key_block_without_excluded_pairs(rng, monkeypatch):
    X = rng.uniform(-1, 1, (300, 2))
    Y = np.sin(3 * X).sum(-1, keepdims=True)
    beta = rng.uniform(0.5, 2.0, 300)
    plans = []
    init = _tiles.TilePlan.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        plans.append(self)

    monkeypatch.setattr(_tiles.TilePlan, "__init__", spy)
    for order in (0, 1):
        L = layer(order, Gaussian(0.5))
        for kw, flag in [({}, True), ({"beta": beta}, False)]:  # write strengths: last log-weights log(beta)
            plans.clear()
            got = L(X, X, Y, causal=False, method="tiled", **kw)
            assert plans[-1].unshifted is flag and plans[-1].last_zero is flag
            assert rel(got, L(X, X, Y, causal=False, method="parallel", **kw)) < 1e-10
        plans.clear()
        L(X, X, Y, method="tiled")  # causal: the online normaliser
        assert plans[-1].unshifted is False


@pytest.mark.parametrize("order", [0, 1])
def test_several_key_blocks_rescale_after_the_first_visit(rng, monkeypatch, order):
    # short key blocks: every query block meets 5 of them (the first without rescaling, the others with)
    def short(P, c, per_pair, budget):
        return None if P.causal else 64

    monkeypatch.setattr(tiled, "key_block", short)
    monkeypatch.setattr(_tiled_poly, "key_block", short)
    X = rng.uniform(-1, 1, (300, 3))
    Y = np.sin(3 * X).sum(-1, keepdims=True)
    L = layer(order, Gaussian(0.5))
    plans = []
    init = _tiles.TilePlan.__init__

    def spy(self, *a, **k):
        init(self, *a, **k)
        plans.append(self)

    monkeypatch.setattr(_tiles.TilePlan, "__init__", spy)
    for causal in (False, True):
        got = L(X, X, Y, causal=causal, method="tiled", chunk_size=64)
        assert plans[-1].nbk == 5 and not plans[-1].unshifted
        assert rel(got, L(X, X, Y, causal=causal, method="parallel")) < 1e-10


# --- the benchmark's case against statsmodels ----------------------------------------------------------
@pytest.mark.parametrize("d", [2, 8])
@pytest.mark.parametrize("reg_type", ["lc", "ll"])
def test_set_regression_matches_statsmodels_kernelreg(rng, d, reg_type):
    kr_mod = pytest.importorskip("statsmodels.nonparametric.kernel_regression")
    X = rng.uniform(-1, 1, (300, d))
    y = np.sin(3 * X).sum(axis=1) + 0.1 * rng.standard_normal(300)
    kr = kr_mod.KernelReg(y, X, var_type="c" * d, reg_type=reg_type, bw=[0.5] * d)
    ref = kr.fit(X)[0]
    L = layer(0 if reg_type == "lc" else 1, Gaussian(0.5))
    got = L(X, X, y[:, None], causal=False, method="tiled")[:, 0]
    # issue 10's target: equal results, max relative difference <= 1e-10 in float64
    assert rel(got, ref) <= 1e-10
