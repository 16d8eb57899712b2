"""``method="chunked"`` of the delta family (WY / UT-transform chunks) against the recurrent loop.

Tolerances. float64: 1e-10 relative RMS (``rel_err``). Both methods apply the same products of
:math:`\\alpha (I - \\eta k k^\\top)`, norm <= 1 for unit keys and :math:`\\eta\\|k\\|^2 \\le 2`, so rounding
does not grow along the sequence; the chunked form only sums in another order and inverts unit
lower-triangular C x C matrices whose inverses stay O(1) (measured errors: 1e-16 .. 1e-14, even at
:math:`\\beta = 2`); 1e-10 leaves four orders of margin without hiding a wrong term (a missing decay or
a transposed state is an O(1) error). float32: 1e-5, the same argument at eps = 6e-8 (measured 2e-7 at
T = 1000, d = 64). State chaining is exact algebra, so it gets the float64 tolerance too.
"""

import numpy as np
import pytest
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w
from ttr_stats.methods.delta import _wy
from ttr_stats.methods.delta import chunked as ch

TOL64 = 1e-10
TOL32 = 1e-5


def leaky_gated(beta=0.5, l2=0.3):
    """Leaky LMS under decay gates (the leak and the gate both act, in different places)."""
    return tt.TestTimeRegression(weights=w.Gated(), optimizer=o.LeakyLMS(beta=beta, l2=l2))


#: every delta recipe, plus leaky LMS with gates; (factory, takes call-time alpha, writes per token)
LAYERS = {
    "deltanet": (tt.recipes.deltanet, False, 1),
    "gated_deltanet": (tt.recipes.gated_deltanet, True, 1),
    "delta_product2": (lambda: tt.recipes.delta_product(2), False, 2),
    "delta_product3_gated": (
        lambda: tt.TestTimeRegression(weights=w.Gated(), optimizer=o.LMS(steps_per_token=3)),
        True,
        3,
    ),
    "leaky_lms": (tt.recipes.leaky_lms, False, 1),
    "leaky_gated": (leaky_gated, True, 1),
    "longhorn": (tt.recipes.longhorn, False, 1),
    "nlms": (tt.recipes.nlms, False, 1),
}


def inputs(rng, name, batch, T, d_k, d_v, log_alpha=None, beta=None, dtype=np.float64):
    """Unit queries and keys (the delta rules are stable for eta |k|^2 <= 2), Gaussian values, and gates:
    ``log_alpha`` a float (constant) or "random"; ``beta`` a float or "random" in (0, 1.5)."""
    _, gated, n = LAYERS[name]

    def unit(shape):
        x = rng.standard_normal(shape)
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-300)

    Q, K, V = unit(batch + (T, d_k)), unit(batch + (T * n, d_k)), rng.standard_normal(batch + (T * n, d_v))
    gates = {}
    if gated and log_alpha is not None:
        la = -rng.uniform(0, 2, batch + (T,)) if log_alpha == "random" else np.full(batch + (T,), log_alpha)
        gates["alpha"] = np.exp(la)  # alpha = 0 (log -inf) is a hard reset; exp(-50) is representable
    if beta is not None:
        gates["beta"] = rng.uniform(0.1, 1.5, batch + (T * n,)) if beta == "random" else beta
    cast = lambda x: np.asarray(x, dtype=dtype)  # noqa: E731
    return cast(Q), cast(K), cast(V), {k: cast(v) for k, v in gates.items()}


def compare(layer, Q, K, V, gates, chunk_size=None, tol=TOL64, initial_state=None):
    ref, ref_state = layer(
        Q, K, V, method="recurrent", return_state=True, initial_state=initial_state, **gates
    )
    Y, state = layer(
        Q,
        K,
        V,
        method="chunked",
        chunk_size=chunk_size,
        return_state=True,
        initial_state=initial_state,
        **gates,
    )
    assert layer.method_ == "chunked"
    assert Y.shape == ref.shape and Y.dtype == ref.dtype and state.M.shape == ref_state.M.shape
    assert rel_err(Y, ref) < tol, ("outputs", rel_err(Y, ref))
    assert rel_err(state.M, ref_state.M) < tol, ("final state", rel_err(state.M, ref_state.M))
    return Y, state


