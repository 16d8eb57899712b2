"""Array type in = array type out, dtype policy, broadcasting of batch dims, empty sequences, extremes."""

import numpy as np
import pytest
from conftest import make_qkv, rel_err

import ttr_stats as tt


@pytest.mark.parametrize("info", tt.recipes.registry(), ids=lambda r: r.name)
def test_float32_in_float32_out_and_close_to_float64(info, rng):
    layer = info.factory()
    T, n = 16, layer.optimizer.steps_per_token
    Q, _, _ = make_qkv(rng, T=T, d_k=4, unit=True)
    _, K, V = make_qkv(rng, T=T * n, d_k=4, unit=True)
    gates = {}
    if info.name == "mamba2":
        gates = {"alpha": rng.uniform(0.5, 1, (2, T))}
    if info.name == "gla":
        gates = {"alpha": rng.uniform(0.5, 1, (2, T, 4))}
    if info.name in ("rls", "least_squares"):
        layer.set_params(optimizer__ridge=1e-2)  # float32 cannot resolve ridge 0 / 1e-6 below t < d_k
    if info.name in ("local_linear_attention", "local_polynomial_attention"):
        # ridge 0 below t = P + 1 is a singular design whose pseudo-inverse cut depends on the precision
        layer.set_params(regressor__ridge=1e-2)
    for m in layer.supported_methods:
        Y64 = layer(Q, K, V, method=m, **gates)
        Y32 = layer(
            Q.astype(np.float32), K.astype(np.float32), V.astype(np.float32), method=m,
            **{k: v.astype(np.float32) for k, v in gates.items()},
        )
        assert Y32.dtype == np.float32 and Y64.dtype == np.float64
        # float32 eps 6e-8 times cond(R_t + 0.01 I) <= ~1e2 times the T accumulated steps: < 1e-4
        assert rel_err(Y32, Y64) < 1e-4, m


def test_lists_and_integers_become_float64():
    Q = [[1, 0], [0, 1], [1, 1]]
    Y = tt.recipes.linear_attention()(Q, Q, [[1], [2], [3]])
    assert isinstance(Y, np.ndarray) and Y.dtype == np.float64 and Y.shape == (3, 1)
    np.testing.assert_allclose(Y[:, 0], [1, 2, 1 + 2 + 3 * 2])


def test_mixed_precision_promotes(rng):
    Q, K, V = make_qkv(rng, T=5)
    Y = tt.recipes.linear_attention()(Q.astype(np.float32), K, V.astype(np.float32))
    assert Y.dtype == np.float64


def test_batch_dims_broadcast(rng):
    """Shared keys/values across heads, per-head queries and gates: as if each were repeated."""
    Q = rng.standard_normal((3, 4, 10, 5))  # (batch, heads, T, d_k)
    K = rng.standard_normal((3, 1, 10, 5))
    V = rng.standard_normal((10, 2))
    a = rng.uniform(0.5, 1, (4, 10))
    layer = tt.recipes.mamba2()
    Y = layer(Q, K, V, alpha=a)
    assert Y.shape == (3, 4, 10, 2)
    Kb, Vb, ab = np.broadcast_to(K, Q.shape), np.broadcast_to(V, (3, 4, 10, 2)), np.broadcast_to(a, (3, 4, 10))
    for m in layer.supported_methods:
        assert rel_err(layer(Q, Kb, Vb, alpha=ab, method=m), Y) < 1e-14


@pytest.mark.parametrize("info", tt.recipes.registry(), ids=lambda r: r.name)
def test_empty_sequence(info):
    layer = info.factory()
    Q = np.zeros((2, 0, 4))
    gates = {"mamba2": {"alpha": np.zeros((2, 0))}, "gla": {"alpha": np.zeros((2, 0, 4))}}.get(info.name, {})
    for m in layer.supported_methods:
        Y, state = layer(Q, Q, np.zeros((2, 0, 3)), method=m, return_state=True, **gates)
        assert Y.shape == (2, 0, 3)
        if layer.nonparametric:  # an empty cache
            assert [f.shape for f in state] == [(2, 0, 4), (2, 0, 3), (2, 0)]
            continue
        # bind: a gradient optimizer's state is laid out by its regressor's parameters (for the linear
        # family bind returns the optimizer itself)
        ref = layer.optimizer.bind(layer.regressor).init(np, (2,), layer.regressor.output_dim(4), 3, np.float64)
        for a, b in zip(state, ref, strict=True):
            np.testing.assert_array_equal(a, b)


def test_single_step_and_single_dimension(rng):
    for info in tt.recipes.registry():
        layer = info.factory()
        n = layer.optimizer.steps_per_token
        gates = {"mamba2": {"alpha": np.ones(1)}, "gla": {"alpha": np.ones((1, 1))}}.get(info.name, {})
        Y = layer(np.ones((1, 1)), np.ones((n, 1)), np.full((n, 1), 2.0), **gates)
        assert Y.shape == (1, 1) and np.all(np.isfinite(Y))


def test_read_evaluates_memory_without_writing(rng):
    Q, K, V = make_qkv(rng, batch=(), T=20, d_k=4)
    layer = tt.recipes.rls(ridge=1e-3)
    Y, state = layer(Q, K, V, return_state=True)
    np.testing.assert_allclose(layer.read(state, Q[-1]), Y[-1], rtol=1e-12)
    many = layer.read(state, Q)  # 20 queries against one memory
    np.testing.assert_allclose(many, Q @ state.M.T, rtol=1e-12)
