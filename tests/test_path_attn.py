"""PaTH attention (ttr_stats/regressors/path.py, methods/path/): softmax attention on keys transported by
cumulative Householder-like transforms, against its definition, fla's naive code and softmax attention.

Tolerances: the float64 definition (explicit d x d products P_ti = H_t ... H_{i+1} for every pair, then a
softmax) agrees to 1e-10 (T <= 40 products of O(1) matrices and one normalisation: ~1e3 eps64); fla's
naive reference runs in float32 on the CPU and agrees to 2e-5 (T = 45 sums and products of O(1) terms,
~1e2 eps32, the issue's bound). beta = 0 (identity transforms) and causality are exact (0 difference).
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.regressors.path import PaTH
from ttr_stats.similarity import ExpDot, Gaussian

TOL64 = 1e-10
TOL_FLA = 2e-5
METHODS = ("recurrent", "chunked")


def rel(a, b):
    if np.size(b) == 0:
        return 0.0 if np.size(a) == 0 else np.inf
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1.0, float(np.max(np.abs(b)))))


@pytest.fixture
def rng():
    return np.random.default_rng(2505)


def draw(rng, batch=(2, 2), T=23, d=6, d_v=4):
    Q, K = (rng.standard_normal(batch + (T, d)) for _ in range(2))
    V = rng.standard_normal(batch + (T, d_v))
    W = rng.standard_normal(batch + (T, d))
    W /= np.linalg.norm(W, axis=-1, keepdims=True)
    bw = rng.uniform(0.0, 2.0, batch + (T,))  # PaTH's beta in (0, 2)
    la = -rng.uniform(0.0, 0.4, batch + (T,))
    return Q, K, V, W, bw, la


def definition(Q, K, V, W, bw, la, b=None, scale=None):
    """y_t = sum_i p_ti v_i, p_ti ~ beta_i prod_{j=i+1}^t alpha_j exp(tau q_t^T H_t ... H_{i+1} k_i),
    every product written out (float64, one sequence at a time)."""
    T, d = Q.shape[-2:]
    tau = d**-0.5 if scale is None else scale
    Y = np.zeros(Q.shape[:-1] + (V.shape[-1],))
    for idx in np.ndindex(Q.shape[:-2]):
        H = [np.eye(d) - bw[idx][s] * np.outer(W[idx][s], W[idx][s]) for s in range(T)]
        for t in range(T):
            logits = np.empty(t + 1)
            for i in range(t + 1):
                P = np.eye(d)
                for s in range(i + 1, t + 1):
                    P = H[s] @ P  # P_ti = H_t ... H_{i+1}
                logits[i] = tau * Q[idx][t] @ P @ K[idx][i] + la[idx][i + 1 : t + 1].sum()
                if b is not None:
                    logits[i] += np.log(b[idx][i])
            p = np.exp(logits - logits.max())
            Y[idx + (t,)] = (p / p.sum()) @ V[idx][: t + 1]
    return Y


@pytest.mark.parametrize("method", METHODS)
def test_equals_the_definition_float64(rng, method):
    Q, K, V, W, bw, la = draw(rng, T=29)
    b = rng.uniform(0.5, 2.0, la.shape)  # sample weights (write strengths) enter as log-weights
    layer = tt.recipes.path_attention()
    Y = layer(Q, K, V, log_alpha=la, beta=b, inputs={"w": W, "w_beta": bw}, method=method, chunk_size=8)
    assert layer.method_ == method
    assert rel(Y, definition(Q, K, V, W, bw, la, b)) < TOL64


def fla_path():
    """fla-core's ``naive_path_attn``, loaded from its file (``fla.ops`` pulls in triton, absent here)."""
    import importlib.util
    import os

    pytest.importorskip("torch")
    pytest.importorskip("einops")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla-core) is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "ops", "path_attn", "naive.py")
    mspec = importlib.util.spec_from_file_location("_fla_naive_path_attn", path)
    mod = importlib.util.module_from_spec(mspec)
    mspec.loader.exec_module(mod)
    return mod.naive_path_attn


