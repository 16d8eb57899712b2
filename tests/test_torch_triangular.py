"""torch's triangular solves: one batched ``torch.linalg.solve_triangular`` (differentiable) where the array
form built the inverse by recursive blocking (~40 launches a call, each differentiated: most of chunked
RLS's training step on a GPU) and ``_array.solve_triangular`` fell back to a general LU solve.

Checked against LAPACK (``scipy.linalg.solve_triangular`` / ``trtri``) in float64 to 1e-12 relative (the
matrices have unit-order diagonals, cond < 1e3: cond * eps ~ 1e-13), for exact causality (row i of the
inverse and of the solution reads rows <= i only: perturbing later rows leaves earlier ones bit for bit)
and for gradients against central differences (float64, 1e-6 relative: step 1e-6, truncation ~h^2 times
the third derivative, rounding ~eps / h = 2e-10). The chunked RLS / least-squares layers on torch are
covered against the recurrent loop by tests/test_torch.py and tests/test_torch_grad.py.
"""

import importlib.util

import numpy as np
import pytest
import scipy.linalg

if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed", allow_module_level=True)

import torch  # noqa: E402
from array_api_compat import torch as txp  # noqa: E402
from conftest import rel_err  # noqa: E402

from ttr_stats import _array  # noqa: E402
from ttr_stats.methods.least_squares import _prefix  # noqa: E402


def _lower(rng, batch, n):
    L = np.tril(rng.standard_normal(batch + (n, n)) * 0.3)
    idx = np.arange(n)
    L[..., idx, idx] = 1.0 + rng.random(batch + (n,))  # diagonal in [1, 2): well conditioned
    return L


@pytest.mark.parametrize("n", [1, 5, 64, 67])
def test_tril_inverse_matches_lapack(n):
    rng = np.random.default_rng(n)
    L = _lower(rng, (3, 2), n)
    got = _prefix.tril_inverse(txp, torch.from_numpy(L)).numpy()
    want = _prefix._trtri(L)
    assert rel_err(got, want) < 1e-12
    assert np.all(np.triu(got, 1) == 0)  # an exactly lower-triangular inverse


def test_solve_triangular_matches_scipy_and_broadcasts():
    rng = np.random.default_rng(1)
    L = _lower(rng, (4, 1), 9)
    b = rng.standard_normal((1, 3, 9, 5))
    got = _array.solve_triangular(txp, torch.from_numpy(L), torch.from_numpy(b)).numpy()
    Lb, bb = np.broadcast_arrays(L, b[..., :1])[0], np.broadcast_to(b, (4, 3, 9, 5))
    want = scipy.linalg.solve_triangular(np.broadcast_to(Lb, (4, 3, 9, 9)), bb, lower=True)
    assert got.shape == (4, 3, 9, 5)
    assert rel_err(got, want) < 1e-12
    up = np.swapaxes(L, -1, -2)
    got_u = _array.solve_triangular(txp, torch.from_numpy(up), torch.from_numpy(b), lower=False).numpy()
    want_u = scipy.linalg.solve_triangular(np.broadcast_to(up, (4, 3, 9, 9)), bb, lower=False)
    assert rel_err(got_u, want_u) < 1e-12


@pytest.mark.parametrize("s", [0, 1, 17, 40, 63])
def test_causal_bit_for_bit(s):
    """Changing rows >= s of L (and of the right-hand side) leaves rows < s of the results unchanged."""
    rng = np.random.default_rng(s)
    L = _lower(rng, (2,), 64)
    b = rng.standard_normal((2, 64, 3))
    L2, b2 = L.copy(), b.copy()
    L2[..., s:, :] = _lower(rng, (2,), 64)[..., s:, :]
    b2[..., s:, :] = rng.standard_normal((2, 64 - s, 3))
    t = torch.from_numpy
    inv1, inv2 = (_prefix.tril_inverse(txp, t(x)).numpy() for x in (L, L2))
    x1 = _array.solve_triangular(txp, t(L), t(b)).numpy()
    x2 = _array.solve_triangular(txp, t(L2), t(b2)).numpy()
    assert np.array_equal(inv1[..., :s, :], inv2[..., :s, :])
    assert np.array_equal(x1[..., :s, :], x2[..., :s, :])


def test_gradient_matches_central_differences():
    rng = np.random.default_rng(3)
    L0 = torch.from_numpy(_lower(rng, (2,), 6))
    w = torch.from_numpy(rng.standard_normal((2, 6, 6)))

    def f(L):
        return (_prefix.tril_inverse(txp, torch.tril(L)) * w).sum()

    L = L0.clone().requires_grad_()
    f(L).backward()
    h = 1e-6
    num = np.zeros((2, 6, 6))
    for idx in np.ndindex(2, 6, 6):
        if idx[2] > idx[1]:
            continue
        e = torch.zeros_like(L0)
        e[idx] = h
        num[idx] = (f(L0 + e) - f(L0 - e)).item() / (2 * h)
    assert rel_err(np.tril(L.grad.numpy()), num) < 1e-6
