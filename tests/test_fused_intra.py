"""The fused intra-chunk terms (``methods/identity/_fused_intra.py``) against the array forms
``identity.chunked._intra_scalar`` (scalar decay) and ``_intra_per_dim`` (per-dimension decay, the
halving), the references (the layers through them are tested against the recurrent loop in
tests/test_chunked_identity.py and tests/test_fused.py); and the device call site through both kernels
(run on the host) against the loop.

* host, g++ (``tests/cuda_on_host.py`` runs the CUDA source): the kernel equals the reference on odd
  sizes (C in {1, 7, 32, 64}, d in {1, 7, 64, 100, 128}) and at the gate extremes (log alpha 0, -7, -50,
  the clamp -1000); A is exactly 0 above the diagonal;
* nvcc: the source compiles for sm_90;
* GPU (CuPy; skipped without one, before importing cupy): the kernel against the reference, and the
  layers with and without it against each other and the loop.

Tolerances (relative RMS): the kernel forms the same products in the same order except the dot
products' summation order: float64 1e-12 (measured ~1e-16), float32 1e-5 (measured ~1e-7); the layers
1e-10 / 1e-5 as everywhere.
"""

import shutil
import subprocess

import numpy as np
import pytest
from conftest import _cupy_available, host_cuda, rel_err

import ttr_stats as tt
from ttr_stats.methods.identity import _fused_intra as fi
from ttr_stats.methods.identity import chunked as ich

TOL_ORDER, TOL64, TOL32 = 1e-12, 1e-10, 1e-5


def operands(rng, lead, C, dk, log_alpha=None, dtype=np.float64):
    """q, k (lead, C, dk), the clamped float64 log-gates g (lead, C) and their cumulative sums G (what
    the call site hands the kernel; the reference ``_intra_scalar`` takes g itself and forms segment and
    suffix sums, for autograd's sake), b (lead, C)."""
    q = rng.standard_normal(lead + (C, dk)).astype(dtype)
    k = rng.standard_normal(lead + (C, dk)).astype(dtype)
    g = -rng.uniform(0, 0.5, lead + (C,)) if log_alpha is None else np.full(lead + (C,), float(log_alpha))
    g = np.maximum(g, ich.LOG_FLOOR)
    b = rng.uniform(0.2, 1.0, lead + (C,)).astype(dtype)
    return q, k, g, np.cumsum(g, axis=-1), b


def reference(q, k, g, b):
    import array_api_compat.numpy as xp

    return ich._intra_scalar(xp, q, k, g, b, None)


def emulated(q, k, G, b, per_dim=False):
    import cuda_on_host

    T = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[q.dtype]
    kern = cuda_on_host.compile_kernel(
        fi._PER_DIM_SOURCE if per_dim else fi._SOURCE,
        f"{'intra_per_dim' if per_dim else 'intra_scalar'}<{T}>",
        [f"const {T}*", f"const {T}*", "const double*", f"const {T}*"] + [f"{T}*"] * 3 + ["int", "int"],
    )
    lead, (C, dk) = q.shape[:-2], q.shape[-2:]
    BN = int(np.prod(lead))
    f = lambda x, tail, dt: np.ascontiguousarray(x.reshape((BN,) + tail), dtype=dt)  # noqa: E731
    outs = [
        np.full((BN, C, C), np.nan, q.dtype),
        np.full((BN, C, dk), np.nan, q.dtype),
        np.full((BN, C, dk), np.nan, q.dtype),
    ]
    smem = (fi.per_dim_shared_bytes if per_dim else fi.shared_bytes)(C, dk, q.dtype.itemsize)
    gtail = (C, dk) if per_dim else (C,)
    kern((BN,), (fi.THREADS,), smem,
         f(q, (C, dk), q.dtype), f(k, (C, dk), q.dtype), f(G, gtail, np.float64), f(b, (C,), q.dtype), *outs, C, dk)  # fmt: skip
    return tuple(o.reshape(lead + o.shape[1:]) for o in outs)


@host_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "C", "dk"), [((2, 3), 1, 1), ((2,), 7, 7), ((1, 2), 32, 64), ((1,), 64, 100), ((1,), 16, 128)]
)
@pytest.mark.parametrize("log_alpha", [None, 0.0, -7.0, -50.0, -2000.0])
def test_cuda_source_on_the_host_equals_the_reference(rng, dtype, lead, C, dk, log_alpha):
    q, k, g, G, b = operands(rng, lead, C, dk, log_alpha, dtype)
    got = emulated(q, k, G, b)
    ref = reference(q, k, g, b)
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for name, x, y in zip(("A", "Qg", "Kx"), got, ref, strict=True):
        assert np.all(np.isfinite(x)), name
        assert rel_err(x, y) < tol, (name, rel_err(x, y))
    upper = np.triu(np.ones((C, C), dtype=bool), 1)
    assert np.all(got[0][..., upper] == 0)  # exactly causal


