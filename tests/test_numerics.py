"""Numerically fragile paths at their extremes: float32 RLS, strong decay, step sizes near 0 and 2."""

import numpy as np
import pytest
from conftest import make_qkv, rel_err

import ttr_stats as tt


def _regression_stream(rng, T, d, d_v=2, noise=0.1):
    K = rng.standard_normal((T, d)) / np.sqrt(d)
    Q = rng.standard_normal((T, d)) / np.sqrt(d)
    W = rng.standard_normal((d_v, d))
    return Q, K, K @ W.T + noise * rng.standard_normal((T, d_v))


@pytest.mark.parametrize("forgetting", [1.0, 0.99])
@pytest.mark.parametrize("ridge", [1e-6, 1e-2])
def test_rls_float32_long_sequence_stays_finite_and_accurate(forgetting, ridge, rng):
    Q, K, V = _regression_stream(rng, 4096, 16)
    layer = tt.recipes.rls(ridge=ridge, forgetting=forgetting)
    y64 = layer(Q, K, V)
    y32 = layer(Q.astype(np.float32), K.astype(np.float32), V.astype(np.float32))
    assert y32.dtype == np.float32 and np.all(np.isfinite(y32))
    # Once t >> d the key covariance is well conditioned (Marchenko-Pastur: cond < 2 at t > 100 d), so
    # float32 should track float64 to a few hundred eps (6e-8); measured 2e-7..2e-5. Bound: 1e-4.
    assert rel_err(y32[-256:], y64[-256:]) < 1e-4


def test_rls_wind_up_is_a_clear_error(rng):
    """log alpha = -50: every unexcited direction of P grows by e^50 a step and overflows (theory §5.2)."""
    Q, K, V = make_qkv(rng, T=24)
    with pytest.raises(FloatingPointError, match="wind-up"):
        tt.recipes.rls()(Q, K, V, log_alpha=np.full(24, -50.0))
    # the fixed-ridge closed form (mesa) is the stable alternative recommended by the message
    Y = tt.recipes.mesa(ridge=1.0)(Q, K, V, log_alpha=np.full(24, -50.0))
    assert np.all(np.isfinite(Y))


@pytest.mark.parametrize("log_gate", [0.0, -1e-3, -7.0, -50.0])
def test_strong_decay_float32_parallel_is_stable(log_gate, rng):
    """T = 2048 in float32: cumulative gates reach -1e5; segment sums never form exp(+sum g)."""
    T = 2048
    Q, K, V = (a.astype(np.float32) for a in make_qkv(rng, batch=(), T=T, d_k=8, d_v=4, unit=True))
    la = (log_gate * rng.uniform(0.5, 1.0, T)).astype(np.float32)
    layer = tt.recipes.mamba2()
    ref = layer(Q, K, V, log_alpha=la, method="recurrent")
    assert np.all(np.isfinite(ref))
    for m in ("parallel", "direct") if T <= 512 else ("parallel",):
        Y = layer(Q, K, V, log_alpha=la, method=m)
        # float32 sums of up to 1/(1 - alpha) ~ 2000 terms of size <= 1: error ~ sqrt(2000) eps ~ 3e-6
        assert rel_err(Y, ref) < 1e-5


def test_delta_rule_with_tiny_step_is_scaled_linear_attention(rng):
    """beta -> 0: M_t = beta sum v k^T + O(beta^2 t^2)."""
    Q, K, V = make_qkv(rng, T=30, unit=True)
    beta = 1e-9
    Y = tt.recipes.deltanet(beta=beta)(Q, K, V)
    LA = tt.recipes.linear_attention()(Q, K, V)
    assert rel_err(Y / beta, LA) < 1e-6  # relative O(beta * t) = 3e-8, with margin


@pytest.mark.parametrize("beta", [1.99, 2.0])
def test_delta_rule_near_two_is_non_expansive_for_unit_keys(beta, rng):
    """Noiseless v = W k, unit keys: M_t - W = (M_{t-1} - W)(I - beta k k^T), eigenvalues 1 and 1 - beta,
    so ||M_t - W||_F never increases for beta <= 2 (and is constant along k at beta = 2)."""
    d, T = 6, 2000
    K = rng.standard_normal((T, d))
    K /= np.linalg.norm(K, axis=1, keepdims=True)
    W = rng.standard_normal((3, d))
    layer = tt.recipes.deltanet(beta=beta)
    prev = np.linalg.norm(W)
    state = None
    for t in range(T):
        state = layer.memorize(K[t : t + 1], K[t : t + 1] @ W.T, initial_state=state)
        err = np.linalg.norm(state.M - W)
        assert err <= prev * (1 + 1e-12)  # rounding only
        prev = err
    if beta < 2:
        # and it contracts: E||M_T - W||^2 / ||W||^2 = (1 - beta (2 - beta) / d)^T = 0.0013 (theory §4);
        # one path's ratio is a product of 2000 iid factors, so a 40x margin covers its spread
        assert (prev / np.linalg.norm(W)) ** 2 < 0.05


def test_beta_above_two_expands(rng):
    d, T = 4, 200
    K = rng.standard_normal((T, d))
    K /= np.linalg.norm(K, axis=1, keepdims=True)
    W = rng.standard_normal((2, d))
    state = tt.recipes.deltanet(beta=2.5).memorize(K, K @ W.T)
    assert np.linalg.norm(state.M - W) > 10 * np.linalg.norm(W)