# --- every recipe, odd shapes, chunk sizes that do not divide T -----------------------------------------
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(
    ("T", "d_k", "d_v", "chunk"),
    [(1, 7, 3, None), (63, 1, 7, 10), (65, 7, 1, 16), (65, 100, 7, 64), (1000, 7, 5, 48)],
)
def test_every_recipe_matches_the_loop(rng, name, T, d_k, d_v, chunk):
    Q, K, V, gates = inputs(rng, name, (2,), T, d_k, d_v, log_alpha="random", beta="random")
    compare(LAYERS[name][0](), Q, K, V, gates, chunk_size=chunk)


@pytest.mark.parametrize("name", ["gated_deltanet", "delta_product3_gated", "leaky_gated"])
@pytest.mark.parametrize("log_alpha", [0.0, -7.0, -50.0, -np.inf])
def test_gate_extremes(rng, name, log_alpha):
    """log alpha = -50 a step underflows every decay across a chunk without overflowing anything (no
    exp(+sum g) is formed); -inf (alpha = 0) is a hard reset at every token."""
    Q, K, V, gates = inputs(rng, name, (3,), 130, 6, 4, log_alpha=log_alpha, beta="random")
    with np.errstate(over="raise", invalid="raise"):
        compare(LAYERS[name][0](), Q, K, V, gates, chunk_size=17)


def test_hard_resets_inside_chunks(rng):
    """Resets at scattered positions (inside chunks and on chunk borders): nothing before a reset is
    seen after it, exactly as in the loop."""
    Q, K, V, gates = inputs(rng, "gated_deltanet", (2,), 200, 5, 3, log_alpha="random", beta="random")
    gates["alpha"][..., ::23] = 0.0
    gates["alpha"][..., 32] = 0.0
    compare(tt.recipes.gated_deltanet(), Q, K, V, gates, chunk_size=32)


@pytest.mark.parametrize("step", [1.999, 2.0])
def test_edge_of_stability(rng, step):
    """beta |k|^2 at 2 for unit keys: each step is a reflection I - 2 k k^T (norm 1), the hardest stable
    regime for the triangular solve (its inverse alternates signs)."""
    Q, K, V, gates = inputs(rng, "gated_deltanet", (2,), 500, 16, 8, log_alpha=0.0, beta=step)
    compare(tt.recipes.gated_deltanet(), Q, K, V, gates, chunk_size=64)
    _, K, V, _ = inputs(rng, "delta_product2", (2,), 500, 16, 8)
    compare(tt.recipes.delta_product(2, beta=step), Q, K, V, {}, chunk_size=20)


def test_nlms_zero_keys(rng):
    """NLMS takes step 0 for a zero key (no division by |k|^2 = 0 anywhere)."""
    Q, K, V, _ = inputs(rng, "nlms", (2,), 40, 4, 3)
    K[:, 5:9] = 0.0
    compare(tt.recipes.nlms(), Q, K, V, {}, chunk_size=8)


def test_float32(rng):
    Q, K, V, gates = inputs(rng, "gated_deltanet", (2,), 1000, 64, 32, log_alpha="random", beta="random")
    Q, K, V = (x.astype(np.float32) for x in (Q, K, V))
    gates = {k: v.astype(np.float32) for k, v in gates.items()}
    Y, state = compare(tt.recipes.gated_deltanet(), Q, K, V, gates, tol=TOL32)
    assert Y.dtype == np.float32 and state.M.dtype == np.float32


def test_empty_sequence_returns_the_initial_state(rng):
    S0 = rng.standard_normal((2, 3, 4))
    layer = tt.recipes.deltanet()
    Y, state = layer(np.zeros((2, 0, 4)), np.zeros((2, 0, 4)), np.zeros((2, 0, 3)), method="chunked",
                     initial_state=S0, return_state=True)  # fmt: skip
    assert Y.shape == (2, 0, 3) and np.array_equal(state.M, S0)


def test_batch_dims(rng):
    """Any batch dims: none, one, three (with broadcast gates)."""
    for batch in [(), (3,), (2, 1, 3)]:
        Q, K, V, gates = inputs(rng, "gated_deltanet", batch, 37, 5, 4, log_alpha="random", beta="random")
        compare(tt.recipes.gated_deltanet(), Q, K, V, gates, chunk_size=8)


