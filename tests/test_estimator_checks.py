"""``TestTimeRegressor`` on scikit-learn's data: ``check_estimator``, ``normalize_keys`` and failed fits.

Issue 9: ``TestTimeRegressor(deltanet())`` failed six estimator checks, since on unnormalised features the
delta rule with beta = 1 diverges (a step is stable only while beta ||k||^2 < 2); ``normalize_keys=True``
scales every row of X to unit norm, as DeltaNet normalises its keys and queries. And a re-``fit`` that
raised left ``n_features_in_`` updated with a stale ``state_``: a failed fit must change nothing.

Tolerances: normalising inside the estimator is the same arithmetic as normalising by hand
(``X / np.linalg.norm(X, axis=1, keepdims=True)``) and as scaling rows by a power of two first (exact in
binary floating point), so those comparisons are bit for bit; rows rescaled because their sum of squares
would overflow are normalised in another order (divided by max |x| first), a few ulp per entry, which the
non-expansive recursion on unit keys carries to the outputs as at most ~T ulp (1e-12 relative, T = 40).
"""

import copy
import warnings

import numpy as np
import pytest
from sklearn.preprocessing import scale
from sklearn.utils.estimator_checks import _regression_dataset, parametrize_with_checks

import ttr_stats as tt

EPS = np.finfo(np.float64).eps


def by_hand(X):
    """Rows to unit L2 norm, zero rows left zero: what ``normalize_keys=True`` documents."""
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(n > 0, n, 1.0)


# ---------------------------------------------------------------------------------------------------------
# scikit-learn's estimator checks over the recipes that are regressors in the usual sense
# ---------------------------------------------------------------------------------------------------------
ESTIMATORS = [
    tt.TestTimeRegressor(tt.recipes.least_squares()),
    tt.TestTimeRegressor(tt.recipes.least_squares(), normalize_keys=True),
    tt.TestTimeRegressor(tt.recipes.rls()),
    tt.TestTimeRegressor(tt.recipes.rls(), normalize_keys=True),
    tt.TestTimeRegressor(tt.recipes.rls(forgetting=0.99), normalize_keys=True),
    tt.TestTimeRegressor(tt.recipes.linear_attention()),
    tt.TestTimeRegressor(tt.recipes.linear_attention(), normalize_keys=True),
    # the delta-rule family at its default step beta = 1, on unit keys
    tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True),
    tt.TestTimeRegressor(tt.recipes.deltanet(beta=1.5), normalize_keys=True),
    tt.TestTimeRegressor(tt.recipes.gated_deltanet(alpha=0.99), normalize_keys=True),
    tt.TestTimeRegressor(tt.recipes.leaky_lms(), normalize_keys=True),
    # steps that adapt to ||k|| need no normalisation
    tt.TestTimeRegressor(tt.recipes.nlms()),
    tt.TestTimeRegressor(tt.recipes.longhorn()),
]


def expected_failed_checks(estimator):
    """The checks that legitimately fail, with the reason (strict xfail: they must keep failing).

    The online learners (delta rule, forgetting RLS) on unit keys pass every check except where a step
    beyond 1 makes the fit a recency effect: the one order-dependent failure listed below. At beta = 1 the
    memory interpolates the last pair (M k_T = v_T) and passes check_regressors_train in the check's row
    order (R^2 = 0.58), but that is order-dependent too: over 20 random orders of the same rows R^2 ranges
    0.18 .. 0.70 (median 0.56), against 0.73 .. 0.74 at beta = 0.1 and 0.76 for least squares on unit keys.
    """
    layer = estimator.layer
    if isinstance(layer.optimizer, tt.optimizers.IdentityCovariance):
        return {
            "check_regressors_train": (
                "linear attention ignores the key covariance (M = sum v k^T assumes K^T K ~ I), so on the "
                "check's correlated features its R^2 is far below 0.5, with or without unit keys (which "
                "fix the length of each key, not their correlation): the paper's section 3 point, not an "
                "estimator defect and not an order effect"
            )
        }
    if isinstance(layer.optimizer, tt.optimizers.LMS) and layer.optimizer.beta > 1.2:
        return {
            "check_regressors_train": (
                "order-dependent, as an online learner may be: a delta step beta = 1.5 > 1 over-relaxes "
                "(the error along each unit key flips sign, factor 1 - beta = -0.5), so the memory after "
                "the last step is dominated by the last few of the check's noisy pairs (noise 20 on one "
                "informative feature): R^2 = 0.23 in the check's order, median 0.19 over 20 random orders "
                "of the same rows, against 0.76 for least squares on the same unit keys"
            )
        }
    return {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks, xfail_strict=True)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_deltanet_needs_unit_keys_on_the_checks_data():
    # the data of check_regressors_train: 10 standardised features, so ||k||^2 ~ 10 and beta ||k||^2 ~ 10,
    # far beyond the stable 2: the raw delta rule with beta = 1 blows up (overflow -> FloatingPointError,
    # or an enormous negative R^2); on unit keys every step is a contraction and the check passes
    X, y = _regression_dataset()
    y = scale(y)
    assert np.median(np.sum(X**2, axis=1)) > 2  # the premise: the raw steps are unstable
    raw = tt.TestTimeRegressor(tt.recipes.deltanet())
    try:
        r2_raw = raw.fit(X, y).score(X, y)
    except FloatingPointError:
        r2_raw = -np.inf
    assert r2_raw < 0
    unit = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(X, y)
    assert unit.score(X, y) > 0.5
    assert np.max(np.abs(unit.coef_)) < 10 * np.max(np.abs(y))  # bounded memory, not a diverging one


