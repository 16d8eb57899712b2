"""Chain of trust: ttr_stats layers against independent scikit-learn and statsmodels oracles.

Every comparison is in float64. Tolerances are relative (Frobenius norm of the difference over the norm of
the reference) and each one says where it comes from:

* Exact solvers (closed form vs ``Ridge``/``LinearRegression``/``WLS``) use **1e-10**. Both sides are
  backward stable, so their forward errors are at most ~``cond * eps`` with ``cond`` the condition number of
  the (weighted, ridge-shifted) key covariance on its range. Every such test asserts ``cond * eps < 1e-11``
  for its data first, so 1e-10 leaves a margin of 10 (the worst case here is ridge = 1e-3 with t < d_k,
  cond ~ 1e4: cond * eps ~ 2e-12).
* Online recursions against SGD (same arithmetic, one rank-one step per row, contractive for the step sizes
  used) also use **1e-10**.
* RLS against statsmodels' ``RecursiveLS`` (exact diffuse Kalman filter, i.e. plain OLS) has a tolerance
  computed per step from the ridge and the conditioning; see :func:`rls_tolerance`.
"""

import numpy as np
import pytest
import statsmodels.api as sm
from conftest import rel_err as rel
from sklearn.linear_model import LinearRegression, Ridge, SGDRegressor

import ttr_stats as tt

EPS = np.finfo(np.float64).eps
EXACT_RTOL = 1e-10  # float64 exact-solver agreement; justified per test by assert_well_conditioned


# ---------------------------------------------------------------------------------------------------------
# helpers (independent of ttr_stats)
# ---------------------------------------------------------------------------------------------------------


def gamma_reference(T, alpha=None, beta=None, window=None):
    r"""Dense :math:`\Gamma_{ti} = \beta_i \prod_{j=i+1}^t \alpha_j \mathbb 1[t-i<w]` by explicit products.

    Written from the paper's definition with plain loops, so it shares no code with ``ttr_stats.weights``.
    ``alpha``/``beta`` are 1-D of length T (or None for all ones).
    """
    alpha = np.ones(T) if alpha is None else np.asarray(alpha, dtype=np.float64)
    beta = np.ones(T) if beta is None else np.asarray(beta, dtype=np.float64)
    G = np.zeros((T, T))
    for t in range(T):
        for i in range(t + 1):
            if window is not None and t - i >= window:
                continue
            G[t, i] = beta[i] * np.prod(alpha[i + 1 : t + 1])
    return G


def condition_on_range(R):
    """Condition number of a symmetric PSD matrix on its range (eigenvalues above 100 d eps lambda_max)."""
    lam = np.linalg.eigvalsh(R)
    lam_max = lam[-1]
    kept = lam[lam > 100 * R.shape[-1] * EPS * lam_max]
    return float(lam_max / kept[0])


def assert_well_conditioned(R, bound=1e-11):
    """Guard for the 1e-10 tolerance: both solvers' forward errors are ~cond * eps; require it < 1e-11."""
    c = condition_on_range(R)
    assert c * EPS < bound, f"test data too ill-conditioned for a 1e-10 tolerance: cond = {c:.3g}"


def linear_oracle(K, V, w, ridge, solver):
    """scikit-learn's weighted ridge / min-norm least squares on one prefix; returns coef_ (d_v, d_k)."""
    if ridge == 0.0:
        est = LinearRegression(fit_intercept=False)
    else:
        est = Ridge(alpha=ridge, fit_intercept=False, solver=solver)
    est.fit(K, V, sample_weight=w)
    return est.coef_.reshape(V.shape[1], K.shape[1])


# ---------------------------------------------------------------------------------------------------------
# 1. ClosedForm (any weights) == Ridge / LinearRegression with sample_weight = Gamma[t, :t+1] on each prefix
# ---------------------------------------------------------------------------------------------------------
B, T_CF, DK_CF, DV_CF = 2, 10, 4, 2  # T > d_k and t < d_k both occur (min-norm regime for ridge = 0)

