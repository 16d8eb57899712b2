"""What the kernel-ridge methods share."""

from __future__ import annotations

from ...regressors.nonparametric import CacheState


def final_cache(xp, P):
    """Kernel ridge keeps every pair with weight 1 (uniform weights only)."""
    return CacheState(P.K, P.V, xp.zeros(P.K.shape[:-1], dtype=P.dtype, device=P.device))


def empty(xp, P):
    return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device)


def gram_bytes(P):
    """The T x T Gram matrix, its factor and a few copies."""
    return 4 * P.n_batch * P.Q.shape[-2] * P.K.shape[-2] * P.itemsize
