"""Gradients through the chunked and tiled methods by torch autograd (skipped without torch).

The layers training uses (linear attention, Mamba-2 and GLA gates, DeltaNet / Gated DeltaNet, RLS, Mesa,
softmax and local linear attention) are differentiated with respect to Q, K, V and their gates:

* against central differences in float64 (``torch.autograd.gradcheck``, h = 1e-6: truncation ~h^2 and
  rounding ~eps/h ~ 1e-10, so atol 1e-7 / rtol 1e-5 leave a wide margin while catching any wrong term);
* against the recurrent method's gradients (the definition): float64 to 1e-9 relative RMS (measured
  ~1e-15: the same derivative by another summation order), float32 to 2e-6 (both are float32 computations
  of one derivative in two summation orders over T = 13 steps; eps = 6e-8 and the measured gap is at most
  1.8e-7, so 2e-6 is 10x margin and still fails on any wrong term);
* in the regimes where a masked branch could leak NaN into a gradient (``where`` over an inf / 0
  denominator, sqrt at 0): right-padded ``lengths`` (padded inputs get exactly 0), a hard reset
  alpha = 0, decays of exp(-50), zero queries and keys, write strengths of 1e-12.
"""

import numpy as np
import pytest
from _torch_cases import CHUNK, GRAD_CASES, fast_method, grad_inputs
from conftest import rel_err

torch = pytest.importorskip("torch")  # skips before anything imports torch

CASES = sorted(GRAD_CASES)


def _layer(name):
    return GRAD_CASES[name][0]()


def _call(layer, method, names, xs, **extra):
    if method in ("chunked", "tiled"):
        extra.setdefault("chunk_size", CHUNK - 1)  # T = 10 in gradcheck: chunks of 4, 4, 2
    return layer(*xs[:3], method=method, **dict(zip(names[3:], xs[3:], strict=True)), **extra)


@pytest.mark.parametrize("name", CASES)
def test_fast_method_gradients_equal_central_differences(name):
    layer = _layer(name)
    names, arrays = grad_inputs(name)
    xs = tuple(torch.tensor(a, requires_grad=True) for a in arrays)
    # the fast method only: the recurrent one equals it to 1e-9 below, which chains it to the differences
    m = fast_method(layer)
    assert torch.autograd.gradcheck(lambda *x: _call(layer, m, names, x), xs, eps=1e-6, atol=1e-7, rtol=1e-5)


def _grads(layer, method, names, arrays, G, dtype=torch.float64, **extra):
    xs = [torch.tensor(a, dtype=dtype, requires_grad=True) for a in arrays]
    Y = _call(layer, method, names, xs, **extra)
    (Y * torch.as_tensor(G, dtype=dtype)).sum().backward()
    for n, x in zip(names, xs, strict=True):
        assert x.grad is not None, f"{n}: no gradient (a NumPy round trip or a detached branch)"
    return [x.grad.double().numpy() for x in xs]


def _case(name, seed=1):
    names, arrays = grad_inputs(name, seed=seed, B=2, T=13, d=4, d_v=3)
    G = np.random.default_rng(seed + 100).standard_normal(arrays[2].shape)
    return names, arrays, G


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-6)], ids=["f64", "f32"])
def test_fast_method_gradients_equal_the_recurrent_ones(name, dtype, tol):
    layer = _layer(name)
    names, arrays, G = _case(name)
    m = fast_method(layer)
    ref = _grads(layer, "recurrent", names, arrays, G, dtype, chunk_size=None)
    out = _grads(layer, m, names, arrays, G, dtype, chunk_size=CHUNK)
    for n, a, b in zip(names, out, ref, strict=True):
        assert np.all(np.isfinite(a)), (name, n)
        assert rel_err(a, b) < tol, (name, m, n, rel_err(a, b))


def _regime(name, regime, names, arrays):
    """Edit the inputs into ``regime``; None where the case has no such input."""
    arrays = [a.copy() for a in arrays]
    extra = {}
    if regime == "lengths":
        extra["lengths"] = np.array([13, 7])
    elif regime in ("reset", "decay_e-50"):
        if "alpha" not in names:
            return None
        arrays[names.index("alpha")][:, 4] = 0.0 if regime == "reset" else np.exp(-50.0)
    elif regime == "zero_qk":
        arrays[0][:, 3] = 0.0
        arrays[1][:, 5] = 0.0
    elif regime == "beta_1e-12":
        if "beta" not in names:
            return None
        arrays[names.index("beta")][:, 2] = 1e-12
    return arrays, extra


@pytest.mark.parametrize("regime", ["lengths", "reset", "decay_e-50", "zero_qk", "beta_1e-12"])
@pytest.mark.parametrize("name", CASES)
def test_gradients_stay_finite_and_equal_the_recurrent_ones_at_the_edges(name, regime):
    """float64, 1e-9 relative RMS against the loop's gradients for Q, K, V and beta; alpha separately."""
    names, arrays, G = _case(name)
    edited = _regime(name, regime, names, arrays)
    if edited is None:
        pytest.skip(f"{name} takes no gate for {regime}")
    arrays, extra = edited
    layer = _layer(name)
    m = fast_method(layer)
    ref = _grads(layer, "recurrent", names, arrays, G, **extra)
    out = _grads(layer, m, names, arrays, G, chunk_size=CHUNK, **extra)
    for n, a, b in zip(names, out, ref, strict=True):
        assert np.all(np.isfinite(a)) and np.all(np.isfinite(b)), (name, regime, n)
        assert rel_err(a, b) < 1e-9, (name, m, regime, n, rel_err(a, b))
    if regime == "lengths":  # the padding of sequence 1 (positions 7..12) touches nothing
        for n, a in zip(names[:3], out[:3], strict=True):
            assert np.all(a[1, 7:] == 0), (name, n)


def test_scalar_gate_gradient_at_a_tiny_decay():
    """dL/dalpha at alpha = exp(-50) is O(1) (the output is linear in alpha) while dL/dlog_alpha is
    e^-50 times that: a chunked form that differentiates G_i - G_j of cumulative sums cancels O(1) terms
    and returned 0 here; segment and suffix sums keep it to 1e-9 of the loop's."""
    names, arrays, G = _case("mamba2")
    arrays, extra = _regime("mamba2", "decay_e-50", names, arrays)
    layer = _layer("mamba2")
    ref = _grads(layer, "recurrent", names, arrays, G)
    out = _grads(layer, "chunked", names, arrays, G, chunk_size=CHUNK)
    i = names.index("alpha")
    assert rel_err(out[i], ref[i]) < 1e-9


@pytest.mark.parametrize("name", ["linear_attention", "mamba2", "gla"])
def test_gradients_through_the_device_path_of_chunked_identity(name, monkeypatch):
    """CUDA tensors take identity/chunked.py's device path (all chunks at once, grouped state passes):
    its gradients, run on the CPU by declaring the CPU a device, equal the loop's (float64, 1e-9)."""
    from ttr_stats.methods.identity import chunked as ic

    layer = _layer(name)
    names, arrays, G = _case(name)
    ref = _grads(layer, "recurrent", names, arrays, G)
    monkeypatch.setattr(ic, "_on_host", lambda xp, device: False)
    out = _grads(layer, "chunked", names, arrays, G, chunk_size=CHUNK)
    for n, a, b in zip(names, out, ref, strict=True):
        assert rel_err(a, b) < 1e-9, (name, n, rel_err(a, b))
