"""Neural test-time regressors (issue #6): TTT-Linear, TTT-MLP and Titans.

Tolerances: analytic gradients vs central finite differences with step h = 1e-6 in float64: truncation
h^2 |f'''| ~ 1e-12 plus rounding eps |f| / h ~ 1e-10, so 1e-7 relative (to the largest gradient entry)
leaves a margin of 100. Cross-recipe identities run the same arithmetic up to the order of a few
additions: 1e-12 relative.
"""

import importlib

import numpy as np
import pytest
from conftest import make_qkv, rel_err

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import regressors as r
from ttr_stats import weights as w

H = 1e-6  # central-difference step


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


REGRESSORS = [
    r.Linear(),
    r.Linear(layer_norm=True),
    r.MLP(6, "gelu"),
    r.MLP(6, "silu", layer_norm=True),
    r.MLP(6, "tanh", residual=True),
    r.MLP(6, "relu", layer_norm=True, residual=True),
]


@pytest.mark.parametrize("reg", REGRESSORS, ids=lambda x: " ".join(repr(x).split()))
def test_analytic_gradients_equal_central_differences(reg, rng):
    d_k = d_v = 4
    params = reg.init_params(np, (2,), d_k, d_v, np.float64)
    # move away from the zero / seeded start so every term (biases, layer norm) is exercised
    params = tuple(np.array(p + 0.3 * rng.standard_normal(p.shape)) for p in params)
    k, v = rng.standard_normal((2, 2, d_k))
    loss, grads = reg.loss_grad(np, params, k, v)
    assert loss.shape == (2,)
    worst = 0.0
    for i, p in enumerate(params):
        assert grads[i].shape == p.shape
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            hi = [q.copy() for q in params]
            lo = [q.copy() for q in params]
            hi[i][idx] += H
            lo[i][idx] -= H
            num[idx] = (reg.loss_grad(np, hi, k, v)[0] - reg.loss_grad(np, lo, k, v)[0])[idx[0]] / (2 * H)
        worst = max(worst, np.abs(num - grads[i]).max())
    scale = max(np.abs(g).max() for g in grads)
    assert worst / scale < 1e-7, worst / scale  # measured 1e-10 .. 1e-9 (module docstring)
    # the loss is 1/2 ||m(k) - v||^2 with m = predict
    np.testing.assert_allclose(loss, 0.5 * np.sum((reg.predict(np, params, k) - v) ** 2, -1), rtol=1e-14)


@pytest.mark.parametrize("gated", [False, True])
def test_ttt_linear_single_token_batches_is_deltanet(gated, rng):
    Q, K, V = make_qkv(rng, T=30, d_k=5, d_v=3, unit=True)
    gates = {"beta": rng.uniform(0.2, 1.2, (2, 30))}
    if gated:
        gates["alpha"] = rng.uniform(0.6, 1.0, (2, 30))  # the gated delta rule: decay before the read
    Y, st = tt.recipes.ttt_linear(lr=0.7, batch_size=1, layer_norm=False)(Q, K, V, return_state=True, **gates)
    Yd, sd = tt.recipes.deltanet(beta=0.7)(Q, K, V, return_state=True, **gates)
    assert rel_err(Y, Yd) < 1e-12 and rel_err(st.M, sd.M) < 1e-12
    Y = tt.recipes.ttt_linear(lr=0.7, batch_size=1, layer_norm=False)(Q, K, V)
    assert rel_err(Y, tt.recipes.deltanet(beta=0.7)(Q, K, V)) < 1e-12


def test_titans_without_momentum_and_decay_is_ttt_mlp(rng):
    Q, K, V = make_qkv(rng, T=25, d_k=4, d_v=4, unit=True)
    beta = rng.uniform(0.05, 0.3, (2, 25))
    a = tt.recipes.titans(lr=0.2, momentum=0.0, weight_decay=0.0, hidden=7, seed=3)(Q, K, V, beta=beta)
    b = tt.recipes.ttt_mlp(hidden=7, lr=0.2, batch_size=1, seed=3)(Q, K, V, beta=beta)
    assert rel_err(a, b) < 1e-12


