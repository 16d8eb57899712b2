"""Capacity and memory diagnostics (theory §4) and their datasets: closed forms, Monte Carlo against them,
every array namespace, and the two figures in quick mode.

Monte Carlo tolerances: a mean over B independent replications is compared with its closed form within
4 standard errors, the s.e. computed from the same replications (two-sided 4 sigma: a false failure has
probability ~6e-5 per assertion; the seeds are fixed, so the tests are deterministic anyway). Where the
closed form is only first-order (RLS), the test says what it checks instead.
"""

import math

import matplotlib
import numpy as np
import pytest
from scipy import integrate, special

import ttr_stats as tt
from paper_figures import fig_capacity, fig_memory
from paper_figures._common import read_csv
from ttr_stats import datasets
from ttr_stats.diagnostics import capacity as cap
from ttr_stats.diagnostics import memory as mem

matplotlib.use("Agg")

Z = 4.0  # standard errors allowed between a Monte Carlo mean and its exact expectation (see module doc)



def mean_se(x):
    x = np.asarray(x, dtype=np.float64).ravel()
    return float(np.mean(x)), float(np.std(x, ddof=1) / math.sqrt(x.size))


# --------------------------------------------------------------------------------------------------------
# datasets
def test_random_pairs_key_distributions():
    K, V = datasets.random_pairs(20, 8, 3, keys="unit", n_batch=5, seed=0)
    assert K.shape == (5, 20, 8) and V.shape == (5, 20, 3)
    # unit norm up to rounding of one division (a few eps)
    np.testing.assert_allclose(np.linalg.norm(K, axis=-1), 1.0, atol=1e-14)
    K, _ = datasets.random_pairs(8, 8, keys="orthonormal", n_batch=3, seed=1)
    np.testing.assert_allclose(K @ np.swapaxes(K, -1, -2), np.broadcast_to(np.eye(8), (3, 8, 8)), atol=1e-13)
    K, _ = datasets.random_pairs(4000, 5, keys="gaussian", seed=2)
    # E||k||^2 = 1 for N(0, I/d); the sample mean of 4000 has s.e. sqrt(2/d / 4000) = 0.01
    assert abs(np.mean(np.sum(K * K, axis=-1)) - 1.0) < Z * math.sqrt(2 / 5 / 4000)
    same = datasets.random_pairs(6, 4, seed=3)
    np.testing.assert_array_equal(same[0], datasets.random_pairs(6, 4, seed=3)[0])  # seeded


def test_dataset_validation():
    with pytest.raises(ValueError, match=r"^keys"):
        datasets.random_pairs(9, 8, keys="orthonormal")
    with pytest.raises(ValueError, match=r"^keys"):
        datasets.random_pairs(3, 8, keys="sphere")
    with pytest.raises(ValueError, match=r"^n must"):
        datasets.random_pairs(0, 8)
    with pytest.raises(ValueError, match=r"^vocab"):
        datasets.mqar(10, 8, vocab=15)
    with pytest.raises(ValueError, match=r"^embedding"):
        datasets.mqar(4, 8, embedding="learned")
    with pytest.raises(ValueError, match=r"^seq_len"):
        datasets.mqar(4, 8, seq_len=11)
    with pytest.raises(ValueError, match=r"^sigma"):
        datasets.linear_target(10, 3, -1.0)


def test_linear_target_is_linear_plus_noise():
    K, V, W = datasets.linear_target(30, 4, 0.0, seed=0, d_v=2, n_batch=3)
    np.testing.assert_allclose(V, K @ np.swapaxes(W, -1, -2), rtol=0, atol=1e-13)  # sigma = 0: exact


def test_mqar_structure():
    P, d = 5, 16
    data = datasets.mqar(P, d, n_batch=3, seq_len=20, seed=0)
    tok = data.tokens
    assert tok.shape == (3, 20) and data.Q.shape == (3, 20, d)
    n_key = (data.embedding.shape[0] - 1) // 2
    for b in range(3):
        keys, vals = tok[b, 0 : 2 * P : 2], tok[b, 1 : 2 * P : 2]
        assert np.all((keys >= 1) & (keys <= n_key)) and np.all(vals > n_key)
        assert len(set(keys)) == P and len(set(vals)) == P
        # every key is queried once, in the query region, and its target is its value
        assert sorted(tok[b, data.query_positions[b]]) == sorted(keys)
        pair = dict(zip(keys, vals, strict=True))
        assert [pair[k] for k in tok[b, data.query_positions[b]]] == list(data.targets[b])
        assert np.all(np.delete(tok[b, 2 * P :], data.query_positions[b] - 2 * P) == 0)  # padding
    # k_t = x_{t-1} (k_1 = 0), q_t = v_t = x_t: exact copies
    np.testing.assert_array_equal(data.K[:, 1:], data.V[:, :-1])
    np.testing.assert_array_equal(data.K[:, 0], 0.0)
    np.testing.assert_array_equal(data.Q, data.V)
    # orthonormal embedding: the d key tokens form an orthonormal frame
    Ek = data.embedding[1 : 1 + n_key]
    np.testing.assert_allclose(Ek @ Ek.T, np.eye(n_key), atol=1e-13)