# ---------------------------------------------------------------------------------------------------------
# normalize_keys is normalising X by hand
# ---------------------------------------------------------------------------------------------------------
RECIPES = {
    "deltanet": tt.recipes.deltanet,
    "rls": lambda: tt.recipes.rls(ridge=1e-3),
    "least_squares": lambda: tt.recipes.least_squares(ridge=0.1),
    "linear_attention": tt.recipes.linear_attention,
    "gated_deltanet": lambda: tt.recipes.gated_deltanet(alpha=0.95),
}


def _xy(rng, n=40, d=4, d_v=None):
    X = 3.0 * rng.standard_normal((n, d)) + 1.0  # unnormalised: ||k||^2 ~ 40
    y = X @ rng.standard_normal((d,) if d_v is None else (d, d_v))
    return X, y


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("multi", [False, True])
def test_normalize_keys_equals_normalising_by_hand(name, multi, rng):
    make = RECIPES[name]
    X, y = _xy(rng, d_v=2 if multi else None)
    Q = 5.0 * rng.standard_normal((7, 4))
    est = tt.TestTimeRegressor(make(), normalize_keys=True).fit(X, y)
    ref = tt.TestTimeRegressor(make()).fit(by_hand(X), y)
    for a, b in zip(est.state_, ref.state_, strict=True):
        np.testing.assert_array_equal(a, b)  # same keys bit for bit -> same memory bit for bit
    np.testing.assert_array_equal(est.predict(Q), ref.predict(by_hand(Q)))
    # partial_fit: the lean one-row path, the several-row path and the first call
    for sl in (slice(0, 1), slice(1, 2), slice(2, 25), slice(25, 26), slice(26, 40)):
        est.partial_fit(X[sl], y[sl])
        ref.partial_fit(by_hand(X[sl]), y[sl])
        for a, b in zip(est.state_, ref.state_, strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(est.predict(Q), ref.predict(by_hand(Q)))


def test_normalize_keys_float32(rng):
    X, y = _xy(rng)
    X32, y32 = X.astype(np.float32), y.astype(np.float32)
    est = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(X32, y32)
    ref = tt.TestTimeRegressor(tt.recipes.deltanet()).fit(by_hand(X32), y32)
    assert est.state_.M.dtype == np.float32
    np.testing.assert_array_equal(est.state_.M, ref.state_.M)
    np.testing.assert_array_equal(est.predict(X32[:5]), ref.predict(by_hand(X32[:5])))


def test_normalize_keys_is_scale_invariant_and_keeps_zero_rows(rng):
    X, y = _xy(rng)
    Q = rng.standard_normal((6, 4))
    base = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(X, y)
    # rows scaled by positive powers of two (exact): the same unit keys, the same memory, bit for bit
    c = 2.0 ** rng.integers(-40, 40, size=(40, 1))
    scaled = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(c * X, y)
    np.testing.assert_array_equal(scaled.state_.M, base.state_.M)
    np.testing.assert_array_equal(scaled.predict(8.0 * Q), base.predict(Q))
    # a zero row is a zero key (a no-op write: its value is ignored) and a zero query (a zero read), not
    # NaN; the 41-row fit may be evaluated in another order (the chunked form), so rounding only: the
    # recursion on unit keys is non-expansive, ~T ulp of max |M| (module docstring)
    Xz, yz = np.insert(X, 10, 0.0, axis=0), np.insert(y, 10, 123.0)
    zero = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(Xz, yz)
    assert np.max(np.abs(zero.state_.M - base.state_.M)) <= 1e-12 * np.max(np.abs(base.state_.M))
    assert zero.predict(np.zeros((1, 4)))[0] == 0.0


@pytest.mark.parametrize("exponent", [-700, 600])
def test_normalize_keys_rows_beyond_the_squares_range(exponent, rng):
    # entries ~2^600 (squares overflow) or ~2^-700 (squares underflow): still unit keys, never 0 or NaN;
    # these rows are divided by max |x| before their norm, a few ulp from the by-hand order (module doc)
    X, y = _xy(rng)
    Q = rng.standard_normal((6, 4))
    base = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(X, y)
    far = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(X * 2.0**exponent, y)
    assert np.all(np.isfinite(far.state_.M))
    scale_m = np.max(np.abs(base.state_.M))
    assert np.max(np.abs(far.state_.M - base.state_.M)) <= 1e-12 * scale_m
    p, pb = far.predict(Q * 2.0**exponent), base.predict(Q)
    assert np.max(np.abs(p - pb)) <= 1e-12 * np.max(np.abs(pb))


@pytest.mark.parametrize("bad", ["yes", 1, None, np.array([True])])
def test_normalize_keys_must_be_a_bool(bad, rng):
    X, y = _xy(rng)
    with pytest.raises(ValueError, match="normalize_keys must be True or False"):
        tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=bad).fit(X, y)


