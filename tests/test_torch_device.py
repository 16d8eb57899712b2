"""Every array the library creates follows the inputs' device: a CPU proxy for torch on CUDA.

Under ``torch.device("meta")`` every tensor created without an explicit ``device=`` (zeros, eye, arange,
asarray of a constant or of a NumPy array, ...) lands on the meta device, and mixing it with the CPU
inputs raises ("Tensor on device meta is not on the expected device cpu"), as does ``.item()`` on it. So a
call on real CPU tensors that completes under this context, with outputs equal to NumPy's and on the CPU,
threaded the device through every array creation on its path. The proxy is stricter than CUDA (a 0-d CPU
tensor mixes with CUDA tensors but not with meta ones), never weaker. tests/test_torch_cuda.py runs the same
matrix on a real GPU.

Tolerances: float64 1e-10 relative RMS (the same algorithm on torch's kernels instead of NumPy's; cond *
eps ~ 1e-13 on these well-conditioned inputs), states 1e-9 (they accumulate every step); float32 5e-5, as in
test_backends (eps 6e-8 times the conditioning and the T-step accumulation, measured ~1e-6).
"""

import numpy as np
import pytest
from _torch_cases import CHUNK, recipe_case, recipes, variants
from conftest import rel_err

import ttr_stats as tt
from ttr_stats import _array
from ttr_stats.methods import registry

torch = pytest.importorskip("torch")  # skips before anything imports torch

META = "meta"


def _t(a):
    """A CPU tensor sharing ``a``'s memory (``from_numpy`` ignores the default device, as_tensor does not)."""
    return None if a is None else torch.from_numpy(np.ascontiguousarray(a))


def _on_cpu(x):
    return isinstance(x, torch.Tensor) and x.device.type == "cpu"


def test_the_proxy_catches_an_array_created_without_device():
    """The guard itself: a constant made without device= beside a CPU input raises under the context."""
    x = torch.ones(3, dtype=torch.float64)
    with torch.device(META), pytest.raises(RuntimeError, match="meta"):
        _ = x + torch.zeros((), dtype=torch.float64)  # the bug this suite exists to catch
    with torch.device(META):
        assert _on_cpu(x + torch.zeros((), dtype=torch.float64, device=x.device))


def _compare(out, ref, tol, what):
    """``out`` a CPU tensor of ``ref``'s dtype; equal infinities (a cache's excluded pairs have log-weight
    -inf) and relative RMS error below ``tol`` on the finite entries."""
    assert _on_cpu(out), (what, type(out), getattr(out, "device", None))
    assert out.dtype == _t(ref).dtype, what
    got = out.numpy()
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(got[~fin], ref[~fin], err_msg=what)
    assert rel_err(got[fin], ref[fin]) < tol, what


