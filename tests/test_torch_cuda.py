"""torch on a CUDA device: every recipe and method, the facade and the diagnostics keep the device, equal
NumPy, and differentiate like the recurrent method (skipped without torch or without a CUDA device).

The CPU proxy of this suite is tests/test_torch_device.py (every array creation follows the inputs'
device) and tests/test_torch_grad.py (gradients); this file is the real thing, run by
``python -m pytest -q tests/test_torch_cuda.py`` on a GPU machine (about a minute on an H200).
``TTR_STATS_TORCH_DEVICE=cpu`` runs the same file on another torch device (how it was checked without a
GPU).

Tolerances: float64 1e-10 relative RMS against NumPy (cuBLAS / cuSOLVER instead of LAPACK: cond * eps ~
1e-13 on these well-conditioned inputs), states 1e-9 (they accumulate every step); float32 5e-5 against
NumPy float32, as test_backends for CuPy (eps 6e-8 times the conditioning and the T-step accumulation;
TF32 is off, torch's default for matmul). Gradients against the recurrent method on the same device:
float64 1e-9, float32 1e-5 (test_torch_grad measures <= 1.8e-7 on the CPU; GPU reductions sum in other
orders, so 5x the CPU bound).
"""

import importlib.util
import os

import numpy as np
import pytest

if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed", allow_module_level=True)

import torch  # noqa: E402

WANT = os.environ.get("TTR_STATS_TORCH_DEVICE", "cuda")
if WANT == "cuda" and not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from _torch_cases import CHUNK, GRAD_CASES, fast_method, grad_inputs, recipe_case, recipes, variants  # noqa: E402
from conftest import rel_err  # noqa: E402

import ttr_stats as tt  # noqa: E402
from ttr_stats import _array  # noqa: E402
from ttr_stats.methods import registry  # noqa: E402

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda", torch.cuda.current_device()) if WANT == "cuda" else torch.device(WANT)


def _c(a, dtype=None):
    return None if a is None else torch.as_tensor(a, device=DEV, dtype=dtype)


def _check(out, ref, tol, what):
    """``out`` on DEV, of ``ref``'s precision; equal infinities, relative RMS below ``tol`` elsewhere."""
    assert isinstance(out, torch.Tensor) and out.device == DEV, (what, getattr(out, "device", type(out)))
    got = out.detach().cpu().numpy()
    assert got.dtype == ref.dtype, (what, got.dtype, ref.dtype)
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(got[~fin], ref[~fin], err_msg=what)
    assert rel_err(got[fin], ref[fin]) < tol, (what, rel_err(got[fin], ref[fin]))


def _put(kw, dtype=None):
    return {k: _c(v, dtype) if isinstance(v, np.ndarray) else v for k, v in kw.items()}


@pytest.mark.parametrize("info", recipes(), ids=lambda r: r.name)
def test_every_recipe_and_method_on_cuda(info):
    """float64: every supported method and auto, plain / lengths= / chunk_size=, outputs and states."""
    layer, Q, K, V, gates = recipe_case(info)
    for m in layer.supported_methods + ("auto",):
        for label, extra in variants(layer, m):
            kw = {**gates, **extra}
            ref, ref_state = layer(Q, K, V, method=m, return_state=True, **kw)
            out, state = layer(_c(Q), _c(K), _c(V), method=m, return_state=True, **_put(kw))
            what = f"{info.name} method={m} ({layer.method_}) {label}"
            _check(out, ref, 1e-10, what)
            for a, b in zip(state, ref_state, strict=True):
                _check(a, b, 1e-9, what + " state")


@pytest.mark.parametrize("info", recipes(), ids=lambda r: r.name)
def test_every_recipe_and_method_on_cuda_float32(info):
    layer, Q, K, V, gates = recipe_case(info, seed=3)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    for m in layer.supported_methods:
        ref = layer(f32(Q), f32(K), f32(V), method=m, **{k: f32(v) for k, v in gates.items()})
        out = layer(*(_c(f32(a)) for a in (Q, K, V)), method=m, **{k: _c(f32(v)) for k, v in gates.items()})
        _check(out, ref, 5e-5, f"{info.name} method={m} float32")


def _grads(layer, method, names, arrays, G, dtype, **extra):
    xs = [torch.tensor(a, dtype=dtype, device=DEV, requires_grad=True) for a in arrays]
    Y = layer(*xs[:3], method=method, **dict(zip(names[3:], xs[3:], strict=True)), **extra)
    assert Y.device == DEV
    (Y * torch.as_tensor(G, dtype=dtype, device=DEV)).sum().backward()
    for n, x in zip(names, xs, strict=True):
        assert x.grad is not None and x.grad.device == DEV, n
    return [x.grad.double().cpu().numpy() for x in xs]


