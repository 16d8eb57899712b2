"""Deferred input checks for torch tensors on a device (``_validation.LAZY_TORCH_DEVICES``).

On torch CUDA every immediate check is a host sync (``bool`` of a device tensor): four a linear-attention
call, nine an RLS call, each stalling the host's kernel launches (the Fig. 3 model makes one call a
training step). The checks now wait on the device as they do on CuPy and are read with the output in one
transfer. Here CPU tensors stand for CUDA ones (``"cpu"`` added to the lazy devices): the same code runs,
only the device differs. What is checked: a good call reads no scalar from a tensor and dispatches no
host-reading operation (RLS's factorisations and its conditioning verdict included: the verdicts come
back in the call's one copy); bad inputs raise the very error an immediate check raises, first
bad argument first; outputs and gradients are those of the eager path bit for bit.
"""

from __future__ import annotations

import importlib.util
import traceback

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")

import ttr_stats as tt  # noqa: E402
from ttr_stats import _validation as v  # noqa: E402


@pytest.fixture
def lazy_cpu(monkeypatch):
    """CPU tensors deferred as CUDA ones are, and the identity family's chunked method in its device
    structure (the host loops read a scalar or two to pick a branch; CUDA tensors never take them)."""
    from ttr_stats.methods.identity import chunked as ich

    monkeypatch.setattr(v, "LAZY_TORCH_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)


@pytest.fixture
def scalar_reads(monkeypatch):
    """Counts the scalar reads of tensors (``bool``, ``float``, ``int``, ``item``) made by ttr_stats code."""
    import torch

    reads = []
    for name in ("__bool__", "__float__", "__int__", "item"):
        orig = getattr(torch.Tensor, name)

        def f(self, *a, _orig=orig, _name=name, **k):
            here = [fr for fr in traceback.extract_stack()[:-1] if "/ttr_stats/" in fr.filename]
            if here:
                reads.append((_name, f"{here[-1].filename.split('/')[-1]}:{here[-1].lineno}"))
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, f)
    return reads


def _qkv(seed=0, B=2, T=37, d=5, dtype=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, T, d, generator=g, dtype=dtype or torch.float64) for _ in range(3)]


CASES = {
    "linear_attention": (tt.recipes.linear_attention, {}),
    "mamba2": (tt.recipes.mamba2, {"log_alpha": -0.1}),
    "gated_deltanet": (tt.recipes.gated_deltanet, {"alpha": 0.9, "beta": 0.5}),
    "rls": (lambda: tt.recipes.rls(ridge=1.0), {}),
}


def _gates(kw, B=2, T=37):
    import torch

    return {k: torch.full((B, T), float(x), dtype=torch.float64) for k, x in kw.items()}


@pytest.mark.parametrize(("recipe", "allowed"), [("linear_attention", 0), ("rls", 0)])
def test_a_good_call_reads_no_scalar_but_its_method_verdicts(lazy_cpu, scalar_reads, recipe, allowed):
    make, kw = CASES[recipe]
    Q, K, V = _qkv()
    y = make()(Q, K, V, method="chunked", **_gates(kw))
    assert bool(np.isfinite(y.numpy()).all())
    assert len(scalar_reads) <= allowed, scalar_reads  # the output's verdicts come in one transfer


def test_cpu_tensors_are_still_checked_at_once_by_default(scalar_reads):
    Q, K, V = _qkv()
    tt.recipes.linear_attention()(Q, K, V, method="chunked")
    assert len(scalar_reads) >= 3  # Q, K, V: no sync to save on the host, the plain checks run


@pytest.mark.parametrize("recipe", list(CASES))
@pytest.mark.parametrize("method", ["chunked", "recurrent"])
def test_outputs_and_gradients_equal_the_eager_path(monkeypatch, recipe, method):
    import torch

    make, kw = CASES[recipe]
    results = []
    for lazy in (False, True):
        monkeypatch.setattr(v, "LAZY_TORCH_DEVICES", ("cuda", "cpu") if lazy else ("cuda",))
        Q, K, V = (x.requires_grad_(True) for x in _qkv(seed=1))
        y = make()(Q, K, V, method=method, **_gates(kw))
        (y * torch.arange(y.numel(), dtype=y.dtype).reshape(y.shape).sin()).sum().backward()
        results.append([y.detach(), Q.grad, K.grad, V.grad])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)  # the checks change no arithmetic: bit for bit


BAD_INPUTS = [
    ("Q", (1, 36, 4), float("nan"), "Q contains NaN"),
    ("K", (0, 0, 0), float("inf"), "K contains infinite values"),
    ("V", (1, 17, 2), -float("inf"), "V contains infinite values"),
]