WEIGHTS = {
    "uniform": lambda: tt.weights.Uniform(),
    "exp0.8": lambda: tt.weights.ExponentialDecay(0.8),
    "gated": lambda: tt.weights.Gated(),
    "window5": lambda: tt.weights.SlidingWindow(5),
}


def _weights_case(name, rng, T):
    """(weights object, call-time gates, reference Gamma of shape (B, T, T))."""
    w = WEIGHTS[name]()
    if name == "gated":
        alpha = rng.uniform(0.5, 1.0, size=(B, T))
        beta = rng.uniform(0.5, 2.0, size=(B, T))  # beta multiplies the sample weight
        G = np.stack([gamma_reference(T, alpha[b], beta[b]) for b in range(B)])
        return w, dict(alpha=alpha, beta=beta), G
    if name == "exp0.8":
        G = gamma_reference(T, alpha=np.full(T, 0.8))
    elif name == "window5":
        G = gamma_reference(T, window=5)
    else:
        G = gamma_reference(T)
    return w, {}, np.broadcast_to(G, (B, T, T))


@pytest.mark.parametrize("weights_name", list(WEIGHTS))
def test_gamma_matches_definition(weights_name, rng):
    # Gamma is the sample-weight vector fed to the oracles below; the library's dense Gamma must equal the
    # loop-built definition. Products of <= T numbers in [0.5, 2]: agreement to a few ulps; 1e-13 is loose.
    w, gates, G = _weights_case(weights_name, rng, T_CF)
    got = np.asarray(w.matrix(T_CF, **gates))
    np.testing.assert_allclose(np.broadcast_to(got, G.shape), G, rtol=1e-13, atol=0)


def test_exponential_decay_matrix():
    # regression test: the dense-weights method was once named `gamma`, shadowed by ExponentialDecay.gamma
    G = tt.weights.ExponentialDecay(0.8).matrix(3)
    np.testing.assert_allclose(G, gamma_reference(3, alpha=np.full(3, 0.8)), rtol=1e-13)


@pytest.mark.parametrize("ridge", [0.0, 1e-3, 1.0])
@pytest.mark.parametrize("weights_name", list(WEIGHTS))
def test_closed_form_equals_sklearn_ridge_on_every_prefix(weights_name, ridge, rng):
    Q = rng.standard_normal((B, T_CF, DK_CF))
    K = rng.standard_normal((B, T_CF, DK_CF))
    V = rng.standard_normal((B, T_CF, DV_CF))
    w, gates, G = _weights_case(weights_name, rng, T_CF)
    layer = tt.TestTimeRegression(w, tt.regressors.Linear(), tt.optimizers.ClosedForm(ridge=ridge))

    # oracle memories: coef_ of sklearn on prefix t with sample_weight = Gamma[t, :t+1]; both Ridge solvers
    # (svd works on sqrt(w) K directly, cholesky on the normal / kernel equations)
    solvers = ("svd", "cholesky") if ridge > 0 else ("lstsq",)
    ref = {s: np.empty((B, T_CF, DV_CF, DK_CF)) for s in solvers}
    for b in range(B):
        for t in range(T_CF):
            Kt, Vt, wt = K[b, : t + 1], V[b, : t + 1], G[b, t, : t + 1]
            assert_well_conditioned(Kt.T @ (wt[:, None] * Kt) + ridge * np.eye(DK_CF))
            for s in solvers:
                ref[s][b, t] = linear_oracle(Kt, Vt, wt, ridge, s)
    for s in solvers[1:]:  # the two sklearn solvers agree with each other (same 1e-10 reasoning)
        assert rel(ref[s], ref[solvers[0]]) < EXACT_RTOL
    M_ref = ref[solvers[0]]
    Y_ref = np.einsum("btvk,btk->btv", M_ref, Q)

    methods = layer.supported_methods
    assert "recurrent" in methods  # every supported method is looped over below, whatever it is
    for method in (*methods, "auto"):
        Y = layer(Q, K, V, method=method, **gates)
        for b in range(B):
            for t in range(T_CF):
                # y_t = M_t q_t: its error is at most ||dM_t|| ||q_t||, so scale the 1e-10 by ||M_t|| ||q_t||
                err = np.linalg.norm(Y[b, t] - Y_ref[b, t])
                scale = np.linalg.norm(M_ref[b, t]) * np.linalg.norm(Q[b, t])
                assert err <= EXACT_RTOL * scale, (method, b, t, err / scale)
        for t in range(T_CF):
            sl = slice(0, t + 1)
            g_t = {k: v[..., sl] for k, v in gates.items()}
            _, state = layer(Q[:, sl], K[:, sl], V[:, sl], method=method, return_state=True, **g_t)
            M = np.asarray(layer.optimizer.memory(state))
            assert M.shape == (B, DV_CF, DK_CF)
            for b in range(B):
                assert rel(M[b], M_ref[b, t]) < EXACT_RTOL, (method, b, t, rel(M[b], M_ref[b, t]))


