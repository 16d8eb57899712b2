"""Kernel ridge from its definition: a fresh solve of every prefix's Gram system."""

from __future__ import annotations

from ... import _array
from ..registry import register
from ._common import empty, final_cache, gram_bytes


def direct(layer, P):
    """Return ``(Y, CacheState)``."""
    xp, reg = P.xp, layer.regressor
    if not P.causal:
        return reg.read(xp, final_cache(xp, P, always=True), P.Q), final_cache(xp, P)
    G = reg._gram(xp, P.K)
    ys = []
    for t in range(P.T):
        alpha = _array.pd_solve(xp, G[..., : t + 1, : t + 1], P.V[..., : t + 1, :])
        c = reg.kern(xp, P.Q[..., t : t + 1, :], P.K[..., : t + 1, :])  # (..., 1, t+1)
        ys.append(xp.matmul(c, alpha)[..., 0, :])
    Y = xp.stack(ys, axis=-2) if ys else empty(xp, P)
    return Y, final_cache(xp, P)


register("direct", "kernel_ridge", run=direct, memory=gram_bytes, rank=20, summary="a fresh solve per prefix")
