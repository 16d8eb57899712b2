r"""The direct method of recursive least squares: the closed form RLS computes, on every prefix.

.. math:: y_t = S_t (R_t)^{-1} q_t,\qquad R_t = \sum_{i\le t}\Gamma_{ti} k_i k_i^\top + c_t R_0,\quad
          S_t = \sum_{i\le t}\Gamma_{ti} v_i k_i^\top + c_t M_0 R_0,

with the prior precision :math:`R_0 = P_0^{-1}` decaying with the forgetting factor
(:math:`c_t = \prod_{j\le t}\gamma_j`). Memory O(T (T + d^2)).
"""

from __future__ import annotations

from ... import _array
from ...optimizers import RLSState
from .._dense import direct_bytes, initial_decay, pair_sums, scalar_decay
from ..problem import initial_state
from ..registry import register


def direct(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v)."""
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    W = scalar_decay(xp, P)
    c2 = initial_decay(xp, P)[..., :, :, None]
    R0 = opt.prior_precision(s0)
    R = pair_sums(xp, W, P.K, P.K) + c2 * R0[..., None, :, :]
    S = pair_sums(xp, W, P.V, P.K) + c2 * xp.matmul(s0.M, R0)[..., None, :, :]
    y = xp.matmul(S, _array.pd_solve(xp, R, P.Q[..., None]))[..., 0]
    if not P.T:
        return y, s0
    RT, ST = R[..., -1, :, :], S[..., -1, :, :]
    eye = xp.broadcast_to(xp.eye(P.d_k, dtype=P.dtype, device=P.device), RT.shape)
    PT = _array.pd_solve(xp, RT, eye)
    return y, RLSState(xp.matrix_transpose(_array.pd_solve(xp, RT, xp.matrix_transpose(ST))), PT)


register(
    "direct",
    "rls",
    run=direct,
    memory=direct_bytes,
    rank=95,  # never chosen by auto: the loop is exact and O(T d^2)
    summary="the closed form RLS computes, solved per prefix",
)