def test_datasets_on_every_backend(backend):
    K, V = datasets.random_pairs(6, 4, 2, n_batch=2, seed=0, xp=backend.mod)
    K0, V0 = datasets.random_pairs(6, 4, 2, n_batch=2, seed=0)
    assert backend.is_native(K) and backend.is_native(V)
    np.testing.assert_array_equal(backend.get(K), K0)  # same seed, same numbers, on any library
    K, V, W = datasets.linear_target(6, 4, 0.5, seed=0, xp=backend.mod)
    assert all(backend.is_native(a) for a in (K, V, W))
    data = datasets.mqar(3, 8, seed=0, xp=backend.mod)
    assert backend.is_native(data.Q) and backend.is_native(data.embedding)


# --------------------------------------------------------------------------------------------------------
# capacity: closed forms
def test_capacity_closed_forms():
    assert cap.outer_product_recall(64, 64) == pytest.approx(63 / 64, rel=1e-15)
    assert cap.outer_product_recall(256, 64, keys="gaussian") == pytest.approx(257 / 64, rel=1e-15)
    assert cap.outer_product_recall(10, 64, keys="orthonormal") == 0.0
    assert cap.least_squares_recall(32, 64) == 0.0
    assert cap.least_squares_recall(128, 64) == pytest.approx(0.5, rel=1e-15)
    assert cap.least_squares_excess_risk(64, 32, 1.0) == pytest.approx(32 / 31, rel=1e-15)
    with pytest.raises(ValueError, match=r"^n must"):
        cap.least_squares_excess_risk(33, 32, 1.0)
    with pytest.raises(ValueError, match=r"^keys"):
        cap.outer_product_recall(3, 4, keys="cube")


def test_sphere_mgf_matches_quadrature():
    # M_d(beta) = E exp(beta cos) with cos ~ density ∝ (1 - x^2)^((d-3)/2) on [-1, 1]: an independent check
    # of the Bessel formula by quadrature (agreement to quad's ~1e-10 relative accuracy; 1e-8 allowed).
    for d, beta in ((3, 1.0), (16, 8.0), (64, 8.0), (64, 30.0)):
        w = lambda x, d=d: (1 - x * x) ** ((d - 3) / 2)  # noqa: E731
        num = integrate.quad(
            lambda x, w=w, b=beta: np.exp(b * (x - 1)) * w(x), -1, 1, epsabs=0, epsrel=1e-12
        )[0]
        den = integrate.quad(w, -1, 1, epsabs=0, epsrel=1e-12)[0]
        log_m = math.log(num / den) + beta
        assert cap.log_sphere_moment(d, beta) == pytest.approx(log_m, rel=1e-8, abs=1e-10)
    # the half-weight load of theory §4 (d = 64, beta = 8: about 1800) and the self weights of §3
    assert 1700 < cap.hopfield_half_weight(64, 8.0) < 1900
    assert cap.hopfield_self_weight(cap.hopfield_half_weight(64, 8.0), 64, 8.0) == pytest.approx(
        0.5, rel=1e-12
    )
    # theory §3 quotes s = 0.8768 (n = 256) and 0.307 (n = 4096) to the digits shown
    assert cap.hopfield_self_weight(256, 64, 8.0) == pytest.approx(0.8768, abs=5e-5)
    assert cap.hopfield_self_weight(4096, 64, 8.0) == pytest.approx(0.307, abs=5e-4)
    assert special.ive(31.0, 8.0) > 0  # the scaled Bessel function does not underflow here


# --------------------------------------------------------------------------------------------------------
# capacity: Monte Carlo against theory
@pytest.fixture(scope="module")
def recall_df():
    layers = {"la": tt.recipes.linear_attention(), "ls": tt.recipes.least_squares(0.0)}
    return cap.recall_curve(layers, [0.5, 1.0, 2.0, 4.0], 64, n_batch=64, seed=0)


