"""``method="chunked"`` of the identity-covariance family against the recurrent loop (the definition).

Covered: every identity recipe (linear attention with and without normalisation and feature maps,
performer, based, RetNet, Mamba-2, GLA) and sliding windows; odd shapes (T in {1, 63, 65, 1000}, d in
{1, 7, 100}, d_v != d_k, chunk sizes 1, 7, 64 and > T, none dividing T); gate extremes (log alpha in
{0, -7, -50} and -inf resets); initial states, chaining and final states; float32; the array backends; the
device code path (grouped chunk states), run here on the host; ``auto``; a hypothesis property test.

Tolerances (``rel_err``, relative RMS):

* float64, 1e-10. The chunked form sums the same products of gates, keys and values in another order:
  (C, C) blocks, then one state per chunk. Each output is a sum of O(T) terms whose weights are <= 1, so
  the two differ by a few eps times the conditioning of that sum (measured: at most ~1e-14, 1e-13 with
  windows, which subtract two runs as the loop's downdates do). 1e-10 leaves three orders of margin and
  still catches any wrong term (a missing decay or a transposed state is an O(1) error).
* float32, 1e-5: the same argument at eps = 6e-8 (measured ~1e-6 at T = 1000).
* Final states and chaining get the float64 tolerance: they are the same sums.
"""

import numpy as np
import pytest
from conftest import rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w
from ttr_stats.methods import registry
from ttr_stats.methods.identity import chunked as ch

TOL64 = 1e-10
TOL32 = 1e-5


def windowed(width=5, normalize=None):
    return tt.TestTimeRegression(weights=w.SlidingWindow(width), optimizer=o.IdentityCovariance(normalize))


#: every identity recipe and a windowed layer: name -> (factory, gate kind: None | "scalar" | "per_dim")
LAYERS = {
    "linear_attention": (tt.recipes.linear_attention, None),
    "la_sum_elu": (lambda: tt.recipes.linear_attention("sum", "elu_plus_one"), None),
    "la_output": (lambda: tt.recipes.linear_attention("output"), None),
    "performer": (lambda: tt.recipes.performer(n_features=16), None),
    "based": (tt.recipes.based, None),
    "retnet": (tt.recipes.retnet, "scalar"),
    "mamba2": (tt.recipes.mamba2, "scalar"),
    "gla": (tt.recipes.gla, "per_dim"),
    "window": (windowed, None),
    "window_sum": (lambda: windowed(7, "sum"), None),
}


def inputs(rng, kind, batch, T, d_k, d_v, log_alpha="random", dtype=np.float64):
    """Q, K, V (Gaussian, keys scaled so that sums stay O(1)) and the call's gates.

    ``log_alpha``: a float (constant), "random" (U(-0.5, 0) a step) or "extreme" (a mixture of 0, -1e-3,
    -7, -50 and -inf resets, passed as ``alpha``); write strengths ``beta`` U(0.5, 1.5) for gated layers.
    """
    Q = rng.standard_normal(batch + (T, d_k))
    K = rng.standard_normal(batch + (T, d_k)) / np.sqrt(max(d_k, 1))
    V = rng.standard_normal(batch + (T, d_v))
    gates = {}
    if kind is not None:
        shape = batch + ((T, d_k) if kind == "per_dim" else (T,))
        if log_alpha == "random":
            la = -rng.uniform(0.0, 0.5, shape)
        elif log_alpha == "extreme":
            la = rng.choice([0.0, -1e-3, -7.0, -50.0, -np.inf], shape, p=[0.4, 0.3, 0.15, 0.1, 0.05])
        else:
            la = np.full(shape, float(log_alpha))
        # a reset (-inf) goes in as alpha = 0 (log_alpha must be finite)
        gate = {"alpha": np.exp(la)} if log_alpha == "extreme" else {"log_alpha": la}
        gates = {k: v.astype(dtype) for k, v in gate.items()}
        gates["beta"] = rng.uniform(0.5, 1.5, batch + (T,)).astype(dtype)
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype), gates