@pytest.mark.parametrize("info", recipes(), ids=lambda r: r.name)
def test_every_recipe_and_method_keeps_the_device(info):
    """Every supported method (and auto), plain, with lengths= and with chunk_size=: outputs and states on
    the inputs' device and equal to NumPy's (float64, 1e-10; states 1e-9)."""
    layer, Q, K, V, gates = recipe_case(info)
    for m in layer.supported_methods + ("auto",):
        for label, extra in variants(layer, m):
            kw = {**gates, **extra}
            ref, ref_state = layer(Q, K, V, method=m, return_state=True, **kw)
            ref_method = layer.method_
            args = [_t(a) for a in (Q, K, V)]
            tkw = {k: _t(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
            with torch.device(META):
                out, state = layer(*args, method=m, return_state=True, **tkw)
            what = f"{info.name} method={m} {label}"
            assert layer.method_ == ref_method, what  # auto decides alike on the host
            _compare(out, ref, 1e-10, what)
            for a, b in zip(state, ref_state, strict=True):
                _compare(a, b, 1e-9, what + " state")


@pytest.mark.parametrize("info", recipes(), ids=lambda r: r.name)
def test_float32_keeps_the_device_and_matches_numpy(info):
    layer, Q, K, V, gates = recipe_case(info, seed=3)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    for m in layer.supported_methods:
        ref = layer(f32(Q), f32(K), f32(V), method=m, **{k: f32(v) for k, v in gates.items()})
        with torch.device(META):
            out = layer(
                *(_t(f32(a)) for a in (Q, K, V)), method=m, **{k: _t(f32(v)) for k, v in gates.items()}
            )
        _compare(out, ref, 5e-5, f"{info.name} method={m} float32")


@pytest.mark.parametrize(
    "info", [r for r in recipes() if not r.factory().nonparametric], ids=lambda r: r.name
)
def test_initial_state_memorize_read_keep_the_device(info):
    """Continuing from a state (every method), memorize then read, and a non-causal call."""
    layer, Q, K, V, gates = recipe_case(info, seed=4)
    s = int(layer.optimizer.steps_per_token)
    half = lambda g, lo, hi: {k: v[:, lo:hi] if k == "alpha" else v[:, lo * s : hi * s] for k, v in g.items()}  # noqa: E731
    first, second = half(gates, 0, 7), half(gates, 7, 14)
    _, st = layer(Q[:, :7], K[:, : 7 * s], V[:, : 7 * s], return_state=True, **first)
    with torch.device(META):
        _, tst = layer(*(_t(a) for a in (Q[:, :7], K[:, : 7 * s], V[:, : 7 * s])), return_state=True,
                       **{k: _t(v) for k, v in first.items()})  # fmt: skip
    for m in layer.supported_methods:
        ref = layer(Q[:, 7:], K[:, 7 * s :], V[:, 7 * s :], method=m, initial_state=st, **second)
        with torch.device(META):
            out = layer(*(_t(a) for a in (Q[:, 7:], K[:, 7 * s :], V[:, 7 * s :])), method=m,
                        initial_state=tst, **{k: _t(v) for k, v in second.items()})  # fmt: skip
        _compare(out, ref, 1e-9, f"{info.name} method={m} initial_state")
    mem = layer.memorize(K, V, **gates)
    with torch.device(META):
        tmem = layer.memorize(_t(K), _t(V), **{k: _t(v) for k, v in gates.items()})
        read = layer.read(tmem, _t(Q))
    _compare(read, layer.read(mem, Q), 1e-9, f"{info.name} memorize/read")


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.recipes.softmax_attention(),
        lambda: tt.recipes.local_linear_attention(ridge=0.1),
        lambda: tt.recipes.kernel_regression(),
        lambda: tt.recipes.mesa(ridge=0.5),
    ],
    ids=["softmax", "local_linear", "kernel_ridge", "mesa"],
)
def test_noncausal_and_cache_continuation_keep_the_device(make, rng):
    Q, K = rng.standard_normal((2, 2, 12, 3))
    V = rng.standard_normal((2, 12, 2))
    layer = make()
    ref = layer(Q[:, :5], K, V, causal=False)
    with torch.device(META):
        out = layer(_t(Q[:, :5]), _t(K), _t(V), causal=False)
    _compare(out, ref, 1e-10, "causal=False")
    if layer.nonparametric:  # a cache continued by memorize(initial_state=...)
        s = layer.memorize(K[:, 6:], V[:, 6:], initial_state=layer.memorize(K[:, :6], V[:, :6]))
        with torch.device(META):
            ts = layer.memorize(
                _t(K[:, 6:]), _t(V[:, 6:]), initial_state=layer.memorize(_t(K[:, :6]), _t(V[:, :6]))
            )
            out = layer.read(ts, _t(Q))
        _compare(out, layer.read(s, Q), 1e-10, "cache continuation")


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.recipes.rls(ridge=1e-2),
        lambda: tt.recipes.deltanet(beta=0.3),
        lambda: tt.recipes.mesa(ridge=1.0),
        lambda: tt.recipes.local_linear_attention(ridge=0.1),
        lambda: tt.recipes.kernel_regression(),
    ],
    ids=["rls", "deltanet", "mesa", "local_linear", "kernel_ridge"],
)
def test_estimator_keeps_the_device(make, rng):
    X = rng.standard_normal((30, 4))
    y = X @ rng.standard_normal((4, 2)) + 0.1 * rng.standard_normal((30, 2))
    ref = tt.TestTimeRegressor(make()).fit(X, y)
    inc_ref = tt.TestTimeRegressor(make())
    inc_ref.partial_fit(X[:12], y[:12]).partial_fit(X[12:], y[12:])
    with torch.device(META):
        est = tt.TestTimeRegressor(make()).fit(_t(X), _t(y))
        pred = est.predict(_t(X[:7]))
        score = est.score(_t(X), _t(y))
        inc = tt.TestTimeRegressor(make())
        inc.partial_fit(_t(X[:12]), _t(y[:12])).partial_fit(_t(X[12:]), _t(y[12:]))
        inc_pred = inc.predict(_t(X[:7]))
    _compare(pred, ref.predict(X[:7]), 1e-10, "predict")
    _compare(inc_pred, inc_ref.predict(X[:7]), 1e-10, "partial_fit")
    assert abs(float(score) - ref.score(X, y)) < 1e-10
    if not est.layer_.nonparametric:
        _compare(est.coef_, ref.coef_, 1e-10, "coef_")