@pytest.mark.parametrize("method", METHODS)
def test_equals_fla_naive_path_attn(rng, method):
    ref = fla_path()  # skips without torch / fla, before torch is imported
    import torch

    Q, K, V, W, bw, g = draw(rng, T=45, d=8, d_v=8)  # fla's naive code needs d_v = d_k (v padded like q)
    scale = 0.4
    t = lambda x: torch.tensor(np.swapaxes(x, 1, 2), dtype=torch.float32)  # noqa: E731 - (B,H,T,.)->(B,T,H,.)
    o = ref(t(Q), t(K), t(V), t(W), t(bw), t(g), scale, chunk_size=16).numpy()
    layer = tt.recipes.path_attention(scale=scale)
    f32 = lambda x: x.astype(np.float32)  # noqa: E731
    # fla adds the gate to the logits before the scale: log_alpha = scale * g here
    Y = layer(*map(f32, (Q, K, V)), log_alpha=f32(scale * g), inputs={"w": f32(W), "w_beta": f32(bw)},
              method=method, chunk_size=16)  # fmt: skip
    assert Y.dtype == np.float32
    assert rel(Y, np.swapaxes(o, 1, 2)) < TOL_FLA


@pytest.mark.parametrize("method", METHODS)
def test_zero_beta_is_softmax_attention(rng, method):
    """Identity transforms: PaTH is forgetting (gated softmax) attention, bit for bit."""
    Q, K, V, W, bw, la = draw(rng)
    Y = tt.recipes.path_attention()(Q, K, V, log_alpha=la, inputs={"w": W, "w_beta": 0 * bw}, method=method)
    softmax = tt.TestTimeRegression(tt.weights.Gated(alpha=1.0), LocalPolynomial(0, ExpDot()))
    Z = softmax(Q, K, V, log_alpha=la, method="recurrent")
    if method == "recurrent":  # the same cache and the same solve: exactly equal
        np.testing.assert_array_equal(Y, Z)
    else:  # blocks summed in another order: rounding only (1e-13: T = 23 terms of O(1))
        assert rel(Y, Z) < 1e-13
    Y0 = tt.recipes.path_attention()(Q, K, V, inputs={"w": W, "w_beta": 0 * bw}, method="recurrent")
    np.testing.assert_array_equal(Y0, tt.recipes.softmax_attention()(Q, K, V, method="recurrent"))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed", range(4))
def test_causality_fuzz(method, seed):
    """Changing any input at positions >= s (q, k, v, w, w_beta, gates) never changes an output before s."""
    rng = np.random.default_rng(seed)
    T = int(rng.integers(2, 40))
    s = int(rng.integers(1, T))
    Q, K, V, W, bw, la = draw(rng, batch=(2,), T=T, d=int(rng.integers(1, 6)), d_v=3)
    layer = tt.recipes.path_attention()
    C = int(rng.integers(1, 12))
    run = lambda *a: layer(*a[:3], log_alpha=a[5], inputs={"w": a[3], "w_beta": a[4]}, method=method,  # noqa: E731
                           chunk_size=C)  # fmt: skip
    Y = run(Q, K, V, W, bw, la)
    changed = []
    for j, x in enumerate((Q, K, V, W, bw, la)):
        x = x.copy()
        if x.ndim == 3:  # rows (q, k, v, w)
            x[..., s:, :] = rng.standard_normal(x[..., s:, :].shape)
        else:  # one value per token: w_beta in (0, 2), log-decays <= 0
            x[..., s:] = rng.uniform(0.0, 2.0, x[..., s:].shape) * (-1.5 if j == 5 else 1.0)
        changed.append(x)
    Y2 = run(*changed)
    np.testing.assert_array_equal(Y2[..., :s, :], Y[..., :s, :])
    assert not np.allclose(Y2[..., s:, :], Y[..., s:, :])  # the change did reach the later outputs


@pytest.mark.parametrize("method", METHODS)
def test_state_continues_and_memorize_reads(rng, method):
    """The cache holds keys transported to the last step: a call split in two equals one call, memorize()
    gives the same cache, and read() of it is the last output (rounding: 1e-12)."""
    Q, K, V, W, bw, la = draw(rng, T=30)
    layer = tt.recipes.path_attention()
    kw = lambda sl: dict(log_alpha=la[..., sl], inputs={"w": W[..., sl, :], "w_beta": bw[..., sl]})  # noqa: E731
    Y, state = layer(Q, K, V, return_state=True, method=method, chunk_size=7, **kw(slice(None)))
    a, b = slice(0, 13), slice(13, None)
    _, s1 = layer(Q[..., a, :], K[..., a, :], V[..., a, :], return_state=True, method=method, **kw(a))
    Y2 = layer(
        Q[..., b, :], K[..., b, :], V[..., b, :], initial_state=s1, method=method, chunk_size=5, **kw(b)
    )
    assert rel(Y2, Y[..., b, :]) < 1e-12
    mem = layer.memorize(K, V, **kw(slice(None)))
    assert max(rel(x, y) for x, y in zip(mem, state, strict=True)) < 1e-12
    m1 = layer.memorize(K[..., a, :], V[..., a, :], **kw(a))
    m2 = layer.memorize(K[..., b, :], V[..., b, :], initial_state=m1, **kw(b))
    assert max(rel(x, y) for x, y in zip(m2, state, strict=True)) < 1e-12
    assert rel(layer.read(state, Q[..., -1:, :]), Y[..., -1:, :]) < 1e-12


