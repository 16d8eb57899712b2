"""The fused prefix-solve and chunk-scan kernels (``methods/least_squares/_fused_prefix.py``).

* host, g++ (``tests/cuda_on_host.py`` runs the CUDA source): the solve kernel, launched as
  ``prefix_solve`` launches it, against a plain NumPy reference (the recurrence for R_t and
  ``np.linalg.solve`` of R_t + rho I) on odd key widths (1, 7, 33, 64), chunk lengths (1, 5, 16) that
  the G thread groups do not divide, gates at the extremes (log-decay 0, -7, -50, -inf; write strength 0),
  float32 and float64; exact causality within a chunk; NaN in gives NaN out; the scan kernel against the
  array loop of ``_prefix.chunk_starts`` bit for bit;
* GPU (CuPy; skipped without one): the same kernels on the card, and the Mesa / least-squares / RLS layers'
  chunked methods with the kernels on and off against the recurrent loop.

Tolerances (relative RMS): float64 1e-12 (Gauss-Jordan on systems of condition <= ~1e3 here: measured
~1e-15), float32 1e-4 (cond ~1e3 times float32's 6e-8).
"""

import numpy as np
import pytest
from conftest import _cupy_available, rel_err
from conftest import host_cuda as needs_gxx

from ttr_stats.methods.least_squares import _fused_prefix as fp
from ttr_stats.methods.least_squares import _prefix

TOL64, TOL32 = 1e-12, 1e-4
CT = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def problem(rng, m, C, D, dtype, extremes=False):
    """Chunk-start statistics, keys, queries and gates of m chunks of C tokens."""
    A = rng.standard_normal((m, D, D + 2))
    R0 = A @ np.swapaxes(A, -1, -2) / (D + 2)
    K = rng.standard_normal((m, C, D)) / np.sqrt(D)
    Q = rng.standard_normal((m, C, D))
    g = -rng.uniform(0, 0.3, (m, C))
    b = rng.uniform(0.1, 1.0, (m, C))
    if extremes:
        g.flat[::3] = 0.0
        g.flat[1::5] = -7.0
        g.flat[2::7] = -50.0
        g.flat[4::11] = -np.inf  # a reset
        b.flat[3::4] = 0.0  # a token that writes nothing
    return tuple(x.astype(dtype) for x in (R0, K, Q, g, b))


def reference(R0, K, Q, g, b, rho):
    """x_t = (R_t + rho I)^-1 q_t with R_t = e^{g_t} R_{t-1} + b_t k_t k_t^T, in float64."""
    R0, K, Q, g, b = (np.asarray(x, np.float64) for x in (R0, K, Q, g, b))
    m, C, D = K.shape
    X = np.empty((m, C, D))
    for r in range(m):
        R = R0[r].copy()
        for t in range(C):
            R = np.exp(g[r, t]) * R + b[r, t] * np.outer(K[r, t], K[r, t])
            X[r, t] = np.linalg.solve(R + rho * np.eye(D), Q[r, t])
    return X


def emulated_solve(R0, K, Q, g, b, rho, G=fp.GROUPS):
    import cuda_on_host

    m, C, D = K.shape
    dt = K.dtype
    t = CT[dt]
    kern = cuda_on_host.compile_kernel(
        fp._SOLVE_SOURCE, f"prefix_solve<{t}, {D}, {G}>", [f"const {t}*"] * 5 + [f"{t}*", "int", t]
    )
    X = np.full((m, C, D), np.nan, dt)  # NaN: an entry no thread writes shows
    args = [np.ascontiguousarray(x, dt) for x in (R0, K, Q, g, b)]
    kern((m,), (fp.threads(D, G),), fp.shared_bytes(D, dt.itemsize, G), *args, X, C, float(rho))
    return X