def both(layer, Q, K, V, gates, chunk_size=None, **kw):
    """(chunked, recurrent) outputs and final states."""
    yc, sc = layer(Q, K, V, method="chunked", chunk_size=chunk_size, return_state=True, **gates, **kw)
    yr, sr = layer(Q, K, V, method="recurrent", return_state=True, **gates, **kw)
    return (yc, sc), (yr, sr)


def assert_close(c, r, tol, what):
    (yc, sc), (yr, sr) = c, r
    assert yc.shape == yr.shape and yc.dtype == yr.dtype, what
    assert np.all(np.isfinite(yc)), what
    assert rel_err(yc, yr) < tol, (*what, "Y", rel_err(yc, yr))
    for f, a, b in zip(sr._fields, sc, sr, strict=True):
        assert rel_err(a, b) < tol, (*what, f, rel_err(a, b))


@pytest.fixture(params=[True, False], ids=["host", "device-path"])
def path(request, monkeypatch):
    """The host loops, or the device code (all chunks at once, chunk states 3 per group so that several
    groups chain), run here through NumPy."""
    if not request.param:
        monkeypatch.setattr(ch, "_on_host", lambda xp, device: False)
        monkeypatch.setattr(ch, "DEVICE_GROUP", 3)
    return request.param


# --- 1. every recipe, odd shapes, chunk sizes -------------------------------------------------------------
SHAPES = [  # (T, d_k, d_v, chunk sizes)
    (1, 7, 3, (1, 7, None)),
    (63, 1, 7, (1, 7, 64)),
    (65, 7, 1, (7, 64, 100)),
    (200, 100, 7, (7, 64)),
]


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_recipe_matches_the_loop(name, rng, path):
    factory, kind = LAYERS[name]
    for T, dk, dv, sizes in SHAPES:
        if name == "based":  # Taylor features have 1 + d + d^2 dimensions
            dk = min(dk, 7)
        Q, K, V, gates = inputs(rng, kind, (2,), T, dk, dv)
        for cs in sizes:
            c, r = both(factory(), Q, K, V, gates, cs)
            assert_close(c, r, TOL64, (name, T, dk, dv, cs))


@pytest.mark.parametrize("name", ["mamba2", "gla", "la_sum_elu", "window"])
def test_long_sequence_float64_and_float32(name, rng):
    """T = 1000 (many chunk states), d = 7 and 100 apart; float32 at its own tolerance."""
    factory, kind = LAYERS[name]
    Q, K, V, gates = inputs(rng, kind, (), 1000, 7, 100 if name != "la_sum_elu" else 5)
    c, r = both(factory(), Q, K, V, gates, 37)
    assert_close(c, r, TOL64, (name, "float64"))
    Q, K, V, gates = inputs(rng, kind, (), 1000, 7, 5, dtype=np.float32)
    c, r = both(factory(), Q, K, V, gates, None)
    assert c[0].dtype == np.float32 and c[1].M.dtype == np.float32
    assert_close(c, r, TOL32, (name, "float32"))


# --- 2. gate extremes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("log_alpha", [0.0, -7.0, -50.0, "extreme"])
@pytest.mark.parametrize("name", ["mamba2", "gla"])
def test_gate_extremes(name, log_alpha, rng, path):
    """Constant log-gates up to -50 a step and mixtures with -inf resets: finite, and equal to the loop
    (a naive q e^G, k e^-G factorisation overflows after 15 steps at -50)."""
    factory, kind = LAYERS[name]
    for dtype, tol in ((np.float64, TOL64), (np.float32, TOL32)):
        Q, K, V, gates = inputs(rng, kind, (3,), 65, 7, 3, log_alpha=log_alpha, dtype=dtype)
        for cs in (7, 64):
            c, r = both(factory(), Q, K, V, gates, cs)
            assert_close(c, r, tol, (name, log_alpha, dtype.__name__, cs))


