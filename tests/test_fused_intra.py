"""The fused intra-chunk terms of scalar decay (``methods/identity/_fused_intra.py``) against the array
form ``identity.chunked._intra_scalar`` (the reference; the layers through it are tested against the
recurrent loop in tests/test_chunked_identity.py and tests/test_fused.py).

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
from conftest import _cupy_available, rel_err

import ttr_stats as tt
from ttr_stats.methods.identity import _fused_intra as fi
from ttr_stats.methods.identity import chunked as ich

TOL_ORDER, TOL64, TOL32 = 1e-12, 1e-10, 1e-5


def operands(rng, lead, C, dk, log_alpha=None, dtype=np.float64):
    """q, k (lead, C, dk), G (lead, C) float64 as the call site forms it (cumulative clamped log-gates),
    b (lead, C)."""
    q = rng.standard_normal(lead + (C, dk)).astype(dtype)
    k = rng.standard_normal(lead + (C, dk)).astype(dtype)
    g = -rng.uniform(0, 0.5, lead + (C,)) if log_alpha is None else np.full(lead + (C,), float(log_alpha))
    G = np.cumsum(np.maximum(g, ich.LOG_FLOOR), axis=-1)
    b = rng.uniform(0.2, 1.0, lead + (C,)).astype(dtype)
    return q, k, G, b


def reference(q, k, G, b):
    import array_api_compat.numpy as xp

    return ich._intra_scalar(xp, q, k, G, b, None)


def _gxx():
    try:
        import cuda_on_host
    except ImportError:
        return False
    return cuda_on_host.available()


def emulated(q, k, G, b):
    import cuda_on_host

    T = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[q.dtype]
    kern = cuda_on_host.compile_kernel(
        fi._SOURCE,
        f"intra_scalar<{T}>",
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
    kern((BN,), (fi.THREADS,), fi.shared_bytes(C, dk, q.dtype.itemsize),
         f(q, (C, dk), q.dtype), f(k, (C, dk), q.dtype), f(G, (C,), np.float64), f(b, (C,), q.dtype), *outs, C, dk)  # fmt: skip
    return tuple(o.reshape(lead + o.shape[1:]) for o in outs)


@pytest.mark.skipif(not _gxx(), reason="g++ not found (tests/cuda_on_host.py needs it)")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "C", "dk"), [((2, 3), 1, 1), ((2,), 7, 7), ((1, 2), 32, 64), ((1,), 64, 100), ((1,), 16, 128)]
)
@pytest.mark.parametrize("log_alpha", [None, 0.0, -7.0, -50.0, -2000.0])
def test_cuda_source_on_the_host_equals_the_reference(rng, dtype, lead, C, dk, log_alpha):
    q, k, G, b = operands(rng, lead, C, dk, log_alpha, dtype)
    got = emulated(q, k, G, b)
    ref = reference(q, k, G, b)
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for name, x, y in zip(("A", "Qg", "Kx"), got, ref, strict=True):
        assert np.all(np.isfinite(x)), name
        assert rel_err(x, y) < tol, (name, rel_err(x, y))
    upper = np.triu(np.ones((C, C), dtype=bool), 1)
    assert np.all(got[0][..., upper] == 0)  # exactly causal


def test_kernel_does_not_apply_off_cupy():
    import array_api_compat.numpy as xp

    assert not fi.applies(xp, np.dtype("float32"), 32, 64)
    assert fi.intra_scalar(xp, *operands(np.random.default_rng(0), (1,), 4, 2)) is None


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_source_compiles_with_nvcc(tmp_path):
    sig = "(const {t}*, const {t}*, const double*, const {t}*, {t}*, {t}*, {t}*, int, int)"
    body = fi._SOURCE + "".join(
        f"\ntemplate __global__ void intra_scalar<{t}>{sig.format(t=t)};" for t in ("float", "double")
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

    q, k, G, b = operands(rng, lead, C, dk, None, dtype)
    got = fi.intra_scalar(cxp, cp.asarray(q), cp.asarray(k), cp.asarray(G), cp.asarray(b))
    assert got is not None
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for name, x, y in zip(("A", "Qg", "Kx"), got, reference(q, k, G, b), strict=True):
        assert x.dtype == dtype and x.shape == y.shape, name
        assert rel_err(cp.asnumpy(x), y) < tol, (name, rel_err(cp.asnumpy(x), y))


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["linear_attention", "mamba2", "retnet", "window"])
def test_layers_with_the_kernel_match_without_it_and_the_loop(monkeypatch, rng, name, dtype):
    import cupy as cp

    make = {
        "linear_attention": tt.recipes.linear_attention,
        "mamba2": tt.recipes.mamba2,
        "retnet": tt.recipes.retnet,
        "window": lambda: tt.TestTimeRegression(
            weights=tt.weights.SlidingWindow(7), optimizer=tt.optimizers.IdentityCovariance()
        ),
    }[name]
    tol = TOL32 if dtype == np.float32 else TOL64
    for T, dk, dv, chunk in [(1, 7, 3, None), (65, 7, 1, 16), (1000, 100, 7, 64), (300, 64, 64, None)]:
        Q, K, V = (rng.standard_normal((2, T, d)).astype(dtype) for d in (dk, dk, dv))
        gates = {"log_alpha": -rng.uniform(0, 0.5, (2, T)).astype(dtype)} if name == "mamba2" else {}
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