def test_recall_curve_columns(recall_df):
    assert list(recall_df.columns) == [
        "layer",
        "n",
        "d",
        "ratio",
        "recall_error",
        "se",
        "outer_product_theory",
        "least_squares_theory",
    ]
    assert len(recall_df) == 8


def test_outer_product_recall_mc(recall_df):
    # theory §4 MC (d = 64): 0.984 at n = 64 and 3.996 at n = 256; exact expectation (n - 1)/d
    la = recall_df[recall_df.layer == "la"]
    for r in la.itertuples():
        assert abs(r.recall_error - r.outer_product_theory) < Z * r.se, r
    # Gaussian N(0, I/d) keys: (n + 1)/d
    K, V = datasets.random_pairs(128, 32, keys="gaussian", n_batch=128, seed=5)
    m, se = mean_se(cap.recall_error(tt.recipes.linear_attention(), K, V))
    assert abs(m - 129 / 32) < Z * se


def test_least_squares_recall_mc(recall_df):
    ls = recall_df[recall_df.layer == "ls"]
    for r in ls.itertuples():
        if r.n <= r.d:
            # interpolation: zero up to the rounding of a pseudo-inverse (cond(K^T K) at n = d = 64 is ~1e4-1e5,
            # so residuals ~1e-11 relative at worst; 1e-8 allowed)
            assert r.recall_error < 1e-8, r
        else:  # MC 0.4986 at n = 2d, 0.7501 at n = 4d; exact expectation 1 - d/n
            assert abs(r.recall_error - r.least_squares_theory) < Z * r.se, r


def test_orthonormal_keys_recall_exactly():
    K, V = datasets.random_pairs(16, 16, keys="orthonormal", n_batch=3, seed=0)
    # M k_i = sum_j v_j <k_j, k_i> = v_i: exact up to rounding (a 16-term sum, ~1e-15)
    assert np.max(cap.recall_error(tt.recipes.linear_attention(), K, V)) < 1e-24


def test_least_squares_excess_risk_mc():
    # theory §4 MC: 1.026 vs 1.032 at n = 2d, d = 32, sigma = 1
    K, V, W = datasets.linear_target(64, 32, 1.0, seed=1, n_batch=300)
    Q = np.random.default_rng(2).standard_normal((300, 100, 32))
    m, se = mean_se(cap.excess_risk(tt.recipes.least_squares(), K, V, W, Q))
    assert abs(m - cap.least_squares_excess_risk(64, 32, 1.0)) < Z * se


def test_hopfield_self_weight_mc():
    # QKNorm softmax with logit scale 8 on unit keys = logits 8 q^T k: the self weight of an exact-match query
    # falls to 1/2 at n* ~ 1816 (d = 64). Replications: 3 independent key sets; the s.e. is taken over their
    # per-set means (the n self weights within one set share keys, so they are not independent).
    layer = tt.recipes.qknorm_attention(8.0)
    n_star = cap.hopfield_half_weight(64, 8.0)
    out = {}
    for n in (256, int(round(n_star))):
        K, _ = datasets.random_pairs(n, 64, 1, n_batch=3, seed=n)
        s = np.asarray(cap.self_weight(layer, K))
        out[n] = mean_se(np.mean(s, axis=-1))
        # the formula is the annealed approximation; theory §3 reports MC 0.8770 vs 0.8768 at n = 256, a
        # bias of ~2e-4, so the band is 4 s.e. plus 5e-4 for it
        assert abs(out[n][0] - cap.hopfield_self_weight(n, 64, 8.0)) < Z * out[n][1] + 5e-4, (n, out[n])
    assert out[256][0] > 0.85
    assert abs(out[int(round(n_star))][0] - 0.5) < Z * out[int(round(n_star))][1] + 5e-4


def test_self_weight_is_smoother_diagonal():
    # for least squares the smoother is the hat matrix K (K^T K)^+ K^T: diagonal = leverages (sum = rank)
    K, _ = datasets.random_pairs(12, 5, seed=0)
    s = np.asarray(cap.self_weight(tt.recipes.least_squares(), K))
    H = K @ np.linalg.pinv(K.T @ K) @ K.T
    np.testing.assert_allclose(s, np.diag(H), rtol=0, atol=1e-12)  # two pseudo-inverses, cond ~10
    assert s.sum() == pytest.approx(5.0, rel=1e-12)