def per_dim_operands(rng, lead, C, dk, log_alpha=None, dtype=np.float64):
    """q, k (lead, C, dk), the clamped float64 log-gates g64 (lead, C, dk) as the call site holds them
    (a hard reset, -inf, clamped to LOG_FLOOR), b (lead, C)."""
    q = rng.standard_normal(lead + (C, dk)).astype(dtype)
    k = rng.standard_normal(lead + (C, dk)).astype(dtype)
    g = (
        -rng.uniform(0, 0.5, lead + (C, dk))
        if log_alpha is None
        else np.full(lead + (C, dk), float(log_alpha))
    )
    if C > 2:
        g[..., 2, 0] = -np.inf
    g64 = np.maximum(g, ich.LOG_FLOOR)
    b = rng.uniform(0.2, 1.0, lead + (C,)).astype(dtype)
    return q, k, g64, b


def per_dim_reference(q, k, g64, b):
    """``_intra_per_dim`` (the halving, products of gates) on kb = k b and alpha = exp(g64); C padded to a
    power of two with identity rows as the call site pads it."""
    import array_api_compat.numpy as xp

    C = q.shape[-2]
    Cp = 1 << max(0, (C - 1).bit_length())
    pad = lambda x: np.concatenate([x, np.zeros(x.shape[:-2] + (Cp - C, x.shape[-1]), x.dtype)], axis=-2)  # noqa: E731
    kb = (k * b[..., None]).astype(q.dtype)
    A, Qg, Kx, _ = ich._intra_per_dim(xp, pad(q), pad(kb), np.exp(pad(g64)).astype(q.dtype))
    return A[..., :C, :C], Qg[..., :C, :], Kx[..., :C, :]


@host_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "C", "dk"), [((2, 3), 1, 1), ((2,), 7, 7), ((1, 2), 32, 64), ((1,), 16, 100)]
)
@pytest.mark.parametrize("log_alpha", [None, 0.0, -7.0, -50.0])
def test_per_dim_source_on_the_host_equals_the_halving(rng, dtype, lead, C, dk, log_alpha):
    q, k, g64, b = per_dim_operands(rng, lead, C, dk, log_alpha, dtype)
    got = emulated(q, k, g64, b, per_dim=True)
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    ref = per_dim_reference(f64(q), f64(k), g64, f64(b))
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for name, x, y in zip(("A", "Qg", "Kx"), got, ref, strict=True):
        assert np.all(np.isfinite(x)), name
        assert rel_err(x, y) < tol, (name, rel_err(x, y))
    upper = np.triu(np.ones((C, C), dtype=bool), 1)
    assert np.all(got[0][..., upper] == 0)


@host_cuda
@pytest.mark.parametrize("name", ["gla", "gla_sum", "mamba2"])
@pytest.mark.parametrize(("T", "chunk"), [(1, None), (65, 16), (70, 32)])
def test_device_call_site_through_the_emulated_kernels_matches_the_loop(monkeypatch, rng, name, T, chunk):
    """identity/chunked.py on its device path with both intra kernels run on the host (and the state
    pass's reference loop): the operands it hands over and takes back are the right ones."""
    from ttr_stats.methods import _fused

    def scalar(xp, q, k, G, b):
        return emulated(np.asarray(q), np.asarray(k), np.asarray(G), np.asarray(b))

    def per_dim(xp, q, k, g64, b):
        return emulated(np.asarray(q), np.asarray(k), np.asarray(g64), np.asarray(b), per_dim=True)

    monkeypatch.setattr(fi, "intra_scalar", scalar)
    monkeypatch.setattr(fi, "intra_per_dim", per_dim)
    monkeypatch.setattr(_fused, "state_pass", _fused.state_pass_reference)
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)
    layer = {
        "gla": tt.recipes.gla,
        "gla_sum": lambda: tt.TestTimeRegression(
            weights=tt.weights.Gated(per_dimension=True), optimizer=tt.optimizers.IdentityCovariance("sum")
        ),
        "mamba2": tt.recipes.mamba2,
    }[name]()
    dk, dv = 7, 5
    Q, K, V = (rng.standard_normal((2, T, d)) for d in (dk, dk, dv))
    if name == "gla_sum":
        Q, K = np.abs(Q), np.abs(K)
    la = -rng.uniform(0, 0.5, (2, T, dk) if name.startswith("gla") else (2, T))
    yc = layer(Q, K, V, method="chunked", chunk_size=chunk, log_alpha=la)
    yr = layer(Q, K, V, method="recurrent", log_alpha=la)
    assert rel_err(yc, yr) < TOL64, (name, rel_err(yc, yr))