def test_per_dimension_at_minus_50_is_finite_and_exact(rng):
    """log alpha = -50 in every dimension: each output is its own pair's term plus e^-50-small rest, so
    y_t = beta_t (q_t . k_t) v_t to float64 rounding (and the state is the last pair's write)."""
    Q, K, V, gates = inputs(rng, "per_dim", (2,), 100, 7, 3, log_alpha=-50.0)
    y, s = tt.recipes.gla()(Q, K, V, method="chunked", chunk_size=64, return_state=True, **gates)
    b = gates["beta"]
    own = (b * np.sum(Q * K, axis=-1))[..., None] * V
    assert np.all(np.isfinite(y))
    assert rel_err(y, own) < 1e-15 * 100  # e^-50 = 2e-22: only rounding, ~eps
    last = b[:, -1, None, None] * V[:, -1, :, None] * K[:, -1, None, :]
    assert rel_err(s.M, last) < 1e-14


# --- 3. states -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mamba2", "gla", "la_sum_elu", "window", "window_sum"])
def test_initial_state_chaining_and_final_state(name, rng, path):
    """Two pieces chained through the returned state equal one run, at splits inside and between chunks
    (windows: the initial state stays in the memory for good, as in the loop)."""
    factory, kind = LAYERS[name]
    layer = factory()
    T = 70
    Q, K, V, gates = inputs(rng, kind, (2,), T, 5, 3)
    full, end = layer(Q, K, V, method="chunked", chunk_size=16, return_state=True, **gates)
    ref, ref_end = layer(Q, K, V, method="recurrent", return_state=True, **gates)
    assert_close((full, end), (ref, ref_end), TOL64, (name, "one run"))
    for s in (1, 16, 33):
        g1 = {k: v[:, :s] for k, v in gates.items()}
        g2 = {k: v[:, s:] for k, v in gates.items()}
        kw = dict(method="chunked", chunk_size=16, return_state=True)
        y1, st1 = layer(Q[:, :s], K[:, :s], V[:, :s], **kw, **g1)
        y2, st2 = layer(Q[:, s:], K[:, s:], V[:, s:], initial_state=st1, **kw, **g2)
        if "window" in name:
            # a window reaching back before the split needs those pairs, not a state: the state is a
            # memory that stays (as in the loop), so compare the second piece with the loop's
            r2 = layer(Q[:, s:], K[:, s:], V[:, s:], method="recurrent", initial_state=st1, **g2)
            assert rel_err(y2, r2) < TOL64, (name, s)
            continue
        assert rel_err(np.concatenate([y1, y2], axis=-2), full) < TOL64, (name, s)
        for a, b in zip(st2, end, strict=True):
            assert rel_err(a, b) < TOL64, (name, s)


def test_empty_sequence_returns_the_initial_state(rng):
    Q, K, V, gates = inputs(rng, "scalar", (2,), 0, 4, 3)
    s0 = o.LinearAttentionState(rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 4)))
    y, s = tt.recipes.mamba2()(Q, K, V, method="chunked", initial_state=s0, return_state=True, **gates)
    assert y.shape == (2, 0, 3)
    assert np.array_equal(s.M, s0.M) and np.array_equal(s.z, s0.z)


# --- 4. backends ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mamba2", "gla", "la_sum_elu", "window"])
def test_backends_match_numpy(name, rng, backend, path):
    """Same code on every array library: native outputs equal to NumPy's loop (float64 tolerance)."""
    factory, kind = LAYERS[name]
    Q, K, V, gates = inputs(rng, kind, (2,), 45, 5, 3)
    ref, ref_state = factory()(Q, K, V, method="recurrent", return_state=True, **gates)
    put = {k: backend.put(v) for k, v in gates.items()}
    y, s = factory()(backend.put(Q), backend.put(K), backend.put(V), method="chunked", chunk_size=16,
                     return_state=True, **put)  # fmt: skip
    assert backend.is_native(y) and backend.is_native(s.M)
    assert rel_err(backend.get(y), ref) < TOL64
    assert rel_err(backend.get(s.M), ref_state.M) < TOL64
    assert rel_err(backend.get(s.z), ref_state.z) < TOL64