def test_mqar_orthonormal_and_random_embeddings():
    d = 64
    la, ls = tt.recipes.linear_attention(), tt.recipes.least_squares(1e-6)
    # orthonormal key embeddings: linear attention decodes every query up to n_pairs = d. (The only
    # interference, the value-to-next-key bigrams, leaves the right value with cosine ~0.7 against ~0.1 for
    # the others at d = 64; 512 queries, all correct.)
    acc = cap.mqar_accuracy(la, d, d, embedding="orthonormal", n_batch=8, seed=0)
    assert acc.accuracy == 1.0 and acc.n_queries == 8 * d
    # random embeddings: least squares interpolates the 2P + 1 distinct predecessors while 2P + 1 <= d ...
    assert cap.mqar_accuracy(ls, 31, d, embedding="random", n_batch=8, seed=1).accuracy == 1.0
    # ... and at n_pairs = d linear attention fails where least squares still recalls; the gap is compared
    # with the two standard errors combined (different layers, same sequences: conservative)
    a_la = cap.mqar_accuracy(la, d, d, embedding="random", n_batch=16, seed=2)
    a_ls = cap.mqar_accuracy(ls, d, d, embedding="random", n_batch=16, seed=2)
    assert a_la.accuracy < 1.0 - Z * a_la.se
    assert a_ls.accuracy - a_la.accuracy > Z * math.hypot(a_la.se, a_ls.se)


def test_capacity_on_every_backend(backend):
    K, V = datasets.random_pairs(20, 6, 3, n_batch=2, seed=0)
    for layer in (
        tt.recipes.linear_attention(),
        tt.recipes.least_squares(1e-3),
        tt.recipes.qknorm_attention(4.0),
    ):
        ref = cap.recall_error(layer, K, V)
        out = cap.recall_error(layer, backend.put(K), backend.put(V))
        assert backend.is_native(out)
        # the same algorithm on another library: rounding only (see test_backends.py: 1e-11 relative)
        np.testing.assert_allclose(backend.get(out), ref, rtol=1e-11)
        sw = cap.self_weight(layer, backend.put(K))
        assert backend.is_native(sw)
        np.testing.assert_allclose(backend.get(sw), cap.self_weight(layer, K), rtol=1e-11, atol=1e-14)
    Kt, Vt, W = datasets.linear_target(30, 4, 0.3, seed=0, n_batch=2)
    Q = np.random.default_rng(1).standard_normal((2, 10, 4))
    ls = tt.recipes.least_squares()
    er = cap.excess_risk(ls, *(backend.put(a) for a in (Kt, Vt, W, Q)))
    assert backend.is_native(er)
    np.testing.assert_allclose(backend.get(er), cap.excess_risk(ls, Kt, Vt, W, Q), rtol=1e-11)
    acc = cap.mqar_accuracy(
        tt.recipes.linear_attention(), 8, 8, embedding="random", n_batch=4, seed=0, xp=backend.mod
    )
    assert acc == cap.mqar_accuracy(
        tt.recipes.linear_attention(), 8, 8, embedding="random", n_batch=4, seed=0
    )


# --------------------------------------------------------------------------------------------------------
# memory: weights and windows
@pytest.mark.parametrize(
    "make",
    [
        tt.recipes.deltanet,
        tt.recipes.gated_deltanet,
        tt.recipes.longhorn,
        tt.recipes.nlms,
        tt.recipes.leaky_lms,
    ],
    ids=["deltanet", "gated_deltanet", "longhorn", "nlms", "leaky_lms"],
)
def test_delta_rules_have_no_weights(make):
    layer = make()
    name = type(layer.optimizer).__name__
    with pytest.raises(ValueError, match=rf"^layer: the optimizer {name} is a delta rule"):
        mem.weight_profile(layer, 5)
    with pytest.raises(ValueError, match=r"^layer"):
        mem.effective_window(layer, 5)


