"""Bad inputs of issue 9 (part C) that used to slip through or fail with an unclear error.

Each test asserts the exact error type and that the message names the argument (and, where it helps, the
remedy); the performer tests compare with a float64 reference computed the slow way (one log-sum-exp per
query-key pair over the random features).
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.diagnostics import capacity, memory, smoother


@pytest.fixture
def qkv():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 12, 4))


# ----------------------------------------------------------------------------------- booleans and text
@pytest.mark.parametrize("sim", [tt.similarity.ExpDot, tt.similarity.Gaussian])
def test_qk_norm_must_be_a_bool(qkv, sim):
    Q, K, V = qkv
    layer = tt.TestTimeRegression(regressor=tt.regressors.LocalPolynomial(0, sim(qk_norm="False")))
    with pytest.raises(TypeError, match="^qk_norm must be True or False, got 'False'"):
        layer(Q, K, V)


def test_alpha_string_is_not_parsed(qkv):
    Q, K, V = qkv
    with pytest.raises(TypeError, match="^alpha must be numeric, got the string '0.5'"):
        tt.recipes.mamba2()(Q, K, V, alpha="0.5")


@pytest.mark.parametrize("name", ["alpha", "log_alpha", "beta"])
def test_gate_list_of_strings_is_refused(qkv, name):
    Q, K, V = qkv
    with pytest.raises(TypeError, match=f"^{name} must be numeric"):
        tt.recipes.mamba2()(Q, K, V, **{name: ["0.5"] * 12})


def test_select_log_must_be_a_bool(qkv):
    Q, K, V = qkv
    with pytest.raises(TypeError, match="^log must be True or False"):
        smoother.select(
            tt.recipes.softmax_attention(), K, V, "regressor__similarity__scale", bounds=(0.1, 1), log="no"
        )


# --------------------------------------------------------------------------------- missing / empty arrays
def test_v_none_in_a_call(qkv):
    Q, K, V = qkv
    with pytest.raises(TypeError, match="^V is required"):
        tt.recipes.linear_attention()(Q, K, None)


def test_v_none_in_memorize(qkv):
    Q, K, V = qkv
    with pytest.raises(TypeError, match="^V is required"):
        tt.recipes.deltanet().memorize(K, None)


@pytest.mark.parametrize(
    "make",
    [
        tt.recipes.softmax_attention,
        tt.recipes.kernel_regression,
        tt.recipes.mesa,
        tt.recipes.linear_attention,
    ],
)
def test_zero_key_features(make):
    Z = np.zeros((8, 0))
    with pytest.raises(ValueError, match=r"^K \(and Q\) must have d_k >= 1"):
        make()(Z, Z, np.ones((8, 2)))


def test_kernel_matrix_zero_features_names_gamma():
    from ttr_stats.regressors.kernel_ridge import kernel_matrix

    Z = np.zeros((3, 0))
    with pytest.raises(ValueError, match="d_k >= 1 .*gamma=None"):
        kernel_matrix(np, Z, Z, "rbf")


def test_expdot_default_scale_zero_features():
    with pytest.raises(ValueError, match="d_k >= 1 .*scale=None"):
        tt.similarity.ExpDot().resolved_scale(0)


# ------------------------------------------------------------------------------------------- read()
def test_read_refuses_another_layers_state(qkv):
    Q, K, V = qkv
    state = tt.recipes.deltanet().memorize(K, V)  # a MemoryState
    with pytest.raises(TypeError, match="^state must be a LinearAttentionState .* got MemoryState"):
        tt.recipes.linear_attention().read(state, Q)


def test_read_refuses_a_parametric_state_in_a_cache_layer(qkv):
    Q, K, V = qkv
    state = tt.recipes.linear_attention().memorize(K, V)
    with pytest.raises(TypeError, match="^state must be a CacheState .* got LinearAttentionState"):
        tt.recipes.softmax_attention().read(state, Q)


def test_read_still_accepts_its_own_state(qkv):
    Q, K, V = qkv
    layer = tt.recipes.deltanet()
    Y, state = layer(Q, K, V, return_state=True)
    # the last query read from the final state is the last causal output: same arithmetic up to rounding,
    # float64 outputs of order 1 -> 1e-12
    np.testing.assert_allclose(layer.read(state, Q[-1]), Y[-1], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------ DeltaProduct
def test_delta_product_key_length_names_n_householder(qkv):
    Q, K, V = qkv
    with pytest.raises(ValueError, match=r"^K must have 24 time steps.*n_householder=2"):
        tt.recipes.delta_product(2)(Q, K, V)


def test_delta_product_memorize_does_not_blame_q(qkv):
    Q, K, V = qkv
    with pytest.raises(ValueError, match=r"^K must have a multiple of 2 time steps.*n_householder=2") as info:
        tt.recipes.delta_product(2).memorize(K[:11], V[:11])
    assert "Q" not in str(info.value)  # memorize takes no queries: the placeholder must not show


def test_delta_product_zero_householder_names_it(qkv):
    Q, K, V = qkv
    with pytest.raises(ValueError, match="^steps_per_token must be >= 1.*n_householder"):
        tt.recipes.delta_product(0)(Q, K, V)


# ------------------------------------------------------------------------------------------ closed forms
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: capacity.hopfield_self_weight(0, 4, 1.0), "n"),
        (lambda: capacity.hopfield_self_weight(np.array([3, 0]), 4, 1.0), "n"),
        (lambda: capacity.hopfield_self_weight(4, 0, 1.0), "d"),
        (lambda: capacity.outer_product_recall(0, 4), "n"),
        (lambda: capacity.outer_product_recall(4, 0), "d"),
        (lambda: capacity.least_squares_recall(-1, 4), "n"),
        (lambda: capacity.least_squares_recall(4, 0), "d"),
        (lambda: capacity.least_squares_excess_risk(10, 0, 1.0), "d"),
        (lambda: capacity.least_squares_excess_risk(0, 2, 1.0), "n"),
        (lambda: memory.lms_learning_curve(4, 0.1, -1), "t"),
        (lambda: memory.lms_learning_curve(4, 0.1, np.array([0, 1, -2])), "t"),
        (lambda: memory.constant_decay_window(0.9, T=-1), "T"),
    ],
)
def test_closed_forms_refuse_values_outside_their_domain(call, name):
    with pytest.raises(ValueError, match=f"^{name} must be >= "):
        call()


@pytest.mark.parametrize("bad", ["4", True, None])
def test_closed_form_counts_must_be_numbers(bad):
    with pytest.raises(TypeError, match="^n must be a number"):
        capacity.outer_product_recall(bad, 4)


def test_hopfield_self_weight_in_range():
    # the self weight is a probability: n = 1 gives exactly 1 (only the pair itself)
    assert capacity.hopfield_self_weight(1, 8, 2.0) == 1.0


# --------------------------------------------------------------------------------- NaN in the criteria
def _nan_values(V):
    V = V.copy()
    V[3, 0] = np.nan
    return V


@pytest.mark.parametrize("criterion", ["gcv", "loo_residuals", "prequential_error", "cp"])
def test_criteria_refuse_nan_values(qkv, criterion):
    Q, K, V = qkv
    args = (1.0,) if criterion == "cp" else ()
    with pytest.raises(ValueError, match="^V contains NaN"):
        getattr(smoother, criterion)(tt.recipes.softmax_attention(), K, _nan_values(V), *args)


@pytest.mark.parametrize("criterion", ["gcv", "loo_residuals"])
def test_criteria_refuse_infinite_keys(qkv, criterion):
    Q, K, V = qkv
    K = K.copy()
    K[0, 0] = np.inf
    with pytest.raises(ValueError, match="^K contains infinite values"):
        getattr(smoother, criterion)(tt.recipes.softmax_attention(), K, V)


def test_select_refuses_nan_values_instead_of_returning_its_lower_bound(qkv):
    Q, K, V = qkv
    with pytest.raises(ValueError, match="^V contains NaN"):
        smoother.select(
            tt.recipes.softmax_attention(),
            K,
            _nan_values(V),
            "regressor__similarity__scale",
            "gcv",
            bounds=(0.1, 10),
        )


def test_select_refuses_when_the_criterion_is_never_finite(qkv):
    # at logit scales 1e4..1e6 softmax attention interpolates its pairs (S_ii = 1): the LOO shortcut is 0/0
    # at every grid point, so there is nothing to minimise and the lower bound is no answer
    Q, K, V = qkv
    with pytest.raises(
        FloatingPointError, match="^criterion='loo' is not finite .* regressor__similarity__scale"
    ):
        smoother.select(
            tt.recipes.softmax_attention(), K, V, "regressor__similarity__scale", "loo", bounds=(1e4, 1e6)
        )


# ---------------------------------------------------------------------------- diagnostics' other inputs
def test_simulate_online_regression_refuses_a_nonparametric_layer():
    with pytest.raises(ValueError, match="^layer: simulate_online_regression .* LocalPolynomial"):
        memory.simulate_online_regression(tt.recipes.softmax_attention(), d=4, T=8)


def test_self_weight_one_dimensional_keys(qkv):
    Q, K, V = qkv
    with pytest.raises(ValueError, match=r"^K must have shape \(\.\.\., n, d_k\)"):
        capacity.self_weight(tt.recipes.softmax_attention(), K[:, 0])


def test_excess_risk_wrong_shape_w(qkv):
    Q, K, V = qkv
    with pytest.raises(ValueError, match=r"^W must have shape \(\.\.\., d_v, d_k\) = \(\.\.\., 4, 4\)"):
        capacity.excess_risk(tt.recipes.linear_attention(), K, V, np.ones((3, 3)), Q)


# --------------------------------------------------------------------------------------------- performer
def _performer_reference(Q, K, V, scale, n_features, W):
    """Float64 Performer output the slow way: log w_ti = logsumexp_r(log phi_r(q_t) + log phi_r(k_i)),
    then a causal softmax over i in log space (no feature is ever exponentiated alone)."""
    from scipy.special import logsumexp

    def log_phi(x):
        xt = np.sqrt(scale) * x
        return xt @ W.T - 0.5 * np.sum(xt * xt, -1, keepdims=True) - 0.5 * np.log(n_features)

    T = Q.shape[-2]
    lw = logsumexp(log_phi(Q)[:, None, :] + log_phi(K)[None, :, :], axis=-1)
    lw = np.where(np.tril(np.ones((T, T), dtype=bool)), lw, -np.inf)
    w = np.exp(lw - lw.max(-1, keepdims=True))
    return (w @ V) / w.sum(-1, keepdims=True)


def _sphere(rng, shape, radius):
    x = rng.standard_normal(shape)
    return radius * x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("method", ["recurrent", "chunked", "direct", "parallel"])
@pytest.mark.parametrize("scale", [0.3, 100.0])
def test_performer_matches_the_log_space_reference(method, scale):
    # |q| = |k| = 3.2 at scale 100: every feature is about exp(-450) and every product exp(-900), so
    # the plain features gave exactly 0 in every row; the keys' own features stay representable
    rng = np.random.default_rng(1)
    T, d, D = 48, 8, 64
    Q, K = _sphere(rng, (T, d), 3.2), _sphere(rng, (T, d), 3.2)
    V = rng.standard_normal((T, 3))
    layer = tt.recipes.performer(n_features=D, scale=scale)
    W = layer.regressor.projection(d)[0]
    plain = np.exp(layer.regressor.log_features(np, Q)) @ np.exp(layer.regressor.log_features(np, K)).T
    if scale == 100.0:
        assert np.all(np.tril(plain) == 0)  # the failure this fixes
    Y = layer(Q, K, V, method=method)
    ref = _performer_reference(Q, K, V, scale, D, W)
    assert not np.any(np.all(Y == 0, axis=-1))
    # log-weights of magnitude ~1e3 carry a relative rounding of ~1e3 eps = 2e-13 each; 48 pairs -> 1e-11
    np.testing.assert_allclose(Y, ref, rtol=0, atol=1e-11 * np.abs(V).max())


def test_performer_read_matches_the_causal_output():
    rng = np.random.default_rng(2)
    Q, K = _sphere(rng, (16, 8), 3.2), _sphere(rng, (16, 8), 3.2)
    V = rng.standard_normal((16, 2))
    layer = tt.recipes.performer(n_features=64, scale=100.0)
    Y, state = layer(Q, K, V, return_state=True)
    # the same shifted query features and the same final state: rounding only, outputs of order 1
    np.testing.assert_allclose(layer.read(state, Q[-1]), Y[-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_performer_refuses_when_key_features_underflow(dtype):
    # scale 1e4: log phi(k) ~ -5e3 |k|^2: every key's features are 0 in any float, so no normalisation
    # can recover the weights; before, the layer returned all zeros
    rng = np.random.default_rng(0)
    Q, K, V = rng.standard_normal((3, 16, 8)).astype(dtype)
    with pytest.raises(
        FloatingPointError, match="^scale: the positive random features of some keys underflow"
    ):
        tt.recipes.performer(scale=1e4)(Q, K, V)


def test_unnormalised_positive_features_are_unchanged():
    # without a normalised read a per-query shift would change the answer: the plain features stay
    rng = np.random.default_rng(3)
    Q, K, V = rng.standard_normal((3, 10, 4))
    fm = tt.regressors.FeatureMap("positive_random", n_features=32, scale=0.5)
    layer = tt.recipes.linear_attention(feature_map=fm)
    phi_q, phi_k = np.exp(fm.log_features(np, Q)), np.exp(fm.log_features(np, K))
    ref = np.tril(phi_q @ phi_k.T) @ V
    # float64 sums of 10 terms of order 1: 1e-12
    np.testing.assert_allclose(layer(Q, K, V, method="recurrent"), ref, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------- host memory check
def test_parallel_on_the_host_refuses_before_allocating(monkeypatch):
    from ttr_stats.methods import registry

    monkeypatch.setattr(registry, "free_host_bytes", lambda: 2**30)  # a host with 1 GiB available
    rng = np.random.default_rng(0)
    Q, K, V = rng.standard_normal((3, 100_000, 8))  # T x T float64 forms: ~220 GiB
    with pytest.raises(MemoryError, match="^method='parallel' needs about .* use method="):
        tt.recipes.linear_attention()(Q, K, V, method="parallel")


def test_host_check_leaves_fitting_methods_alone(monkeypatch):
    from ttr_stats.methods import registry

    monkeypatch.setattr(registry, "free_host_bytes", lambda: 2**30)
    rng = np.random.default_rng(0)
    Q, K, V = rng.standard_normal((3, 64, 4))
    Y = tt.recipes.linear_attention()(Q, K, V, method="parallel")
    # the parallel form against the loop: float64, 64 terms of order 1 -> 1e-12
    np.testing.assert_allclose(
        Y, tt.recipes.linear_attention()(Q, K, V, method="recurrent"), rtol=0, atol=1e-12
    )