def emulated_scan(X0, a, dX):
    import cuda_on_host

    rows, n = a.shape
    E = int(np.prod(dX.shape[2:]))
    t = CT[dX.dtype]
    kern = cuda_on_host.compile_kernel(
        fp._SCAN_SOURCE, f"chunk_scan<{t}>", [f"const {t}*"] * 3 + [f"{t}*"] * 2 + ["long long", "int", "int"]
    )
    Xs = np.full(dX.shape, np.nan, dX.dtype)
    Xe = np.full(X0.shape, np.nan, dX.dtype)
    blocks = -(-rows * E // fp.SCAN_THREADS)
    kern((blocks,), (fp.SCAN_THREADS,), 0, np.ascontiguousarray(X0), np.ascontiguousarray(a),
         np.ascontiguousarray(dX), Xs, Xe, rows, n, E)  # fmt: skip
    return Xs, Xe


@needs_gxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "C", "D", "G"), [(2, 1, 1, 2), (3, 5, 7, 2), (2, 16, 33, 3), (1, 5, 64, 2),
                                                (2, 6, 64, 1)])  # fmt: skip
def test_solve_on_the_host_matches_the_recurrence_and_a_dense_solve(rng, dtype, m, C, D, G):
    args = problem(rng, m, C, D, dtype, extremes=True)
    rho = 0.5
    got = emulated_solve(*args, rho, G=G)
    ref = reference(*args, rho)
    assert got.dtype == dtype and np.all(np.isfinite(got))
    tol = TOL32 if dtype == np.float32 else TOL64
    assert rel_err(got, ref) < tol, rel_err(got, ref)


@needs_gxx
def test_solve_on_the_host_is_exactly_causal(rng):
    """Token t reads rows <= t of its chunk: changing K, Q, g, b at s or later leaves every x_t, t < s,
    unchanged to the bit (for every s, including s inside a thread group's pair of tokens)."""
    R0, K, Q, g, b = problem(rng, 2, 9, 12, np.float64, extremes=True)
    X1 = emulated_solve(R0, K, Q, g, b, 0.3)
    for s in (1, 4, 5, 8):
        K2, Q2, g2, b2 = K.copy(), Q.copy(), g.copy(), b.copy()
        K2[:, s:] += 1.0
        Q2[:, s:] *= -2.0
        g2[:, s:] = -3.0
        b2[:, s:] = 0.9
        X2 = emulated_solve(R0, K2, Q2, g2, b2, 0.3)
        assert np.array_equal(X1[:, :s], X2[:, :s]), s
        assert not np.array_equal(X1[:, s:], X2[:, s:]), s


@needs_gxx
def test_a_nan_input_is_never_a_finite_answer(rng):
    R0, K, Q, g, b = problem(rng, 1, 6, 8, np.float64)
    K[0, 3, 2] = np.nan
    X = emulated_solve(R0, K, Q, g, b, 1.0)
    assert np.all(np.isfinite(X[0, :3])) and not np.any(np.isfinite(X[0, 3:]))


@needs_gxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scan_on_the_host_gives_the_bits_of_the_array_loop(rng, dtype):
    import array_api_compat.numpy as xp

    rows, n, dk, dv = 3, 7, 5, 4
    R0 = rng.standard_normal((rows, dk, dk)).astype(dtype)
    S0 = rng.standard_normal((rows, dv, dk)).astype(dtype)
    c = rng.uniform(0, 1, (rows, n)).astype(dtype)
    c[0, 2] = 0.0
    dR = rng.standard_normal((rows, n, dk, dk)).astype(dtype)
    dS = rng.standard_normal((rows, n, dv, dk)).astype(dtype)
    Rs, Ss, R_end, S_end = _prefix._array_chunk_starts(xp, R0, S0, c, dR, dS)
    Rk, Re = emulated_scan(R0, c, dR)
    Sk, Se = emulated_scan(S0, c, dS)
    assert np.array_equal(Rk, Rs) and np.array_equal(Re, R_end)
    assert np.array_equal(Sk, Ss) and np.array_equal(Se, S_end)


def test_does_not_apply_off_cupy_or_beyond_its_width():
    import array_api_compat.numpy as xp

    assert not fp.applies(xp, np.dtype("float64"), 8) and not fp.applies(xp, xp.float64, 8)
    assert fp._name(xp.float64) == fp._name(np.dtype("float64")) == "float64"  # a scalar type too
    assert fp.prefix_solve(xp, *problem(np.random.default_rng(0), 1, 2, 3, np.float64), 1.0) is None
    assert fp.chunk_scan(xp, np.zeros((1, 2)), np.ones((1, 3)), np.zeros((1, 3, 2))) is None


