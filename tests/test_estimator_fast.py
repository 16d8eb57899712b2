"""The fast paths behind ``memorize`` / ``fit`` and ``partial_fit``: same states as the definitions.

* ``methods.final_state`` (the closed form of the last state, a chunked method, or the loop) against the
  recurrent loop ``methods.recurrent.loop(read=False)``, for every parametric recipe, with gates, hard
  resets, windows, ``initial_state`` and ``lengths``, on NumPy and array_api_strict;
* ``TestTimeRegressor.fit`` against the loop (the previous ``fit``), and the lean ``partial_fit`` against
  the general path (``_write``), bit for bit where they run the same arithmetic;
* the lean path's errors: the general path's, with the state left bit-identical.

Tolerances (float64, relative RMS ``conftest.rel_err``):

* ``SUMS = 1e-12``: a closed form sums the same products as the loop in another order (suffix sums of log
  gates instead of a running product; one matmul instead of T rank-one updates): rounding ~ T eps
  (T <= 65 here: ~1.4e-14), so 1e-12 leaves ~70x; the task's 1e-10 is met with margin.
* RLS adds :func:`rls_tol`: the loop (Sherman-Morrison from P_0 = I / ridge) cancels entries of size
  max||k||^2 / ridge down to R^{-1}, so *its* error is up to eps max||k||^2 / ridge (tests/test_baselines.py
  ``rls_tolerance``, measured at most 0.054 of the bound); the closed form solves R once (error ~ cond(R)
  eps, cond asserted < 1e4 here). ``test_rls_closed_form_is_the_accurate_one`` checks against exact
  rational arithmetic that the difference is the loop's.
* ``FLOAT32 = 1e-5``: the same orderings in float32 (eps 1.2e-7, T <= 65: ~8e-6 worst case; measured <1e-6).
"""

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import ttr_stats as tt
from ttr_stats.methods import registry
from ttr_stats.methods.final_state import LOOP_MAX_T, final_state
from ttr_stats.methods.recurrent import loop

EPS = np.finfo(np.float64).eps
SUMS = 1e-12
FLOAT32 = 1e-5

PARAMETRIC = [r for r in tt.recipes.registry() if not r.factory().nonparametric]


def rls_tol(layer, K, base=SUMS):
    """SUMS plus the RLS loop's own rounding, eps max||k||^2 / ridge (see the module docstring)."""
    if not isinstance(layer.optimizer, tt.optimizers.RecursiveLeastSquares):
        return base
    return base + EPS * float(np.max(np.sum(K**2, axis=-1))) / float(layer.optimizer.ridge)


def state_err(a, b):
    return max(rel_err(x, y) for x, y in zip(a, b, strict=True))


def gates_for(layer, rng, batch, T, d, log_alpha=None):
    """Call-time log-gates the layer accepts (None where its weights take none), shape (*batch, T[, d])."""
    w = layer.weights
    if not w.accepts_gates:
        return None
    shape = batch + ((T, layer.regressor.output_dim(d)) if w.per_dimension else (T,))
    if log_alpha is not None:
        return np.full(shape, float(log_alpha))
    if w.constant_log_decay() is None or rng.random() < 0.5:
        return np.log(rng.uniform(0.6, 1.0, shape))
    return None


def problem(layer, K, V, log_alpha=None, state0=None, lengths=None, beta=None):
    """The layer's prepared call; log-gates with -inf (hard resets) go in as alpha = 0."""
    steps = int(layer.optimizer.steps_per_token)
    Q = K[..., ::steps, :]
    alpha = None
    if log_alpha is not None and not np.all(np.isfinite(log_alpha)):
        alpha, log_alpha = np.exp(log_alpha), None
    return layer._prepare(Q, K, V, alpha, log_alpha, beta, state0, lengths=lengths)


