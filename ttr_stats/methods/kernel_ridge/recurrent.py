r"""Kernel ridge on every prefix by a Cholesky factor grown one row per step (the reference).

With :math:`L_{t-1}` the factor of :math:`\kappa(K_{<t}, K_{<t}) + \lambda I`, the new row is
:math:`\ell = L_{t-1}^{-1}\kappa(K_{<t}, k_t)`, the new diagonal
:math:`\sqrt{\kappa(k_t,k_t)+\lambda-\|\ell\|^2}`;
:math:`y_t = u^\top Z` with :math:`u = L_t^{-1}\kappa(K_{\le t}, q_t)`, :math:`Z = L_t^{-1} V_{\le t}`.
"""

from __future__ import annotations

import math

from ... import _array
from ..registry import register
from ._common import empty, final_cache


def growing_cholesky(xp, reg, P):
    """Outputs (..., T, d_v)."""
    T, lam = P.T, float(reg.ridge)
    L = xp.zeros(P.batch_shape + (T, T), dtype=P.dtype, device=P.device)
    Z = xp.zeros(P.batch_shape + (T, P.d_v), dtype=P.dtype, device=P.device)
    ys = []
    for t in range(T):
        k = P.K[..., t : t + 1, :]
        ktt = reg.kern(xp, k, k)[..., 0, 0] + lam
        if t:
            c = reg.kern(xp, P.K[..., :t, :], k)  # (..., t, 1)
            ell = _array.solve_triangular(xp, L[..., :t, :t], c)[..., 0]
            d2 = ktt - xp.sum(ell * ell, axis=-1)
            L[..., t, :t] = ell
            zt = P.V[..., t, :] - xp.matmul(ell[..., None, :], Z[..., :t, :])[..., 0, :]
        else:
            d2 = ktt
            zt = P.V[..., t, :]
        if not bool(xp.all(d2 > 0)):
            reg._check_pd(xp, xp.asarray(math.nan, device=P.device))
        diag = xp.sqrt(d2)
        L[..., t, t] = diag
        Z[..., t, :] = zt / diag[..., None]
        u = _array.solve_triangular(
            xp, L[..., : t + 1, : t + 1], reg.kern(xp, P.K[..., : t + 1, :], P.Q[..., t : t + 1, :])
        )
        ys.append(xp.matmul(xp.matrix_transpose(u), Z[..., : t + 1, :])[..., 0, :])
    if not ys:
        return empty(xp, P)
    return xp.stack(ys, axis=-2)


def recurrent(layer, P):
    """Return ``(Y, CacheState)``; non-causal calls read every query against every pair."""
    xp, reg = P.xp, layer.regressor
    if not P.causal:
        return reg.read(xp, final_cache(xp, P, always=True), P.Q), final_cache(xp, P)
    return growing_cholesky(xp, reg, P), final_cache(xp, P)


register(
    "recurrent",
    "kernel_ridge",
    run=recurrent,
    reference=True,
    rank=90,
    summary="a Cholesky factor grown one row per step (definition)",
)
