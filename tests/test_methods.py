"""Every method of every layer agrees with the recurrent loop (the definition).

Tolerance: float64 relative RMS 1e-10. The methods compute the same sums in a different order and solve
the same well-conditioned systems (ridge > 0 or t >= d with Gaussian keys, condition number < 1e4), so
rounding differs by about cond * eps ~ 1e-12; 1e-10 leaves a margin without hiding a real difference.
"""

import numpy as np
import pytest
from conftest import make_qkv, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w

TOL = 1e-10


def _gates(name, rng, batch, T, d_k):
    if name == "mamba2":
        return {"alpha": rng.uniform(0.5, 1.0, batch + (T,)), "beta": rng.uniform(0.5, 1.5, batch + (T,))}
    if name == "gla":
        return {"alpha": rng.uniform(0.5, 1.0, batch + (T, d_k))}
    if name == "mesa":
        return {"alpha": rng.uniform(0.8, 1.0, batch + (T,)), "beta": rng.uniform(0.5, 1.5, batch + (T,))}
    return {}


# RLS's default ridge 1e-6 makes R_t + ridge I (t < d) cond ~ 1e7, so its recursion and the direct solve
# differ by ~1e-9; agreement at 1e-10 is asked with a ridge whose conditioning allows it.
_OVERRIDES = {"rls": lambda: tt.recipes.rls(ridge=1e-2)}


@pytest.mark.parametrize("info", tt.recipes.registry(), ids=lambda r: r.name)
def test_all_methods_agree_with_recurrent(info, rng):
    layer = _OVERRIDES.get(info.name, info.factory)()
    batch, T, d_k = (2, 3), 17, 4
    Q, K, V = make_qkv(rng, batch=batch, T=T, d_k=d_k, d_v=3, unit=True)
    if layer.optimizer.steps_per_token > 1:
        n = layer.optimizer.steps_per_token
        _, K, V = make_qkv(rng, batch=batch, T=T * n, d_k=d_k, d_v=3, unit=True)
    gates = _gates(info.name, rng, batch, T, d_k)
    ref = layer(Q, K, V, method="recurrent", **gates)
    assert ref.shape == batch + (T, 3)
    for m in layer.supported_methods:
        Y, state = layer(Q, K, V, method=m, return_state=True, **gates)
        assert rel_err(Y, ref) < TOL, (info.name, m)
        assert layer.method_ == m
        # the final state must also agree: run the recurrent loop's state against it
        _, ref_state = layer(Q, K, V, method="recurrent", return_state=True, **gates)
        for f in state._fields:
            assert rel_err(getattr(state, f), getattr(ref_state, f)) < 1e-9, (info.name, m, f)


@pytest.mark.parametrize(
    "layer",
    [
        tt.TestTimeRegression(w.SlidingWindow(5), optimizer=o.IdentityCovariance()),
        tt.TestTimeRegression(w.SlidingWindow(5), optimizer=o.ClosedForm(ridge=0.1)),
        tt.TestTimeRegression(w.SlidingWindow(1), optimizer=o.ClosedForm(ridge=0.1)),
        tt.TestTimeRegression(w.SlidingWindow(3), optimizer=o.BatchGradientDescent(steps=3, lr=0.1)),
        tt.TestTimeRegression(w.SlidingWindow(50), optimizer=o.IdentityCovariance(normalize="output")),
    ],
    ids=["la", "ridge", "ridge-w1", "gd", "la-wide"],
)
def test_sliding_window_methods_agree(layer, rng):
    Q, K, V = make_qkv(rng, T=20, d_k=4, d_v=2, unit=True)
    beta = rng.uniform(0.5, 2.0, (2, 20))
    ref = layer(Q, K, V, method="recurrent", beta=beta)
    for m in layer.supported_methods:
        assert rel_err(layer(Q, K, V, method=m, beta=beta), ref) < TOL


