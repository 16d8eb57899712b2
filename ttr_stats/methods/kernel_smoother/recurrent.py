"""The growing cache, one query at a time: the definition of the kernel smoothers (Nadaraya-Watson, local
polynomial attention).

At step t decay the cached log-weights by :math:`g_t`, append :math:`(k_t, v_t, \\log\\beta_t)`, drop what
leaves a window (but never the first ``P.sinks`` pairs: attention sinks), then solve the weighted
regression for :math:`q_t` from its definition (``regressor.solve``). With ``causal=False`` every query
solves against every pair.
"""

from __future__ import annotations

from ...regressors.nonparametric import log_strength
from ..registry import register
from ._common import dense_log_weights, final_cache


def growing_cache(xp, regressor, P):
    """Outputs (..., T, d_v) of the growing-cache loop."""
    ys = []
    logw = xp.zeros(P.batch_shape + (0,), dtype=P.dtype, device=P.device)
    logb = log_strength(xp, P.b)  # -inf for padded pairs (strength 0)
    for t in range(P.T):
        g = P.g[..., t, 0]
        logw = xp.concat([logw + g[..., None], logb[..., t : t + 1]], axis=-1)
        lo = 0 if P.window is None else max(0, t + 1 - P.window)
        s = min(P.sinks, lo)  # the attention sinks that have left the window stay: pairs [0, s) + [lo, t]
        Kc, Vc, lw = P.K[..., lo : t + 1, :], P.V[..., lo : t + 1, :], logw[..., lo : t + 1]
        if s:
            Kc = xp.concat([P.K[..., :s, :], Kc], axis=-2)
            Vc = xp.concat([P.V[..., :s, :], Vc], axis=-2)
            lw = xp.concat([logw[..., :s], lw], axis=-1)
        q = P.Q[..., t : t + 1, :]
        logW = lw[..., None, :] + regressor.log_similarity(xp, q, Kc)
        ys.append(regressor.solve(xp, q, Kc, Vc, logW)[..., 0, :])
    if not ys:
        return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device)
    return xp.stack(ys, axis=-2)


def recurrent(layer, P):
    """Return ``(Y, CacheState)``."""
    xp, reg = P.xp, layer.regressor
    if P.causal:
        Y = growing_cache(xp, reg, P)
    else:
        Y = reg.solve(xp, P.Q, P.K, P.V, dense_log_weights(xp, reg, P))
    return Y, final_cache(xp, P)


register(
    "recurrent",
    "kernel_smoother",
    run=recurrent,
    reference=True,
    rank=90,
    window=True,
    sinks=True,
    summary="the growing cache, one weighted regression per query (definition)",
)