@pytest.mark.parametrize("recipe", list(CASES))
@pytest.mark.parametrize(("name", "where", "value", "message"), BAD_INPUTS)
@pytest.mark.parametrize("method", ["chunked", "recurrent", "parallel"])
def test_a_bad_input_is_named_as_an_immediate_check_names_it(
    monkeypatch, recipe, name, where, value, message, method
):
    make, kw = CASES[recipe]
    layer = make()
    if method not in layer.supported_methods:
        pytest.skip(f"{recipe} has no {method} method")
    errors = []
    for lazy in (False, True):
        monkeypatch.setattr(v, "LAZY_TORCH_DEVICES", ("cuda", "cpu") if lazy else ("cuda",))
        arrays = dict(zip("QKV", _qkv(seed=2), strict=True))
        arrays[name][where] = value
        with pytest.raises(ValueError, match=message) as exc:
            layer(arrays["Q"], arrays["K"], arrays["V"], method=method, **_gates(kw))
        errors.append(str(exc.value))
    assert errors[0] == errors[1]


def test_the_first_bad_input_in_the_checks_order_is_named(lazy_cpu):
    Q, K, V = _qkv()
    K[0, 3, 1] = float("nan")
    V[1, 5, 0] = float("nan")
    with pytest.raises(ValueError, match="K contains NaN"):
        tt.recipes.linear_attention()(Q, K, V, method="chunked")


@pytest.mark.parametrize(
    ("recipe", "gate", "value", "message"),
    [
        ("mamba2", "log_alpha", 0.5, "log_alpha"),
        ("mamba2", "log_alpha", float("nan"), "log_alpha contains NaN"),
        ("gated_deltanet", "alpha", 1.5, "alpha"),
        ("gated_deltanet", "beta", 0.0, "beta must be > 0"),
        ("gated_deltanet", "beta", float("inf"), "beta contains infinite values"),
    ],
)
def test_bad_gates_are_named_as_at_once(monkeypatch, recipe, gate, value, message):
    make, kw = CASES[recipe]
    errors = []
    for lazy in (False, True):
        monkeypatch.setattr(v, "LAZY_TORCH_DEVICES", ("cuda", "cpu") if lazy else ("cuda",))
        gates = _gates(kw)
        gates[gate][1, 20] = value
        Q, K, V = _qkv()
        with pytest.raises(ValueError, match=message) as exc:
            make()(Q, K, V, method="chunked", **gates)
        errors.append(str(exc.value))
    assert errors[0] == errors[1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_range_test_compares_in_float64_as_the_kernel_does(lazy_cpu, dtype):
    import torch
    from test_deferred_checks import simulated_within

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 200).astype(dtype)
    x[:4] = [0.1, np.float32(0.1), 1.0, -1.0]  # on and beside bounds a float32 cannot hold exactly
    for lo, hi in [(0.1, 1.0), (-1.0, 0.1), (np.float32(0.1).item(), 2.0), (-np.inf, 0.0)]:
        for lo_open in (False, True):
            for hi_open in (False, True):
                got = v._launch_within(torch.from_numpy(x), lo, hi, lo_open, hi_open).numpy()
                ref = simulated_within(x.astype(np.float64), lo, hi, lo_open, hi_open)
                assert np.array_equal(got, ref), (lo, hi, lo_open, hi_open)
    bad = x.copy()
    bad[7] = np.nan
    assert list(v._launch_within(torch.from_numpy(bad), -2.0, 2.0, False, False).numpy()) == [1, 1]


def _cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return torch.device("cuda")


@pytest.mark.gpu
@pytest.mark.parametrize(("recipe", "allowed"), [("linear_attention", 1), ("rls", 1)])
def test_on_cuda_a_good_call_reads_at_most_its_verdicts(scalar_reads, recipe, allowed):
    """The real device: no fixture, CUDA tensors are lazy by default. Allowed: the verdicts of the checks,
    RLS's conditioning verdict among them, read with the output (one; it is a copy, not a scalar read, on
    the CPU stand-in)."""
    dev = _cuda()
    make, kw = CASES[recipe]
    Q, K, V = (x.to(dev) for x in _qkv())
    y = make()(Q, K, V, method="chunked", **{k: t.to(dev) for k, t in _gates(kw).items()})
    assert y.device.type == "cuda"
    assert len(scalar_reads) <= allowed, scalar_reads
    Q, K, V = (x.requires_grad_(True) for x in (Q, K, V))

    def step():
        y = make()(Q, K, V, method="chunked", **{k: t.to(dev) for k, t in _gates(kw).items()})
        y.square().sum().backward()

    syncs = _sync_ops(step)  # the factorisations' error checks too, which no scalar read shows
    assert len(syncs) <= allowed - 1, syncs  # the verdicts' one read is a copy to the host, not listed


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", list(CASES))
@pytest.mark.parametrize(("name", "where", "value", "message"), BAD_INPUTS)
def test_on_cuda_a_bad_input_is_named_as_on_the_cpu(recipe, name, where, value, message):
    dev = _cuda()
    make, kw = CASES[recipe]
    errors = []
    for device in ("cpu", dev):
        arrays = dict(zip("QKV", _qkv(seed=2), strict=True))
        arrays[name][where] = value
        arrays = {k: x.to(device) for k, x in arrays.items()}
        with pytest.raises(ValueError, match=message) as exc:
            make()(
                arrays["Q"],
                arrays["K"],
                arrays["V"],
                method="chunked",
                **{k: t.to(device) for k, t in _gates(kw).items()},
            )
        errors.append(str(exc.value))
    assert errors[0] == errors[1]


