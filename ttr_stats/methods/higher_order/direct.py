r"""Second-order linear attention: the generic loop (reference) and the direct prefix form
:math:`y_t = S_t R_t q_t` with :math:`S_t, R_t` from the dense weights :math:`\Gamma` (plus the decayed
initial statistics)."""

from __future__ import annotations

from ...optimizers.base import SufficientStatistics
from .._dense import direct_bytes, initial_decay, pair_sums, scalar_decay, state_bytes
from ..problem import initial_state
from ..recurrent import recurrent
from ..registry import register


def direct(layer, P):
    """``(Y, final_state)`` from every prefix's statistics, O(T d^2) memory."""
    xp = P.xp
    s0 = initial_state(layer.optimizer, P)
    W = scalar_decay(xp, P)
    c = initial_decay(xp, P)[..., None]  # (..., T, 1, 1)
    R = pair_sums(xp, W, P.K, P.K) + c * s0.R[..., None, :, :]
    S = pair_sums(xp, W, P.V, P.K) + c * s0.S[..., None, :, :]
    Rq = xp.matmul(R, P.Q[..., None])
    Y = xp.matmul(S, Rq)[..., 0]
    return Y, (SufficientStatistics(R[..., -1, :, :], S[..., -1, :, :]) if P.T else s0)


register("recurrent", "higher_order", run=recurrent, memory=state_bytes, reference=True, rank=90,
         summary="the generic loop over (R, S) (definition)")  # fmt: skip
register("direct", "higher_order", run=direct, memory=direct_bytes, rank=20,
         summary="every prefix's (R, S) from dense Gamma, O(T (T + d^2))")  # fmt: skip
