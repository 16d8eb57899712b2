"""Float32 local linear attention / regression at ridge 0 (issue 10): within 1e-4 of float64.

The inputs are drawn in float32 and handed to both precisions (float64 gets the same values), so the
comparison measures the method, not the rounding of the inputs (keys at offset 1e3 with spread 1e-2 lose
6e-3 of their spread to float32 rounding before any method runs).

Why float32 was off (``ttr_stats/methods/kernel_smoother/_precision.py``): the centred moment matrix
squares the weighted design's condition number, and its pseudo-inverse cut ``100 P eps32`` drops every
direction of the design past a condition number of ~70, so float32 and float64 solved problems of
different numerical rank (O(1) differences). Float32 calls now compute in float64 and round once, so the
float32 output of ``"parallel"`` and ``"tiled"`` is exactly the float64 output rounded to float32 (the same
float64 operations on the same values: asserted with ``array_equal``) in every regime, and the issue's
1e-4 after t > 2 d_k holds with a factor ~1000 to spare (``"recurrent"``, which forms its logits in
float32, is held to the 1e-4).
Each data set is also shown to be hard: the float32 normal equations themselves are > 1e-2 off on it.
"""

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.regressors.nonparametric import log_gamma
from ttr_stats.similarity import ExpDot, Gaussian

T = 300


def layer(similarity):
    return tt.TestTimeRegression(weights=tt.weights.Uniform(), regressor=LocalPolynomial(1, similarity))


def inputs(rng, d, kind):
    """Float32 values: standard normal, or keys and queries at offset 1e3 with spread 1e-2."""
    if kind == "normal":
        Q, K = rng.standard_normal((2, T, d))
    else:
        Q, K = 1e3 + 1e-2 * rng.standard_normal((2, T, d))
    V = rng.standard_normal((T, 3))
    return tuple(x.astype(np.float32) for x in (Q, K, V))


def row_error(y32, y64, V):
    """|y32_t - y64_t| / max(|y64_t|, 1e-3 max |V|): relative per query (floored where an output is ~0)."""
    y32, y64 = np.asarray(y32, np.float64), np.asarray(y64, np.float64)
    scale = np.maximum(np.linalg.norm(y64, axis=-1), 1e-3 * np.abs(V).max())
    return np.linalg.norm(y32 - y64, axis=-1) / scale


CASES = [
    # (name, data kind, similarity): the attention setting, a kernel regression (Gaussian weights on
    # a few keys: the design is well excited only on average), keys far from the origin
    ("exp-dot", "normal", lambda d: ExpDot()),
    ("gaussian", "normal", lambda d: Gaussian(1.0)),
    ("offset 1e3, spread 1e-2", "offset", lambda d: Gaussian(2e-2 * np.sqrt(d))),
]


@pytest.mark.parametrize("method", ["parallel", "tiled", "recurrent"])
@pytest.mark.parametrize("d", [1, 4, 16])
@pytest.mark.parametrize("name, kind, sim", CASES, ids=[c[0] for c in CASES])
def test_float32_within_1e4_of_float64_after_2dk(rng, method, d, name, kind, sim):
    if method == "recurrent" and d != 4:
        pytest.skip("the loop is slow: one d_k is enough to show it shares the fix")
    Q, K, V = inputs(rng, d, kind)
    L = layer(sim(d))
    y32 = L(Q, K, V, method=method)
    y64 = L(*(x.astype(np.float64) for x in (Q, K, V)), method=method)
    assert y32.dtype == np.float32
    err = row_error(y32, y64, V)
    assert err[2 * d + 1 :].max() < 1e-4, (name, err[2 * d + 1 :].max())
    if method != "recurrent":  # the loop forms its logits in float32 (then solves in float64)
        # stronger, in every row (t <= d_k, rank-deficient, included): the float64 output rounded once
        assert np.array_equal(y32, y64.astype(np.float32)), np.abs(y32 - y64).max()


@pytest.mark.parametrize(
    "name, kind, sim, d",
    [
        ("weights on one key (Gaussian h = 0.05, d_k = 16)", "normal", Gaussian(0.05), 16),
        ("weights on a few keys (Gaussian h = 1, d_k = 16)", "normal", Gaussian(1.0), 16),
        ("exp-dot logits ~ 1e6 (keys at offset 1e3)", "offset", ExpDot(), 4),
    ],
)
@pytest.mark.parametrize("method", ["parallel", "tiled"])
def test_ill_conditioned_float32_equals_float64_rounded(rng, name, kind, sim, d, method):
    """Designs with condition numbers up to ~1e70 (peaked weights): float32 is not refused but accurate,
    the float64 answer rounded once (the same logits, moments and rank decisions)."""
    Q, K, V = inputs(rng, d, kind)
    L = layer(sim)
    y32 = L(Q, K, V, method=method)
    y64 = L(*(x.astype(np.float64) for x in (Q, K, V)), method=method)
    assert np.array_equal(y32, y64.astype(np.float32)), (name, np.abs(y32 - y64).max())


@pytest.mark.parametrize(
    "kind, sim, d",
    [("normal", Gaussian(1.0), 16), ("offset", ExpDot(), 4), ("normal", Gaussian(0.05), 4)],
)
def test_the_data_is_hard_for_float32_normal_equations(rng, kind, sim, d):
    """The float32 centred normal equations (the regressor's own solve, called in float32 without the
    float64 step) are > 1e-2 off float64 on these data after t > 2 d_k: the tests above would catch a
    regression to them."""
    Q, K, V = inputs(rng, d, kind)
    reg = LocalPolynomial(1, sim)
    P = layer(sim)._prepare(Q, K, V, None, None, None, None)
    logW = log_gamma(np, P) + reg.log_similarity(np, P.Q, P.K)
    raw32 = reg._centred_moments(np, P.Q, P.K, P.V, logW)  # float32 arithmetic throughout
    assert raw32.dtype == np.float32
    y64 = layer(sim)(*(x.astype(np.float64) for x in (Q, K, V)), method="parallel")
    assert row_error(raw32, y64, V)[2 * d + 1 :].max() > 1e-2