@pytest.mark.gpu
def test_on_cuda_outputs_and_gradients_equal_the_eager_path(monkeypatch):
    import torch

    dev = _cuda()
    make, kw = CASES["gated_deltanet"]
    results = []
    for lazy in (("cuda",), ()):
        monkeypatch.setattr(v, "LAZY_TORCH_DEVICES", lazy)
        Q, K, V = (x.to(dev).requires_grad_(True) for x in _qkv(seed=1))
        y = make()(Q, K, V, method="chunked", **{k: t.to(dev) for k, t in _gates(kw).items()})
        y.square().sum().backward()
        results.append([y.detach(), Q.grad, K.grad, V.grad])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)  # deferring the checks changes no arithmetic on the device either


#: torch operations that read the device's state back to the host (a sync on CUDA)
SYNC_OPS = ("_local_scalar_dense", "_linalg_check_errors", "nonzero", "masked_select", "is_nonzero")


def _sync_ops(fn):
    """The host-reading torch operations ``fn()`` dispatches (those the scalar-read count cannot see: a
    factorisation's error check, for one)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in SYNC_OPS:
                seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Watch():
        fn()
    return seen


STEP_CASES = {
    **CASES,
    "mesa": (tt.recipes.mesa, {}),  # its Woodbury factors, as RLS's
    "local_linear_attention": (tt.recipes.local_linear_attention, {}),  # its blocks' checks in one read
}


@pytest.mark.parametrize("recipe", list(STEP_CASES))
def test_a_training_step_reads_the_device_only_for_its_verdicts(lazy_cpu, recipe):
    """Forward and backward: RLS's factorisations (the prior's solve, the chunk starts', the chunk
    systems', the final one) check nothing at once (four host syncs a call before), and its conditioning
    verdict is read with the input checks' (one more before): the call's one read is a copy to the host."""
    make, kw = STEP_CASES[recipe]
    Q, K, V = (x.requires_grad_(True) for x in _qkv(T=70))
    method = "tiled" if recipe == "local_linear_attention" else "chunked"

    def step():
        y = make()(Q, K, V, method=method, chunk_size=16, **_gates(kw, T=70))
        y.square().sum().backward()

    assert _sync_ops(step) == []


def _rls_state(P):
    import torch

    from ttr_stats.optimizers import RLSState

    return RLSState(torch.zeros(2, 5, 5, dtype=torch.float64), P)


def test_a_singular_prior_is_named_as_the_immediate_solve_names_it(monkeypatch):
    import torch

    errors = []
    for lazy in (False, True):
        monkeypatch.setattr(v, "LAZY_TORCH_DEVICES", ("cuda", "cpu") if lazy else ("cuda",))
        Q, K, V = _qkv()
        with pytest.raises(ValueError, match="initial_state: its P") as exc:
            tt.recipes.rls(ridge=1.0)(
                Q, K, V, method="chunked", initial_state=_rls_state(torch.zeros(2, 5, 5, dtype=torch.float64))
            )
        errors.append(str(exc.value))
    assert errors[0] == errors[1]


def test_a_prior_that_does_not_factor_is_refused_not_a_finite_answer(lazy_cpu):
    """P_0 = -I: the first chunk's system I - K K^T has no Cholesky factor. Deferred, the factor is NaN
    and the call refuses it with the first chunk's position (the immediate path names the first chunk
    start that fails, t = 5 here: both are errors, never outputs)."""
    import torch

    Q, K, V = _qkv()
    neg = -torch.eye(5, dtype=torch.float64).expand(2, 5, 5).clone()
    with pytest.raises(FloatingPointError, match=r"prefix system R_t near t = 0 is numerically singular"):
        tt.recipes.rls(ridge=1.0)(Q, K, V, method="chunked", chunk_size=8, initial_state=_rls_state(neg))


def test_a_wound_up_rls_is_refused_with_the_immediate_paths_words(monkeypatch):
    """Strong decay and keys in one direction: the precision's other directions decay away (wind-up).
    Deferred, the chunked method's verdict waits for the call's one read; the error is the same."""
    import torch

    g = torch.Generator().manual_seed(3)
    Q, V = (torch.randn(2, 40, 4, generator=g, dtype=torch.float64) for _ in range(2))
    K = torch.zeros(2, 40, 4, dtype=torch.float64)
    K[..., 0] = 1.0
    la = torch.full((2, 40), -3.0, dtype=torch.float64)
    errors = []
    for lazy in (False, True):
        monkeypatch.setattr(v, "LAZY_TORCH_DEVICES", ("cuda", "cpu") if lazy else ("cuda",))
        with pytest.raises(FloatingPointError, match="numerically singular") as exc:
            tt.recipes.rls(ridge=1e-2)(Q, K, V, method="chunked", chunk_size=8, log_alpha=la)
        errors.append(str(exc.value))
    assert errors[0] == errors[1]