# --- state: chaining, initial state --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gated_deltanet", "delta_product3_gated", "leaky_gated", "longhorn"])
def test_initial_state_chaining(rng, name):
    """Two calls (the second from the first's final state) equal one call on the whole sequence."""
    T, s, n = 90, 41, LAYERS[name][2]
    Q, K, V, gates = inputs(rng, name, (2,), T, 6, 5, log_alpha="random", beta="random")
    layer = LAYERS[name][0]()
    whole, final = layer(Q, K, V, method="recurrent", return_state=True, **gates)
    part = lambda x, a, b, m: x[..., a * m : b * m, :] if x.ndim == 3 else x[..., a * m : b * m]  # noqa: E731
    g1 = {k: part(v, 0, s, n if k == "beta" else 1) for k, v in gates.items()}
    g2 = {k: part(v, s, T, n if k == "beta" else 1) for k, v in gates.items()}
    Y1, S1 = layer(Q[:, :s], K[:, : s * n], V[:, : s * n], method="chunked", chunk_size=16,
                   return_state=True, **g1)  # fmt: skip
    Y2, S2 = layer(Q[:, s:], K[:, s * n :], V[:, s * n :], method="chunked", chunk_size=16,
                   return_state=True, initial_state=S1, **g2)  # fmt: skip
    assert rel_err(np.concatenate([Y1, Y2], axis=-2), whole) < TOL64
    assert rel_err(S2.M, final.M) < TOL64


def test_initial_state_broadcast(rng):
    """One (d_v, d_k) initial memory broadcast over the batch."""
    Q, K, V, gates = inputs(rng, "nlms", (3,), 50, 6, 5)
    compare(tt.recipes.nlms(), Q, K, V, gates, chunk_size=7, initial_state=rng.standard_normal((5, 6)))


# --- leaky LMS: the log-space leak, and the loop when the leak is not positive ---------------------------
@pytest.mark.parametrize(("beta", "l2"), [(0.5, 0.3), (1.5, 0.6), (1.0, 1.0), (1.2, 1.5)])
def test_leaky_lms_any_leak(rng, beta, l2):
    """1 - beta l2 in (0, 1): the leak as a log-gate; = 0 or < 0 (the memory is zeroed or flipped each
    step): the chunked method hands the call to the loop, so the answer is the definition's."""
    Q, K, V, _ = inputs(rng, "leaky_lms", (2,), 70, 5, 3)
    compare(tt.recipes.leaky_lms(beta=beta, l2=l2), Q, K, V, {}, chunk_size=9)


# --- the inter-chunk scan (the device path) on the host ---------------------------------------------------
@pytest.mark.parametrize("name", ["gated_deltanet", "delta_product3_gated", "leaky_gated"])
def test_scan_equals_loop(rng, monkeypatch, name):
    Q, K, V, gates = inputs(rng, name, (2,), 301, 6, 4, log_alpha="random", beta="random")
    monkeypatch.setattr(ch, "INTER_CHUNK", "scan")
    compare(LAYERS[name][0](), Q, K, V, gates, chunk_size=11)
    monkeypatch.setattr(ch, "INTER_CHUNK", "loop")
    compare(LAYERS[name][0](), Q, K, V, gates, chunk_size=11)


# --- exact causality (also run registry-wide by tests/test_causality.py) --------------------------------
@pytest.mark.parametrize("mode", ["loop", "scan"])
def test_exact_causality(rng, monkeypatch, mode):
    """Changing everything from token s on leaves every output before s bit-for-bit unchanged."""
    monkeypatch.setattr(ch, "INTER_CHUNK", mode)
    layer, T, s = LAYERS["delta_product3_gated"][0](), 50, 23
    Q, K, V, gates = inputs(rng, "delta_product3_gated", (2,), T, 5, 3, log_alpha="random", beta="random")
    Q2, K2, V2, gates2 = inputs(rng, "delta_product3_gated", (2,), T, 5, 3, log_alpha="random", beta="random")
    Q2[:, :s], K2[:, : 3 * s], V2[:, : 3 * s] = Q[:, :s], K[:, : 3 * s], V[:, : 3 * s]
    gates2["alpha"][:, :s], gates2["beta"][:, : 3 * s] = gates["alpha"][:, :s], gates["beta"][:, : 3 * s]
    Y = layer(Q, K, V, method="chunked", chunk_size=8, **gates)
    Y2 = layer(Q2, K2, V2, method="chunked", chunk_size=8, **gates2)
    assert np.array_equal(Y[:, :s], Y2[:, :s]) and not np.array_equal(Y[:, s:], Y2[:, s:])


