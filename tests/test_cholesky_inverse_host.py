"""The host (NumPy) fast paths of the chunked least-squares layers against their plain references.

:func:`cholesky_inverse` on NumPy works by 2 x 2 blocks around LAPACK leaves of :data:`HOST_LEAF`; its
reference is the unblocked factor and inverse (``np.linalg.cholesky`` then ``trtri``).
``_woodbury_chunk_host`` skips masking, symmetrisation and copies; its reference is the array-API body
``_woodbury_chunk_array`` run on NumPy through array-api-compat.
"""

import array_api_compat.numpy as xpn
import numpy as np
import pytest

from ttr_stats.methods.least_squares import _prefix
from ttr_stats.methods.least_squares._prefix import HOST_LEAF, Singular, cholesky_inverse

SIZES = [1, HOST_LEAF - 1, HOST_LEAF, HOST_LEAF + 1, 64, 100, 129]


def spd(rng, shape, n, cond=1e3, dtype=np.float64):
    """Symmetric positive definite matrices with eigenvalues spread over [1, cond] (log-uniformly)."""
    G = rng.standard_normal((*shape, n, n))
    Qm, _ = np.linalg.qr(G)
    ev = np.exp(rng.uniform(0.0, np.log(cond), size=(*shape, n)))
    A = (Qm * ev[..., None, :]) @ np.swapaxes(Qm, -1, -2)
    A = 0.5 * (A + np.swapaxes(A, -1, -2))
    return A.astype(dtype)


def reference(A):
    return _prefix._trtri(np.linalg.cholesky(A))


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_unblocked(n, dtype):
    rng = np.random.default_rng(n)
    A = spd(rng, (2, 3), n, dtype=dtype)
    got = cholesky_inverse(np, A)
    ref = reference(A)
    assert got.shape == A.shape and got.dtype == A.dtype
    # both are backward stable factorisations of the same A (condition 1e3): their difference is a few
    # condition-number multiples of the unit roundoff, relative to the largest entry
    eps = np.finfo(dtype).eps
    scale = np.max(np.abs(ref))
    assert np.max(np.abs(got - ref)) <= 1e3 * 50 * eps * scale
    assert np.all(np.triu(got, 1) == 0)  # lower triangular exactly
    # and it is an inverse factor: L^-1 A L^-T = I
    I_ = got.astype(np.float64) @ A.astype(np.float64) @ np.swapaxes(got, -1, -2).astype(np.float64)
    tol = 1e-9 if dtype == np.float64 else 1e-2  # cond 1e3 times eps (2e-16 / 1e-7), with margin
    assert np.max(np.abs(I_ - np.eye(n))) <= tol


@pytest.mark.parametrize("n", [HOST_LEAF + 1, 100])
def test_reads_lower_triangle_only(n):
    rng = np.random.default_rng(7)
    A = spd(rng, (4,), n)
    B = A.copy()
    iu = np.triu_indices(n, 1)
    B[..., iu[0], iu[1]] = rng.standard_normal((4, len(iu[0]))) * 1e6  # garbage above the diagonal
    assert np.array_equal(cholesky_inverse(np, A), cholesky_inverse(np, B))


@pytest.mark.parametrize("n", [HOST_LEAF + 7, 129])
def test_row_causal(n):
    """Row i of L^{-1} depends on rows/columns <= i of A only: changing the trailing block leaves the
    leading rows bit-identical (the prefix property the chunked solve rests on)."""
    rng = np.random.default_rng(3)
    A = spd(rng, (3,), n)
    s = n // 2 + 3
    B = A.copy()
    # still positive definite: the Schur complement A22 - 0.81 A21 A11^-1 A12 + 5 I exceeds A's
    B[..., s:, s:] += 5.0 * np.eye(n - s)
    B[..., s:, :s] *= 0.9
    B[..., :s, s:] *= 0.9
    got_a, got_b = cholesky_inverse(np, A), cholesky_inverse(np, B)
    assert np.array_equal(got_a[..., :s, :], got_b[..., :s, :])
    assert not np.array_equal(got_a[..., s:, :], got_b[..., s:, :])


@pytest.mark.parametrize("where", ["first block", "second block"])
def test_singular_is_refused(where):
    n = 70  # splits at 35: a failure in either half must raise, never return a finite factor
    rng = np.random.default_rng(1)
    A = spd(rng, (2,), n)
    i = 3 if where == "first block" else 60
    A[1, i, :] = 0.0
    A[1, :, i] = 0.0
    A[1, i, i] = -1.0  # not positive definite at pivot i
    with pytest.raises(Singular):
        cholesky_inverse(np, A)


def chunk_inputs(rng, batch, C, dk, dv, pad=0):
    K = rng.standard_normal((*batch, C, dk))
    V = rng.standard_normal((*batch, C, dv))
    Q = rng.standard_normal((*batch, C, dk))
    P0 = np.linalg.inv(spd(rng, batch, dk, cond=10.0) + np.eye(dk))
    M0 = rng.standard_normal((*batch, dv, dk))
    b = rng.uniform(0.2, 1.0, size=(*batch, C))
    E = np.exp(-np.cumsum(rng.uniform(0.0, 0.1, size=(*batch, C)), axis=-1))
    if pad:
        b[..., :pad] = 0.0  # the padded head of a first chunk
        b[..., C - pad :] = 0.0  # and the tail of a last one
    return P0, M0, K, V, Q, b, E


@pytest.mark.parametrize("C", [1, 17, 64, 65])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_woodbury_host_matches_array(C, pad, dtype):
    if pad and C < 2 * pad + 1:
        pytest.skip("needs a live pair between the padded ends")
    rng = np.random.default_rng(C + pad)
    args = [a.astype(dtype) for a in chunk_inputs(rng, (2, 3), C, 9, 5, pad)]
    got = _prefix._woodbury_chunk_host(*args)
    ref = _prefix._woodbury_chunk_array(xpn, *args)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    # the same products in another order (no symmetrisation, blocked factor): rounding-level differences,
    # relative to the outputs' scale; float64 1e-12, float32 1e-4 (well conditioned systems, cond < 1e2)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    assert np.max(np.abs(got - ref)) <= tol * max(1.0, np.max(np.abs(ref)))
    assert np.isfinite(got).all()


def test_woodbury_dispatch():
    rng = np.random.default_rng(0)
    args = chunk_inputs(rng, (2,), 40, 6, 4)
    assert np.array_equal(_prefix.woodbury_chunk(np, *args), _prefix._woodbury_chunk_host(*args))