def _diagnostics():
    """name -> f(A) where A puts a NumPy array in the library under test; every diagnostic that takes
    arrays."""
    from ttr_stats.diagnostics import capacity as cap
    from ttr_stats.diagnostics import conditioning as cd
    from ttr_stats.diagnostics import memory as mem
    from ttr_stats.diagnostics import smoother as sm

    rng = np.random.default_rng(5)
    T, d = 12, 3
    Q, K = rng.standard_normal((2, T, d))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    V, W = rng.standard_normal((T, 2)), rng.standard_normal((2, d))
    a = np.full((2, T), 0.8)
    lla = lambda: tt.recipes.local_linear_attention(ridge=0.1)  # noqa: E731
    rls = lambda: tt.recipes.rls(ridge=0.1)  # noqa: E731
    gram = lambda g: (g.kappa, g.eigenvalues, g.n_eff, g.gram)  # noqa: E731
    return {
        "smoother_matrix": lambda A: sm.smoother_matrix(lla(), A(Q), A(K)),
        "smoother_matrix_rls": lambda A: sm.smoother_matrix(rls(), A(Q), A(K)),
        "effective_dof": lambda A: sm.effective_dof(sm.smoother_matrix(lla(), A(K), A(K), causal=False)),
        "loo_residuals": lambda A: sm.loo_residuals(lla(), A(K), A(V)),
        "gcv": lambda A: sm.gcv(lla(), A(K), A(V)),
        "cp": lambda A: sm.cp(lla(), A(K), A(V), 0.1),
        "prequential_error": lambda A: sm.prequential_error(rls(), A(K), A(V)),
        "select": lambda A: sm.select(lla(), A(K), A(V), param="regressor__ridge", bounds=(1e-3, 1.0)).value,
        "gram_conditioning": lambda A: gram(cd.gram_conditioning(A(K))),
        "gram_conditioning_decay": lambda A: gram(
            cd.gram_conditioning(A(K), weights=tt.weights.ExponentialDecay(0.9), center=True, t=[3, 12])
        ),
        "qknorm_report": lambda A: cd.qknorm_report(A(Q), A(K), A(V), scale=5.0, target=A(V)).summary(),
        "recall_error": lambda A: cap.recall_error(tt.recipes.linear_attention(), A(K), A(V)),
        "self_weight": lambda A: cap.self_weight(rls(), A(K)),
        "excess_risk": lambda A: cap.excess_risk(rls(), A(K), A(V), A(W), A(Q)),
        "weight_profile": lambda A: mem.weight_profile(tt.recipes.mamba2(), T, alpha=A(a)),
        "effective_window": lambda A: mem.effective_window(tt.recipes.mamba2(), T, alpha=A(a)),
        "weights_matrix": lambda A: tt.weights.Gated().matrix(T, alpha=A(a)),
        "sink_window_matrix": lambda A: tt.weights.SinkWindow(width=4, sinks=2).matrix(T, alpha=A(a)),
    }


