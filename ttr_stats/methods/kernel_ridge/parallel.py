"""Kernel ridge on every prefix from one Cholesky factor of the whole Gram matrix.

The factor of a leading block is the leading block of the factor, so with :math:`L` the factor of
:math:`\\kappa(K, K) + \\lambda I`, :math:`Z = L^{-1} V` and :math:`U = L^{-1} C` (C the masked cross-kernel,
column t = :math:`\\kappa(K_{\\le t}, q_t)`), :math:`y_t = U_{:,t}^\\top Z`.
"""

from __future__ import annotations

import array_api_compat

from ... import _array
from .._host_threads import one_blas_thread
from ..registry import register
from ._common import cholesky, empty, final_cache, gram_bytes

#: NumPy calls with this many keys (lo <= T < hi) run with the BLAS libraries at one thread each
#: (``_host_threads.one_blas_thread``: SciPy's triangular solves and NumPy's factor and products spin each
#: other's idle threads). Measured on the 2-core host, rbf, d = 8, best of 20, two threads a library / one:
#: T = 64 0.32 / 0.36 ms, 128 4.00 / 0.67, 250 3.63 / 2.89, 1000 64.6 / 62.1, 2000 278 / 355
ONE_BLAS_THREAD_T = (96, 1024)


def parallel(layer, P):
    """Return ``(Y, CacheState)``."""
    lo, hi = ONE_BLAS_THREAD_T
    with one_blas_thread(array_api_compat.is_numpy_namespace(P.xp) and P.causal and lo <= P.T < hi):
        return _parallel(layer, P)


def _parallel(layer, P):
    xp, reg = P.xp, layer.regressor
    if not P.causal:
        return reg.read(xp, final_cache(xp, P, always=True), P.Q), final_cache(xp, P)
    T = P.T
    if T == 0:
        return empty(xp, P), final_cache(xp, P)
    L = cholesky(xp, reg, reg._gram(xp, P.K))  # a FloatingPointError naming ridge, not a raw LinAlgError
    Z = _array.solve_triangular(xp, L, P.V)  # L^{-1} V: its first t rows are L_t^{-1} V_t
    idx = xp.arange(T, device=P.device)
    causal = idx[:, None] <= idx[None, :]  # [i, t]: pair i is visible to query t
    zero = xp.zeros((), dtype=P.dtype, device=P.device)
    C = xp.where(causal, reg.kern(xp, P.K, P.Q), zero)  # column t = kappa(K, q_t), rows i <= t
    U = xp.where(causal, _array.solve_triangular(xp, L, C), zero)
    return xp.matmul(xp.matrix_transpose(U), Z), final_cache(xp, P)


register(
    "parallel",
    "kernel_ridge",
    run=parallel,
    memory=gram_bytes,
    auto=lambda P, free: True,
    rank=10,
    summary="one Cholesky factor of the whole Gram matrix",
)
