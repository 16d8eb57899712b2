"""Shared pieces of the PaTH methods: the per-token inputs, padding made identity, the initial cache."""

from __future__ import annotations

from ...regressors.nonparametric import CacheState, log_strength


def transforms(xp, P):
    """``(w, beta_w)`` of shape (..., T, d_k) and (..., T); under ``lengths`` the padded steps get
    ``beta_w = 0`` (identity transforms), so the final cache is the cache after each sequence's tokens."""
    w, bw = P.inputs["w"], P.inputs["w_beta"]
    if P.lengths is not None:
        valid = xp.arange(w.shape[-2], device=P.device) < P.lengths[..., None]
        bw = xp.where(valid, bw, xp.zeros((), dtype=bw.dtype, device=P.device))
    return w, bw


def start_cache(xp, P):
    """The carried cache (``P.state0``, a CacheState broadcast to the batch) or an empty one."""
    if P.state0 is None:
        z = lambda d: xp.zeros(P.batch_shape + (0, d), dtype=P.dtype, device=P.device)  # noqa: E731
        return CacheState(z(P.d_k), z(P.d_v), xp.zeros(P.batch_shape + (0,), dtype=P.dtype, device=P.device))
    s = P.state0
    if s.K.shape[-1] != P.d_k or s.V.shape[-1] != P.d_v:
        raise ValueError(
            f"initial_state holds pairs of dimensions ({s.K.shape[-1]}, {s.V.shape[-1]}), the new ones "
            f"have ({P.d_k}, {P.d_v})"
        )
    n = s.K.shape[-2]
    K = xp.broadcast_to(xp.astype(xp.asarray(s.K), P.dtype), P.batch_shape + (n, P.d_k))
    V = xp.broadcast_to(xp.astype(xp.asarray(s.V), P.dtype), P.batch_shape + (n, P.d_v))
    lw = xp.broadcast_to(xp.astype(xp.asarray(s.log_weight), P.dtype), P.batch_shape + (n,))
    return CacheState(K, V, lw)


def new_log_weights(xp, P):
    """``log beta_i`` of the new pairs (``-inf`` for padded ones) and the per-token log-decays (..., T)."""
    return log_strength(xp, P.b), P.g[..., 0]