def test_sliding_window_forgets_old_pairs(rng):
    """Output at t depends on pairs t-w+1..t only: changing an older value changes nothing."""
    layer = tt.TestTimeRegression(w.SlidingWindow(4), optimizer=o.ClosedForm(ridge=0.1))
    Q, K, V = make_qkv(rng, batch=(), T=12, d_k=3, d_v=2)
    V2 = V.copy()
    V2[2] += 10.0
    for m in layer.supported_methods:
        Y1, Y2 = layer(Q, K, V, method=m), layer(Q, K, V2, method=m)
        np.testing.assert_allclose(Y1[6:], Y2[6:], rtol=1e-12, atol=1e-12)  # pair 2 left at t = 6
        assert np.abs(Y1[2:6] - Y2[2:6]).max() > 1e-3


@pytest.mark.parametrize("normalize", [None, "sum", "output"])
def test_linear_attention_normalisations_agree(normalize, rng):
    layer = tt.recipes.linear_attention(normalize=normalize)
    Q, K, V = make_qkv(rng, T=15)
    Q, K = np.abs(Q), np.abs(K)  # positive features keep the sum normaliser away from 0
    ref = layer(Q, K, V, method="recurrent")
    for m in layer.supported_methods:
        assert rel_err(layer(Q, K, V, method=m), ref) < TOL
    raw = tt.recipes.linear_attention()(Q, K, V)
    if normalize == "sum":
        den = np.einsum("...td,...td->...t", Q, np.cumsum(K, axis=-2))
        np.testing.assert_allclose(ref, raw / den[..., None], rtol=1e-12)
    elif normalize == "output":
        np.testing.assert_allclose(np.linalg.norm(ref, axis=-1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("method", ["recurrent", "direct", "parallel"])
def test_initial_state_continues_a_sequence(method, rng):
    """Running [0, T) from state(0..s) equals running the whole sequence: for every method."""
    layer = tt.recipes.retnet(0.8) if method == "parallel" else tt.recipes.mesa(ridge=0.3)
    if method == "parallel":
        gates = {}
    else:
        gates = {"alpha": rng.uniform(0.7, 1.0, (2, 20))}
    Q, K, V = make_qkv(rng, T=20)
    full = layer(Q, K, V, method="recurrent", **gates)
    s = 8
    g1 = {k: v[..., :s] for k, v in gates.items()}
    g2 = {k: v[..., s:] for k, v in gates.items()}
    _, st0 = layer(Q[..., :s, :], K[..., :s, :], V[..., :s, :], method="recurrent", return_state=True, **g1)
    rest = layer(Q[..., s:, :], K[..., s:, :], V[..., s:, :], method=method, initial_state=st0, **g2)
    assert rel_err(rest, full[..., s:, :]) < TOL


@pytest.mark.parametrize("name", ["rls", "least_squares", "batch_gd", "gla", "deltanet"])
def test_initial_state_rls_and_friends(name, rng):
    layer = {"rls": tt.recipes.rls(ridge=0.5, forgetting=0.95)}.get(name) or getattr(tt.recipes, name)()
    Q, K, V = make_qkv(rng, T=16, d_k=3, unit=True)
    gates = {"alpha": rng.uniform(0.6, 1.0, (2, 16, 3))} if name == "gla" else {}
    full = layer(Q, K, V, method="recurrent", **gates)
    s = 5
    _, st0 = layer(
        Q[..., :s, :], K[..., :s, :], V[..., :s, :], return_state=True,
        **{k: v[..., :s, :] for k, v in gates.items()},
    )
    for m in layer.supported_methods:
        rest = layer(
            Q[..., s:, :], K[..., s:, :], V[..., s:, :], method=m, initial_state=st0,
            **{k: v[..., s:, :] for k, v in gates.items()},
        )
        assert rel_err(rest, full[..., s:, :]) < 1e-9, m  # RLS direct: one extra inverse of P0


def test_auto_records_choice_and_prefers_fast_paths(rng):
    """Host rule (docs/benchmarks.md): below the chunked forms' crossovers the parallel form (linear
    attention) or the loop; from them on the chunked form; direct never on the host."""
    from ttr_stats.methods.identity.chunked import HOST_MIN_T

    Q, K, V = make_qkv(rng, T=8)
    assert 8 < HOST_MIN_T
    la = tt.recipes.linear_attention()
    la(Q, K, V)
    assert la.method_ == "parallel"
    Ql, Kl, Vl = make_qkv(rng, batch=(), T=300, d_k=2, d_v=1)
    la(Ql, Kl, Vl)
    assert la.method_ == "chunked"
    ls = tt.recipes.least_squares()
    ls(Q, K, V)
    assert ls.method_ == "recurrent"
    ls(Ql, Kl, Vl)
    assert ls.method_ == "chunked"
    dn = tt.recipes.deltanet()
    dn(Q, K, V)
    assert dn.method_ == "recurrent"
    dn(Ql, Kl, Vl)
    assert dn.method_ == "chunked"
    sm = tt.recipes.softmax_attention()
    sm(Q, K, V)
    assert sm.method_ == "parallel"


def test_auto_on_a_device_prefers_chunked_forms_that_fit(rng, monkeypatch):
    import ttr_stats.layer as L

    Q, K, V = make_qkv(rng, T=300)
    monkeypatch.setattr(L._array, "free_device_bytes", lambda xp, device=None, **kw: 2**34)  # pretend: a 16 GiB device
    la, ls = tt.recipes.linear_attention(), tt.recipes.least_squares()
    la(Q, K, V)
    ls(Q, K, V)
    assert (la.method_, ls.method_) == ("chunked", "chunked")
    monkeypatch.setattr(L._array, "free_device_bytes", lambda xp, device=None, **kw: 10**5)  # a nearly full device
    la(Q, K, V, method="auto")
    assert la.method_ == "recurrent"


def test_auto_falls_back_when_dense_forms_exceed_the_memory_budget(rng, monkeypatch):
    import ttr_stats.layer as L

    monkeypatch.setattr(L.registry, "AUTO_MEMORY_BUDGET", 1000)  # bytes: any T x T form is too big
    Q, K, V = make_qkv(rng, T=30)
    la = tt.recipes.linear_attention()
    la(Q, K, V)
    assert la.method_ == "recurrent"


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    T=st.integers(1, 12),
    d_k=st.integers(1, 5),
    d_v=st.integers(1, 4),
    log_gate=st.sampled_from([0.0, -1e-3, -7.0, -50.0]),
    name=st.sampled_from(["linear_attention", "mamba2", "gla", "mesa", "batch_gd"]),
    seed=st.integers(0, 2**16),
)
def test_property_methods_agree_over_shapes_and_gate_regimes(batch, T, d_k, d_v, log_gate, name, seed):
    """Shapes (no batch dims to two), lengths from 1 and gates from none to very strong decay.

    Strong decay is exact here: these layers either need no inverse or have a fixed ridge (mesa).
    """
    rng = np.random.default_rng(seed)
    layer = getattr(tt.recipes, name)()
    Q, K, V = make_qkv(rng, batch=batch, T=T, d_k=d_k, d_v=d_v)
    shape = batch + ((T, d_k) if name == "gla" else (T,))
    jitter = rng.uniform(0.5, 1.0, shape)
    gates = {"log_alpha": log_gate * jitter}
    if name == "linear_attention":
        gates = {}
    ref = layer(Q, K, V, method="recurrent", **gates)
    assert ref.shape == batch + (T, d_v)
    assert np.all(np.isfinite(ref))
    for m in layer.supported_methods:
        assert rel_err(layer(Q, K, V, method=m, **gates), ref) < TOL


def test_host_budget_follows_available_memory(rng, monkeypatch):
    """``AUTO_MEMORY_BUDGET = None``: a quarter of the host's available memory, at least the floor; a set
    number wins. At B = 1, H = 16, T = 4096, d = 64 the chunked estimates exceed the 256 MiB floor (433 MiB
    linear attention, 672 MiB Gated DeltaNet; measured peaks 69 / 99 MiB), so a fixed budget ran the loop
    there, 5-8x slower (benchmarks/cpu_fast.py)."""
    from ttr_stats.methods import registry

    monkeypatch.setattr(registry, "AUTO_MEMORY_BUDGET", None)
    monkeypatch.setattr(registry, "free_host_bytes", lambda: 8 * 2**30)
    assert registry.host_budget() == 2 * 2**30
    monkeypatch.setattr(registry, "free_host_bytes", lambda: None)
    assert registry.host_budget() == registry.HOST_MIN_BUDGET
    monkeypatch.setattr(registry, "free_host_bytes", lambda: 2**20)
    assert registry.host_budget() == registry.HOST_MIN_BUDGET
    monkeypatch.setattr(registry, "AUTO_MEMORY_BUDGET", 1234)
    assert registry.host_budget() == 1234

    monkeypatch.setattr(registry, "AUTO_MEMORY_BUDGET", None)
    monkeypatch.setattr(registry, "free_host_bytes", lambda: 8 * 2**30)
    Q = rng.standard_normal((16, 4096, 64))
    Q /= np.linalg.norm(Q, axis=-1, keepdims=True)
    for layer, gates in [
        (tt.recipes.linear_attention(), {}),
        (tt.recipes.gated_deltanet(), {"alpha": np.full((16, 4096), 0.99), "beta": np.full((16, 4096), 0.5)}),
    ]:
        layer(Q, Q, Q, **gates)
        assert layer.method_ == "chunked"


def test_loop_skips_unit_decay_exactly(rng):
    """The loop passes a = None to IdentityCovariance when no gate of the call decays: M * 1 is M, so the
    skipped pass changes no bit (the update with a = ones gives the same arrays), and a call with one
    decaying gate takes the general path."""

    opt = o.IdentityCovariance()
    st = opt.init(np, (3,), 4, 2, np.float64)
    st = st._replace(M=rng.standard_normal(st.M.shape), z=rng.standard_normal(st.z.shape))
    k, v, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 2)), rng.uniform(0.5, 1.5, 3)
    fast, full = opt.update(st, k, v, None, b), opt.update(st, k, v, np.ones((3, 4)), b)
    assert all(np.array_equal(x, y) for x, y in zip(fast, full, strict=True))

    seen = []
    orig = opt.update
    opt.update = lambda s, k, v, a, b: seen.append(a is None) or orig(s, k, v, a, b)
    layer = tt.TestTimeRegression(weights=w.Gated(), optimizer=opt)
    Q, K, V = make_qkv(rng, T=6, d_k=4, d_v=2)
    y = layer(Q, K, V, method="recurrent", alpha=np.ones((2, 6)))  # gates of exactly 1: no decay
    assert len(seen) == 6 and all(seen)
    seen.clear()
    alpha = np.ones((2, 6))
    alpha[:, 3] = 0.9  # one decaying step: the general path
    y2 = layer(Q, K, V, method="recurrent", alpha=alpha)
    assert len(seen) == 6 and not any(seen)
    assert np.array_equal(y[..., :3, :], y2[..., :3, :]) and not np.array_equal(y, y2)


def test_free_host_bytes_is_read_at_most_every_ttl(monkeypatch):
    """The reading of /proc/meminfo is reused for HOST_MEMORY_TTL seconds, then read again."""
    from ttr_stats.methods import registry

    reads = []
    monkeypatch.setattr(registry, "_HOST_MEMORY", [-float("inf"), None])
    monkeypatch.setattr(registry, "_read_free_host_bytes", lambda: reads.append(1) or 123 * len(reads))
    clock = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    assert registry.free_host_bytes() == 123 and registry.free_host_bytes() == 123 and len(reads) == 1
    clock[0] += registry.HOST_MEMORY_TTL + 1e-3
    assert registry.free_host_bytes() == 246 and len(reads) == 2
