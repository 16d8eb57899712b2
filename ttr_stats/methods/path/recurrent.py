r"""PaTH's definition: the cache of transported keys, one token at a time.

At step t: apply :math:`H_t = I - \beta_t w_t w_t^\top` to every cached key (:math:`k^{(t)}_i = H_t
k^{(t-1)}_i`, so the cache holds :math:`P_{ti}k_i`), decay the cached log-weights by :math:`g_t`, append
:math:`(k_t, v_t, \log\beta^{\mathrm{w}}_t)`, then read :math:`q_t` by Nadaraya-Watson. :math:`O(T^2 d)`
work, :math:`O(T d)` memory. With ``causal=False`` every query reads the final cache.
"""

from __future__ import annotations

from ...regressors.nonparametric import CacheState
from ...regressors.path import householder
from ..registry import register
from ._common import new_log_weights, start_cache, transforms


def recurrent(layer, P):
    """Return ``(Y, CacheState)`` (the cache's keys transported to the last step)."""
    xp, reg = P.xp, layer.regressor
    w, bw = transforms(xp, P)
    logb, g = new_log_weights(xp, P)
    Kc, Vc, lw = start_cache(xp, P)
    ys = []
    for t in range(P.K.shape[-2]):  # the pairs (P.T counts the queries: T_q of a non-causal call)
        Kc = householder(xp, Kc, w[..., t, :], bw[..., t])
        Kc = xp.concat([Kc, P.K[..., t : t + 1, :]], axis=-2)
        Vc = xp.concat([Vc, P.V[..., t : t + 1, :]], axis=-2)
        lw = xp.concat([lw + g[..., t : t + 1], logb[..., t : t + 1]], axis=-1)
        if P.causal:
            q = P.Q[..., t : t + 1, :]
            ys.append(reg.solve(xp, q, Kc, Vc, lw[..., None, :] + reg.log_similarity(xp, q, Kc))[..., 0, :])
    if not P.causal:
        Y = reg.solve(xp, P.Q, Kc, Vc, lw[..., None, :] + reg.log_similarity(xp, P.Q, Kc))
    elif ys:
        Y = xp.stack(ys, axis=-2)
    else:
        Y = xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device)
    return Y, CacheState(Kc, Vc, lw)


def cache_bytes(P):
    """The cache (keys, values) and one row of logits per step."""
    n = P.K.shape[-2] + (0 if P.state0 is None else P.state0.K.shape[-2])
    return 3 * P.n_batch * n * (P.d_k + P.d_v + 1) * P.itemsize


register(
    "recurrent",
    "path",
    run=recurrent,
    memory=cache_bytes,
    reference=True,
    rank=90,
    dtypes=("float32", "float64"),
    summary="the cache of transported keys, H_t applied to every cached key each step (definition)",
)