def test_unit_lower_inverse(rng):
    """The blocked inverse of I - tril(N, -1) equals the inverse (any size, powers of two or not), reads
    only the strictly lower part, and row i depends on rows <= i only (bit-for-bit)."""
    for C in [1, 2, 3, 4, 5, 8, 9, 16, 33, 48]:
        # entries of size C^-1/2, as eta k_i.k_j of unit keys, so that the inverse stays O(1)
        N = np.tril(rng.standard_normal((3, C, C)), -1) / np.sqrt(C)
        L = np.eye(C) - N
        inv = _wy.unit_lower_inverse(np, N + np.triu(rng.standard_normal((C, C))))  # junk on/above diag
        assert np.abs(inv @ L - np.eye(C)).max() < 1e-12, C  # O(1) entries: an eps-level residual
        assert np.array_equal(inv, np.tril(inv)) and np.all(np.diagonal(inv, axis1=-2, axis2=-1) == 1)
        R = rng.standard_normal((3, C, 4))
        assert np.abs(_wy.unit_lower_solve(np, N, R) - inv @ R).max() < 1e-12, C
        if C > 2:
            M = N.copy()
            M[:, C // 2 :, :] += np.tril(rng.standard_normal((C - C // 2, C)), -1)[None, :, :]
            inv2 = _wy.unit_lower_inverse(np, M)
            assert np.array_equal(inv[:, : C // 2], inv2[:, : C // 2])


# --- hypothesis: shapes, regimes, chunk sizes ------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(list(LAYERS)),
    batch=st.sampled_from([(), (2,), (1, 2)]),
    T=st.integers(0, 70),
    d_k=st.integers(1, 9),
    d_v=st.integers(1, 6),
    chunk=st.one_of(st.none(), st.integers(1, 20)),
    log_alpha=st.sampled_from(["random", 0.0, -7.0, -50.0, -np.inf]),
    beta=st.sampled_from(["random", 1.0, 1.99]),
    mode=st.sampled_from(["loop", "scan"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property(name, batch, T, d_k, d_v, chunk, log_alpha, beta, mode, seed):
    rng = np.random.default_rng(seed)
    Q, K, V, gates = inputs(rng, name, batch, T, d_k, d_v, log_alpha=log_alpha, beta=beta)
    old, ch.INTER_CHUNK = ch.INTER_CHUNK, mode
    try:
        compare(LAYERS[name][0](), Q, K, V, gates, chunk_size=chunk)
    finally:
        ch.INTER_CHUNK = old


# --- array libraries --------------------------------------------------------------------------------------
def test_backends(backend, rng):
    """numpy / array_api_strict / cupy: the same code, native outputs, equal to NumPy's loop."""
    Q, K, V, gates = inputs(rng, "delta_product3_gated", (2,), 45, 5, 3, log_alpha="random", beta="random")
    layer = LAYERS["delta_product3_gated"][0]()
    ref, ref_state = layer(Q, K, V, method="recurrent", return_state=True, **gates)
    put = {k: backend.put(v) for k, v in gates.items()}
    Y, state = layer(backend.put(Q), backend.put(K), backend.put(V), method="chunked", chunk_size=7,
                     return_state=True, **put)  # fmt: skip
    assert backend.is_native(Y) and backend.is_native(state.M)
    assert rel_err(backend.get(Y), ref) < TOL64 and rel_err(backend.get(state.M), ref_state.M) < TOL64
    Q, K, V, gates = inputs(rng, "leaky_gated", (2,), 45, 5, 3, log_alpha="random", beta="random")
    layer = leaky_gated()
    ref = layer(Q, K, V, method="recurrent", **gates)
    put = {k: backend.put(v) for k, v in gates.items()}
    Y = layer(backend.put(Q), backend.put(K), backend.put(V), method="chunked", chunk_size=7, **put)
    assert rel_err(backend.get(Y), ref) < TOL64


# --- fla's semantics -------------------------------------------------------------------------------------
def fla_naive_recurrent_gated_delta_rule(q, k, v, beta, g, scale=None, initial_state=None):
    """NumPy transcription of fla's ``naive_recurrent_gated_delta_rule`` (fla/ops/gated_delta_rule/naive.py).

    fla's conventions: q, k (B, T, H, K), v (B, T, H, V), beta and the log-gate g (B, T, H); the state h
    is (B, H, K, V) (ours is its transpose, (..., V, K)); q is scaled by K^-0.5 unless ``scale`` is given.
    """
    q, k, v, beta, g = (np.swapaxes(x, 1, 2) for x in (q, k, v, beta, g))  # (B, H, T, ...)
    B, H, T, dk = k.shape
    h = np.zeros((B, H, dk, v.shape[-1])) if initial_state is None else initial_state.copy()
    q = q * (dk**-0.5 if scale is None else scale)
    o = np.zeros((B, H, T, v.shape[-1]))
    for i in range(T):
        h = h * np.exp(g[:, :, i])[..., None, None]
        b_v = (v[:, :, i] - (h * k[:, :, i, :, None]).sum(-2)) * beta[:, :, i, None]
        h = h + k[:, :, i, :, None] * b_v[..., None, :]
        o[:, :, i] = np.einsum("bhd,bhdm->bhm", q[:, :, i], h)
    return np.swapaxes(o, 1, 2), h


def test_matches_fla_naive_recurrence(rng):
    """Gated DeltaNet chunked == fla's naive recurrence with the conventions mapped explicitly: our
    (B, H, T, .) layout is fla's (B, T, H, .) swapped, our Q is fla's q times K^-0.5, our log_alpha is
    fla's g, our state M is fla's h transposed (M = h^T)."""
    B, T, H, dk, dv = 2, 77, 3, 8, 5
    q, k = rng.standard_normal((B, T, H, dk)), rng.standard_normal((B, T, H, dk))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)  # fla l2-normalises keys in its layers
    v = rng.standard_normal((B, T, H, dv))
    beta, g = rng.uniform(0, 1, (B, T, H)), -rng.uniform(0, 1, (B, T, H))
    h0 = rng.standard_normal((B, H, dk, dv))
    o, h = fla_naive_recurrent_gated_delta_rule(q, k, v, beta, g, initial_state=h0)
    sw = lambda x: np.swapaxes(x, 1, 2)  # noqa: E731
    Y, state = tt.recipes.gated_deltanet()(
        sw(q) * dk**-0.5, sw(k), sw(v), log_alpha=sw(g), beta=sw(beta),
        initial_state=np.swapaxes(h0, -1, -2), method="chunked", chunk_size=16, return_state=True,
    )  # fmt: skip
    assert rel_err(sw(Y), o) < TOL64
    assert rel_err(np.swapaxes(state.M, -1, -2), h) < TOL64


# --- registry: the auto rule -----------------------------------------------------------------------------
def test_auto_rule(rng):
    """Host: chunked from HOST_MIN_T tokens on (measured crossover), the loop below; device: whenever it
    fits a quarter of the free memory."""
    layer = tt.recipes.gated_deltanet()
    assert "chunked" in layer.supported_methods and layer.supported_methods[0] == "chunked"
    for T, expect in [(ch.HOST_MIN_T - 1, "recurrent"), (ch.HOST_MIN_T, "chunked"), (300, "chunked")]:
        Q, K, V, gates = inputs(rng, "gated_deltanet", (2,), T, 4, 3, log_alpha="random")
        layer(Q, K, V, **gates)
        assert layer.method_ == expect, T
    P = layer._prepare(Q, K, V, None, None, None, None)
    assert ch._auto(P, free=4 * ch.chunked_bytes(P)) and not ch._auto(P, free=ch.chunked_bytes(P))
    assert tt.recipes.delta_product(2).supported_methods[0] == "chunked"