def test_weight_profiles():
    # exact products: compared to 1e-15 relative (a handful of exp/log roundings)
    np.testing.assert_allclose(
        mem.weight_profile(tt.recipes.retnet(0.5), 4), [0.125, 0.25, 0.5, 1.0], rtol=1e-15
    )
    np.testing.assert_allclose(mem.weight_profile(tt.recipes.linear_attention(), 3), [1.0, 1.0, 1.0])
    # RLS: the optimizer's forgetting factor is part of the weights
    np.testing.assert_allclose(mem.weight_profile(tt.recipes.rls(1e-3, 0.9), 3), [0.81, 0.9, 1.0], rtol=1e-14)
    np.testing.assert_allclose(
        mem.weight_profile(tt.recipes.sliding_window_attention(2), 4), [0.0, 0.0, 1.0, 1.0]
    )
    rng = np.random.default_rng(0)
    alpha = rng.uniform(0.5, 1.0, (2, 6))
    beta = rng.uniform(0.5, 2.0, (2, 6))
    w = mem.weight_profile(tt.recipes.mamba2(), 6, alpha=alpha, beta=beta)
    ref = beta * np.stack([np.prod(alpha[:, i + 1 :], axis=-1) for i in range(6)], axis=-1)
    np.testing.assert_allclose(w, ref, rtol=1e-13)  # exp of a sum of logs vs a product: ~6 eps
    with pytest.raises(ValueError, match=r"^alpha"):
        mem.weight_profile(tt.recipes.gla(), 3, alpha=np.full((3, 4), 0.9))
    with pytest.raises(ValueError, match=r"^gamma"):
        mem.weight_profile(tt.recipes.mamba2(), 3, gamma=0.9)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.97, 0.995])
def test_effective_window_constant_decay(gamma):
    T = 3000
    layer = tt.recipes.retnet(gamma)
    for mass in (0.5, 0.9, 0.99):
        assert int(mem.effective_window(layer, T, mass=mass)) == mem.constant_decay_window(gamma, mass, T)
    # equivalent window: sum_j gamma^j = (1 - gamma^T)/(1 - gamma) -> 1/(1 - gamma); the geometric sum of
    # T terms accumulates ~T eps relative rounding
    eq = float(mem.effective_window(layer, T, mass=None))
    assert eq == pytest.approx(mem.constant_decay_window(gamma, None, T), rel=1e-12)
    assert eq == pytest.approx(1 / (1 - gamma), rel=gamma**T + 1e-12)


def test_effective_window_uniform_and_gated(backend):
    assert int(mem.effective_window(tt.recipes.linear_attention(), 10, mass=0.9)) == 9
    alpha = np.array([[1.0, 1.0, 1.0, 0.0, 1.0, 1.0], [0.9] * 6])  # a reset at step 4: only 4..6 count
    w = mem.effective_window(tt.recipes.mamba2(), 6, mass=1.0, alpha=backend.put(alpha))
    assert backend.is_native(w)
    assert backend.get(w).tolist() == [3, 6]
    prof = mem.weight_profile(tt.recipes.rls(1e-3, 0.9), 5, alpha=backend.put(alpha[1, :5]))
    assert backend.is_native(prof)
    np.testing.assert_allclose(backend.get(prof), 0.81 ** np.arange(4, -1, -1), rtol=1e-14)


# --------------------------------------------------------------------------------------------------------
# memory: LMS and RLS Monte Carlo (replications as the batch dimension)
def test_lms_learning_curve_mc():
    # theory §4 MC: d = 32, t = 100, beta = 1: 0.0416 vs (1 - 1/32)^100 = 0.0418 (exact expectation)
    d = 32
    for beta in (0.5, 1.0):
        sim = mem.simulate_online_regression(
            tt.recipes.deltanet(beta), d, 100, d_v=d, n_batch=100, seed=int(10 * beta), record=[25, 100]
        )
        rel = sim.sq_error / sim.w_norm2[:, None]  # conditionally on W its mean is exactly the theory
        for j, t in enumerate(sim.t):
            m, se = mean_se(rel[:, j])
            assert abs(m - mem.lms_learning_curve(d, beta, t)) < Z * se, (beta, t, m, se)


@pytest.mark.parametrize("beta", [0.2, 0.5, 1.0])
def test_lms_misadjustment_mc(beta):
    # theory §4 MC: 0.111 / 0.334 / 1.003 vs beta sigma^2/(2 - beta) = 0.111 / 0.333 / 1.000 (exact in the
    # steady state for unit isotropic keys, any d). d = 8: the initial error decays as
    # (1 - beta(2 - beta)/8)^t, below 1e-7 of the start by t = 400, where recording begins.
    d = 8
    sim = mem.simulate_online_regression(
        tt.recipes.deltanet(beta),
        d,
        800,
        sigma=1.0,
        d_v=d,
        n_batch=100,
        seed=7,
        record=np.arange(400, 801, 20),
    )
    m, se = mean_se(np.mean(sim.excess_mse, axis=1))  # time-average per replication, s.e. across them
    assert abs(m - mem.lms_misadjustment(beta, 1.0)) < Z * se, (m, se)


