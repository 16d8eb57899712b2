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


def test_layer_refuses_sinks_instead_of_dropping_them(rng):
    # never the plain window's finite wrong answer: a clear error naming the argument and the remedy
    Q, K, V = (rng.standard_normal((T, 4)) for _ in range(3))
    layer = tt.TestTimeRegression(SinkWindow(W, S), LocalPolynomial(0, ExpDot()), tt.optimizers.ClosedForm())
    with pytest.raises(ValueError, match=r"SinkWindow\(sinks=3\).*matrix\(T\).*sinks=0"):
        layer(Q, K, V)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_bad_sinks_are_refused(bad):
    with pytest.raises(ValueError, match="sinks"):
        SinkWindow(W, bad).matrix(T)


def test_data_dependent_sinks_need_gates():
    with pytest.raises(ValueError, match="alpha"):
        SinkWindow(W, S, alpha=None).matrix(T)
    with pytest.raises(ValueError, match=r"\(\.\.\., T\)"):
        SinkWindow(W, S, alpha=None).matrix(T, alpha=np.ones(T + 1))
