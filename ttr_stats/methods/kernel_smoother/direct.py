"""Every query's weighted regression from its definition (``regressor.solve``), all queries at once with
the dense T_q x T_k log-weights."""

from __future__ import annotations

from ..registry import register
from ._common import dense_bytes, dense_log_weights, final_cache


def direct(layer, P):
    """Return ``(Y, CacheState)``."""
    xp, reg = P.xp, layer.regressor
    return reg.solve(xp, P.Q, P.K, P.V, dense_log_weights(xp, reg, P)), final_cache(xp, P)


register(
    "direct",
    "kernel_smoother",
    run=direct,
    memory=dense_bytes,
    rank=20,
    window=True,
    sinks=True,  # dense log-weights from log_gamma, which keeps them
    summary="the per-query definition with dense T x T log-weights",
)