def test_threads_and_shared_memory():
    for D in (1, 31, 32, 33, 64):
        for G in (1, 2, 4):
            assert fp.threads(D, G) % 32 == 0 and fp.threads(D, G) >= G * D
    assert fp.shared_bytes(64, 8, 2) <= 48 * 1024  # no opt-in needed at the default


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc not found")
def test_sources_compile_with_nvcc(tmp_path):
    import subprocess

    body = fp._SOLVE_SOURCE + fp._SCAN_SOURCE
    for t in ("float", "double"):
        for D, G in ((7, 2), (64, 2), (64, 1)):
            body += (f"\ntemplate __global__ void prefix_solve<{t}, {D}, {G}>(const {t}*, const {t}*, "
                     f"const {t}*, const {t}*, const {t}*, {t}*, int, {t});")  # fmt: skip
        body += f"\ntemplate __global__ void chunk_scan<{t}>(const {t}*, const {t}*, const {t}*, {t}*, {t}*, long long, int, int);"
    path = tmp_path / "prefix.cu"
    path.write_text(body)
    res = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(path), "-o", str(tmp_path / "p.o")],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("m", "C", "D", "G"), [(3, 5, 7, 2), (4, 16, 64, 2), (2, 33, 64, 1), (2, 9, 40, 4)])
def test_gpu_solve_matches_the_reference(rng, dtype, m, C, D, G):
    import array_api_compat.cupy as cxp
    import cupy

    args = problem(rng, m, C, D, dtype, extremes=True)
    got = fp.prefix_solve(cxp, *(cupy.asarray(x) for x in args), 0.5, G=G)
    ref = reference(*args, 0.5)
    tol = TOL32 if dtype == np.float32 else TOL64
    assert rel_err(cupy.asnumpy(got), ref) < tol


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
def test_gpu_scan_gives_the_bits_of_the_array_loop(rng):
    import array_api_compat.cupy as cxp
    import cupy

    rows, n, dk, dv = 5, 40, 64, 33
    R0, S0 = (
        cupy.asarray(rng.standard_normal((rows, dk, dk))),
        cupy.asarray(rng.standard_normal((rows, dv, dk))),
    )
    c = cupy.asarray(rng.uniform(0, 1, (rows, n)))
    dR = cupy.asarray(rng.standard_normal((rows, n, dk, dk)))
    dS = cupy.asarray(rng.standard_normal((rows, n, dv, dk)))
    ref = _prefix._array_chunk_starts(cxp, R0, S0, c, dR, dS)
    got = _prefix.chunk_starts(cxp, R0, S0, c, dR, dS)  # the kernel
    for a, b in zip(got, ref, strict=True):
        assert cupy.array_equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("recipe", ["mesa", "least_squares", "rls"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_layers_with_and_without_the_kernels(monkeypatch, rng, recipe, dtype):
    import cupy

    import ttr_stats as tt

    layer = {"mesa": lambda: tt.recipes.mesa(ridge=0.5), "least_squares": lambda: tt.recipes.least_squares(ridge=0.5),
             "rls": lambda: tt.recipes.rls(ridge=1e-2)}[recipe]()  # fmt: skip
    B, H, T, d, dv = 2, 3, 203, 24, 17
    Q, K = (rng.standard_normal((B, H, T, d)) for _ in range(2))
    V = rng.standard_normal((B, H, T, dv))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    kw = {}
    if recipe == "mesa":
        la = -rng.uniform(0, 0.2, (B, H, T))
        la[:, :, 50] = -50.0
        kw = dict(log_alpha=la, beta=rng.uniform(0.1, 0.9, (B, H, T)))
    dev = {k: cupy.asarray(v.astype(dtype)) for k, v in kw.items()}
    args = [cupy.asarray(x.astype(dtype)) for x in (Q, K, V)]
    y_on = cupy.asnumpy(layer(*args, method="chunked", **dev))
    monkeypatch.setattr(fp, "ENABLED", False)
    y_off = cupy.asnumpy(layer(*args, method="chunked", **dev))
    ref = layer(Q, K, V, method="recurrent", **kw)
    tol = 1e-10 if dtype == np.float64 else 1e-5  # float64 work in both (outputs cast back)
    assert rel_err(y_on, ref) < tol and rel_err(y_off, ref) < tol
    assert rel_err(y_on, y_off) < tol
