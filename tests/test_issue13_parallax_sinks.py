"""Parallax under attention sinks (issue 13): ``weights.SinkWindow`` weights in every Parallax method.

The reference is written from Parallax's definition with the dense weights of ``SinkWindow(...).matrix``
(independent of the library's methods): :math:`p_{ti} \\propto \\Gamma_{ti} e^{\\tau q_t^\\top k_i}`,
:math:`y_t = \\sum_i p_{ti}(1 - r_t^\\top(k_i - \\bar k_t)) v_i`.

Tolerances: the probe r = W q needs no solve, so both sides are float64 sums of at most T = 65 terms of
O(1) logits and gate sums (< 7): rounding ~(log T + |logit|) eps ~ 1e-15; 1e-12 leaves three digits of
margin, far below a dropped sink (O(1e-1), checked). The local-linear probe solves a 4 x 4 system with
ridge 1e-2 (cond < 1e4 on unit-scale keys), so the two solves differ by ~cond eps ~ 1e-12: 1e-10.
Causality is exact (``np.array_equal``).
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.regressors.parallax import Parallax
from ttr_stats.similarity import ExpDot
from ttr_stats.weights import SinkWindow

TOL_PROBE, TOL_LL = 1e-12, 1e-10
TAU, RIDGE = 0.6, 1e-2
METHODS = ("recurrent", "direct", "auto")


@pytest.fixture
def rng():
    return np.random.default_rng(1331)


def data(rng, T, d_k=4, d_v=3, batch=(2,)):
    Q, K, V = (rng.standard_normal(batch + (T, d)) / 2 for d in (d_k, d_k, d_v))
    g = np.log(rng.uniform(0.9, 1.0, batch + (T,)))
    b = rng.uniform(0.5, 2.0, batch + (T,))
    W = rng.standard_normal((d_k, d_k)) / np.sqrt(d_k)
    return Q, K, V, g, b, W


def layer(width, sinks, probe, ridge=0.0):
    return tt.TestTimeRegression(
        SinkWindow(width, sinks, alpha=None), Parallax(probe, ExpDot(TAU), ridge), tt.optimizers.ClosedForm()
    )


def reference(Q, K, V, G, probe, ridge=0.0):
    """Parallax from its definition, query by query, under dense weights G (float64, plain NumPy)."""
    out = np.zeros(Q.shape[:-1] + (V.shape[-1],))
    for bi in np.ndindex(Q.shape[:-2]):
        for t in range(Q.shape[-2]):
            q, k, v = Q[bi][t], K[bi], V[bi]
            logit = TAU * k @ q
            w = G[bi][t] * np.exp(logit - logit.max())
            p = w / w.sum()
            kbar = p @ k
            if isinstance(probe, str):  # r = (Sigma + ridge I)^-1 (kbar - q)
                Sigma = (k - kbar).T @ (p[:, None] * (k - kbar))
                r = np.linalg.solve(Sigma + ridge * np.eye(k.shape[-1]), kbar - q)
            else:
                r = probe @ q
            out[bi + (t,)] = (p * (1.0 - (k - kbar) @ r)) @ v
    return out


CASES = [(T, width, sinks) for T in (1, 9, 65) for width, sinks in ((5, 3), (5, 1), (40, 3), (5, 70))]


@pytest.mark.parametrize("T, width, sinks", CASES)
def test_every_method_equals_the_dense_weights_reference(rng, T, width, sinks):
    Q, K, V, g, b, W = data(rng, T)
    G = SinkWindow(width, sinks, alpha=None).matrix(T, log_alpha=g, beta=b)
    for probe, ridge, tol in ((W, 0.0, TOL_PROBE), ("local_linear", RIDGE, TOL_LL)):
        lay = layer(width, sinks, probe, ridge)
        assert set(lay.supported_methods) == {"recurrent", "direct"}
        ref = reference(Q, K, V, G, probe, ridge)
        for m in METHODS:
            Y = lay(Q, K, V, log_alpha=g, beta=b, method=m)
            err = float(np.max(np.abs(Y - ref), initial=0.0))
            assert err < tol, (T, width, sinks, m, err)


def test_the_sinks_change_the_answer(rng):
    # past the window the sinks are real design points: the result differs from the plain gated window by
    # O(1e-1) (so the 1e-12 above cannot pass with the sinks dropped), and agrees while t < w
    T, width, sinks = 65, 5, 3
    Q, K, V, g, b, W = data(rng, T)
    with_s = layer(width, sinks, W)(Q, K, V, log_alpha=g, beta=b)
    without = layer(width, 0, W)(Q, K, V, log_alpha=g, beta=b)
    assert np.max(np.abs(with_s - without)) > 1e-2
    assert np.max(np.abs(with_s[..., :width, :] - without[..., :width, :])) < TOL_PROBE


def test_final_cache_keeps_the_sinks_and_reads_the_last_output(rng):
    T, width, sinks = 65, 5, 3
    Q, K, V, g, b, W = data(rng, T)
    lay = layer(width, sinks, W)
    for m in ("recurrent", "direct"):
        Y, st = lay(Q, K, V, log_alpha=g, beta=b, method=m, return_state=True)
        kept = np.flatnonzero(np.isfinite(st.log_weight[0]))
        assert list(kept) == [0, 1, 2] + list(range(T - width, T)), m
        # the same pairs and weights: reading the cache at q_T is the causal output at T (same solve)
        assert np.max(np.abs(lay.read(st, Q[:, -1:]) - Y[:, -1:])) < TOL_PROBE, m


@pytest.mark.parametrize("seed", range(6))
def test_causality_fuzz(seed):
    # outputs before s are bit-for-bit independent of every input at s and after (Q, K, V, gates, beta)
    r = np.random.default_rng(1400 + seed)
    T = int(r.integers(2, 60))
    width, sinks, s = int(r.integers(1, 12)), int(r.integers(0, 15)), int(r.integers(1, T))
    Q, K, V, g, b, W = data(r, T)
    X = [x.copy() for x in (Q, K, V, g, b)]
    for x in X[:3]:
        x[..., s:, :] = r.standard_normal(x[..., s:, :].shape) * 3
    X[3][..., s:] = np.log(r.uniform(0.05, 1.0, X[3][..., s:].shape))
    X[4][..., s:] = r.uniform(0.1, 9.0, X[4][..., s:].shape)
    for probe, ridge in ((W, 0.0), ("local_linear", RIDGE)):
        lay = layer(width, sinks, probe, ridge)
        for m in ("recurrent", "direct"):
            y = lay(Q, K, V, log_alpha=g, beta=b, method=m)
            y2 = lay(*X[:3], log_alpha=X[3], beta=X[4], method=m)
            assert np.array_equal(y[..., :s, :], y2[..., :s, :]), (m, T, width, sinks, s)
            assert not np.array_equal(y[..., s:, :], y2[..., s:, :])