def test_normalize_keys_holds_from_fit_to_the_next_fit(rng):
    # set_params after fit does not reinterpret the fitted memory: partial_fit and predict keep the
    # fit-time setting until the next fit
    X, y = _xy(rng)
    est = tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True).fit(X[:20], y[:20])
    ref = copy.deepcopy(est)
    est.set_params(normalize_keys=False)
    est.partial_fit(X[20:], y[20:])
    ref.partial_fit(X[20:], y[20:])
    np.testing.assert_array_equal(est.state_.M, ref.state_.M)
    np.testing.assert_array_equal(est.predict(X), ref.predict(X))
    est.fit(X, y)  # now the new value holds
    np.testing.assert_array_equal(
        est.state_.M, tt.TestTimeRegressor(tt.recipes.deltanet()).fit(X, y).state_.M
    )


# ---------------------------------------------------------------------------------------------------------
# a failed fit changes nothing
# ---------------------------------------------------------------------------------------------------------
def snapshot(est):
    return {k: copy.deepcopy(v) for k, v in vars(est).items()}


def assert_unchanged(est, before, layer):
    after = vars(est)
    assert sorted(after) == sorted(before), "an attribute was added or removed"
    assert est.layer_ is layer  # the fitted layer object itself, not a fresh clone
    for key, old in before.items():
        new = after[key]
        if key == "state_":
            assert type(new) is type(old)
            for a, b in zip(new, old, strict=True):
                np.testing.assert_array_equal(a, b)
        elif isinstance(old, np.ndarray):
            np.testing.assert_array_equal(new, old)
        elif key == "layer_":
            assert repr(new.get_params(deep=True)) == repr(old.get_params(deep=True))
        elif key not in ("layer", "normalize_keys"):  # parameters: the failing case may set_params them
            assert new == old, key


def _failing_refits(rng):
    """(description, how to make the refit fail after fitting on 4 columns): every way past validation."""
    X3 = np.full((5, 3), 1e160)  # 3 columns: a new n_features_in_; huge keys: the delta rule overflows
    return {
        "diverges on new features": lambda e: e.fit(X3, np.ones(5)),
        "diverges, 2-D y": lambda e: e.fit(X3, np.ones((5, 3))),
        "gates of the wrong length": lambda e: e.fit(
            rng.standard_normal((6, 3)), np.ones(6), beta=np.ones(2)
        ),
        "not a layer": lambda e: e.set_params(layer="deltanet").fit(rng.standard_normal((6, 3)), np.ones(6)),
        "normalize_keys not a bool": lambda e: e.set_params(normalize_keys="no").fit(
            rng.standard_normal((6, 3)), np.ones(6)
        ),
    }


@pytest.mark.parametrize("case", list(_failing_refits(np.random.default_rng(0))))
@pytest.mark.parametrize("frame", [False, True], ids=["ndarray", "DataFrame"])
def test_failed_refit_leaves_every_attribute_unchanged(case, frame, rng):
    X, y = _xy(rng, n=20)
    Xf = X
    if frame:
        pd = pytest.importorskip("pandas")
        Xf = pd.DataFrame(X, columns=["a", "b", "c", "d"])  # feature_names_in_ is one more attribute
    est = tt.TestTimeRegressor(tt.recipes.deltanet(beta=0.01)).fit(Xf, y)
    assert hasattr(est, "feature_names_in_") == frame
    pred = est.predict(Xf)
    before, layer = snapshot(est), est.layer_
    with pytest.raises((FloatingPointError, ValueError, TypeError)):
        _failing_refits(rng)[case](est)
    assert_unchanged(est, before, layer)
    est.set_params(layer=before["layer"], normalize_keys=before["normalize_keys"])
    np.testing.assert_array_equal(est.predict(Xf), pred)  # still usable, with the old memory
    assert est.n_features_in_ == 4


