r"""The direct (T x T) method of log-linear Gated DeltaNet, and its registration with the generic loop.

.. math:: y_t = \sum_{i\le t}\Lambda_{ti}\beta_i C_{ti} v_i,\qquad C_{ti} = k_i^\top A_{i+1}\cdots A_t\,q_t,
          \quad A_j = \alpha_j(I - \beta_j k_j k_j^\top),\ \Lambda_{ti} = \lambda_t^{(\ell(t,i))}

(the authors' per-bucket recurrence unrolled; C is built by carrying every query back through the
transitions, T steps of O(T d)). With a carried state the buckets' contribution goes through the merges;
the method then runs the loop (the reference) instead.
"""

from __future__ import annotations

import numpy as np

from .._dense import direct_bytes, state_bytes
from ..recurrent import loop, recurrent
from ..registry import register
from .direct import level_weights


def direct(layer, P):
    """``(Y, final_state)``: the dense transported coefficients C_ti, weighted per Fenwick level."""
    xp, opt = P.xp, layer.optimizer
    if P.T == 0 or P.state0 is not None:
        return loop(opt, P)
    Lam = level_weights(xp, opt, P)
    alpha = xp.exp(P.g[..., 0])  # (..., T)
    R, cols = P.Q, []
    rows = xp.asarray(np.arange(P.T), device=P.device)
    for i in range(P.T - 1, -1, -1):  # R[t] = A_{i+1} ... A_t q_t for the rows t >= i
        ki = P.K[..., i, :]
        kR = xp.sum(R * ki[..., None, :], axis=-1)  # (..., T): k_i^T R[t]
        cols.append(kR)
        if i:  # apply A_i to the rows t >= i
            Ar = alpha[..., i, None, None] * (R - P.b[..., i, None, None] * kR[..., None] * ki[..., None, :])
            R = xp.where((rows >= i)[:, None], Ar, R)
    C = xp.stack(cols[::-1], axis=-1) * xp.asarray(np.tri(P.T), dtype=P.dtype, device=P.device)
    Y = xp.matmul(Lam * C * P.b[..., None, :], P.V)
    _, state = loop(opt, P, read=False)
    return Y, state


register(
    "recurrent",
    "log_linear_delta",
    run=recurrent,
    memory=state_bytes,
    reference=True,
    rank=90,
    summary="the generic loop over Fenwick buckets of delta memories (definition)",
)
register(
    "direct",
    "log_linear_delta",
    run=direct,
    memory=direct_bytes,
    rank=20,
    summary="dense lambda x beta x k^T (A...A) q coefficients, O(T^2 d)",
)