def test_kernel_does_not_apply_off_cupy():
    import array_api_compat.numpy as xp

    assert not fi.applies(xp, np.dtype("float32"), 32, 64)
    q, k, _, G, b = operands(np.random.default_rng(0), (1,), 4, 2)
    assert fi.intra_scalar(xp, q, k, G, b) is None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_source_compiles_with_nvcc(tmp_path):
    sig = "(const {t}*, const {t}*, const double*, const {t}*, {t}*, {t}*, {t}*, int, int)"
    body = (
        fi._SOURCE
        + fi._PER_DIM_SOURCE
        + "".join(
            f"\ntemplate __global__ void {k}<{t}>{sig.format(t=t)};"
            for k in ("intra_scalar", "intra_per_dim")
            for t in ("float", "double")
        )
    )
    path = tmp_path / "intra.cu"
    path.write_text(body)
    res = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(path), "-o", str(tmp_path / "i.o")],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


gpu = pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "C", "dk"), [((2, 3), 1, 1), ((2,), 7, 7), ((4, 5), 32, 64), ((1,), 64, 100), ((70000,), 2, 3)]
)
def test_kernel_matches_the_reference(rng, dtype, lead, C, dk):
    import array_api_compat.cupy as cxp
    import cupy as cp

    q, k, g, G, b = operands(rng, lead, C, dk, None, dtype)
    got = fi.intra_scalar(cxp, cp.asarray(q), cp.asarray(k), cp.asarray(G), cp.asarray(b))
    assert got is not None
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for name, x, y in zip(("A", "Qg", "Kx"), got, reference(q, k, g, b), strict=True):
        assert x.dtype == dtype and x.shape == y.shape, name
        assert rel_err(cp.asnumpy(x), y) < tol, (name, rel_err(cp.asnumpy(x), y))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "C", "dk"), [((2, 3), 1, 1), ((2,), 7, 7), ((4, 5), 32, 64), ((1,), 16, 100)]
)
def test_per_dim_kernel_matches_the_halving(rng, dtype, lead, C, dk):
    import array_api_compat.cupy as cxp
    import cupy as cp

    q, k, g64, b = per_dim_operands(rng, lead, C, dk, None, dtype)
    got = fi.intra_per_dim(cxp, cp.asarray(q), cp.asarray(k), cp.asarray(g64), cp.asarray(b))
    assert got is not None
    f64 = lambda x: x.astype(np.float64)  # noqa: E731
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for name, x, y in zip(
        ("A", "Qg", "Kx"), got, per_dim_reference(f64(q), f64(k), g64, f64(b)), strict=True
    ):
        assert x.dtype == dtype and x.shape == y.shape, name
        assert rel_err(cp.asnumpy(x), y) < tol, (name, rel_err(cp.asnumpy(x), y))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
# (sliding windows subtract a delayed run, which in float32 at T = 1000 cancels ~1 digit: tests/test_fused.py
# covers them with sum-normalised nonnegative features)
@pytest.mark.parametrize("name", ["linear_attention", "mamba2", "retnet", "gla"])
def test_layers_with_the_kernel_match_without_it_and_the_loop(monkeypatch, rng, name, dtype):
    import cupy as cp

    make = {
        "linear_attention": tt.recipes.linear_attention,
        "mamba2": tt.recipes.mamba2,
        "gla": tt.recipes.gla,
        "retnet": tt.recipes.retnet,
    }[name]
    tol = TOL32 if dtype == np.float32 else TOL64
    for T, dk, dv, chunk in [(1, 7, 3, None), (65, 7, 1, 16), (1000, 100, 7, 64), (300, 64, 64, None)]:
        Q, K, V = (rng.standard_normal((2, T, d)).astype(dtype) for d in (dk, dk, dv))
        shape = {"mamba2": (2, T), "gla": (2, T, dk)}.get(name)
        gates = {"log_alpha": -rng.uniform(0, 0.5, shape).astype(dtype)} if shape else {}
        layer = make()
        args = tuple(cp.asarray(x) for x in (Q, K, V))
        yf = layer(*args, method="chunked", chunk_size=chunk, **{k: cp.asarray(v) for k, v in gates.items()})
        monkeypatch.setattr(fi, "ENABLED", False)
        ya = layer(*args, method="chunked", chunk_size=chunk, **{k: cp.asarray(v) for k, v in gates.items()})
        monkeypatch.setattr(fi, "ENABLED", True)
        yr = layer(*(x.astype(np.float64) for x in (Q, K, V)), method="recurrent",
                   **{k: v.astype(np.float64) for k, v in gates.items()})  # fmt: skip
        assert rel_err(cp.asnumpy(yf), cp.asnumpy(ya)) < tol, (name, T)
        assert rel_err(cp.asnumpy(yf), yr) < tol, (name, T)
