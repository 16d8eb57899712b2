"""Log-linear Gated DeltaNet (Guo et al. 2025): the delta rule's pseudo-values under hierarchical weights."""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.methods.log_linear.direct import level_matrix
from ttr_stats.optimizers.log_linear import fenwick_level

TOL64 = 1e-10  # float64 round-off of T <= 64 sums and a T x T triangular solve


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(np.max(np.abs(np.asarray(b))), 1e-300))


@pytest.fixture
def rng():
    return np.random.default_rng(13)


def qkvab(rng, T=29, d_k=4, d_v=3):
    Q, K, V = (rng.standard_normal((2, T, d)) for d in (d_k, d_k, d_v))
    K = K / np.linalg.norm(K, axis=-1, keepdims=True)
    return Q, K, V, rng.uniform(0.6, 1.0, (2, T)), rng.uniform(0.1, 1.0, (2, T))


def test_unit_levels_are_gated_deltanet(rng):
    Q, K, V, a, b = qkvab(rng, T=37)
    ref = tt.recipes.gated_deltanet()(Q, K, V, alpha=a, beta=b)
    layer = tt.recipes.log_linear_gated_deltanet()
    for m in ("recurrent", "direct"):
        assert rel(layer(Q, K, V, alpha=a, beta=b, method=m), ref) < TOL64, m


def explicit_sum(Q, K, V, a, b, lam):
    """y_t = sum_i lambda_t^(level(t, i)) beta_i (k_i^T A_{i+1} ... A_t q_t) v_i, A_j = alpha_j (I - beta_j k_j k_j^T):
    the authors' per-bucket recurrence (hattention/recurrent.py) unrolled, pair by pair."""
    n, T, d = Q.shape
    Y = np.zeros(V.shape)
    for m in range(n):
        for t in range(T):
            r = Q[m, t]
            for i in range(t, -1, -1):
                Y[m, t] += lam[m, t, fenwick_level(t, i)] * b[m, i] * (K[m, i] @ r) * V[m, i]
                r = a[m, i] * (r - b[m, i] * (K[m, i] @ r) * K[m, i])
    return Y


def pseudo_value_form(Q, K, V, a, b, lam):
    """O = (Q K^T o L o M^H) (I + tril(diag(beta) K K^T o L, -1))^{-1} diag(beta) V: M^H on the output only."""
    T = Q.shape[-2]
    lev = level_matrix(T)
    out = []
    for n in range(Q.shape[0]):
        lg = np.cumsum(np.log(a[n]))
        D = np.tril(np.exp(lg[:, None] - lg[None, :]))
        MH = np.array([[lam[n, t, lev[t, i]] if lev[t, i] >= 0 else 0.0 for i in range(T)] for t in range(T)])
        A = np.eye(T) + np.tril(np.diag(b[n]) @ (K[n] @ K[n].T * D), -1)
        out.append((Q[n] @ K[n].T * D * MH) @ np.linalg.solve(A, np.diag(b[n]) @ V[n]))
    return np.stack(out)


def test_pseudo_value_form_agrees_only_at_unit_levels(rng):
    # the two candidate definitions: equal when every lambda = 1 (both are Gated DeltaNet), not otherwise
    T, L = 29, 6
    Q, K, V, a, b = qkvab(rng, T=T)
    lam = rng.uniform(0.0, 2.0, (2, T, L))
    one = np.ones_like(lam)
    assert rel(pseudo_value_form(Q, K, V, a, b, one), explicit_sum(Q, K, V, a, b, one)) < TOL64
    assert rel(pseudo_value_form(Q, K, V, a, b, lam), explicit_sum(Q, K, V, a, b, lam)) > 1e-3


def test_direct_equals_recurrent_equals_explicit_sum_with_data_dependent_levels(rng):
    T, L = 29, 6
    Q, K, V, a, b = qkvab(rng, T=T)
    lam = rng.uniform(0.0, 2.0, (2, T, L))
    layer = tt.recipes.log_linear_gated_deltanet(levels=L).set_params(optimizer__level_weights=lam)
    y_rec = layer(Q, K, V, alpha=a, beta=b, method="recurrent")
    assert rel(layer(Q, K, V, alpha=a, beta=b, method="direct"), y_rec) < TOL64
    assert rel(y_rec, explicit_sum(Q, K, V, a, b, lam)) < TOL64
    # split at 11: the continued call (carried delta memory and buckets) gives the same outputs
    y1, s = layer(Q[:, :11], K[:, :11], V[:, :11], alpha=a[:, :11], beta=b[:, :11], return_state=True)
    for m in ("recurrent", "direct"):
        y2 = layer(
            Q[:, 11:], K[:, 11:], V[:, 11:], alpha=a[:, 11:], beta=b[:, 11:], initial_state=s, method=m
        )
        assert rel(np.concatenate([y1, y2], axis=1), y_rec) < TOL64, m


def test_exact_causality(rng):
    T, L, s = 24, 6, 9
    Q, K, V, a, b = qkvab(rng, T=T)
    lam = rng.uniform(0.0, 2.0, (2, T, L))
    layer = tt.recipes.log_linear_gated_deltanet(levels=L).set_params(optimizer__level_weights=lam)
    Q2, K2, V2, a2, b2 = (x.copy() for x in (Q, K, V, a, b))
    for x in (Q2, K2, V2):
        x[:, s:] = rng.standard_normal(x[:, s:].shape)
    a2[:, s:], b2[:, s:] = 0.9, 0.5
    for m in ("recurrent", "direct"):
        y, y2 = layer(Q, K, V, alpha=a, beta=b, method=m), layer(Q2, K2, V2, alpha=a2, beta=b2, method=m)
        assert np.array_equal(y[:, :s], y2[:, :s]), m  # bit-identical before s


def test_refuses_too_few_levels(rng):
    Q, K, V, a, b = qkvab(rng, T=9)
    for m in ("recurrent", "direct"):
        with pytest.raises(ValueError, match="levels"):
            tt.recipes.log_linear_gated_deltanet(levels=3)(Q, K, V, method=m)
