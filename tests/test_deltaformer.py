"""DeltaFormer (ttr_stats/regressors/deltaformer.py, methods/deltaformer/): a delta rule whose memory is a
softmax smoother, against its definition, fla's naive code and the regression reading of its write.

Tolerances: the float64 definition (a plain loop over explicit softmaxes) agrees to 1e-10 (T <= 30 steps
of O(1) sums whose corrections feed forward: ~1e3 eps64); fla's naive reference runs in float32 on the CPU
and agrees to 2e-5 (T = 40, ~1e2 eps32, the issue's bound). Causality is exact (0 difference); two methods
that sum in another order agree to 1e-12.
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt

TOL64 = 1e-10
TOL_FLA = 2e-5
METHODS = ("recurrent", "direct")


def rel(a, b):
    if np.size(b) == 0:
        return 0.0 if np.size(a) == 0 else np.inf
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1.0, float(np.max(np.abs(b)))))


@pytest.fixture
def rng():
    return np.random.default_rng(2519)


def draw(rng, batch=(2, 2), T=24, d=6, d_v=4):
    Q, K = (rng.standard_normal(batch + (T, d)) for _ in range(2))
    V = rng.standard_normal(batch + (T, d_v))
    beta = rng.uniform(0.1, 1.0, batch + (T,))  # a sigmoid in DeltaFormer's layer
    la = -rng.uniform(0.0, 0.5, batch + (T,))
    return Q, K, V, beta, la


def softmax_read(q, K, U, logw, tau):
    if K.shape[0] == 0:
        return np.zeros(U.shape[-1])
    z = tau * K @ q + logw
    p = np.exp(z - z.max())
    return (p / p.sum()) @ U


def definition(Q, K, V, beta, la=None, scale=None):
    """u_t = v_t - beta_t sum_{j<t} p_tj u_j (softmax over j < t), y_t = sum_{j<=t} p'_tj u_j, with the
    decay prod_{i=j+1}^t alpha_i in both weights; float64, one sequence at a time."""
    T, d = Q.shape[-2:]
    tau = d**-0.5 if scale is None else scale
    la = np.zeros(beta.shape) if la is None else la
    Y = np.zeros(Q.shape[:-1] + (V.shape[-1],))
    for idx in np.ndindex(Q.shape[:-2]):
        U = np.zeros((T, V.shape[-1]))
        for t in range(T):
            logw = np.array([la[idx][j + 1 : t + 1].sum() for j in range(t + 1)])
            U[t] = V[idx][t] - beta[idx][t] * softmax_read(Q[idx][t], K[idx][:t], U[:t], logw[:t], tau)
            Y[idx + (t,)] = softmax_read(Q[idx][t], K[idx][: t + 1], U[: t + 1], logw, tau)
    return Y


@pytest.mark.parametrize("method", METHODS)
def test_equals_the_definition_float64(rng, method):
    Q, K, V, beta, la = draw(rng, T=27)
    layer = tt.recipes.deltaformer()
    assert rel(layer(Q, K, V, beta=beta, method=method), definition(Q, K, V, beta)) < TOL64
    assert rel(layer(Q, K, V, beta=beta, log_alpha=la, method=method), definition(Q, K, V, beta, la)) < TOL64
    assert layer.method_ == method


def fla_deltaformer():
    """fla-core's ``naive_deltaformer_attn``, loaded from its file (``fla.ops`` pulls in triton)."""
    import importlib.util
    import os

    pytest.importorskip("torch")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla-core) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "ops", "deltaformer", "naive.py")
    mspec = importlib.util.spec_from_file_location("_fla_naive_deltaformer", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.naive_deltaformer_attn


@pytest.mark.parametrize("method", METHODS)
def test_equals_fla_naive_deltaformer(rng, method):
    ref = fla_deltaformer()  # skips without torch / fla, before torch is imported
    import torch

    Q, K, V, beta, _ = draw(rng, T=40, d=8, d_v=8)  # fla's naive code needs d_v = d_k
    t = lambda x: torch.tensor(np.swapaxes(x, 1, 2), dtype=torch.float32)  # noqa: E731 - (B,H,T,.)->(B,T,H,.)
    o = np.swapaxes(ref(t(Q), t(K), t(V), t(beta)).numpy(), 1, 2)
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    Y = tt.recipes.deltaformer()(f32(Q), f32(K), f32(V), beta=f32(beta), method=method)
    assert Y.dtype == np.float32 and rel(Y, o) < TOL_FLA
    o1 = np.swapaxes(ref(t(Q), t(K), t(V)).numpy(), 1, 2)  # fla's default beta = 1: our default
    assert rel(tt.recipes.deltaformer()(f32(Q), f32(K), f32(V), method=method), o1) < TOL_FLA


def test_the_write_is_the_residual_of_the_memory_read(rng):
    """Regression view: the corrected value u_t is v_t minus beta_t times the memory after t - 1 read at q_t
    (the layer's own read of its own state), i.e. one delta step on 1/2 |v_t - m(q_t)|^2."""
    Q, K, V, beta, la = draw(rng, batch=(2,), T=12)
    layer = tt.recipes.deltaformer()
    _, full = layer(Q, K, V, beta=beta, log_alpha=la, return_state=True)
    for t in (1, 5, 11):
        _, before = layer(
            Q[:, :t], K[:, :t], V[:, :t], beta=beta[:, :t], log_alpha=la[:, :t], return_state=True
        )
        decayed = before._replace(log_weight=before.log_weight + la[:, t : t + 1])  # the step's decay first
        pred = layer.read(decayed, Q[:, t : t + 1])[:, 0]
        assert rel(full.V[:, t], V[:, t] - beta[:, t, None] * pred) < 1e-12
    assert rel(full.V[:, 0], V[:, 0]) == 0.0  # an empty memory predicts 0


def test_small_beta_tends_to_softmax_attention(rng):
    """beta -> 0: no correction, softmax attention (the difference is linear in beta: O(1e-8) at 1e-8)."""
    Q, K, V, beta, _ = draw(rng)
    Y = tt.recipes.deltaformer()(Q, K, V, beta=1e-8 * beta)
    assert rel(Y, tt.recipes.softmax_attention()(Q, K, V)) < 1e-7


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(4))
def test_causality_fuzz(method, seed):
    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 30))
    s = int(rng.integers(1, T))
    Q, K, V, beta, la = draw(rng, batch=(2,), T=T, d=int(rng.integers(1, 6)), d_v=3)
    layer = tt.recipes.deltaformer()
    Y = layer(Q, K, V, beta=beta, log_alpha=la, method=method)
    X = [x.copy() for x in (Q, K, V, beta, la)]
    for j, x in enumerate(X):
        if x.ndim == 3:
            x[..., s:, :] = rng.standard_normal(x[..., s:, :].shape)
        else:
            x[..., s:] = rng.uniform(0.1, 1.0, x[..., s:].shape) * (-2.0 if j == 4 else 1.0)
    Y2 = layer(*X[:3], beta=X[3], log_alpha=X[4], method=method)
    np.testing.assert_array_equal(Y2[..., :s, :], Y[..., :s, :])
    assert not np.allclose(Y2[..., s:, :], Y[..., s:, :])


