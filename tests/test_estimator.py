"""``TestTimeRegressor``: scikit-learn conformance and the estimator contract.

Tolerances: float64 exact fits against scikit-learn use 1e-10 relative (backward-stable solvers on
well-conditioned data, forward error ~ cond * eps with cond * eps < 1e-11 asserted); replaying the same
recursion (fit vs partial_fit) uses 1e-12 (identical arithmetic in identical order).
"""

import numpy as np
import pytest
from conftest import rel_err as rel
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils.estimator_checks import parametrize_with_checks

import ttr_stats as tt

EPS = np.finfo(np.float64).eps
EXACT_RTOL = 1e-10




def assert_well_conditioned(R, bound=1e-11):
    lam = np.linalg.eigvalsh(R)
    assert lam[-1] / lam[0] * EPS < bound, f"cond = {lam[-1] / lam[0]:.3g} too large for 1e-10"


def _data(rng, n=40, d=4, d_v=None):
    X = rng.standard_normal((n, d))
    w = rng.standard_normal((d,) if d_v is None else (d, d_v))
    y = X @ w + 0.1 * rng.standard_normal((n,) if d_v is None else (n, d_v))
    return X, y


# ---------------------------------------------------------------------------------------------------------
# scikit-learn's conformance suite
# ---------------------------------------------------------------------------------------------------------
ESTIMATORS = [
    tt.TestTimeRegressor(),
    tt.TestTimeRegressor(tt.recipes.rls(ridge=1e-3)),
    tt.TestTimeRegressor(tt.recipes.mesa(ridge=1.0)),
    tt.TestTimeRegressor(tt.recipes.nlms()),
    tt.TestTimeRegressor(tt.recipes.deltanet(beta=0.01)),
    tt.TestTimeRegressor(tt.recipes.linear_attention()),
    # nonparametric layers: the state is the cache of pairs, predict uses every stored pair
    tt.TestTimeRegressor(
        tt.TestTimeRegression(
            regressor=tt.regressors.LocalPolynomial(1, tt.similarity.Gaussian(1.0), ridge=1e-3)
        )
    ),
    tt.TestTimeRegressor(tt.recipes.softmax_attention()),
    tt.TestTimeRegressor(tt.recipes.kernel_regression()),
    tt.TestTimeRegressor(tt.recipes.based()),
    # neural memories (one SGD pass at a step small enough for the checks' unscaled features)
    tt.TestTimeRegressor(tt.recipes.ttt_mlp(lr=1e-3, batch_size=1)),
    tt.TestTimeRegressor(tt.recipes.titans(lr=1e-3, momentum=0.5)),
]