def test_closed_form_ridge0_is_min_norm_below_d_k(rng):
    # t < d_k: LinearRegression (scipy lstsq) returns the minimum-norm interpolant; so must the layer.
    # Its rows must interpolate the data and lie in the row space of K (no null-space component).
    d_k, T = 6, 3
    K = rng.standard_normal((T, d_k))
    V = rng.standard_normal((T, 2))
    layer = tt.recipes.least_squares(ridge=0.0)
    _, state = layer(K, K, V, return_state=True)
    M = np.asarray(layer.optimizer.memory(state))
    assert_well_conditioned(K.T @ K)
    ref = LinearRegression(fit_intercept=False).fit(K, V).coef_
    assert rel(M, ref) < EXACT_RTOL
    assert rel(M @ K.T, V.T) < EXACT_RTOL  # interpolates (same backward-stable reasoning)
    null = np.linalg.svd(K)[2][T:]  # orthonormal basis of the null space of K
    assert np.linalg.norm(M @ null.T) < EXACT_RTOL * np.linalg.norm(M)


# ---------------------------------------------------------------------------------------------------------
# 2. RLS (forgetting 1) == statsmodels RecursiveLS (recursive OLS, exact diffuse start)
# ---------------------------------------------------------------------------------------------------------
def rls_tolerance(rho, R, k2max, recursive):
    r"""Relative tolerance for RLS(ridge = rho) vs exact recursive OLS at one step with covariance R.

    * ridge bias (exact): RLS solves ridge, :math:`m_\rho = (R + \rho I)^{-1} R\, m_{ols}`, so
      :math:`\|m_{ols} - m_\rho\| = \|\rho (R + \rho I)^{-1} m_{ols}\| \le \rho/(\lambda_{min}(R)+\rho)\,\|m_{ols}\|`;
    * rounding of the recursion (``recursive`` only): it starts from :math:`P_0 = I/\rho` and cancels it
      down to :math:`(R + \rho I)^{-1}` by rank-one downdates whose entries are as large as
      :math:`\|k\|^2/\rho` relative to the result, each carrying an error of eps times that. Bound:
      :math:`\varepsilon \max_i\|k_i\|^2/\rho`. (Measured: the observed rounding error is at most 0.054 of
      this over 20 seeds x d in {2, 4, 6} x rho in {1e-8, 1e-10, 1e-12}, so coefficient 1 leaves ~20x.)
      This term is why rho cannot be made arbitrarily small: the two terms balance near sqrt(eps).
    * both solvers' conditioning: 10 cond(R) eps (statsmodels' Kalman filter and the direct solve).
    """
    lam = np.linalg.eigvalsh(R)
    bias = rho / (lam[0] + rho)
    rounding = EPS * k2max / rho if recursive else 0.0
    return bias + rounding + 10 * (lam[-1] / lam[0]) * EPS