def both(layer, P):
    """(final_state, the family's definition): the generic loop, or for a family that writes a token from
    several rows together (generalized_delta: GDN-2, RWKV-7) its own registered reference loop."""
    from ttr_stats.methods import registry

    family = registry.family_of(layer)
    with np.errstate(all="ignore"):  # the RLS loop divides by beta = 0 on padding (then discards it)
        if family == "generalized_delta":
            return final_state(layer, P), registry.reference(family).run(layer, P)[1]
        return final_state(layer, P), loop(layer._solver(), P, read=False)[1]


def data(rng, layer, batch, T, d, d_v):
    steps = int(layer.optimizer.steps_per_token)
    K = rng.standard_normal(batch + (T * steps, d)) / math.sqrt(d)  # ||k|| ~ 1: stable delta steps
    V = rng.standard_normal(batch + (T * steps, d_v))
    return K, V


# ---------------------------------------------------------------------------------------------------------
# final_state == the loop's final state
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", PARAMETRIC, ids=[r.name for r in PARAMETRIC])
@pytest.mark.parametrize("T", [1, 5, 63])
def test_final_state_equals_loop_every_recipe(recipe, T, rng):
    layer = recipe.factory()
    batch, d, d_v = (2,), 7, 3
    K, V = data(rng, layer, batch, T, d, d_v)
    g = gates_for(layer, rng, batch, T, d)
    # chained: the state after a first piece is the initial state of the second
    K0, V0 = data(rng, layer, batch, 4, d, d_v)
    g0 = None if g is None else gates_for(layer, rng, batch, 4, d, log_alpha=-0.1)
    s0 = layer.memorize(K0, V0, log_alpha=g0)
    lengths = np.array([T, T // 2])
    for state0, lens in ((None, None), (s0, None), (s0, lengths), (None, lengths)):
        got, ref = both(layer, problem(layer, K, V, g, state0, lens))
        assert state_err(got, ref) < rls_tol(layer, np.concatenate([K0, K], axis=-2))
    if layer.neural or T <= LOOP_MAX_T:  # the loop itself: bit for bit
        got, ref = both(layer, problem(layer, K, V, g))
        for x, y in zip(got, ref, strict=True):
            np.testing.assert_array_equal(x, y)


CLOSED = [r for r in PARAMETRIC if r.factory().optimizer.family in ("identity", "least_squares", "batch_gd")]


@pytest.mark.parametrize("recipe", CLOSED, ids=[r.name for r in CLOSED])
@pytest.mark.parametrize("log_alpha", [0.0, -7.0, -50.0, -math.inf])
def test_final_state_at_gate_extremes(recipe, log_alpha, rng):
    # -50 a step: suffix sums reach -3150, whose exp underflows to 0 as the loop's running product does;
    # -inf (alpha = 0, a hard reset at every step): only the last pair survives, exactly
    layer = recipe.factory()
    if not layer.weights.accepts_gates:
        pytest.skip("weights take no gates")
    T, d = 65, 7
    K, V = data(rng, layer, (2,), T, d, 3)
    g = gates_for(layer, rng, (2,), T, d, log_alpha=log_alpha)
    g[:, 30] = -math.inf  # one hard reset in the middle, too (axis 1 is time)
    s0 = layer.memorize(*data(rng, layer, (2,), 3, d, 3), log_alpha=gates_for(layer, rng, (2,), 3, d, -0.1))
    got, ref = both(layer, problem(layer, K, V, g, s0, np.array([T, 40])))
    assert state_err(got, ref) < SUMS


def windowed_layers():
    W, R, O = tt.weights, tt.regressors, tt.optimizers
    for width in (1, 5, 100):
        yield (
            f"identity-w{width}",
            tt.TestTimeRegression(W.SlidingWindow(width), R.Linear(), O.IdentityCovariance()),
        )
        yield (
            f"ls-w{width}",
            tt.TestTimeRegression(W.SlidingWindow(width), R.Linear(), O.ClosedForm(ridge=0.1)),
        )
        yield (
            f"gd-w{width}",
            tt.TestTimeRegression(W.SlidingWindow(width), R.Linear(), O.BatchGradientDescent(2)),
        )


WINDOWED = list(windowed_layers())


@pytest.mark.parametrize("layer", [w for _, w in WINDOWED], ids=[n for n, _ in WINDOWED])
def test_final_state_windows(layer, rng):
    # the last w pairs before each sequence's end (lengths: the loop stops downdating there); the initial
    # state is never downdated by the loop, so it stays (undecayed: windows have no gates)
    T, d = 63, 4
    K, V = data(rng, layer, (3,), T, d, 2)
    beta = rng.uniform(0.5, 2.0, (3, T))
    s0 = layer.memorize(*data(rng, layer, (3,), 6, d, 2))
    for state0 in (None, s0):
        for lens in (None, np.array([T, 3, 0])):
            got, ref = both(layer, problem(layer, K, V, None, state0, lens, beta=beta))
            # cancellation: the loop adds and removes every pair, |sum of all| / |window sum| ~ T / w
            assert state_err(got, ref) < SUMS * max(1, T / layer.weights.window)


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["retnet", "gla", "least_squares", "rls", "mesa", "batch_gd", "gated_deltanet"]),
    T=st.integers(1, 80),
    d=st.integers(1, 9),
    d_v=st.integers(1, 5),
    regime=st.sampled_from(["none", "mild", "strong", "extreme"]),
    chained=st.booleans(),
    padded=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_final_state_equals_loop_drawn(name, T, d, d_v, regime, chained, padded, seed):
    # shapes and gate regimes drawn by hypothesis; RLS only where its answer is meaningful (mild gates:
    # under strong decay cond(R_T) ~ e^{7 d} and the closed form defers to the loop, tested below)
    rng = np.random.default_rng(seed)
    layer = getattr(tt.recipes, name)()
    if name == "rls" and regime in ("strong", "extreme"):
        regime = "mild"
    la = {"none": 0.0, "mild": -0.05, "strong": -7.0, "extreme": -50.0}[regime]
    K, V = data(rng, layer, (2,), T, d, d_v)
    g = gates_for(layer, rng, (2,), T, d, log_alpha=la)
    if g is not None and regime == "mild":
        g = g * rng.uniform(0.0, 2.0, g.shape)
    s0 = None
    if chained:
        g0 = gates_for(layer, rng, (2,), 3, d, log_alpha=-0.1)
        s0 = layer.memorize(*data(rng, layer, (2,), 3, d, d_v), log_alpha=g0)
    lens = np.array([T, int(rng.integers(0, T + 1))]) if padded else None
    got, ref = both(layer, problem(layer, K, V, g, s0, lens))
    assert state_err(got, ref) < rls_tol(layer, K, base=SUMS) * (10 if name == "rls" else 1)


@pytest.mark.parametrize(
    "make", [tt.recipes.gla, tt.recipes.mesa, lambda: tt.recipes.rls(1e-2), tt.recipes.batch_gd]
)
def test_memorize_chains(make, rng):
    # two memorize calls (the second from the first's state) == one: the initial state decays by c_T.
    # RLS inverts P_0 back to R_0 for the second piece: cond(R) eps, with ridge 1e-2 and T = 65 >> d
    # (cond < 10 here), far inside SUMS
    layer = make()
    T, s, d = 65, 23, 5
    K, V = data(rng, layer, (2,), T, d, 3)
    g = gates_for(layer, rng, (2,), T, d, log_alpha=-0.05)
    sl = lambda x, a, b: None if x is None else x[:, a:b]  # noqa: E731
    one = layer.memorize(K, V, log_alpha=g)
    first = layer.memorize(K[:, :s], V[:, :s], log_alpha=sl(g, 0, s))
    two = layer.memorize(K[:, s:], V[:, s:], log_alpha=sl(g, s, T), initial_state=first)
    assert state_err(two, one) < SUMS


def test_rls_closed_form_is_the_accurate_one(rng):
    # exact rational arithmetic: R = ridge I + K^T K, (M, P) = (S R^{-1}, R^{-1})
    T, d, d_v, ridge = 40, 3, 2, 1e-6
    K, V = rng.standard_normal((T, d)), rng.standard_normal((T, d_v))
    layer = tt.recipes.rls(ridge=ridge)
    got, ref = both(layer, problem(layer, K, V))
    R = [[Fraction(ridge) * (i == j) + sum(Fraction(K[t, i]) * Fraction(K[t, j]) for t in range(T))
          for j in range(d)] for i in range(d)]  # fmt: skip
    S = [[sum(Fraction(V[t, i]) * Fraction(K[t, j]) for t in range(T)) for j in range(d)] for i in range(d_v)]
    Pinv = _inverse(R)
    M = [[sum(S[i][m] * Pinv[m][j] for m in range(d)) for j in range(d)] for i in range(d_v)]
    exact = (np.array(M, dtype=float), np.array(Pinv, dtype=float))
    lam = np.linalg.eigvalsh(np.array(R, dtype=float))
    assert lam[-1] / lam[0] < 1e4
    assert state_err(got, exact) < 100 * EPS * lam[-1] / lam[0]  # backward-stable solve: cond * eps
    # the loop's own error, within its bound (and larger than the closed form's here)
    assert state_err(ref, exact) < EPS * float(np.max(np.sum(K**2, axis=-1))) / ridge
    assert state_err(ref, exact) > state_err(got, exact)


def _inverse(A):
    n = len(A)
    A = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(A)]
    for c in range(n):
        p = next(r for r in range(c, n) if A[r][c] != 0)
        A[c], A[p] = A[p], A[c]
        A[c] = [x / A[c][c] for x in A[c]]
        for r in range(n):
            if r != c and A[r][c] != 0:
                A[r] = [x - A[r][c] * y for x, y in zip(A[r], A[c], strict=True)]
    return [row[n:] for row in A]