def _assert_same(out, ref, what):
    if isinstance(ref, (tuple, list)):
        for o, r in zip(out, ref, strict=True):
            _assert_same(o, r, what)
    elif isinstance(ref, np.ndarray):
        assert _on_cpu(out), (what, type(out))
        # inf where a Gram matrix is rank deficient: equal infinities, 1e-10 relative elsewhere
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-10, atol=1e-12, err_msg=what)
    elif isinstance(ref, float):
        assert abs(float(out) - ref) <= 1e-10 * max(1.0, abs(ref)), what


@pytest.mark.parametrize("name", sorted(_diagnostics()))
def test_diagnostics_keep_the_device(name):
    f = _diagnostics()[name]
    ref = f(lambda a: a)
    with torch.device(META):
        out = f(_t)
    if hasattr(ref, "to_numpy"):  # a pandas table of floats: compared as a whole
        # atol: entries at rounding level (a 1e-16 gap) differ by their last bits between libraries
        np.testing.assert_allclose(
            out.to_numpy(dtype=float), ref.to_numpy(dtype=float), rtol=1e-10, atol=1e-14
        )
        return
    _assert_same(out, ref, name)


def test_torch_cpu_counts_as_host_memory():
    """auto and the memory checks use the host rules for CPU tensors (a CUDA device's free memory in
    test_torch_cuda.py)."""
    xp = _array.namespace(_t(np.ones(2)))
    assert _array.free_device_bytes(xp, _array.device(_t(np.ones(2)))) is None
    layer = tt.recipes.linear_attention()
    P = layer._prepare(*(_t(np.ones((1, 4, 2))) for _ in range(3)), None, None, None, None)
    assert registry.is_host(P)


def test_chunk_constant_is_used():
    """The suites' chunk length splits the T = 14 sequences into several chunks, the last one partial."""
    assert 14 % CHUNK and 14 // CHUNK >= 2


@pytest.mark.parametrize("name", ["linear_attention", "mamba2", "gla", "performer", "based"])
def test_the_device_path_of_chunked_identity_keeps_the_device(name, monkeypatch):
    """CUDA tensors take identity/chunked.py's device path (every chunk at once, grouped state passes):
    run it on the CPU, under the proxy, by declaring the CPU a device."""
    from ttr_stats.methods.identity import chunked as ic

    info = next(r for r in recipes() if r.name == name)
    layer, Q, K, V, gates = recipe_case(info, seed=6)
    monkeypatch.setattr(ic, "_on_host", lambda xp, device: False)
    for label, extra in variants(layer, "chunked"):
        kw = {**gates, **extra}
        ref = layer(Q, K, V, method="chunked", **kw)
        tkw = {k: _t(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        with torch.device(META):
            out = layer(_t(Q), _t(K), _t(V), method="chunked", **tkw)
        _compare(out, ref, 1e-10, f"{name} device path {label}")


@pytest.mark.parametrize("info", recipes(), ids=lambda r: r.name)
def test_auto_with_device_memory_keeps_the_device(info, monkeypatch):
    """What auto picks on a GPU (the device rules: whatever fits a quarter of free memory, e.g. dense
    prefix solves) runs with the device threaded: a pretend 16 GiB device, NumPy and torch alike."""
    monkeypatch.setattr(_array, "free_device_bytes", lambda xp, device=None, **kw: 2**34)
    layer, Q, K, V, gates = recipe_case(info, seed=7)
    ref = layer(Q, K, V, **gates)
    chosen = layer.method_
    with torch.device(META):
        out = layer(_t(Q), _t(K), _t(V), **{k: _t(v) for k, v in gates.items()})
    assert layer.method_ == chosen
    _compare(out, ref, 1e-10, f"{info.name} auto on a device ({chosen})")