def test_mini_batch_reads_after_the_gradients_so_far(rng):
    """Brute force on Linear(): theta_t = theta_{t0} - sum_{s in (t0, t]} beta_s grad_s(theta_{t0})."""
    T, b, lr = 11, 4, 0.3
    Q, K, V = make_qkv(rng, batch=(), T=T, d_k=3, d_v=2)
    Y = tt.recipes.ttt_linear(lr=lr, batch_size=b, layer_norm=False)(Q, K, V)
    M0 = np.zeros((2, 3))
    ref = []
    for t in range(T):
        t0 = (t // b) * b
        M = M0 - lr * sum(np.outer(M0 @ K[s] - V[s], K[s]) for s in range(t0, t + 1))
        ref.append(M @ Q[t])
        if t - t0 == b - 1:
            M0 = M
    assert rel_err(Y, np.array(ref)) < 1e-12


def test_momentum_matches_titans_equations(rng):
    """S_t = eta S_{t-1} - beta_t grad(M_{t-1}); M_t = alpha_t (1 - lambda) M_{t-1} + S_t, on Linear()."""
    T, eta, lam = 15, 0.8, 0.05
    Q, K, V = make_qkv(rng, batch=(), T=T, d_k=3, d_v=2, unit=True)
    beta, alpha = rng.uniform(0.1, 0.5, T), rng.uniform(0.7, 1.0, T)
    layer = tt.TestTimeRegression(w.Gated(1.0), r.Linear(), o.Momentum(0.1, eta, lam))
    Y, st = layer(Q, K, V, beta=beta, alpha=alpha, return_state=True)
    M, S, ref = np.zeros((2, 3)), np.zeros((2, 3)), []
    for t in range(T):
        S = eta * S - beta[t] * np.outer(M @ K[t] - V[t], K[t])
        M = alpha[t] * (1 - lam) * M + S
        ref.append(M @ Q[t])
    assert rel_err(Y, np.array(ref)) < 1e-12
    assert rel_err(st.M, M) < 1e-12 and rel_err(st.M_momentum, S) < 1e-12


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.recipes.ttt_linear(lr=0.5, layer_norm=False),
        lambda: tt.recipes.ttt_mlp(lr=0.2, batch_size=4),
        lambda: tt.recipes.titans(lr=0.05, momentum=0.5, weight_decay=0.0),
    ],
    ids=["ttt_linear", "ttt_mlp", "titans"],
)
def test_test_time_loss_decreases_on_a_stationary_stream(make, rng):
    """v = W k with fixed W: the prequential loss ||v_{t+1} - m_t(k_{t+1})||^2 falls.

    Measured (T = 600, d = 6): last quarter / first quarter 0.000 (TTT-Linear), 0.023 (TTT-MLP), 0.033
    (Titans); asked < 0.5.
    """
    T, d = 600, 6
    K = _unit(rng.standard_normal((T + 1, d)))
    V = K @ rng.standard_normal((d, d)).T / np.sqrt(d) * 2
    Y = make()(K[1:], K[:-1], V[:-1])  # the query is the next key: read before it is written
    loss = np.sum((Y - V[1:]) ** 2, axis=-1)
    first, last = loss[: T // 4].mean(), loss[-T // 4 :].mean()
    assert last < 0.5 * first, (first, last)


def test_initial_state_memorize_and_read_continue_a_sequence(rng):
    """Split inside a mini-batch: the state carries the position, so the continuation is exact."""
    Q, K, V = make_qkv(rng, T=21, d_k=4, d_v=4, unit=True)
    for layer in (tt.recipes.ttt_mlp(batch_size=4), tt.recipes.titans(), tt.recipes.ttt_linear()):
        full, st = layer(Q, K, V, return_state=True)
        s = 6
        st0 = layer.memorize(K[..., :s, :], V[..., :s, :])
        rest, st1 = layer(Q[..., s:, :], K[..., s:, :], V[..., s:, :], initial_state=st0, return_state=True)
        assert rel_err(rest, full[..., s:, :]) < 1e-12
        for a, b in zip(st1, st, strict=True):
            assert rel_err(a, b) < 1e-12
        np.testing.assert_allclose(layer.read(st, Q[..., -1, :][:, None, :])[:, 0], full[..., -1, :], rtol=1e-12)
        many = layer.read(st, Q)  # every query against the final memory = the set regression
        assert rel_err(many, layer(Q, K, V, causal=False)) < 1e-12


def test_same_seed_same_initial_memory(rng):
    a = tt.recipes.ttt_mlp(hidden=5, seed=7)
    b = tt.recipes.ttt_mlp(hidden=5, seed=7)
    c = tt.recipes.ttt_mlp(hidden=5, seed=8)
    Z = np.zeros((1, 0, 3))
    sa, sb, sc = (x.memorize(Z, Z) for x in (a, b, c))
    assert sa.W1.shape == (1, 5, 3) and sa.W2.shape == (1, 3, 5)
    np.testing.assert_array_equal(sa.W1, sb.W1)
    assert not np.array_equal(sa.W1, sc.W1)
    assert tt.recipes.ttt_mlp().memorize(Z, Z).W1.shape == (1, 12, 3)  # hidden = 4 d_k


def test_smoother_and_coef_for_neural_layers(rng):
    from ttr_stats.diagnostics import smoother_matrix

    Q, K, V = make_qkv(rng, T=12, d_k=3, d_v=2, unit=True)
    with pytest.raises(ValueError, match="^layer: .*not linear in the values"):
        smoother_matrix(tt.recipes.ttt_mlp(), Q, K)
    lin = tt.recipes.ttt_linear(lr=0.5, batch_size=4, layer_norm=False)  # linear in V: S exists
    assert rel_err(smoother_matrix(lin, Q, K) @ V, lin(Q, K, V)) < 1e-12
    X = rng.standard_normal((30, 3))
    y = X @ rng.standard_normal((3, 2))
    est = tt.TestTimeRegressor(tt.recipes.ttt_linear(lr=0.3, layer_norm=False)).fit(X, y)
    assert est.coef_.shape == (2, 3)
    mlp = tt.TestTimeRegressor(tt.recipes.ttt_mlp()).fit(X, y)
    assert mlp.predict(X[:4]).shape == (4, 2)
    with pytest.raises(AttributeError, match="coef_"):
        mlp.coef_  # noqa: B018


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: tt.recipes.ttt_mlp(lr=-0.1), "^lr must be > 0"),
        (lambda: tt.recipes.ttt_linear(lr=-1.0), "^lr must be > 0"),
        (lambda: tt.recipes.titans(momentum=1.0), "^momentum must be < 1"),
        (lambda: tt.recipes.titans(momentum=-0.1), "^momentum must be >= 0"),
        (lambda: tt.recipes.titans(decay=1.0), "^decay must be < 1"),
        (lambda: tt.recipes.ttt_mlp(hidden=0), "^hidden must be >= 1"),
        (lambda: tt.recipes.titans(hidden=0), "^hidden must be >= 1"),
        (lambda: tt.recipes.ttt_linear(batch_size=0), "^batch_size must be >= 1"),
        (lambda: tt.recipes.ttt_mlp(mini_batch=0), "^mini_batch must be >= 1"),
        (lambda: tt.TestTimeRegression(regressor=r.MLP(4)), "^optimizer: MLP .*MiniBatchGD, Momentum"),
        (lambda: tt.TestTimeRegression(regressor=r.Linear(layer_norm=True), optimizer=o.LMS()), "^optimizer: Linear"),
        (lambda: tt.TestTimeRegression(regressor=r.KernelRidge(), optimizer=o.MiniBatchGD()), "^regressor: "),
        (lambda: tt.TestTimeRegression(w.SlidingWindow(4), r.MLP(4), o.MiniBatchGD()), "^weights: "),
        (lambda: tt.TestTimeRegression(w.Gated(per_dimension=True), r.MLP(4), o.Momentum()), "^weights: "),
    ],
)
def test_bad_construction_raises_naming_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "layer,match",
    [
        (tt.TestTimeRegression(regressor=r.MLP(4, "swish"), optimizer=o.MiniBatchGD()), "^activation must be one of"),
        (tt.TestTimeRegression(regressor=r.MLP(0), optimizer=o.MiniBatchGD()), "^hidden must be >= 1"),
        (tt.TestTimeRegression(regressor=r.MLP(4), optimizer=o.MiniBatchGD(lr=-1)), "^lr must be > 0"),
        (tt.TestTimeRegression(regressor=r.MLP(4), optimizer=o.MiniBatchGD(batch_size=0)), "^batch_size must be >= 1"),
        (tt.TestTimeRegression(regressor=r.MLP(4), optimizer=o.Momentum(momentum=1.5)), "^momentum must be <"),
        (tt.TestTimeRegression(regressor=r.MLP(4), optimizer=o.Momentum(weight_decay=-1)), "^weight_decay must be >="),
        (tt.TestTimeRegression(regressor=r.MLP(4, residual=True), optimizer=o.Momentum()), "^residual: .*d_v = d_k"),
    ],
    ids=["activation", "hidden", "lr", "batch_size", "momentum", "weight_decay", "residual"],
)
def test_bad_hyperparameters_raise_at_call(layer, match, rng):
    Q, K, V = make_qkv(rng, T=5, d_k=3, d_v=2)
    with pytest.raises(ValueError, match=match):
        layer(Q, K, V)


