"""What the kernel-smoother methods share: the dense log-weights of a call and its final cache."""

from __future__ import annotations

from ...regressors.nonparametric import CacheState, last_log_weights, log_gamma


def dense_log_weights(xp, regressor, P):
    r""":math:`\log w_{ti} = \log\Gamma_{ti} + \log s(q_t, k_i)`, shape (..., T_q, T_k)."""
    return log_gamma(xp, P, causal=P.causal) + regressor.log_similarity(xp, P.Q, P.K)


def final_cache(xp, P, *, always=False):
    """The memory after the last step: every pair with its last log-weight; ``None`` when the caller drops
    the state (``P.want_state`` false) unless ``always`` (a method that reads its queries from it)."""
    if not (always or P.want_state):
        return None
    return CacheState(P.K, P.V, last_log_weights(xp, P))


def dense_bytes(P):
    """The T_q x T_k weights and a few copies."""
    return 4 * P.n_batch * P.Q.shape[-2] * P.K.shape[-2] * P.itemsize