def _rls_data(rng, T, d, d_v):
    X = rng.standard_normal((T, d))
    Y = X @ rng.standard_normal((d, d_v)) + 0.1 * rng.standard_normal((T, d_v))
    Q = rng.standard_normal((T, d))
    return Q, X, Y


def _statsmodels_filtered(X, Y):
    """statsmodels recursive coefficients, one output column at a time: shape (T, d_v, d)."""
    cols = []
    for c in range(Y.shape[1]):
        res = sm.RecursiveLS(Y[:, c], X).fit()
        F = np.asarray(res.recursive_coefficients.filtered)
        assert F.shape == (X.shape[1], X.shape[0])  # (k, T)
        cols.append(F.T)
    return np.stack(cols, axis=1)


@pytest.mark.parametrize("d_v", [1, 2])
@pytest.mark.parametrize("rho", [1e-8, 1e-10])
def test_rls_equals_statsmodels_recursive_ls(rho, d_v, rng):
    T, d = 24, 4
    Q, X, Y = _rls_data(rng, T, d, d_v)
    F = _statsmodels_filtered(X, Y)
    layer = tt.recipes.rls(ridge=rho, forgetting=1.0)
    assert "recurrent" in layer.supported_methods  # all of them are looped over below
    for method in layer.supported_methods:
        Yhat = layer(Q, X, Y, method=method)
        for t in range(d - 1, T):  # t + 1 >= d rows: OLS is identified, the diffuse phase is over
            sl = slice(0, t + 1)
            R = X[sl].T @ X[sl]
            tol = rls_tolerance(rho, R, np.max(np.sum(X[sl] ** 2, axis=1)), method == "recurrent")
            _, state = layer(Q[sl], X[sl], Y[sl], method=method, return_state=True)
            M = np.asarray(layer.optimizer.memory(state))
            assert rel(M, F[t]) < tol, (method, t, rel(M, F[t]), tol)
            # the output y_t = M_t q_t inherits the memory's relative error times ||M_t|| ||q_t||
            err = np.linalg.norm(Yhat[t] - F[t] @ Q[t])
            assert err <= tol * np.linalg.norm(F[t]) * np.linalg.norm(Q[t]), (method, t)


@pytest.mark.parametrize("rho", [1e-4, 1e-2])
def test_rls_equals_statsmodels_after_exact_ridge_correction(rho, rng):
    # The ridge bias is known in closed form: m_rho = (R + rho I)^{-1} R m_ols. Mapping statsmodels' OLS
    # coefficients through it leaves only rounding, eps ||k||^2 / rho + cond eps (see rls_tolerance):
    # < 1e-10 for these rho, a much sharper check of the recursion than the raw comparison above.
    T, d, d_v = 24, 4, 2
    Q, X, Y = _rls_data(rng, T, d, d_v)
    F = _statsmodels_filtered(X, Y)
    layer = tt.recipes.rls(ridge=rho)
    for t in range(d - 1, T):
        sl = slice(0, t + 1)
        R = X[sl].T @ X[sl]
        ref = np.linalg.solve(R + rho * np.eye(d), R @ F[t].T).T
        tol = rls_tolerance(0.0, R, 0.0, False) + EPS * np.max(np.sum(X[sl] ** 2, axis=1)) / rho
        assert tol < 1e-10
        _, state = layer(Q[sl], X[sl], Y[sl], return_state=True)
        assert rel(state.M, ref) < tol, (t, rel(state.M, ref), tol)


