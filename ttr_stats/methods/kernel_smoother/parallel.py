"""The fast dense form of the kernel smoothers (``regressor.parallel``): softmax weights for p = 0, the
offset-softmax / weighted-covariance form (two-pass, centred) for local polynomials."""

from __future__ import annotations

from ..registry import register
from ._common import dense_bytes, dense_log_weights, final_cache


def parallel(layer, P):
    """Return ``(Y, CacheState)``."""
    xp, reg = P.xp, layer.regressor
    return reg.parallel(xp, P.Q, P.K, P.V, dense_log_weights(xp, reg, P)), final_cache(xp, P)


register(
    "parallel",
    "kernel_smoother",
    run=parallel,
    memory=dense_bytes,
    auto=lambda P, free: True,
    rank=10,
    window=True,
    summary="softmax / offset-softmax with dense T x T log-weights",
)
