"""Shared pieces of the DeltaFormer methods: validity of each pair, the carried cache."""

from __future__ import annotations

import math

from ...regressors.nonparametric import CacheState


def pair_log_weights(xp, P):
    """0 for a valid pair, ``-inf`` for a padded one (``beta`` is the step here, not a sample weight)."""
    n = P.K.shape[-2]
    zero = xp.zeros(P.batch_shape + (n,), dtype=P.dtype, device=P.device)
    if P.lengths is None:
        return zero
    valid = xp.arange(n, device=P.device) < P.lengths[..., None]
    return xp.where(valid, zero, xp.asarray(-math.inf, dtype=P.dtype, device=P.device))


def start_cache(xp, P):
    """The carried cache (``P.state0``: keys, corrected values, log-weights) or an empty one."""
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
    cast = lambda x, tail: xp.broadcast_to(xp.astype(xp.asarray(x), P.dtype), P.batch_shape + tail)  # noqa: E731
    return CacheState(cast(s.K, (n, P.d_k)), cast(s.V, (n, P.d_v)), cast(s.log_weight, (n,)))


def check_causal(P):
    """DeltaFormer writes :math:`u_t = v_t - \\beta_t m_{t-1}(q_t)` with the token's own query."""
    if not P.causal:
        raise ValueError(
            "causal: DeltaFormer writes u_t = v_t - beta_t m_{t-1}(q_t) with each token's query, which a "
            "non-causal call does not have (its queries are free); run a causal call with return_state=True "
            "and read() the state"
        )