def expected_failed_checks(estimator):
    """Checks that legitimately fail, with the reason (xfail, strict: they must keep failing)."""
    layer = estimator.layer
    if layer is not None and layer.neural:
        return {
            "check_regressors_train": (
                "a neural memory trained by one online SGD pass with step 1e-3 (larger steps diverge on the "
                "check's unscaled features) has not converged after one pass over the data, so R^2 < 0.5"
            )
        }
    if layer is not None and isinstance(layer.regressor, tt.regressors.FeatureMap):
        return {
            "check_regressors_train": (
                "Based is Nadaraya-Watson with the Taylor kernel 1 + tau q.k + (tau q.k)^2 / 2, which is not "
                "local: it grows with |q.k| instead of decaying away from the query, so on the check's "
                "unnormalised features distant points dominate and R^2 < 0.5"
            )
        }
    if layer is not None and isinstance(layer.optimizer, tt.optimizers.IdentityCovariance):
        return {
            "check_regressors_train": (
                "linear attention ignores the key covariance (it assumes K^T K ~ I, M = sum v k^T), so on "
                "the check's correlated, unnormalised features its R^2 is far below 0.5: the paper's §3 "
                "point, not an estimator defect"
            )
        }
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_conformance(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------------------------------------------
# the contract
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("est", [clone(e) for e in ESTIMATORS[:3]], ids=["default", "rls", "mesa"])
def test_fit_on_empty_X_raises(est):
    with pytest.raises(ValueError):
        est.fit(np.empty((0, 3)), np.empty(0))


def test_predict_before_fit_raises(rng):
    X, _ = _data(rng)
    with pytest.raises(NotFittedError):
        tt.TestTimeRegressor().predict(X)
    with pytest.raises(NotFittedError):
        tt.TestTimeRegressor(tt.recipes.rls()).coef_


@pytest.mark.parametrize(
    "make",
    [lambda: tt.recipes.rls(ridge=1e-3), lambda: tt.recipes.deltanet(beta=0.05)],
    ids=["rls", "deltanet"],
)
@pytest.mark.parametrize("multi", [False, True])
def test_partial_fit_row_by_row_equals_fit(make, multi, rng):
    # the same recursion in the same order: only BLAS reordering could differ, so 1e-12
    X, y = _data(rng, d_v=2 if multi else None)
    full = tt.TestTimeRegressor(make()).fit(X, y)
    online = tt.TestTimeRegressor(make())
    for t in range(X.shape[0]):
        online.partial_fit(X[t : t + 1], y[t : t + 1])
    assert rel(online.coef_, full.coef_) < 1e-12
    np.testing.assert_allclose(online.predict(X), full.predict(X), rtol=1e-12, atol=1e-12)
    # chunks of unequal size, too
    chunked = tt.TestTimeRegressor(make())
    for sl in (slice(0, 7), slice(7, 8), slice(8, 40)):
        chunked.partial_fit(X[sl], y[sl])
    assert rel(chunked.coef_, full.coef_) < 1e-12


@pytest.mark.parametrize("make", [tt.recipes.least_squares, tt.recipes.rls, tt.recipes.deltanet])
def test_fit_twice_gives_the_same_result(make, rng):
    X, y = _data(rng)
    X2, y2 = _data(rng)
    est = tt.TestTimeRegressor(make())
    c1 = est.fit(X, y).coef_.copy()
    c2 = est.fit(X, y).coef_.copy()
    np.testing.assert_array_equal(c1, c2)  # deterministic: bitwise
    # fit restarts from an empty memory (it does not continue like partial_fit)
    np.testing.assert_array_equal(est.fit(X2, y2).coef_, tt.TestTimeRegressor(make()).fit(X2, y2).coef_)


def test_clone_and_nested_params(rng):
    est = tt.TestTimeRegressor(tt.recipes.least_squares(ridge=0.5))
    params = est.get_params(deep=True)
    assert params["layer__optimizer__ridge"] == 0.5
    assert "layer__weights" in params and "layer__optimizer" in params
    X, y = _data(rng)
    est.fit(X, y)
    c = clone(est)
    assert c is not est and c.layer is not est.layer
    assert c.get_params(deep=True)["layer__optimizer__ridge"] == 0.5
    assert not hasattr(c, "state_")  # unfitted
    c.set_params(layer__optimizer__ridge=2.0)
    assert est.layer.optimizer.ridge == 0.5  # the clone is independent
    np.testing.assert_array_equal(clone(est).fit(X, y).coef_, est.coef_)


def test_set_params_ridge_changes_the_fit(rng):
    X, y = _data(rng, n=30, d=5)
    est = tt.TestTimeRegressor(tt.recipes.least_squares(ridge=0.1))
    c_small = est.fit(X, y).coef_.copy()
    est.set_params(layer__optimizer__ridge=10.0)
    assert est.layer.optimizer.ridge == 10.0
    c_big = est.fit(X, y).coef_
    assert rel(c_small, c_big) > 1e-2
    assert_well_conditioned(X.T @ X + 10.0 * np.eye(5))
    assert rel(c_big, Ridge(alpha=10.0, fit_intercept=False).fit(X, y).coef_) < EXACT_RTOL


def test_grid_search_over_ridge_matches_sklearn_ridge(rng):
    X, y = _data(rng, n=60, d=5)
    grid = [1e-3, 1.0, 30.0]
    cv = KFold(5)  # no shuffling: both searches see the same folds (rows stay in order)
    gs = GridSearchCV(
        tt.TestTimeRegressor(tt.recipes.least_squares()), {"layer__optimizer__ridge": grid}, cv=cv
    )
    gs.fit(X, y)
    ref = GridSearchCV(Ridge(fit_intercept=False), {"alpha": grid}, cv=cv).fit(X, y)
    # R^2 from predictions that agree to 1e-10 relative (exact ridge on both sides)
    np.testing.assert_allclose(
        gs.cv_results_["mean_test_score"], ref.cv_results_["mean_test_score"], atol=1e-10
    )
    assert gs.best_params_["layer__optimizer__ridge"] == ref.best_params_["alpha"]
    assert rel(gs.best_estimator_.coef_, ref.best_estimator_.coef_) < EXACT_RTOL


@pytest.mark.parametrize(
    "make",
    [tt.recipes.least_squares, lambda: tt.recipes.rls(ridge=0.1), tt.recipes.linear_attention],
    ids=["least_squares", "rls", "linear_attention"],
)
@pytest.mark.parametrize("multi", [False, True])
def test_float32_in_float32_out(make, multi, rng):
    # RLS uses ridge 0.1, not its default 1e-6: its recursion cancels P_0 = I/ridge down to R^{-1}, losing
    # ~eps32 max||k||^2 / ridge (see test_baselines.rls_tolerance): ~1.4 at 1e-6 (measured 1.2e-3), 1.4e-5
    # at 0.1, inside the 1e-4 below.
    X, y = _data(rng, d_v=3 if multi else None)
    X32, y32 = X.astype(np.float32), y.astype(np.float32)
    est = tt.TestTimeRegressor(make()).fit(X32, y32)
    pred = est.predict(X32)
    assert pred.dtype == np.float32 and pred.shape == y.shape
    assert est.coef_.dtype == np.float32
    # float32 vs float64: rounding of the inputs (eps32 = 1.2e-7) amplified by cond(X^T X) ~ 10 (asserted);
    # 1e-4 leaves a margin of ~100
    lam = np.linalg.eigvalsh(X.T @ X)
    assert lam[-1] / lam[0] < 10
    ref = tt.TestTimeRegressor(make()).fit(X32.astype(np.float64), y32.astype(np.float64))
    assert rel(pred, ref.predict(X32.astype(np.float64))) < 1e-4


@pytest.mark.parametrize("multi", [False, True])
def test_beta_gates_are_sample_weights_for_least_squares(multi, rng):
    X, y = _data(rng, n=30, d=4, d_v=2 if multi else None)
    sw = rng.uniform(0.1, 3.0, size=X.shape[0])
    for ridge in (0.0, 0.5):
        est = tt.TestTimeRegressor(tt.recipes.least_squares(ridge=ridge)).fit(X, y, beta=sw)
        ref = LinearRegression(fit_intercept=False) if ridge == 0 else Ridge(alpha=ridge, fit_intercept=False)
        ref.fit(X, y, sample_weight=sw)
        assert_well_conditioned(X.T @ (sw[:, None] * X) + ridge * np.eye(4))
        assert rel(est.coef_, ref.coef_) < EXACT_RTOL
        assert rel(est.predict(X), ref.predict(X)) < EXACT_RTOL
        # unweighted differs (the gates are not ignored)
        assert (
            rel(tt.TestTimeRegressor(tt.recipes.least_squares(ridge=ridge)).fit(X, y).coef_, ref.coef_) > 1e-3
        )


def test_alpha_gates_are_decayed_sample_weights_for_mesa(rng):
    # mesa(ridge) with decay gates alpha and strengths beta is Ridge with sample_weight
    # gamma_i^(n) = beta_i prod_{j > i} alpha_j; partial_fit in chunks carries the decay across chunks
    X, y = _data(rng, n=30, d=4, d_v=2)
    n = X.shape[0]
    alpha = rng.uniform(0.7, 1.0, n)
    beta = rng.uniform(0.5, 2.0, n)
    sw = np.array([beta[i] * np.prod(alpha[i + 1 :]) for i in range(n)])
    est = tt.TestTimeRegressor(tt.recipes.mesa(ridge=1.0)).fit(X, y, alpha=alpha, beta=beta)
    ref = Ridge(alpha=1.0, fit_intercept=False).fit(X, y, sample_weight=sw)
    assert_well_conditioned(X.T @ (sw[:, None] * X) + np.eye(4))
    assert rel(est.coef_, ref.coef_) < EXACT_RTOL
    chunked = tt.TestTimeRegressor(tt.recipes.mesa(ridge=1.0))
    for sl in (slice(0, 11), slice(11, n)):
        chunked.partial_fit(X[sl], y[sl], alpha=alpha[sl], beta=beta[sl])
    assert rel(chunked.coef_, ref.coef_) < EXACT_RTOL


def test_coef_only_for_linear_memories(rng):
    X, y = _data(rng)
    assert tt.TestTimeRegressor(tt.recipes.rls(ridge=1e-3)).fit(X, y).coef_.shape == (4,)
    for layer in (tt.recipes.softmax_attention(), tt.recipes.linear_attention(normalize="sum")):
        est = tt.TestTimeRegressor(layer).fit(X, y)
        assert not hasattr(est, "coef_")
        with pytest.raises(AttributeError, match="^coef_: "):
            est.coef_