def test_methods_agree_and_states_continue(rng):
    Q, K, V, beta, la = draw(rng, T=30)
    layer = tt.recipes.deltaformer()
    Y, st = layer(Q, K, V, beta=beta, log_alpha=la, return_state=True, method="recurrent")
    Yd, sd = layer(Q, K, V, beta=beta, log_alpha=la, return_state=True, method="direct")
    assert rel(Yd, Y) < 1e-12 and max(rel(a, b) for a, b in zip(sd, st, strict=True)) < 1e-12
    a, b = slice(0, 11), slice(11, None)
    for m1 in METHODS:
        _, s1 = layer(Q[..., a, :], K[..., a, :], V[..., a, :], beta=beta[..., a], log_alpha=la[..., a],
                      return_state=True, method=m1)  # fmt: skip
        for m2 in METHODS:
            Y2 = layer(Q[..., b, :], K[..., b, :], V[..., b, :], beta=beta[..., b], log_alpha=la[..., b],
                       initial_state=s1, method=m2)  # fmt: skip
            assert rel(Y2, Y[..., b, :]) < 1e-12, (m1, m2)
    assert rel(layer.read(st, Q[..., -1:, :]), Y[..., -1:, :]) < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_lengths_equal_each_sequence_alone(rng, method):
    Q, K, V, beta, la = draw(rng, batch=(3,), T=16)
    lengths = np.array([16, 5, 0])
    layer = tt.recipes.deltaformer()
    Y, st = layer(Q, K, V, beta=beta, log_alpha=la, lengths=lengths, return_state=True, method=method)
    for j, n in enumerate(lengths):
        Yj, sj = layer(Q[j, :n], K[j, :n], V[j, :n], beta=beta[j, :n], log_alpha=la[j, :n], return_state=True,
                       method=method)  # fmt: skip
        assert rel(Y[j, :n], Yj) < 1e-12 and not np.any(Y[j, n:])
        live = st.log_weight[j] > -np.inf
        assert rel(st.V[j][live], sj.V) < 1e-12 and rel(st.log_weight[j][live], sj.log_weight) < 1e-12


def test_bad_inputs_name_the_argument(rng):
    Q, K, V, beta, la = draw(rng)
    layer = tt.recipes.deltaformer()
    with pytest.raises(ValueError, match="^causal: DeltaFormer writes .* each token's query"):
        layer(Q[..., :3, :], K, V, causal=False)
    with pytest.raises(ValueError, match="^memorize: DeltaFormer writes with each token's query"):
        layer.memorize(K, V)
    with pytest.raises(ValueError, match="^beta must be > 0"):
        layer(Q, K, V, beta=0 * beta)
    with pytest.raises(TypeError, match="^initial_state must be a CacheState"):
        layer(Q, K, V, initial_state=(K, V))
    with pytest.raises(ValueError, match="^inputs: this layer takes none"):
        layer(Q, K, V, inputs={"w": K})
    with pytest.raises(ValueError, match="^weights: DeltaFormer does not support SlidingWindow"):
        tt.TestTimeRegression(tt.weights.SlidingWindow(4), tt.recipes.deltaformer().regressor)
