"""The fast dense form of the kernel smoothers (``regressor.parallel``): softmax weights for p = 0, the
offset-softmax / weighted-covariance form (two-pass, centred) for local polynomials."""

from __future__ import annotations

from ..registry import register
from ._common import dense_bytes, dense_log_weights, final_cache
from ._precision import narrowed, widened


def parallel(layer, P):
    """Return ``(Y, CacheState)``. A float32 local polynomial (p >= 1) is computed in float64 from its
    logits on (:mod:`._precision`)."""
    xp, reg = P.xp, layer.regressor
    W = widened(reg, P)
    Y = reg.parallel(xp, W.Q, W.K, W.V, dense_log_weights(xp, reg, W))
    return narrowed(xp, Y, P), final_cache(xp, P)


register(
    "parallel",
    "kernel_smoother",
    run=parallel,
    memory=dense_bytes,
    auto=lambda P, free: True,
    rank=10,
    window=True,
    sinks=True,  # dense log-weights from log_gamma, which keeps them
    summary="softmax / offset-softmax with dense T x T log-weights",
)