# ---------------------------------------------------------------------------------------------------------
# 3. LMS (delta rule) == SGDRegressor fed one row per partial_fit
# ---------------------------------------------------------------------------------------------------------
def _sgd(eta0):
    # The trap list: loss "squared_error" is sklearn's HalfSquaredError, 1/2 (y - w.x)^2, whose gradient is
    # -(y - w.x) x -- the same 1/2 convention as the paper's objective, so eta0 = beta (not beta / 2).
    # learning_rate must be "constant" (the default "invscaling" divides eta0 by t^power_t; power_t is then
    # unused), average must stay False (default; True would report the averaged iterate), penalty None
    # (default l2 adds a leak), no intercept, no shuffling.
    return SGDRegressor(
        loss="squared_error",
        penalty=None,
        learning_rate="constant",
        eta0=eta0,
        fit_intercept=False,
        shuffle=False,
    )


def _lms_data(rng, T=40, d=4):
    K = rng.standard_normal((T, d))
    v = K @ rng.standard_normal(d) + 0.1 * rng.standard_normal(T)
    Q = rng.standard_normal((T, d))
    return Q, K, v


def test_sgd_traps_documented(rng):
    # the conventions _sgd relies on, checked on sklearn itself
    Q, K, v = _lms_data(rng, T=3)
    s = _sgd(0.1).partial_fit(K[:1], v[:1])
    # one step from 0 with the 1/2 convention: w = eta0 * y * x (2 * eta0 * y * x with a plain square);
    # a single multiply-add per entry, so agreement to rounding: 1e-14
    np.testing.assert_allclose(s.coef_, 0.1 * v[0] * K[0], rtol=1e-14)
    assert s.intercept_ == 0.0
    assert SGDRegressor().average is False and SGDRegressor().learning_rate == "invscaling"
    # the default schedule would not be LMS: eta_t = eta0 / t^power_t differs from eta0 after step 1
    s_inv = SGDRegressor(penalty=None, eta0=0.1, fit_intercept=False, shuffle=False)
    s_const = _sgd(0.1)
    for t in range(3):
        s_inv.partial_fit(K[t : t + 1], v[t : t + 1])
        s_const.partial_fit(K[t : t + 1], v[t : t + 1])
    assert rel(s_inv.coef_, s_const.coef_) > 1e-3


@pytest.mark.parametrize("beta", [0.05, 0.1])
def test_lms_equals_sgd_regressor_partial_fit(beta, rng):
    Q, K, v = _lms_data(rng)
    T, d = K.shape
    # stability: beta ||k||^2 < 2 for every row, so the recursion is contractive and rounding does not grow
    # beyond ~T eps: 1e-10 is safe
    assert beta * np.max(np.sum(K**2, axis=1)) < 2
    layer = tt.recipes.deltanet(beta=beta)
    Y = layer(Q, K, v[:, None])
    sgd = _sgd(beta)
    est = tt.TestTimeRegressor(tt.recipes.deltanet(beta=beta))
    for t in range(T):
        sgd.partial_fit(K[t : t + 1], v[t : t + 1])
        est.partial_fit(K[t : t + 1], v[t : t + 1])
        _, state = layer(Q[: t + 1], K[: t + 1], v[: t + 1, None], return_state=True)
        M = np.asarray(layer.optimizer.memory(state))
        assert M.shape == (1, d)
        assert rel(M[0], sgd.coef_) < EXACT_RTOL, t
        assert rel(est.coef_, sgd.coef_) < EXACT_RTOL, t
        # output read after the update: y_t = M_t q_t = sgd.predict(q_t) after row t
        err = abs(Y[t, 0] - sgd.predict(Q[t : t + 1])[0])
        assert err <= EXACT_RTOL * np.linalg.norm(sgd.coef_) * np.linalg.norm(Q[t]), t
    np.testing.assert_allclose(est.predict(Q), sgd.predict(Q), rtol=0, atol=EXACT_RTOL * np.abs(Y).max())