def test_rls_excess_error_mc():
    # RLS with forgetting gamma = 0.99, d = 16, sigma^2 = 1. The closed form sigma^2 d (1-g)/(1+g) = 0.0804 is
    # first order in d(1 - gamma) = 0.16; theory §4's independent MC gives 0.083 (reported to 3 digits, so
    # +-0.0005 of rounding). We check (1) agreement with that MC within 4 s.e. plus its rounding and (2) that
    # the first-order formula is below the truth by a small relative amount (< 5%, the order d(1-g)/6 seen
    # in the simulations), i.e. the approximation is as good as the theory says and no better.
    d, g = 16, 0.99
    sim = mem.simulate_online_regression(
        tt.recipes.rls(1e-6, forgetting=g),
        d,
        1500,
        sigma=1.0,
        d_v=4,
        n_batch=100,
        seed=2,
        record=np.arange(500, 1501, 50),
    )
    m, se = mean_se(np.mean(sim.excess_mse, axis=1))
    assert abs(m - 0.083) < Z * se + 0.0005, (m, se)
    theory = mem.rls_excess_error(d, g, 1.0)
    assert 0.0 < m / theory - 1.0 < 0.05, (m, theory)


def test_memory_theory_validation():
    assert mem.lms_learning_curve(32, 1.0, 100) == pytest.approx((1 - 1 / 32) ** 100, rel=1e-15)
    assert mem.lms_misadjustment(1.0, 2.0) == 2.0
    assert mem.rls_excess_error(16, 0.99, 1.0) == pytest.approx(16 * 0.01 / 1.99, rel=1e-12)
    with pytest.raises(ValueError, match=r"^beta"):
        mem.lms_misadjustment(2.0, 1.0)
    with pytest.raises(ValueError, match=r"^gamma"):
        mem.rls_excess_error(4, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^gamma"):
        mem.constant_decay_window(1.0)
    with pytest.raises(ValueError, match=r"^record"):
        mem.simulate_online_regression(tt.recipes.deltanet(), 4, 10, record=[11])


def test_simulation_on_every_backend(backend):
    kw = dict(sigma=0.5, d_v=2, n_batch=3, seed=0, record=[5, 12])
    ref = mem.simulate_online_regression(tt.recipes.rls(1e-3, 0.95), 4, 12, **kw)
    out = mem.simulate_online_regression(tt.recipes.rls(1e-3, 0.95), 4, 12, xp=backend.mod, **kw)
    np.testing.assert_allclose(out.sq_error, ref.sq_error, rtol=1e-10)  # 12 RLS steps, rounding only


# --------------------------------------------------------------------------------------------------------
# figures (quick mode)
def test_fig_capacity_quick(tmp_path):
    rows = fig_capacity.main(tmp_path, quick=True)
    assert (tmp_path / "capacity.png").stat().st_size > 10_000
    csv = read_csv(tmp_path / "capacity.csv")
    assert list(csv[0]) == ["panel", "series", "n", "d", "x", "value", "se", "theory"]
    assert len(csv) == len(rows)
    for r in rows:
        panel, series, n, d, x, value, se, theory = r
        if panel == "recall" and series == "linear_attention":
            assert abs(value - theory) < Z * se, r  # exact expectation (n - 1)/d
        if panel == "recall" and series == "least_squares" and n > d:
            assert abs(value - theory) < Z * se, r  # exact expectation 1 - d/n
        if panel == "recall" and series == "least_squares" and n <= d:
            assert value < 1e-8, r
    assert {r[1] for r in rows if r[0] == "mqar"} == {m[0] for m in fig_capacity.MQAR}


def test_fig_memory_quick(tmp_path):
    rows = fig_memory.main(tmp_path, quick=True)
    assert (tmp_path / "memory.png").stat().st_size > 10_000
    csv = read_csv(tmp_path / "memory.csv")
    assert list(csv[0]) == ["panel", "series", "x", "value", "se", "theory"]
    assert len(csv) == len(rows)
    for panel, _, x, value, se, theory in rows:
        if panel in ("lms_curve", "lms_misadjustment") and se > 0:
            # exact expectations; the learning-curve points share replications across t (curves, not
            # independent points), so each point is still a valid 4 s.e. comparison
            assert abs(value - theory) < Z * se, (panel, x, value, se, theory)