def test_only_the_recurrent_method(rng):
    layer = tt.recipes.ttt_mlp()
    assert layer.supported_methods == ("recurrent",)
    with pytest.raises(ValueError, match="method='parallel' is not supported by MiniBatchGD"):
        layer(*make_qkv(rng, T=4), method="parallel")
    with pytest.raises(ValueError, match="^initial_state must be a MiniBatchGDState"):
        layer(*make_qkv(rng, T=4), initial_state=3.0)


@pytest.mark.skipif(importlib.util.find_spec("array_api_strict") is None, reason="array_api_strict missing")
@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp", "titans"])
def test_array_api_strict_matches_numpy(name, rng):
    xps = importlib.import_module("array_api_strict")
    layer = getattr(tt.recipes, name)()
    layer.regressor.set_params(**({"activation": "silu"} if name == "titans" else {}))
    Q, K, V = make_qkv(rng, T=20, d_k=4, d_v=4, unit=True)
    beta = rng.uniform(0.05, 0.2, (2, 20))
    ref, ref_state = layer(Q, K, V, beta=beta, return_state=True)
    out, state = layer(*(xps.asarray(a) for a in (Q, K, V)), beta=xps.asarray(beta), return_state=True)
    assert type(out).__module__.startswith("array_api_strict")
    assert rel_err(np.asarray(out), ref) < 1e-12  # same float64 arithmetic in a different order
    for a, b in zip(state, ref_state, strict=True):
        assert rel_err(np.asarray(a), b) < 1e-12
    assert rel_err(np.asarray(layer.read(state, xps.asarray(Q))), layer.read(ref_state, Q)) < 1e-12