def test_lms_time_varying_beta_equals_sgd_sample_weight(rng):
    # A call-time step beta_t = eta0 * s_t is SGD with sample_weight s_t (it scales that row's gradient).
    Q, K, v = _lms_data(rng, T=30)
    eta0 = 0.05
    s = rng.uniform(0.2, 2.0, size=K.shape[0])
    _, state = tt.recipes.deltanet()(Q, K, v[:, None], beta=eta0 * s, return_state=True)
    sgd = _sgd(eta0)
    for t in range(K.shape[0]):
        sgd.partial_fit(K[t : t + 1], v[t : t + 1], sample_weight=s[t : t + 1])
    assert rel(state.M[0], sgd.coef_) < EXACT_RTOL  # same reasoning as above (eta0 * 2 * ||k||^2 < 2)


# ---------------------------------------------------------------------------------------------------------
# 4. Decayed ClosedForm at one t == statsmodels WLS with weights gamma^(t)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["exp0.9", "gated"])
def test_decayed_closed_form_equals_statsmodels_wls(case, rng):
    T, d, d_v = 16, 4, 2
    Q = rng.standard_normal((T, d))
    K = rng.standard_normal((T, d))
    V = rng.standard_normal((T, d_v))
    if case == "exp0.9":
        weights, gates = tt.weights.ExponentialDecay(0.9), {}
        G = gamma_reference(T, alpha=np.full(T, 0.9))
    else:
        alpha, beta = rng.uniform(0.5, 1.0, T), rng.uniform(0.5, 2.0, T)
        weights, gates = tt.weights.Gated(), dict(alpha=alpha, beta=beta)
        G = gamma_reference(T, alpha, beta)
    layer = tt.TestTimeRegression(weights, tt.regressors.Linear(), tt.optimizers.ClosedForm(ridge=0.0))
    Y = layer(Q, K, V, **gates)
    for t in range(d + 1, T):  # t > d: WLS is identified (full column rank)
        sl = slice(0, t + 1)
        w = G[t, sl]
        assert_well_conditioned(K[sl].T @ (w[:, None] * K[sl]))
        params = np.stack([sm.WLS(V[sl, c], K[sl], weights=w).fit().params for c in range(d_v)])
        _, state = layer(Q[sl], K[sl], V[sl], return_state=True, **{k: g[sl] for k, g in gates.items()})
        M = np.asarray(layer.optimizer.memory(state))
        assert rel(M, params) < EXACT_RTOL, (t, rel(M, params))
        err = np.linalg.norm(Y[t] - params @ Q[t])
        assert err <= EXACT_RTOL * np.linalg.norm(params) * np.linalg.norm(Q[t]), t


# ---------------------------------------------------------------------------------------------------------
# 5. TestTimeRegressor(least_squares()) == LinearRegression(fit_intercept=False)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [40, 3])  # over- and under-determined (min-norm) with d = 5
@pytest.mark.parametrize("multi", [False, True])
def test_estimator_least_squares_equals_linear_regression(n, multi, rng):
    d = 5
    X = rng.standard_normal((n, d))
    y = rng.standard_normal((n, 3)) if multi else rng.standard_normal(n)
    X_test = rng.standard_normal((7, d))
    assert_well_conditioned(X.T @ X)
    est = tt.TestTimeRegressor(tt.recipes.least_squares()).fit(X, y)
    ref = LinearRegression(fit_intercept=False).fit(X, y)
    assert est.coef_.shape == ref.coef_.shape
    assert rel(est.coef_, ref.coef_) < EXACT_RTOL
    pred, pred_ref = est.predict(X_test), ref.predict(X_test)
    assert pred.shape == pred_ref.shape
    # predictions: error <= ||d coef|| ||x||, so relative to ||coef|| max||x||
    scale = np.linalg.norm(ref.coef_) * np.max(np.linalg.norm(X_test, axis=1))
    assert np.max(np.abs(pred - pred_ref)) <= EXACT_RTOL * scale
    # the default estimator is the same fit
    assert rel(tt.TestTimeRegressor().fit(X, y).coef_, ref.coef_) < EXACT_RTOL