@pytest.mark.parametrize("method", METHODS)
def test_lengths_equal_each_sequence_alone(rng, method):
    Q, K, V, W, bw, la = draw(rng, batch=(3,), T=20)
    lengths = np.array([20, 7, 0])
    layer = tt.recipes.path_attention()
    inputs = {"w": W, "w_beta": bw}
    Y, st = layer(Q, K, V, log_alpha=la, inputs=inputs, lengths=lengths, return_state=True, method=method)
    for j, n in enumerate(lengths):
        Yj, sj = layer(Q[j, :n], K[j, :n], V[j, :n], log_alpha=la[j, :n],
                       inputs={"w": W[j, :n], "w_beta": bw[j, :n]}, return_state=True, method=method)  # fmt: skip
        assert rel(Y[j, :n], Yj) < 1e-12 and not np.any(Y[j, n:])
        live = st.log_weight[j] > -np.inf  # the padded pairs are in the cache with weight 0
        assert rel(st.K[j][live], sj.K) < 1e-12 and rel(st.log_weight[j][live], sj.log_weight) < 1e-12


def test_non_causal_reads_the_final_cache(rng):
    Q, K, V, W, bw, la = draw(rng)
    layer = tt.recipes.path_attention()
    inputs = {"w": W, "w_beta": bw}
    Qn = rng.standard_normal((2, 2, 5, Q.shape[-1]))
    for method in METHODS:
        Y = layer(Qn, K, V, log_alpha=la, inputs=inputs, causal=False, method=method)
        state = layer.memorize(K, V, log_alpha=la, inputs=inputs)
        assert rel(Y, layer.read(state, Qn)) < 1e-12


def test_bad_inputs_name_the_argument(rng):
    Q, K, V, W, bw, la = draw(rng)
    layer = tt.recipes.path_attention()
    with pytest.raises(ValueError, match=r"^inputs\['w'\] is required by PaTH: pass inputs="):
        layer(Q, K, V)
    with pytest.raises(ValueError, match=r"^inputs\['w_beta'\] is required by PaTH"):
        layer(Q, K, V, inputs={"w": W})
    with pytest.raises(ValueError, match=r"^inputs\['w'\] must have shape \(\.\.\., 23, 6\)"):
        layer(Q, K, V, inputs={"w": W[..., :5], "w_beta": bw})
    with pytest.raises(ValueError, match=r"^inputs\['w'\] must have shape"):
        layer(Q, K, V, inputs={"w": W[..., :-1, :], "w_beta": bw})
    with pytest.raises(ValueError, match=r"^inputs\['w_beta'\] must have shape \(\.\.\., 23\)"):
        layer(Q, K, V, inputs={"w": W, "w_beta": bw[..., None]})
    with pytest.raises(
        ValueError, match=r"^inputs: PaTH takes inputs \['w', 'w_beta'\]; got unknown \['beta'\]"
    ):
        layer(Q, K, V, inputs={"w": W, "w_beta": bw, "beta": bw})
    with pytest.raises(TypeError, match="^inputs must be a dict"):
        layer(Q, K, V, inputs=[W, bw])
    with pytest.raises(ValueError, match=r"^batch dimensions do not broadcast: .*inputs\['w'\] \(3, 2\)"):
        layer(Q, K, V, inputs={"w": np.ones((3, 2, 23, 6)), "w_beta": bw})
    bad = W.copy()
    bad[0, 0, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"inputs\['w'\]"):
        layer(Q, K, V, inputs={"w": bad, "w_beta": bw})
    with pytest.raises(ValueError, match="^inputs: this layer takes none; got unknown"):
        tt.recipes.softmax_attention()(Q, K, V, inputs={"w": W})
    with pytest.raises(ValueError, match="method='chunked' is not supported by PaTH .*ExpDot"):
        tt.TestTimeRegression(tt.weights.Gated(alpha=1.0), PaTH(Gaussian()))(
            Q, K, V, inputs={"w": W, "w_beta": bw}, method="chunked"
        )
    with pytest.raises(ValueError, match="^weights: PaTH does not support SlidingWindow"):
        tt.TestTimeRegression(tt.weights.SlidingWindow(4), PaTH())
    with pytest.raises(TypeError, match="^initial_state must be a CacheState"):
        layer(Q, K, V, inputs={"w": W, "w_beta": bw}, initial_state=(K, V))
