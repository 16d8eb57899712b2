"""Attention sinks (issue 13): ``weights.SinkWindow``, a sliding window (optionally gated) whose first s
pairs never leave it (StreamingLLM).

Tolerances: the dense weights are products of at most T = 24 gates in (0.5, 1] and one write strength, so
the library's log-space segment sums and the explicit product loop differ by rounding, ~T eps ~ 1e-14;
1e-12 leaves margin and is far below a wrong mask or a missing gate (O(1e-1)). Equalities that are the
same computation are checked to 1e-12 as well.
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot
from ttr_stats.weights import GatedWindow, SinkWindow, sink_window_mask

TOL = 1e-12
T, W, S = 24, 5, 3


@pytest.fixture
def rng():
    return np.random.default_rng(1313)


def explicit(alpha, beta, width, sinks):
    """Gamma from the definition, entry by entry: beta_i prod_{j=i+1}^t alpha_j 1[t - i < w or i < s]."""
    n = alpha.shape[-1]
    G = np.zeros(alpha.shape[:-1] + (n, n))
    for t in range(n):
        for i in range(t + 1):
            if t - i < width or i < sinks:
                G[..., t, i] = beta[..., i] * np.prod(alpha[..., i + 1 : t + 1], axis=-1)
    return G


def test_matrix_is_the_explicit_masked_weights(rng):
    alpha = rng.uniform(0.5, 1.0, (2, T))
    beta = rng.uniform(0.5, 2.0, (2, T))
    got = SinkWindow(W, S, alpha=None).matrix(T, alpha=alpha, beta=beta)
    ref = explicit(alpha, beta, W, S)
    assert np.max(np.abs(got - ref)) < TOL
    # every late row keeps exactly the s sinks and the w recent pairs (no gate is 0 here)
    nz = (got[0] > 0).sum(axis=-1)
    assert list(nz[W + S :]) == [W + S] * (T - W - S)
    assert np.all(got[0, W + S :, :S] > 0)
    assert all(np.all(got[0, t, S : t - W + 1] == 0) for t in range(W + S, T))  # the pairs that left
    # no gates: StreamingLLM's 0/1 mask
    assert np.array_equal(SinkWindow(W, S).matrix(T), sink_window_mask(np, T, W, S).astype(float))


def test_no_sinks_is_gated_window(rng):
    alpha = rng.uniform(0.5, 1.0, (T,))
    got = SinkWindow(W, 0, alpha=None).matrix(T, alpha=alpha)
    assert np.max(np.abs(got - GatedWindow(W, alpha=None).matrix(T, alpha=alpha))) < TOL
    assert np.max(np.abs(got - explicit(alpha, np.ones(T), W, 0))) < TOL


def test_weights_are_causal(rng):
    # row t depends on alpha_{<= t} and beta_{<= t} only: changing both after t0 leaves rows <= t0 bit-equal
    alpha, beta = rng.uniform(0.5, 1.0, (T,)), rng.uniform(0.5, 2.0, (T,))
    t0 = 11
    alpha2, beta2 = alpha.copy(), beta.copy()
    alpha2[t0 + 1 :] = rng.uniform(0.0, 1.0, T - t0 - 1)
    beta2[t0 + 1 :] *= 7.0
    sw = SinkWindow(W, S, alpha=None)
    a, b = sw.matrix(T, alpha=alpha, beta=beta), sw.matrix(T, alpha=alpha2, beta=beta2)
    assert np.array_equal(a[: t0 + 1], b[: t0 + 1])
    assert np.all(np.triu(a, 1) == 0)  # nothing from the future
    assert not np.array_equal(a[t0 + 1 :], b[t0 + 1 :])  # the perturbation is real


def sink_softmax(Q, K, V, G, tau):
    """Softmax attention under the dense weights G, directly: y_t = sum_i G_ti e^{tau q.k_i} v_i / sum."""
    S_ = G * np.exp(tau * Q @ np.swapaxes(K, -1, -2))
    return (S_ / S_.sum(-1, keepdims=True)) @ V


def test_layer_with_no_sinks_is_the_dense_softmax(rng):
    # sinks = 0 runs in the layer (GatedWindow): equal to the dense softmax with matrix()'s weights
    Q, K, V = (rng.standard_normal((2, T, 4)) / 2 for _ in range(3))
    g = np.log(rng.uniform(0.6, 1.0, (2, T)))
    tau = 0.5
    layer = tt.TestTimeRegression(
        SinkWindow(W, 0), LocalPolynomial(0, ExpDot(tau)), tt.optimizers.ClosedForm()
    )
    ref = sink_softmax(Q, K, V, SinkWindow(W, 0, alpha=None).matrix(T, log_alpha=g), tau)
    for m in layer.supported_methods:
        assert np.max(np.abs(layer(Q, K, V, log_alpha=g, method=m) - ref)) < TOL, m
    # and the sinks change the answer: the dense reference with s = 3 differs by O(0.1)
    ref_s = sink_softmax(Q, K, V, SinkWindow(W, S, alpha=None).matrix(T, log_alpha=g), tau)
    assert np.max(np.abs(ref_s - ref)) > 1e-2
    # t < w: the sinks are still in the window, so the two agree
    assert np.max(np.abs(ref_s[..., :W, :] - ref[..., :W, :])) < TOL


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_sinks_are_refused(bad):
    with pytest.raises(ValueError, match="sinks"):
        SinkWindow(W, bad).matrix(T)


def test_data_dependent_sinks_need_gates():
    with pytest.raises(ValueError, match="alpha"):
        SinkWindow(W, S, alpha=None).matrix(T)
    with pytest.raises(ValueError, match=r"\(\.\.\., T\)"):
        SinkWindow(W, S, alpha=None).matrix(T, alpha=np.ones(T + 1))


# --- every method of the layer keeps the sinks ----------------------------------------------------------
# Tolerances of this part: the dense references below are float64 and independent of the library's methods
# (the explicit softmax of ``sink_softmax``; a normal-equations solve per query for local linear). For
# softmax both sides sum at most 307 positive terms of logits |tau q.k| < 3 and gate sums < 30: the
# rounding is ~(log T + |logit|) eps ~ 1e-15, so 1e-12 leaves three digits of margin and a dropped sink
# (O(0.1), checked above) cannot hide. Local linear carries a ridge 1e-2 on d_k = 2 slopes, so the 3 x 3
# normal equations have cond < 1e4 and the two solves differ by < cond eps ~ 1e-12: we allow 1e-11.
# Float32 inputs are compared with the float64 reference at 1e-5 (sums of <= 307 terms in float32:
# sqrt(T) (|logit| + log T) eps32 ~ 2e-6; the tiled path uses block-local gate sums, never a difference
# of cumulative sums).
F64_NW, F64_LL, F32 = 1e-12, 1e-11, 1e-5
TAU, RIDGE, TILE = (
    0.7,
    1e-2,
    16,
)  # chunk_size 16: windows of 5 and sinks of 1, 3 inside one tile, 40 across three
METHODS = ("parallel", "direct", "recurrent", "tiled", "auto")


def local_linear_reference(Q, K, V, G, tau, ridge):
    """Per query t: weights G_ti exp(tau q_t.k_i) normalised, design [1, k_i - q_t], ridge on the slopes
    (the library's ridge is scaled by the weight total, 1 here), output the intercept. Float64, plain."""
    out = np.zeros(Q.shape[:-1] + (V.shape[-1],))
    for b in np.ndindex(Q.shape[:-2]):
        for t in range(Q.shape[-2]):
            logit = tau * K[b] @ Q[b][t]
            w = G[b][t] * np.exp(logit - logit.max())
            if not np.any(w > 0):
                continue  # no pair of positive weight: the empty memory reads 0
            w = w / w.sum()
            X = np.concatenate([np.ones((K.shape[-2], 1)), K[b] - Q[b][t]], axis=-1)
            D = ridge * np.diag([0.0] + [1.0] * K.shape[-1])
            beta = np.linalg.solve(X.T @ (w[:, None] * X) + D, X.T @ (w[:, None] * V[b]))
            out[b + (t,)] = beta[0]
    return out


def sink_layer(order, width, sinks, alpha=None):
    reg = LocalPolynomial(order, ExpDot(TAU), RIDGE if order else 0.0)
    return tt.TestTimeRegression(SinkWindow(width, sinks, alpha=alpha), reg, tt.optimizers.ClosedForm())


def sink_data(rng, T, d_k, batch=(2,)):
    Q, K, V = (rng.standard_normal(batch + (T, d)) / 2 for d in (d_k, d_k, 3))
    g = np.log(rng.uniform(0.9, 1.0, batch + (T,)))
    b = rng.uniform(0.5, 2.0, batch + (T,))
    return Q, K, V, g, b


def sinks_cases():
    for T in (1, 5, 63, 65, 300):
        for width in (5, 40):  # narrower / wider than a tile of 16
            for sinks in sorted({0, 1, 3, width, T + 7}):
                yield T, width, sinks


@pytest.mark.parametrize("order", [0, 1], ids=["nadaraya-watson", "local-linear"])
@pytest.mark.parametrize("T, width, sinks", list(sinks_cases()))
def test_every_method_equals_the_dense_reference(rng, order, T, width, sinks):
    d_k = 4 if order == 0 else 2
    Q, K, V, g, b = sink_data(rng, T, d_k)
    G = SinkWindow(width, sinks, alpha=None).matrix(T, log_alpha=g, beta=b)
    if order == 0:
        ref, tol = sink_softmax(Q, K, V, G, TAU), F64_NW
    else:
        ref, tol = local_linear_reference(Q, K, V, G, TAU, RIDGE), F64_LL
    layer = sink_layer(order, width, sinks)
    assert set(layer.supported_methods) == {"parallel", "direct", "recurrent", "tiled"}
    for m in METHODS:
        for dtype, bound in ((np.float64, tol), (np.float32, F32)):
            args = [x.astype(dtype) for x in (Q, K, V)]
            got = layer(*args, log_alpha=g.astype(dtype), beta=b.astype(dtype), method=m, chunk_size=TILE)
            assert got.dtype == dtype
            err = np.max(np.abs(got - ref), initial=0.0)
            assert err < bound, (m, dtype, err)
        if m == "auto":
            assert layer.method_ in layer.supported_methods


@pytest.mark.parametrize("order", [0, 1])
def test_default_tiles_keep_the_sinks(rng, order):
    # the default block (128 softmax / 64 local polynomial): sinks in key block 0 of a call of 3-5 blocks,
    # and sinks spanning two blocks
    T = 300
    Q, K, V, g, b = sink_data(rng, T, 2)
    for width, sinks in ((7, 4), (7, 150), (200, 3)):
        G = SinkWindow(width, sinks, alpha=None).matrix(T, log_alpha=g, beta=b)
        ref = sink_softmax(Q, K, V, G, TAU) if order == 0 else local_linear_reference(Q, K, V, G, TAU, RIDGE)
        got = sink_layer(order, width, sinks)(Q, K, V, log_alpha=g, beta=b, method="tiled")
        assert np.max(np.abs(got - ref)) < (F64_NW if order == 0 else F64_LL), (width, sinks)


def test_tiles_outside_the_window_are_still_skipped(rng):
    # the sinks add the tiles of their key blocks only: T = 320 in tiles of 16 (20 blocks), window 5, one
    # sink block: the diagonal, the tile before it and key block 0 for every query block, 20 + 19 + 18
    from ttr_stats.methods.kernel_smoother._tiles import TilePlan

    layer = sink_layer(0, 5, 3)
    Q, K, V, g, b = sink_data(rng, 320, 2, batch=())
    P = layer._prepare(Q, K, V, None, g, b, None)
    assert P.sinks == 3 and P.window == 5
    plan = TilePlan(np, P, layer.regressor.log_similarity, 16, budget=1)  # one query block a step
    visited = sum(st.q1 - st.q0 for st in plan.steps())
    assert visited == 20 + 19 + 18
    P0 = sink_layer(0, 5, 0)._prepare(Q, K, V, None, g, b, None)
    plan0 = TilePlan(np, P0, layer.regressor.log_similarity, 16, budget=1)
    assert sum(st.q1 - st.q0 for st in plan0.steps()) == 20 + 19


def test_hard_reset_forgets_the_sinks_too(rng):
    # a gate alpha = 0 multiplies every earlier pair's weight, the sinks' included (forgetting attention)
    T, width, sinks = 65, 5, 3
    Q, K, V, g, b = sink_data(rng, T, 4)
    alpha = np.exp(g)
    alpha[..., 30] = 0.0
    G = SinkWindow(width, sinks, alpha=None).matrix(T, alpha=alpha, beta=b)
    assert np.all(G[..., 30:, :sinks] == 0)
    ref = sink_softmax(Q, K, V, G, TAU)
    layer = sink_layer(0, width, sinks)
    for m in METHODS:
        got = layer(Q, K, V, alpha=alpha, beta=b, method=m, chunk_size=TILE)
        assert np.max(np.abs(got - ref)) < F64_NW, m


@pytest.mark.parametrize("order", [0, 1])
def test_no_sinks_is_sliding_window_bit_for_bit(rng, order):
    T = 65
    Q, K, V, g, b = sink_data(rng, T, 3)
    reg = LocalPolynomial(order, ExpDot(TAU), RIDGE if order else 0.0)
    pairs = [
        (SinkWindow(5, 0), tt.weights.SlidingWindow(5), {}),
        (SinkWindow(5, 0, alpha=None), GatedWindow(5, alpha=None), {"log_alpha": g, "beta": b}),
    ]
    for sw, plain, kw in pairs:
        a, p = tt.TestTimeRegression(sw, reg), tt.TestTimeRegression(plain, reg)
        assert a.supported_methods == p.supported_methods
        for m in METHODS:
            ya, sa = a(Q, K, V, method=m, chunk_size=TILE, return_state=True, **kw)
            yp, sp = p(Q, K, V, method=m, chunk_size=TILE, return_state=True, **kw)
            assert np.array_equal(ya, yp), (type(plain).__name__, m)
            assert all(np.array_equal(x, y) for x, y in zip(sa, sp, strict=True))


@pytest.mark.parametrize("order", [0, 1])
def test_lengths_pad_without_touching_the_sinks(rng, order):
    # right padding: each sequence's outputs and final cache equal those of the unpadded call
    T, width, sinks = 65, 5, 3
    Q, K, V, g, b = sink_data(rng, T, 2, batch=(3,))
    lengths = np.array([T, 40, 2])
    layer = sink_layer(order, width, sinks)
    tol = F64_NW if order == 0 else F64_LL
    for m in METHODS:
        Y, st = layer(
            Q, K, V, log_alpha=g, beta=b, lengths=lengths, method=m, chunk_size=TILE, return_state=True
        )
        for j, n in enumerate(lengths):
            y1, s1 = layer(Q[j, :n], K[j, :n], V[j, :n], log_alpha=g[j, :n], beta=b[j, :n], method=m,
                           chunk_size=TILE, return_state=True)  # fmt: skip
            assert np.max(np.abs(Y[j, :n] - y1)) < tol, (m, n)
            assert np.all(Y[j, n:] == 0)
            lw = st.log_weight[j]
            assert np.array_equal(np.isfinite(lw[:n]), np.isfinite(s1.log_weight)), (m, n)  # same pairs kept
            assert np.all(lw[n:] == -np.inf)
            fin = np.isfinite(s1.log_weight)
            assert np.max(np.abs(lw[:n][fin] - s1.log_weight[fin]), initial=0.0) < 1e-12
    # the sequence of 40 keeps its 3 sinks and its last 5 pairs (positions 35..39), not the padding's
    kept = np.flatnonzero(
        np.isfinite(layer.memorize(K, V, log_alpha=g, beta=b, lengths=lengths).log_weight[1])
    )
    assert list(kept) == [0, 1, 2, 35, 36, 37, 38, 39]


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("seed", range(6))
def test_causality_fuzz(order, seed):
    # outputs before s are bit-for-bit independent of every input at s and after (Q, K, V, gates, beta)
    r = np.random.default_rng(1300 + seed)
    T = int(r.integers(2, 90))
    width, sinks = int(r.integers(1, 20)), int(r.integers(0, 25))
    s = int(r.integers(1, T))
    Q, K, V, g, b = sink_data(r, T, 2)
    Q2, K2, V2, g2, b2 = (x.copy() for x in (Q, K, V, g, b))
    for x in (Q2, K2, V2):
        x[..., s:, :] = r.standard_normal(x[..., s:, :].shape) * 3
    g2[..., s:] = np.log(r.uniform(0.0, 1.0, g2[..., s:].shape))
    b2[..., s:] = r.uniform(0.1, 9.0, b2[..., s:].shape)
    layer = sink_layer(order, width, sinks)
    for m in METHODS:
        y = layer(Q, K, V, log_alpha=g, beta=b, method=m, chunk_size=TILE)
        y2 = layer(Q2, K2, V2, log_alpha=g2, beta=b2, method=m, chunk_size=TILE)
        assert np.array_equal(y[..., :s, :], y2[..., :s, :]), (m, T, width, sinks, s)
        assert not np.array_equal(y[..., s:, :], y2[..., s:, :])


@pytest.mark.parametrize("order", [0, 1])
def test_memorize_and_continuation_equal_the_full_run(rng, order):
    # the memory of a sink window = the sinks + the last w pairs; memorize in two parts = in one = the
    # methods' final cache, and reading it at q_T gives the causal output at T
    T, width, sinks, cut = 65, 5, 3, 30
    Q, K, V, g, b = sink_data(rng, T, 2)
    layer = sink_layer(order, width, sinks)
    full = layer.memorize(K, V, log_alpha=g, beta=b)
    kept = np.flatnonzero(np.isfinite(full.log_weight[0]))
    assert list(kept) == [0, 1, 2] + list(range(T - width, T))
    first = layer.memorize(K[:, :cut], V[:, :cut], log_alpha=g[:, :cut], beta=b[:, :cut])
    both = layer.memorize(K[:, cut:], V[:, cut:], log_alpha=g[:, cut:], beta=b[:, cut:], initial_state=first)
    assert np.array_equal(np.isfinite(both.log_weight), np.isfinite(full.log_weight))
    fin = np.isfinite(full.log_weight)
    # gate sums of <= 65 terms, summed in two orders: ~T eps
    assert np.max(np.abs(both.log_weight[fin] - full.log_weight[fin])) < 1e-12
    assert np.array_equal(both.K, full.K) and np.array_equal(both.V, full.V)
    tol = F64_NW if order == 0 else F64_LL
    for m in METHODS:
        Y, st = layer(Q, K, V, log_alpha=g, beta=b, method=m, chunk_size=TILE, return_state=True)
        assert np.array_equal(np.isfinite(st.log_weight), fin), m
        assert np.max(np.abs(st.log_weight[fin] - full.log_weight[fin])) < 1e-12, m
        assert np.max(np.abs(layer.read(both, Q[:, -1:]) - Y[:, -1:])) < tol, m


# --- linear memories with additive statistics: the generic loop keeps the sinks ------------------------
def linear_reference(Q, K, V, G):
    """Linear attention under dense weights: y_t = sum_i G_ti (q_t . k_i) v_i."""
    return (G * (Q @ np.swapaxes(K, -1, -2))) @ V


def test_linear_attention_loop_and_final_state_keep_the_sinks(rng):
    # IdentityCovariance: the loop downdates the pair leaving the window (by its decayed weight) unless it
    # is a sink; memorize's closed form (final_state) keeps the sinks + the window. Sums of <= 65 terms of
    # size O(1): ~1e-15; 1e-12.
    T, width, sinks = 65, 5, 3
    Q, K, V, g, b = sink_data(rng, T, 3)
    G = SinkWindow(width, sinks, alpha=None).matrix(T, log_alpha=g, beta=b)
    layer = tt.TestTimeRegression(SinkWindow(width, sinks, alpha=None), tt.regressors.Linear(),
                                  tt.optimizers.IdentityCovariance())  # fmt: skip
    assert layer.supported_methods == ("recurrent",)
    Y, st = layer(Q, K, V, log_alpha=g, beta=b, return_state=True)
    assert layer.method_ == "recurrent"
    assert np.max(np.abs(Y - linear_reference(Q, K, V, G))) < 1e-12
    M_ref = np.einsum("bi,biv,bik->bvk", G[:, -1], V, K)
    assert np.max(np.abs(st.M - M_ref)) < 1e-12
    closed = layer.memorize(K, V, log_alpha=g, beta=b)
    assert all(np.max(np.abs(x - y)) < 1e-12 for x, y in zip(closed, st, strict=True))
    # the dense identity methods drop the sinks: refused, naming the weights and the remedy
    with pytest.raises(ValueError, match=r"chunked.*SinkWindow\(sinks=3\).*sinks=0"):
        layer(Q, K, V, log_alpha=g, beta=b, method="chunked")


def test_least_squares_loop_and_final_state_keep_the_sinks(rng):
    # ClosedForm least squares: M_t = S_t (R_t + ridge I)^{-1} over the sinks + the window; 4 x 4 solves
    # with ridge 1e-2 (cond < 1e4): 1e-10
    T, width, sinks = 40, 5, 3
    Q, K, V = (rng.standard_normal((2, T, 4)) for _ in range(3))
    G = SinkWindow(width, sinks).matrix(T)
    layer = tt.TestTimeRegression(
        SinkWindow(width, sinks), tt.regressors.Linear(), tt.optimizers.ClosedForm(1e-2)
    )
    Y, st = layer(Q, K, V, return_state=True)
    R = np.einsum("ti,bij,bik->btjk", G, K, K) + 1e-2 * np.eye(4)
    S_ = np.einsum("ti,bij,bik->btjk", G, V, K)
    ref = np.einsum("btvk,btk->btv", S_ @ np.linalg.inv(R), Q)
    assert np.max(np.abs(Y - ref)) < 1e-10
    closed = layer.memorize(K, V)
    assert all(np.max(np.abs(x - y)) < 1e-12 for x, y in zip(closed, st, strict=True))


def test_methods_that_would_drop_the_sinks_refuse_them():
    # least squares' direct prefix solve runs windows but not sinks: refused, naming the weights and the
    # remedy (Parallax, which refused them until issue 13's leftovers, keeps them now:
    # tests/test_issue13_parallax_sinks.py)
    ls = tt.TestTimeRegression(SinkWindow(W, S), tt.regressors.Linear(), tt.optimizers.ClosedForm(1e-2))
    assert ls.supported_methods == ("recurrent",)
    Q, K, V = (np.ones((T, 2)) for _ in range(3))
    with pytest.raises(ValueError, match=r"direct.*SinkWindow\(sinks=3\).*sinks=0"):
        ls(Q, K, V, method="direct")
    # sinks = 0 is the plain window there
    ls0 = tt.TestTimeRegression(SinkWindow(W, 0), tt.regressors.Linear(), tt.optimizers.ClosedForm(1e-2))
    assert "direct" in ls0.supported_methods
    # a gated window under the kernel smoothers keeps them: every method is supported
    assert "tiled" in sink_layer(0, W, S).supported_methods


# --- the recipe -----------------------------------------------------------------------------------------
def test_recipe_is_streamingllm_and_gated(rng):
    # sink_window_attention(): StreamingLLM's mask without gates, forgetting attention with sinks with them
    T, width, sinks = 65, 8, 4
    Q, K, V, g, b = sink_data(rng, T, 4)
    layer = tt.recipes.sink_window_attention(window=width, sinks=sinks, scale=TAU)
    plain = sink_softmax(Q, K, V, sink_window_mask(np, T, width, sinks).astype(float), TAU)
    gated = sink_softmax(Q, K, V, SinkWindow(width, sinks, alpha=None).matrix(T, log_alpha=g), TAU)
    for m in METHODS:
        assert np.max(np.abs(layer(Q, K, V, method=m, chunk_size=TILE) - plain)) < F64_NW, m
        assert np.max(np.abs(layer(Q, K, V, log_alpha=g, method=m, chunk_size=TILE) - gated)) < F64_NW, m
    with pytest.raises(ValueError, match="sinks"):
        tt.recipes.sink_window_attention(sinks=-1)


def test_gpt_oss_sink_logit_is_one_sink_pair(rng):
    # gpt-oss: y_t = sum_{t-i<w} e^{tau q.k_i} v_i / (e^b + sum_{t-i<w} e^{tau q.k_i}), a learned logit b in
    # the denominator only. As the docstring says: a first pair of value 0 whose logit is b for every
    # query (a feature 1 on the queries, 0 on the keys, the key (0, ..., 0, b / tau)), kept as one sink.
    T, width, d, sink_logit = 65, 8, 4, 1.3
    Q, K, V = (rng.standard_normal((2, T, n)) / 2 for n in (d, d, 3))
    logits = TAU * Q @ np.swapaxes(K, -1, -2)
    inside = sink_window_mask(np, T, width, 0)
    e = np.where(inside, np.exp(logits), 0.0)
    ref = (e @ V) / (np.exp(sink_logit) + e.sum(-1, keepdims=True))
    Qa = np.concatenate([np.ones((2, T + 1, 1)), np.concatenate([np.zeros((2, 1, d)), Q], 1)], -1)
    k0 = np.concatenate([np.zeros((2, 1, 1)) + sink_logit / TAU, np.zeros((2, 1, d))], -1)
    Ka = np.concatenate([k0, np.concatenate([np.zeros((2, T, 1)), K], -1)], 1)
    Va = np.concatenate([np.zeros((2, 1, 3)), V], 1)
    layer = tt.recipes.sink_window_attention(window=width, sinks=1, scale=TAU)
    for m in METHODS:
        got = layer(Qa, Ka, Va, method=m, chunk_size=TILE)[:, 1:]
        assert np.max(np.abs(got - ref)) < F64_NW, m


@pytest.mark.parametrize("sinks", [0, 3])
def test_gated_window_loop_downdates_the_decayed_weight(rng, sinks):
    # under decay the pair leaving a window has weight b_o prod_{j=o+1}^{t} alpha_j, not b_o: the generic
    # loop (the definition) removes exactly that (it removed b_o before, 5.0 off the dense weights here),
    # with or without sinks; direct / parallel (and chunked without sinks) equal it. Sums of <= 40 O(1)
    # terms: 1e-12.
    T, width = 40, 5
    Q, K, V, g, b = sink_data(rng, T, 3)
    G = SinkWindow(width, sinks, alpha=None).matrix(T, log_alpha=g, beta=b)
    ref = linear_reference(Q, K, V, G)
    weights = SinkWindow(width, sinks, alpha=None) if sinks else GatedWindow(width, alpha=None)
    layer = tt.TestTimeRegression(weights, tt.regressors.Linear(), tt.optimizers.IdentityCovariance())
    assert sinks or "chunked" in layer.supported_methods
    for m in layer.supported_methods:
        assert np.max(np.abs(layer(Q, K, V, log_alpha=g, beta=b, method=m) - ref)) < 1e-12, m


@pytest.mark.parametrize("T, width, chunk", [(40, 5, None), (65, 40, 16), (63, 7, 8), (1000, 100, 64)])
@pytest.mark.parametrize("gates", ["mild", "strong", "extreme"])
def test_gated_window_identity_chunked(rng, T, width, chunk, gates):
    """The chunked form's window subtracts a delayed run whose pairs carry the decay they took inside the
    window (b_o prod_{j in window} alpha_j): exact against the dense weights at mild (log alpha in
    [log 0.9, 0]), strong (-7 everywhere) and extreme gates (-50 at one step in ten). Tolerance 1e-12
    relative to the largest output: float64 sums of at most T terms of size O(1)."""
    d_k = 3
    Q, K, V, g, b = sink_data(rng, T, d_k)
    if gates == "strong":
        g = np.full_like(g, -7.0)
    elif gates == "extreme":
        g = np.where(rng.uniform(size=g.shape) < 0.1, -50.0, g)
    ref = linear_reference(Q, K, V, GatedWindow(width, alpha=None).matrix(T, log_alpha=g, beta=b))
    layer = tt.TestTimeRegression(GatedWindow(width, alpha=None), tt.regressors.Linear(),
                                  tt.optimizers.IdentityCovariance())  # fmt: skip
    out = layer(Q, K, V, log_alpha=g, beta=b, method="chunked", chunk_size=chunk)
    assert np.all(np.isfinite(out))
    assert np.max(np.abs(out - ref)) < 1e-12 * max(1.0, np.max(np.abs(ref)))
    assert np.max(np.abs(layer(Q, K, V, log_alpha=g, beta=b, method="recurrent") - ref)) < 1e-10