@pytest.mark.parametrize("name", sorted(GRAD_CASES))
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_fast_method_gradients_on_cuda_equal_the_recurrent_ones(name, dtype, tol):
    layer = GRAD_CASES[name][0]()
    names, arrays = grad_inputs(name, B=2, T=13, d=4, d_v=3)
    G = np.random.default_rng(101).standard_normal(arrays[2].shape)
    m = fast_method(layer)
    ref = _grads(layer, "recurrent", names, arrays, G, dtype)
    out = _grads(layer, m, names, arrays, G, dtype, chunk_size=CHUNK)
    for n, a, b in zip(names, out, ref, strict=True):
        assert np.all(np.isfinite(a)), (name, n)
        assert rel_err(a, b) < tol, (name, m, n, rel_err(a, b))
    # and with right padding: padded inputs get exactly zero gradient
    out = _grads(layer, m, names, arrays, G, dtype, chunk_size=CHUNK, lengths=_c(np.array([13, 7])))
    for n, a in zip(names[:3], out[:3], strict=True):
        assert np.all(np.isfinite(a)) and np.all(a[1, 7:] == 0), (name, n)


def test_gradcheck_on_cuda():
    """Central differences in float64 on the device for one chunked and one tiled layer."""
    for name in ("gated_deltanet", "softmax_attention"):
        layer = GRAD_CASES[name][0]()
        names, arrays = grad_inputs(name)
        xs = tuple(torch.tensor(a, device=DEV, requires_grad=True) for a in arrays)
        m = fast_method(layer)

        def f(*x, layer=layer, m=m, names=names):
            return layer(*x[:3], method=m, chunk_size=4, **dict(zip(names[3:], x[3:], strict=True)))

        assert torch.autograd.gradcheck(f, xs, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.recipes.rls(ridge=1e-2),
        lambda: tt.recipes.deltanet(beta=0.3),
        lambda: tt.recipes.local_linear_attention(ridge=0.1),
        lambda: tt.recipes.kernel_regression(),
    ],
    ids=["rls", "deltanet", "local_linear", "kernel_ridge"],
)
def test_estimator_on_cuda(make):
    rng = np.random.default_rng(7)
    X = rng.standard_normal((30, 4))
    y = X @ rng.standard_normal((4, 2)) + 0.1 * rng.standard_normal((30, 2))
    ref = tt.TestTimeRegressor(make()).fit(X, y)
    est = tt.TestTimeRegressor(make()).fit(_c(X), _c(y))
    _check(est.predict(_c(X[:7])), ref.predict(X[:7]), 1e-10, "predict")
    inc = tt.TestTimeRegressor(make())
    inc.partial_fit(_c(X[:12]), _c(y[:12])).partial_fit(_c(X[12:]), _c(y[12:]))
    _check(inc.predict(_c(X[:7])), ref.predict(X[:7]), 1e-9, "partial_fit")


def test_diagnostics_on_cuda():
    from test_torch_device import _diagnostics

    for name, f in sorted(_diagnostics().items()):
        ref = f(lambda a: a)
        out = f(_c)
        if hasattr(ref, "to_numpy"):
            np.testing.assert_allclose(
                out.to_numpy(dtype=float), ref.to_numpy(dtype=float), rtol=1e-10, atol=1e-14
            )
            continue
        for o, r in zip(
            out if isinstance(ref, tuple) else (out,), ref if isinstance(ref, tuple) else (ref,), strict=True
        ):
            if isinstance(r, np.ndarray):
                assert o.device == DEV, name
                np.testing.assert_allclose(o.cpu().numpy(), r, rtol=1e-10, atol=1e-12, err_msg=name)
            else:
                assert abs(float(o) - float(r)) <= 1e-10 * max(1.0, abs(float(r))), name


def test_auto_and_the_memory_checks_see_the_device():
    xp = _array.namespace(_c(np.ones(2)))
    free = _array.free_device_bytes(xp, DEV)
    layer = tt.recipes.linear_attention()
    Q = _c(np.ones((1, 4, 2)))
    P = layer._prepare(Q, Q, Q, None, None, None, None)
    if DEV.type == "cuda":
        assert isinstance(free, int) and 0 < free <= torch.cuda.get_device_properties(DEV).total_memory
        assert not registry.is_host(P)
    layer(Q, Q, Q)  # auto on a device: a method chosen with the device's free memory
    assert layer.method_ in layer.supported_methods