def test_rls_ill_conditioned_falls_back_to_the_loop(rng):
    # log alpha = -7 a step: cond(R_T) ~ e^{7 d} > 1/eps, no digit of either answer is meaningful; the
    # closed form declines and the loop (the definition) answers, bit for bit, or overflows as before
    layer = tt.TestTimeRegression(tt.weights.Gated(), optimizer=tt.optimizers.RecursiveLeastSquares(1.0))
    T, d = 30, 7
    K, V = data(rng, layer, (1,), T, d, 2)
    got, ref = both(layer, problem(layer, K, V, np.full((1, T), -7.0)))
    for x, y in zip(got, ref, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("make", [tt.recipes.gla, tt.recipes.rls, tt.recipes.mesa, tt.recipes.batch_gd])
def test_final_state_float32(make, rng):
    layer = make()
    T, d = 65, 5
    K, V = data(rng, layer, (2,), T, d, 3)
    g = gates_for(layer, rng, (2,), T, d, log_alpha=-0.05)
    K, V = K.astype(np.float32), V.astype(np.float32)
    g = None if g is None else g.astype(np.float32)
    if make is tt.recipes.rls:  # float32 RLS loop: eps32 max||k||^2 / ridge at the default 1e-6 is ~1
        layer = tt.recipes.rls(ridge=1.0)
    got, ref = both(layer, problem(layer, K, V, g))
    assert got[0].dtype == np.float32
    assert state_err(got, ref) < FLOAT32


@pytest.mark.parametrize("make", [tt.recipes.gla, tt.recipes.rls, tt.recipes.least_squares])
def test_final_state_backends(make, backend, rng):
    layer = make()
    T, d = 33, 4
    K, V = data(rng, layer, (2,), T, d, 3)
    g = gates_for(layer, rng, (2,), T, d, log_alpha=-0.1)
    g0 = gates_for(layer, rng, (2,), 5, d, log_alpha=-0.1)
    s0 = layer.memorize(*data(rng, layer, (2,), 5, d, 3), log_alpha=g0)
    lens = np.array([T, 20])
    ref = both(layer, problem(layer, K, V, g, s0, lens))[1]
    put = backend.put
    got = layer.memorize(
        put(K), put(V), log_alpha=put(g), initial_state=type(s0)(*map(put, s0)), lengths=lens
    )
    assert all(backend.is_native(f) for f in got)
    assert state_err([backend.get(f) for f in got], ref) < rls_tol(layer, K)


def test_memorize_uses_final_state_and_keeps_its_checks(rng):
    layer = tt.recipes.rls()
    K, V = data(rng, layer, (), 50, 4, 2)
    np.testing.assert_array_equal(layer.memorize(K, V).M, final_state(layer, problem(layer, K, V)).M)
    # an exploding delta rule: the state check still raises
    K = rng.standard_normal((100, 4)) * 100.0  # |1 - 1.9 ||k||^2| ~ 1e4 a step: 1e400 after 100
    with pytest.raises(FloatingPointError):
        tt.recipes.deltanet(beta=1.9).memorize(K, rng.standard_normal((100, 2)))


def test_chunked_method_is_used_when_registered(rng, monkeypatch):
    # a registered "chunked" method of a family without a closed form computes the final state
    calls = []

    def fake(layer, P):
        calls.append(P.T)
        return None, loop(layer._solver(), P, read=False)[1]

    def register(allowed):
        auto = lambda P, free: allowed  # noqa: E731
        m = registry.Method("chunked", "delta", fake, auto=auto, rank=5)
        monkeypatch.setitem(registry._REGISTRY.setdefault("delta", {}), "chunked", m)

    register(True)
    layer = tt.recipes.deltanet()
    K, V = data(rng, layer, (), 20, 4, 2)
    layer.memorize(K, V)
    assert calls == [20]
    tt.recipes.ttt_linear().memorize(K, V)  # neural: the loop, never a chunked method
    assert calls == [20]
    register(False)  # its auto rule declines this size: the loop
    layer.memorize(K, V)
    assert calls == [20]


# ---------------------------------------------------------------------------------------------------------
# the estimator: fit and partial_fit
# ---------------------------------------------------------------------------------------------------------
ESTIMATOR_RECIPES = [
    ("least_squares", lambda: tt.recipes.least_squares(ridge=0.1)),
    ("rls", lambda: tt.recipes.rls(ridge=1e-3)),
    ("rls_forgetting", lambda: tt.recipes.rls(ridge=1e-2, forgetting=0.98)),
    ("mesa", tt.recipes.mesa),
    ("retnet", tt.recipes.retnet),
    ("linear_attention_sum", lambda: tt.recipes.linear_attention(normalize="sum")),
    ("performer", lambda: tt.recipes.performer(n_features=16)),
    ("batch_gd", lambda: tt.recipes.batch_gd(steps=3, lr=0.01)),
    ("deltanet", lambda: tt.recipes.deltanet(beta=0.05)),
    ("leaky_lms", tt.recipes.leaky_lms),
    (
        "gla_const",
        lambda: tt.TestTimeRegression(
            tt.weights.Gated(0.9, per_dimension=True), optimizer=tt.optimizers.IdentityCovariance()
        ),
    ),
    (
        "window",
        lambda: tt.TestTimeRegression(tt.weights.SlidingWindow(7), optimizer=tt.optimizers.ClosedForm(1.0)),
    ),
]


def _xy(rng, n=40, d=4, d_v=None):
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal((d,) if d_v is None else (d, d_v)) + 0.1 * rng.standard_normal(
        (n,) if d_v is None else (n, d_v)
    )
    return X, y


def general(est, X, y, **gates):
    """The general path on a copy: what partial_fit did before the lean path."""
    other = copy.deepcopy(est)
    return other._write(X, y, gates, reset=False)


@pytest.mark.parametrize("make", [m for _, m in ESTIMATOR_RECIPES], ids=[n for n, _ in ESTIMATOR_RECIPES])
@pytest.mark.parametrize("multi", [False, True])
def test_fit_equals_the_loop(make, multi, rng):
    # the previous fit: the loop over the rows from an empty memory
    X, y = _xy(rng, d_v=2 if multi else None)
    est = tt.TestTimeRegressor(make()).fit(X, y)
    layer = est.layer_
    V = y if multi else y[:, None]
    ref = loop(layer._solver(), problem(layer, X, V), read=False)[1]
    assert state_err(est.state_, ref) < rls_tol(layer, X)


@pytest.mark.parametrize("make", [m for _, m in ESTIMATOR_RECIPES], ids=[n for n, _ in ESTIMATOR_RECIPES])
@pytest.mark.parametrize("multi", [False, True])
def test_lean_partial_fit_equals_the_general_path(make, multi, rng):
    X, y = _xy(rng, d_v=2 if multi else None)
    est = tt.TestTimeRegressor(make()).fit(X[:10], y[:10])
    for sl in (slice(10, 11), slice(11, 12), slice(12, 30), slice(30, 31), slice(31, 40)):
        ref = general(est, X[sl], y[sl])
        est.partial_fit(X[sl], y[sl])
        for a, b in zip(est.state_, ref.state_, strict=True):
            np.testing.assert_array_equal(a, b)  # one update, or the same memorize call: bit for bit
    if est.layer_.weights.window is not None:
        return  # partial_fit never downdates rows of earlier calls (the loop leaves initial_state alone)
    # row by row (the loop) vs one fit (the closed form): the two orderings of the module docstring
    full = tt.TestTimeRegressor(make()).fit(X, y)
    assert state_err(est.state_, full.state_) < rls_tol(est.layer_, X, base=1e-10)
    np.testing.assert_allclose(est.predict(X), full.predict(X), rtol=1e-8, atol=1e-12)


def test_lean_partial_fit_with_call_time_gates(rng):
    # mesa's alpha/beta are decayed sample weights: chunks (one row, several rows) equal one fit
    X, y = _xy(rng, n=30, d_v=2)
    alpha, beta = rng.uniform(0.7, 1.0, 30), rng.uniform(0.5, 2.0, 30)
    full = tt.TestTimeRegressor(tt.recipes.mesa()).fit(X, y, alpha=alpha, beta=beta)
    est = tt.TestTimeRegressor(tt.recipes.mesa()).fit(X[:5], y[:5], alpha=alpha[:5], beta=beta[:5])
    for sl in (slice(5, 6), slice(6, 20), slice(20, 21), slice(21, 30)):
        ref = general(est, X[sl], y[sl], alpha=alpha[sl], beta=beta[sl])
        est.partial_fit(X[sl], y[sl], alpha=alpha[sl], beta=beta[sl])
        for a, b in zip(est.state_, ref.state_, strict=True):
            np.testing.assert_array_equal(a, b)
    assert state_err(est.state_, full.state_) < SUMS
    # gla: per-dimension gates, log_alpha, one row at a time
    la = np.log(rng.uniform(0.8, 1.0, (30, 4)))
    gla = tt.TestTimeRegressor(tt.recipes.gla()).fit(X[:3], y[:3], log_alpha=la[:3])
    for t in range(3, 30):
        gla.partial_fit(X[t : t + 1], y[t : t + 1], log_alpha=la[t : t + 1])
    ref = tt.TestTimeRegressor(tt.recipes.gla()).fit(X, y, log_alpha=la)
    assert state_err(gla.state_, ref.state_) < SUMS


def test_general_path_still_serves_other_inputs(rng):
    X, y = _xy(rng, n=30)
    full = tt.TestTimeRegressor(tt.recipes.least_squares(0.1)).fit(X, y)
    # float32 estimator fed float64 rows: the general path (the state becomes float64, as before)
    est = tt.TestTimeRegressor(tt.recipes.least_squares(0.1)).fit(X[:20].astype(np.float32), y[:20])
    ref = general(est, X[20:21], y[20:21])
    est.partial_fit(X[20:21], y[20:21])
    assert est.state_.R.dtype == np.float64
    np.testing.assert_array_equal(est.state_.R, ref.state_.R)
    # lists and data frames
    pd = pytest.importorskip("pandas")
    est = tt.TestTimeRegressor(tt.recipes.least_squares(0.1)).fit(pd.DataFrame(X[:20]), y[:20])
    est.partial_fit(pd.DataFrame(X[20:]), y[20:])
    assert rel_err(est.coef_, full.coef_) < SUMS
    est = tt.TestTimeRegressor(tt.recipes.least_squares(0.1)).fit(X[:20], y[:20])
    est.partial_fit(X[20:].tolist(), y[20:].tolist())
    assert rel_err(est.coef_, full.coef_) < SUMS
    # nonparametric, neural and several writes per token keep the general path
    for make in (tt.recipes.softmax_attention, lambda: tt.recipes.ttt_linear(batch_size=1)):
        a = tt.TestTimeRegressor(make()).fit(X[:10], y[:10])
        ref = general(a, X[10:11], y[10:11])
        a.partial_fit(X[10:11], y[10:11])
        np.testing.assert_array_equal(a.predict(X), ref.predict(X))
    dp = tt.TestTimeRegressor(tt.recipes.delta_product(2, beta=0.1)).fit(X[:10], y[:10])
    ref = general(dp, X[10:12], y[10:12])
    dp.partial_fit(X[10:12], y[10:12])
    np.testing.assert_array_equal(dp.state_.M, ref.state_.M)


BAD = {
    "1-D X": lambda X, y: (X[0], y[:1]),
    "3-D X": lambda X, y: (X[None, :1], y[:1]),
    "NaN in X": lambda X, y: (np.where(np.eye(1, 4, 2) > 0, np.nan, X[:1]), y[:1]),
    "inf in y": lambda X, y: (X[:2], np.array([1.0, np.inf])),
    "huge X (sum overflows, entries finite)": lambda X, y: (np.full((1, 4), 1e308), y[:1]),
    "wrong n_features": lambda X, y: (X[:1, :3], y[:1]),
    "2-D y for a 1-D fit": lambda X, y: (X[:1], y[:1, None]),
    "y too short": lambda X, y: (X[:3], y[:2]),
    "no rows": lambda X, y: (X[:0], y[:0]),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
@pytest.mark.parametrize("make", [tt.recipes.rls, tt.recipes.deltanet], ids=["rls", "deltanet"])
def test_lean_path_raises_the_general_errors_and_keeps_the_state(case, make, rng):
    X, y = _xy(rng, n=20)
    est = tt.TestTimeRegressor(make()).fit(X, y)
    before = copy.deepcopy(est.state_)
    Xb, yb = BAD[case](X, y)
    with pytest.raises(Exception) as slow:
        general(est, Xb, yb)
    with pytest.raises(type(slow.value)) as lean:
        est.partial_fit(Xb, yb)
    assert str(lean.value) == str(slow.value)
    for a, b in zip(est.state_, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_lean_path_divergence_and_gate_errors_keep_the_state(rng):
    X, y = _xy(rng, n=20)
    # a delta step far beyond 2 / ||k||^2 on a huge key: the state overflows -> FloatingPointError
    est = tt.TestTimeRegressor(tt.recipes.deltanet(beta=1.9)).fit(X, y)
    before = copy.deepcopy(est.state_)
    for rows in (1, 3):
        with pytest.raises(FloatingPointError):
            est.partial_fit(np.full((rows, 4), 1e160), y[:rows])
        np.testing.assert_array_equal(est.state_.M, before.M)
    # gates the weights need, or that RLS cannot divide by: the layer's own errors
    gated = tt.TestTimeRegressor(tt.TestTimeRegression(tt.weights.Gated()))
    gated.fit(X, y, alpha=np.full(20, 0.9))
    with pytest.raises(ValueError, match="data-dependent"):
        gated.partial_fit(X[:1], y[:1])
    zero = tt.TestTimeRegression(tt.weights.Gated(alpha=0.0), optimizer=tt.optimizers.RecursiveLeastSquares())
    est = tt.TestTimeRegressor(zero).fit(X, y, alpha=np.full(20, 0.9))
    before = copy.deepcopy(est.state_)
    with pytest.raises(ValueError, match="divides by the decay"):
        est.partial_fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="alpha must lie in"):
        est.partial_fit(X[:2], y[:2], alpha=np.array([0.5, 1.5]))
    for a, b in zip(est.state_, before, strict=True):
        np.testing.assert_array_equal(a, b)