# --- 5. causality at the extremes (the registry-wide test uses mild gates) ------------------------------------
def splice(a, b, s):
    """``a`` before position s (axis 1), ``b`` from s on."""
    return np.concatenate([a[:, :s], b[:, s:]], axis=1)


@pytest.mark.parametrize("name", ["mamba2", "gla", "window"])
def test_bit_exact_causality_with_resets(name, rng, path):
    factory, kind = LAYERS[name]
    Q, K, V, gates = inputs(rng, kind, (2,), 50, 5, 3, log_alpha="extreme")
    y = factory()(Q, K, V, method="chunked", chunk_size=16, **gates)
    for s in (1, 16, 23):
        Q2, K2, V2, g2 = inputs(rng, kind, (2,), 50, 5, 3, log_alpha="extreme")
        gates2 = {k: splice(gates[k], g2[k], s) for k in gates}
        Qs, Ks, Vs = splice(Q, Q2, s), splice(K, K2, s), splice(V, V2, s)
        y2 = factory()(Qs, Ks, Vs, method="chunked", chunk_size=16, **gates2)
        assert np.array_equal(y[:, :s], y2[:, :s]), (name, s)


# --- 6. auto ---------------------------------------------------------------------------------------------------
def test_auto_picks_chunked_from_the_measured_length_on_and_on_a_device(rng, monkeypatch):
    Q, K, V, gates = inputs(rng, "scalar", (2,), ch.HOST_MIN_T, 4, 3)
    layer = tt.recipes.mamba2()
    layer(Q, K, V, **gates)
    assert layer.method_ == "chunked"
    short = {k: v[:, : ch.HOST_MIN_T - 1] for k, v in gates.items()}
    n = ch.HOST_MIN_T - 1
    layer(Q[:, :n], K[:, :n], V[:, :n], **short)
    assert layer.method_ != "chunked"
    m = {x.name: x for x in registry.methods_for("identity")}["chunked"]
    P = layer._prepare(Q, K, V, None, gates["log_alpha"], gates["beta"], None)  # the call's Problem
    # first among the methods that run this (unwindowed) layer; "banded" ranks before it for windows only
    assert m.rank < min(x.rank for x in registry.supported(layer) if x.name != "chunked")
    assert m.auto(P, free=10 * ch.chunked_bytes(P)) and not m.auto(P, free=ch.chunked_bytes(P))
    monkeypatch.setattr(registry, "AUTO_MEMORY_BUDGET", 1000)  # bytes: too little for any chunk
    assert not m.auto(P, free=None)


# --- 7. property test ------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    T=st.integers(1, 90),
    d_k=st.integers(1, 9),
    d_v=st.integers(1, 6),
    chunk=st.one_of(st.none(), st.integers(1, 100)),
    regime=st.sampled_from([0.0, -1e-3, "random", -7.0, -50.0, "extreme"]),
    name=st.sampled_from(list(LAYERS)),
    seed=st.integers(0, 2**16),
)
def test_property_chunked_equals_the_loop(batch, T, d_k, d_v, chunk, regime, name, seed):
    rng = np.random.default_rng(seed)
    factory, kind = LAYERS[name]
    Q, K, V, gates = inputs(rng, kind, batch, T, d_k, d_v, log_alpha=regime)
    c, r = both(factory(), Q, K, V, gates, chunk)
    assert_close(c, r, TOL64, (name, batch, T, d_k, d_v, chunk, regime))
