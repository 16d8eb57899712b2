r"""DeltaFormer's definition: the growing cache of (k_j, u_j), one token at a time.

At step t decay the cached log-weights by :math:`g_t`, read the cache at :math:`q_t` (the pairs before t),
write :math:`u_t = v_t - \beta_t m_{t-1}(q_t)`, append :math:`(k_t, u_t)` and read :math:`y_t = m_t(q_t)`.
Causal calls only: the write needs each token's query, which a non-causal call (and ``memorize``) lacks.
"""

from __future__ import annotations

from ...regressors.nonparametric import CacheState
from ..registry import register
from ._common import check_causal, pair_log_weights, start_cache


def recurrent(layer, P):
    """Return ``(Y, CacheState)`` (the cache's values are the corrected u)."""
    xp, reg = P.xp, layer.regressor
    check_causal(P)
    Kc, Uc, lw = start_cache(xp, P)
    logv = pair_log_weights(xp, P)
    ys = []
    for t in range(P.T):
        lw = lw + P.g[..., t, :]
        q = P.Q[..., t : t + 1, :]
        pred = reg.solve(xp, q, Kc, Uc, lw[..., None, :] + reg.log_similarity(xp, q, Kc))[..., 0, :]
        u = P.V[..., t, :] - P.b[..., t, None] * pred
        Kc = xp.concat([Kc, P.K[..., t : t + 1, :]], axis=-2)
        Uc = xp.concat([Uc, u[..., None, :]], axis=-2)
        lw = xp.concat([lw, logv[..., t : t + 1]], axis=-1)
        ys.append(reg.solve(xp, q, Kc, Uc, lw[..., None, :] + reg.log_similarity(xp, q, Kc))[..., 0, :])
    if ys:
        Y = xp.stack(ys, axis=-2)
    else:
        Y = xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device)
    return Y, CacheState(Kc, Uc, lw)


def cache_bytes(P):
    n = P.K.shape[-2] + (0 if P.state0 is None else P.state0.K.shape[-2])
    return 3 * P.n_batch * n * (P.d_k + P.d_v + 1) * P.itemsize


register(
    "recurrent",
    "deltaformer",
    run=recurrent,
    memory=cache_bytes,
    reference=True,
    rank=90,
    dtypes=("float32", "float64"),
    summary="the growing cache of corrected values, u_t = v_t - beta_t m_{t-1}(q_t) (definition)",
)