def test_failed_refit_with_a_data_frame_keeps_no_feature_names(rng):
    # fitted on an ndarray, a failing refit on a data frame must not leave its column names behind
    pd = pytest.importorskip("pandas")
    X, y = _xy(rng, n=20)
    est = tt.TestTimeRegressor(tt.recipes.deltanet(beta=0.01)).fit(X, y)
    before, layer = snapshot(est), est.layer_
    with pytest.raises(FloatingPointError):
        est.fit(pd.DataFrame(np.full((5, 3), 1e160), columns=["x", "y", "z"]), np.ones(5))
    assert_unchanged(est, before, layer)
    assert not hasattr(est, "feature_names_in_")


def test_failed_first_fit_and_first_partial_fit_leave_it_unfitted(rng):
    est = tt.TestTimeRegressor(tt.recipes.deltanet())
    empty = snapshot(est)
    with pytest.raises(FloatingPointError):
        est.fit(np.full((5, 3), 1e160), np.ones(5))
    assert vars(est).keys() == empty.keys()
    with pytest.raises(FloatingPointError):
        est.partial_fit(np.full((5, 3), 1e160), np.ones(5))
    assert vars(est).keys() == empty.keys()
    assert not hasattr(est, "n_features_in_") and not hasattr(est, "state_")


def test_failed_partial_fit_on_the_general_path_changes_nothing(rng):
    # a list input takes the general path (validate_data); the diverging write must not touch the state
    X, y = _xy(rng, n=20)
    est = tt.TestTimeRegressor(tt.recipes.deltanet(beta=0.01)).fit(X, y)
    before, layer = snapshot(est), est.layer_
    with pytest.raises(FloatingPointError):
        est.partial_fit(np.full((3, 4), 1e160).tolist(), [1.0, 2.0, 3.0])
    assert_unchanged(est, before, layer)


# ---------------------------------------------------------------------------------------------------------
# an unstable delta step is said, not silent
# ---------------------------------------------------------------------------------------------------------
def test_unstable_delta_step_warns_with_the_remedy():
    # without unit keys, deltanet() on the check's data ends with a finite but meaningless memory
    # (R^2 ~ -4e141 in the check's order): it is computed as asked, with a ConvergenceWarning naming the
    # remedy; on unit keys, or with steps that adapt to ||k||, nothing is said
    from sklearn.exceptions import ConvergenceWarning

    X, y = _regression_dataset()
    y = scale(y)
    with pytest.warns(ConvergenceWarning, match="normalize_keys=True") as rec:
        try:
            tt.TestTimeRegressor(tt.recipes.deltanet()).fit(X, y)
        except FloatingPointError:
            pass
    worst = float(np.max(np.sum(X**2, axis=1)))  # beta = 1: the gain is max ||k||^2
    assert f"reaches {worst:.3g} > 2" in str(rec[0].message)
    assert f"beta < {2 / worst:.3g}" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for est in (
            tt.TestTimeRegressor(tt.recipes.deltanet(), normalize_keys=True),
            tt.TestTimeRegressor(tt.recipes.deltanet(beta=1.9), normalize_keys=True),
            tt.TestTimeRegressor(tt.recipes.nlms()),
            tt.TestTimeRegressor(tt.recipes.longhorn(delta=100.0)),
            tt.TestTimeRegressor(tt.recipes.deltanet(beta=1.9 / worst)),
            tt.TestTimeRegressor(tt.recipes.rls()),
        ):
            est.fit(X, y)
            est.partial_fit(X[:1], y[:1])
            est.partial_fit(X[:3], y[:3])


def test_unstable_delta_step_warns_on_every_path(rng):
    from sklearn.exceptions import ConvergenceWarning

    X, y = _xy(rng, n=20)  # ||k||^2 ~ 40
    est = tt.TestTimeRegressor(tt.recipes.deltanet(beta=0.01)).fit(X, y)  # 0.01 * 40 < 2: silent
    with pytest.warns(ConvergenceWarning, match="unstable"):
        est.partial_fit(10.0 * X[:1], y[:1])  # the lean one-row update: gain ~ 40
    with pytest.warns(ConvergenceWarning, match="unstable"):
        est.partial_fit(10.0 * X[:3], y[:3])  # the lean several-row memorize
    with pytest.warns(ConvergenceWarning, match="unstable"):
        est.partial_fit((10.0 * X[:1]).tolist(), y[:1].tolist())  # the general path
    with pytest.warns(ConvergenceWarning, match="unstable"):
        est.fit(X, y, beta=np.full(20, 1.0))  # call-time steps count, not the default
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est.fit(X, y, beta=np.full(20, 1e-3))
