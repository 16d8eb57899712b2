r"""The parallel (T x T masked) form of the identity-covariance family.

.. math:: Y = (Q K^\top \circ \Gamma) V + c \circ (Q M_0^\top),\qquad
          \Gamma_{ti} = \beta_i \prod_{j=i+1}^t \alpha_j

(per-dimension decay: :math:`A_{ti} = \sum_d q_{td} k_{id} \beta_i \prod_{j=i+1}^t \alpha_{jd}`).
The decays are exponentiated segment sums of log-gates, so no factor :math:`e^{+\sum g}` is ever formed
and strong decay cannot overflow. Memory O(T^2).
"""

from __future__ import annotations

from ...optimizers import LinearAttentionState
from .._dense import initial_decay, parallel_bytes, per_dimension_decay, scalar_decay
from .._rules import parallel_rule
from ..problem import initial_state
from ..registry import register


def parallel(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v)."""
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    c = initial_decay(xp, P)
    if P.g.shape[-1] > 1:
        E = per_dimension_decay(xp, P)  # (..., T, T, d)
        A = xp.sum(P.Q[..., :, None, :] * P.K[..., None, :, :] * E, axis=-1)
        last = E[..., -1, :, :] if P.T else None
    else:
        W = scalar_decay(xp, P)
        A = xp.matmul(P.Q, xp.matrix_transpose(P.K)) * W
        # the scalar weights of the last row, repeated over d_k
        last = xp.broadcast_to(W[..., -1, :, None], P.K.shape) if P.T else None
    Qc = P.Q * c
    y = xp.matmul(A, P.V) + xp.matmul(Qc, xp.matrix_transpose(s0.M))
    denom = xp.sum(A, axis=-1) + xp.sum(Qc * s0.z[..., None, :], axis=-1)
    y = opt.finish(xp, y, denom)
    if not P.T:
        return y, s0
    cT = c[..., -1, :]
    M = xp.matmul(xp.matrix_transpose(P.V), last * P.K) + s0.M * cT[..., None, :]
    z = xp.sum(last * P.K, axis=-2) + s0.z * cT
    return y, LinearAttentionState(M, z)


register(
    "parallel",
    "identity",
    run=parallel,
    memory=parallel_bytes,
    auto=parallel_rule(parallel_bytes),
    rank=10,
    window=True,
    per_dimension=True,
    summary="(Q K^T o Gamma) V, O(T^2) memory",
)
