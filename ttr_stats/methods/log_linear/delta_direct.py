r"""The direct (T x T) method of log-linear Gated DeltaNet, and its registration with the generic loop.

.. math:: U = (I + \mathrm{tril}(\mathrm{diag}(\beta)\,KK^\top\odot L, -1))^{-1}\,\mathrm{diag}(\beta)V,
          \qquad Y = (QK^\top\odot L\odot \Lambda)\,U,

:math:`L_{ti} = \prod_{j=i+1}^t\alpha_j`, :math:`\Lambda_{ti} = \lambda_t^{(\ell(t,i))}` (Guo et al. 2025).
A carried initial state makes the pseudo-values depend on it non-linearly through the buckets' merges;
the method then runs the loop (the reference) instead.
"""

from __future__ import annotations

import numpy as np

from ..._array import segsum
from .._dense import direct_bytes, state_bytes
from ..recurrent import loop, recurrent
from ..registry import register
from .direct import level_matrix


def direct(layer, P):
    """``(Y, final_state)``: the UT-transform pseudo-values, then the dense hierarchical read."""
    xp, opt = P.xp, layer.optimizer
    if P.T == 0 or P.state0 is not None:
        return loop(opt, P)
    lev = level_matrix(P.T, 0)
    L = int(opt.levels)
    if lev.max() >= L:
        raise ValueError(
            f"levels: {P.T} tokens need {int(lev.max()) + 1} Fenwick levels, LogLinearDelta has "
            f"levels = {L}; pass levels >= ceil(log2 T) + 1"
        )
    lam = xp.stack([opt.lam(xp, t, P.batch_shape, P.dtype, P.device) for t in range(P.T)], axis=-2)
    onehot = xp.asarray(np.eye(L)[np.maximum(lev, 0)] * (lev >= 0)[..., None], dtype=P.dtype, device=P.device)
    Lam = xp.sum(lam[..., :, None, :] * onehot, axis=-1)
    D = xp.exp(segsum(xp, P.g[..., 0]))  # (..., T, T) decay, 0 above the diagonal
    eye = xp.asarray(np.eye(P.T), dtype=P.dtype, device=P.device)
    KK = xp.matmul(P.K, xp.matrix_transpose(P.K))
    A = eye + P.b[..., :, None] * KK * D * (1.0 - eye) * xp.asarray(np.tri(P.T), dtype=P.dtype)
    U = xp.linalg.solve(A, P.b[..., :, None] * P.V)
    Y = xp.matmul(Lam * D * xp.matmul(P.Q, xp.matrix_transpose(P.K)), U)
    _, state = loop(opt, P, read=False)
    return Y, state


register(
    "recurrent",
    "log_linear_delta",
    run=recurrent,
    memory=state_bytes,
    reference=True,
    rank=90,
    summary="the generic loop: delta memory for the pseudo-values, Fenwick buckets for the read",
)
register(
    "direct",
    "log_linear_delta",
    run=direct,
    memory=direct_bytes,
    rank=20,
    summary="UT-transform pseudo-values, then dense lambda x decay x q^T k read, O(T^2)",
)
