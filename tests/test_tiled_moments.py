"""The one-pass matrix-product form of tiled local linear regression (``_tiled_moments``) and its check.

Raw moments around a block centre cancel when a query's weighted keys sit far from that centre relative
to their spread; each query's cancellation factor (raw over centred second moment, per coordinate) is
checked and a query above ``MAX_CANCELLATION`` takes the exact three-pass value. These tests show the
check fires where it must (and is needed: without it the answer is off), stays quiet on ordinary data
(so the equality tests of test_tiled.py exercise the fast form), and keeps causality exact.

Tolerances: 1e-10 against ``"parallel"`` in float64, as in test_tiled.py (the same centred least squares,
rounding ~``cond * eps`` times at most ``MAX_CANCELLATION``); causality bit for bit.
"""

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.methods.kernel_smoother import _tiled_moments
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot, Gaussian


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def layer(similarity, weights=None):
    return tt.TestTimeRegression(
        weights=weights or tt.weights.Uniform(), regressor=LocalPolynomial(1, similarity)
    )


@pytest.fixture
def checks(monkeypatch):
    """Counts of queries checked and queries sent to the exact path by ``_tiled_moments.solve``."""
    seen = {"queries": 0, "exact": 0}
    solve = _tiled_moments.solve

    def counted(*args, **kw):
        y, ok = solve(*args, **kw)
        seen["queries"] += ok.size
        seen["exact"] += int((~ok).sum())
        return y, ok

    monkeypatch.setattr(_tiled_moments, "solve", counted)
    return seen


def two_far_clusters(rng, T=128, d=2, c=32):
    """Each block of c positions: c/2 keys near +1e4, then c/2 near -1e4 (spread 1e-3), with a hard reset
    (alpha = 0) at every switch, so a query reads only its own cluster while its block's centre (the key
    at the block start) is in the other one for half the queries: raw second moments ~1e8 against
    centred ones ~1e-6. Queries equal keys and the logits are tiny (exp-dot scale 1e-9), so only the
    moments, not the logits, are at stake."""
    t = np.arange(T)
    side = np.where((t % c) < c // 2, 1.0, -1.0)
    E = 1e-3 * rng.standard_normal((T, d))
    K = side[:, None] * 1e4 + E
    V = np.concatenate([1e3 * E, np.sin(1e3 * E[:, :1])], axis=-1)
    alpha = np.where(np.diff(side, prepend=side[0]) != 0, 0.0, 0.99)
    return K, V, alpha


def test_cancelling_queries_take_the_exact_path(rng, checks):
    K, V, alpha = two_far_clusters(rng)
    L = layer(ExpDot(1e-9), weights=tt.weights.Gated())
    got = L(K, K, V, alpha=alpha, method="tiled", chunk_size=32)
    ref = L(K, K, V, alpha=alpha, method="parallel")
    assert checks["exact"] >= K.shape[0] // 4  # at least the queries whose centre is across
    assert rel(got, ref) < 1e-10


def test_the_check_is_needed(rng, monkeypatch):
    """Without the check (every factor accepted) the raw moments of the same data cancel: ~1e8 * eps
    = 2e-8 of rounding on a spread of 1e-6, and the answer is more than 1e-4 off."""
    K, V, alpha = two_far_clusters(rng)
    L = layer(ExpDot(1e-9), weights=tt.weights.Gated())
    ref = L(K, K, V, alpha=alpha, method="parallel")
    monkeypatch.setattr(_tiled_moments, "MAX_CANCELLATION", np.inf)
    got = L(K, K, V, alpha=alpha, method="tiled", chunk_size=32)
    assert rel(got, ref) > 1e-4


@pytest.mark.parametrize("causal", [True, False])
def test_ordinary_data_stay_on_the_fast_form(rng, checks, causal):
    """Standard normal attention inputs (d_k = 16): no query goes to the exact path (measured). A kernel
    regression on [-1, 1]^8 (h = 0.5): at most 1% of the queries non-causal (measured 0), 5% causal
    (measured 1.2%, all before t = 54: early queries see a few keys, their weights sit on one or two
    keys far from the block centre)."""
    Q, K, V = rng.standard_normal((3, 2, 700, 16))
    got = layer(ExpDot())(Q, K, V, method="tiled", causal=causal)
    ref = layer(ExpDot())(Q, K, V, method="parallel", causal=causal)
    assert rel(got, ref) < 1e-10
    assert checks["exact"] == 0
    X = rng.uniform(-1, 1, (700, 8))
    y = np.sin(3 * X).sum(-1, keepdims=True)
    got = layer(Gaussian(0.5))(X, X, y, method="tiled", causal=causal)
    ref = layer(Gaussian(0.5))(X, X, y, method="parallel", causal=causal)
    assert rel(got, ref) < 1e-10
    assert checks["exact"] <= (0.05 if causal else 0.01) * 700, checks


@pytest.mark.parametrize("s", [5, 17, 40, 63])
def test_causality_when_later_queries_fail_the_check(rng, checks, s):
    """From position s on: keys 1e6 away with spread 1e-6 and a reset at s, so those queries read only
    the far keys while their block's centre (before s) is near the old ones. They fail the check and
    their block is also computed exactly, but each query keeps its own value: outputs before s are
    unchanged bit for bit."""
    T = 64
    Q, K, V = rng.standard_normal((3, 2, T, 3))
    L = layer(ExpDot(), weights=tt.weights.Gated())
    alpha = np.exp(-rng.uniform(0, 0.5, (2, T)))
    y = L(Q, K, V, alpha=alpha, method="tiled", chunk_size=16)
    before = checks["exact"]
    K2, Q2, a2 = K.copy(), Q.copy(), alpha.copy()
    K2[:, s:] = 1e6 + 1e-6 * rng.standard_normal(K2[:, s:].shape)
    Q2[:, s:] = 1e-6 * rng.standard_normal(Q2[:, s:].shape)
    a2[:, s] = 0.0
    y2 = L(Q2, K2, V, alpha=a2, method="tiled", chunk_size=16)
    assert checks["exact"] - before > before  # more queries failed the check in the second call
    assert np.array_equal(y[:, :s], y2[:, :s])
    ref = L(Q2, K2, V, alpha=a2, method="parallel")
    assert rel(y2, ref) < 1e-10


@pytest.mark.parametrize(
    "lead, d, dv", [((2, 3, 17), 1, 1), ((4, 130), 7, 5), ((2, 1, 33), 16, 12), ((5,), 3, 9)]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_in_place_features_equal_the_concatenated_columns(rng, lead, d, dv, dtype):
    """NumPy / CuPy write F in place (``_features_into``), the other namespaces concatenate its columns
    (``_features``' portable path, run here on array-api-strict arrays as the reference): the same products in
    the same column order, so the same bits (exact equality, no tolerance)."""
    import array_api_compat.numpy as xnp
    import array_api_strict

    E = rng.standard_normal(lead + (d,)).astype(dtype)
    U = rng.standard_normal(lead + (dv,)).astype(dtype)
    F = _tiled_moments._features(xnp, E, U)
    ref = _tiled_moments._features(array_api_strict, array_api_strict.asarray(E), array_api_strict.asarray(U))
    ref = np.asarray(ref)
    assert F.dtype == dtype and F.shape == lead + (_tiled_moments.n_features(d, dv),)
    assert np.array_equal(F, ref)
