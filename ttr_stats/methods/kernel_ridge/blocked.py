r"""Kernel ridge on every prefix by a Cholesky factor grown a block of keys at a time.

The reference (``"recurrent"``) appends one row of the factor per key. Here the keys come in blocks of c;
with :math:`L_{11}` the factor of the first s keys' Gram matrix :math:`G_{11} = \kappa(K_{<s}, K_{<s}) +
\lambda I`, the next block's rows are (``docs/derivations/blocked_cholesky.md``)

.. math::

    L = \begin{bmatrix} L_{11} & 0 \\ L_{21} & L_{22} \end{bmatrix},\qquad
    L_{21} = \bigl(L_{11}^{-1} G_{12}\bigr)^\top,\qquad
    L_{22} = \mathrm{chol}\bigl(G_{22} - L_{21} L_{21}^\top\bigr),

one triangular solve with c right-hand sides and one c x c Cholesky instead of c row updates, and
:math:`Z = L^{-1} V` grows the same way, :math:`Z_2 = L_{22}^{-1}(V_2 - L_{21} Z_1)`. The block's queries
are then read from the factor of the keys up to the block's end: :math:`U = L_{\le e}^{-1} C` with C the
cross-kernel masked to the pairs each query sees, rows after a query's position zeroed (forward
substitution never lets a later row into an earlier one, so those rows are exactly the prefix solves),
:math:`y_t = U_{:,t}^\top Z`, by blocks: the rows before the block,
:math:`U_1 = L_{11}^{-1}\kappa(K_{<s}, Q_b)`, in the same solve as :math:`L_{11}^{-1} G_{12}`, then
:math:`U_2 = L_{22}^{-1}(C_2 - L_{21} U_1)`. Work: the factor's :math:`T^3/3` plus the queries'
:math:`\sum_b e_b^2 c \approx T^3/3` (``"parallel"`` solves all T queries against the whole factor:
:math:`T^3`), memory the factor's :math:`T^2` and one block's cross-kernel (no T x T Gram, cross-kernel
or solution arrays).

Causality is exact: a block's factor rows, Z rows and solutions for a query t depend only on pairs up to
t (a Cholesky row depends only on the leading rows of its matrix, a forward-substitution row only on the
rows before it), and the later pairs of t's block meet t only through entries zeroed before the read.
"""

from __future__ import annotations

import array_api_compat

from ... import _array
from .._host_threads import one_blas_thread
from ..registry import register
from ._common import cholesky, empty, final_cache

#: keys per block (measured on the 2-core CPU, T = 1000 / 2000, d = 8: c = 64-256 within 15% of each
#: other, c = 16 1.6x slower; ``benchmarks/cpu_kernel_ridge.py``)
BLOCK = 128


def blockedcholesky(xp, reg, P, c=BLOCK):
    """Outputs (..., T, d_v) of causal kernel ridge, the factor grown by blocks of ``c`` keys."""
    T, lam = P.T, float(reg.ridge)
    L = xp.zeros(P.batch_shape + (T, T), dtype=P.dtype, device=P.device)
    Z = xp.zeros(P.batch_shape + (T, P.d_v), dtype=P.dtype, device=P.device)
    zero = xp.zeros((), dtype=P.dtype, device=P.device)
    ys = []
    for s in range(0, T, c):
        e = min(T, s + c)
        Kb, Qb, Vb = P.K[..., s:e, :], P.Q[..., s:e, :], P.V[..., s:e, :]
        G22 = reg.kern(xp, Kb, Kb) + lam * xp.eye(e - s, dtype=P.dtype, device=P.device)
        # the block's queries: key i is in query t's prefix where i <= t (every earlier block's key is)
        i = xp.arange(s, e, device=P.device)[:, None]
        seen = i <= xp.arange(s, e, device=P.device)[None, :]  # (c, c)
        C22 = xp.where(seen, reg.kern(xp, Kb, Qb), zero)
        if s:
            # L11^{-1} [G12, C12] in one solve: the new factor rows and the block's queries against the
            # earlier keys (one copy of L11 for the solver, twice the right-hand sides)
            R = xp.concat([reg.kern(xp, P.K[..., :s, :], Kb), reg.kern(xp, P.K[..., :s, :], Qb)], axis=-1)
            XU = _array.solve_triangular(xp, L[..., :s, :s], R)
            X, U12 = XU[..., : e - s], XU[..., e - s :]
            L21 = xp.matrix_transpose(X)
            L22 = cholesky(xp, reg, G22 - xp.matmul(L21, X))
            L[..., s:e, :s] = L21
            Z1 = Z[..., :s, :]
            Z[..., s:e, :] = _array.solve_triangular(xp, L22, Vb - xp.matmul(L21, Z1))
            # the bottom rows of the solve against L_{<=e}: U22 = L22^{-1} (C22 - L21 U12)
            U22 = xp.where(seen, _array.solve_triangular(xp, L22, C22 - xp.matmul(L21, U12)), zero)
            y = xp.matmul(xp.matrix_transpose(U12), Z1) + xp.matmul(xp.matrix_transpose(U22), Z[..., s:e, :])
        else:
            L22 = cholesky(xp, reg, G22)
            Z[..., s:e, :] = _array.solve_triangular(xp, L22, Vb)
            U22 = xp.where(seen, _array.solve_triangular(xp, L22, C22), zero)
            y = xp.matmul(xp.matrix_transpose(U22), Z[..., s:e, :])
        L[..., s:e, s:e] = L22
        ys.append(y)
    if not ys:
        return empty(xp, P)
    return xp.concat(ys, axis=-2) if len(ys) > 1 else ys[0]


def blocked(layer, P):
    """Return ``(Y, CacheState)``; non-causal calls read every query against every pair."""
    xp, reg = P.xp, layer.regressor
    if not P.causal:
        return reg.read(xp, final_cache(xp, P, always=True), P.Q), final_cache(xp, P)
    c = BLOCK if P.chunk_size is None else int(P.chunk_size)
    # SciPy's triangular solves alternate with NumPy's products and Cholesky factors, each library with
    # its own BLAS threads: at one thread each, 2.5x faster on the 2-core host (T = 1000;
    # _host_threads.one_blas_thread), the same operations
    with one_blas_thread(array_api_compat.is_numpy_namespace(xp) and P.T > c):
        return blockedcholesky(xp, reg, P, c), final_cache(xp, P)


def blocked_bytes(P):
    """The T x T factor plus one block's cross-kernel, solutions and Gram blocks."""
    T = P.K.shape[-2]
    c = BLOCK if P.chunk_size is None else int(P.chunk_size)
    return P.n_batch * (T * T + 4 * T * c + T * P.d_v) * P.itemsize


#: ``method="auto"`` prefers ``"blocked"`` to ``"parallel"`` from this many keys on (CPU, one BLAS thread,
#: d = 8, CPU seconds blocked / parallel: T = 500 0.010 / 0.015, T = 1000 0.053 / 0.068, T = 2000 0.30 / 0.44)
AUTO_MIN_T = 256


def _auto(P, free):
    """Causal host calls from :data:`AUTO_MIN_T` keys on, while the factor fits the host budget (on a GPU
    the batched triangular solves are general solves, and ``"parallel"`` makes two of them, not T / c)."""
    from ..registry import fits_host, is_host

    return P.causal and is_host(P) and P.K.shape[-2] >= AUTO_MIN_T and fits_host(P, blocked_bytes)


register(
    "blocked",
    "kernel_ridge",
    run=blocked,
    memory=blocked_bytes,
    auto=_auto,
    rank=8,
    summary="a Cholesky factor grown a block of keys at a time",
)