def test_neural_memory_figure_quick(tmp_path):
    import time

    from paper_figures import fig_neural_memory

    t0 = time.perf_counter()
    rows = fig_neural_memory.main(tmp_path, quick=True)
    assert time.perf_counter() - t0 < 10
    assert (tmp_path / "neural_memory.png").stat().st_size > 0
    assert (tmp_path / "neural_memory.csv").read_text().startswith("series,")
    series = {r[0] for r in rows}
    assert {"linear_attention", "least_squares", "ttt_linear", "ttt_mlp", "titans"} <= series
    assert all(np.isfinite(r[5]) for r in rows)  # no run diverged at the chosen step sizes


@pytest.mark.parametrize("make", [tt.recipes.ttt_linear, tt.recipes.ttt_mlp, tt.recipes.titans])
def test_neural_states_and_estimators_pickle(make):
    """State classes are built at run time per parameter layout; they must still pickle (estimator checks)."""
    import pickle

    rng = np.random.default_rng(0)
    K = rng.standard_normal((20, 4))
    K /= np.linalg.norm(K, axis=1, keepdims=True)
    V = K @ rng.standard_normal((4, 2)) * 0.5
    layer = make()
    state = layer.memorize(K, V)
    back = pickle.loads(pickle.dumps(state))
    assert type(back) is type(state) and all(np.array_equal(a, b) for a, b in zip(back, state, strict=True))
    est = tt.TestTimeRegressor(make()).fit(K, V)
    est2 = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(est2.predict(K), est.predict(K))
