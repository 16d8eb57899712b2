"""The fused lower-triangular inverse (``methods/least_squares/_fused_trtri.py``).

* host, g++ (``tests/cuda_on_host.py`` runs the CUDA source): the kernel, launched as ``tril_inverse``
  launches it, against ``np.linalg.inv`` and LAPACK's ``trtri`` (the NumPy path of ``_prefix.tril_inverse``)
  on n in {1, 2, 31, 33, 64, 100}, batch shapes () to (2, 3), float32 and float64; the strict upper
  triangle of the input is never read; exact causality (row i of the inverse does not change by a bit
  when rows > i of L change); a zero pivot gives a non-finite result, never a finite wrong one;
* GPU (CuPy; skipped without one): the same against the blocked form and ``trtri``, and chunked RLS with
  the kernel on and off.

Tolerances (relative RMS): float64 1e-12 (forward substitution on factors of condition ~10-100:
measured ~1e-15), float32 1e-5 (~1e-7).
"""

import numpy as np
import pytest
from conftest import _cupy_available, rel_err
from conftest import host_cuda as needs_gxx

from ttr_stats.methods.least_squares import _fused_trtri as ft
from ttr_stats.methods.least_squares import _prefix

TOL64, TOL32 = 1e-12, 1e-5


def factors(rng, batch, n, dtype):
    """Cholesky factors of well-conditioned SPD matrices, with garbage in the strict upper triangle."""
    A = rng.standard_normal(batch + (n, n + 3))
    L = np.linalg.cholesky(A @ np.swapaxes(A, -1, -2) / n + 0.5 * np.eye(n))
    return (L + np.triu(rng.standard_normal(batch + (n, n)), 1) * 7.0).astype(dtype)  # upper: never read


def emulated(L):
    """``_fused_trtri.tril_inverse`` with the kernel run on the host (same grid, threads, shared size)."""
    import cuda_on_host

    n, dt = L.shape[-1], L.dtype
    t = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[dt]
    kern = cuda_on_host.compile_kernel(ft._SOURCE, f"tril_inv<{t}>", [f"const {t}*", f"{t}*", "int"])
    batch = L.shape[:-2]
    m = int(np.prod(batch))
    X = np.full(batch + (n, n), np.nan, dt)  # NaN: an entry no thread writes shows
    kern((m,), (ft.threads(n),), ft.shared_bytes(n, dt.itemsize), np.ascontiguousarray(L), X, n)
    return X


@needs_gxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("batch", "n"), [((), 1), ((2,), 2), ((3,), 31), ((1, 2), 33), ((2,), 64), ((1,), 100)]
)
def test_kernel_on_the_host_matches_inv_and_trtri(rng, dtype, batch, n):
    L = factors(rng, batch, n, dtype)
    got = emulated(L)
    low = np.tril(L).astype(np.float64)
    ref = np.linalg.inv(low)
    tol = TOL32 if dtype == np.float32 else TOL64
    assert got.dtype == dtype and got.shape == L.shape
    assert np.all(np.triu(got, 1) == 0), "the strict upper triangle of the inverse must be exact zeros"
    assert rel_err(got, ref) < tol, rel_err(got, ref)
    assert rel_err(got, _prefix._trtri(L)) < tol  # the NumPy path of tril_inverse


@needs_gxx
def test_kernel_on_the_host_is_exactly_causal(rng):
    """Row i of the inverse reads rows <= i of L only: changing rows >= s leaves rows < s unchanged."""
    L = factors(rng, (2,), 40, np.float32)
    X1 = emulated(L)
    L2 = L.copy()
    s = 17
    L2[:, s:, :] = L2[:, s:, :] * 3.0 + np.tril(np.ones((40, 40), np.float32))[s:]
    X2 = emulated(L2)
    assert np.array_equal(X1[:, :s, :], X2[:, :s, :])
    assert not np.array_equal(X1[:, s:, :], X2[:, s:, :])


@needs_gxx
def test_a_zero_pivot_is_never_a_finite_answer(rng):
    L = factors(rng, (1,), 9, np.float64)
    L[0, 4, 4] = 0.0
    X = emulated(L)
    assert not np.all(np.isfinite(X[0, 4:, :]))  # rows from the zero pivot on
    assert np.all(np.isfinite(X[0, :4, :]))  # the rows before it are unaffected (causality)


def test_does_not_apply_off_cupy():
    import array_api_compat.numpy as xp

    assert not ft.applies(xp, np.dtype("float64"), 8)
    assert ft.tril_inverse(xp, np.eye(3)) is None


def test_threads_cover_every_column():
    for n in (1, 31, 32, 33, 64, 100, 1000, 2000):
        assert ft.threads(n) % 32 == 0 and 32 <= ft.threads(n) <= 1024
        assert ft.threads(n) >= min(n, 1024)  # beyond 1024 columns each thread takes several


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc not found")
def test_source_compiles_with_nvcc(tmp_path):
    import subprocess

    body = ft._SOURCE + "".join(
        f"\ntemplate __global__ void tril_inv<{t}>(const {t}*, {t}*, int);" for t in ("float", "double")
    )
    path = tmp_path / "trtri.cu"
    path.write_text(body)
    res = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(path), "-o", str(tmp_path / "t.o")],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("batch", "n"), [((), 1), ((3,), 33), ((2, 4), 64), ((1,), 90), ((2,), 200)])
def test_gpu_kernel_matches_the_blocked_form_and_trtri(monkeypatch, rng, dtype, batch, n):
    import array_api_compat.cupy as cxp
    import cupy

    L = factors(rng, batch, n, dtype)
    Ld = cupy.asarray(L)
    fused = _prefix.tril_inverse(cxp, Ld)
    monkeypatch.setattr(ft, "ENABLED", False)
    blocked = _prefix.tril_inverse(cxp, Ld)
    tol = TOL32 if dtype == np.float32 else TOL64
    ref = _prefix._trtri(L.astype(np.float64))
    assert rel_err(cupy.asnumpy(fused), ref) < tol and rel_err(cupy.asnumpy(blocked), ref) < tol * 10


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
def test_gpu_chunked_rls_with_and_without_the_kernel(monkeypatch, rng):
    import cupy

    import ttr_stats as tt

    layer = tt.recipes.rls(ridge=1e-2)
    Q, K, V = (rng.standard_normal((2, 3, 300, 16)) for _ in range(3))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    args = [cupy.asarray(x) for x in (Q, K, V)]
    y_on = cupy.asnumpy(layer(*args, method="chunked"))
    monkeypatch.setattr(ft, "ENABLED", False)
    y_off = cupy.asnumpy(layer(*args, method="chunked"))
    ref = layer(Q, K, V, method="recurrent")
    assert rel_err(y_on, ref) < 1e-10 and rel_err(y_off, ref) < 1e-10  # float64 throughout
