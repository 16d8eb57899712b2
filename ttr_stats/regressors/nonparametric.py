r"""Shared machinery of the nonparametric regressors (they keep every pair: the state is a cache).

The weight of pair i for the query at t is :math:`w_{ti} = \Gamma_{ti}\, s(q_t, k_i)`: the layer's weights
:math:`\Gamma` times the regressor's similarity. Both are handled in log space,
:math:`\log w_{ti} = \log\Gamma_{ti} + \log s(q_t, k_i)`, and every row is shifted by its maximum before
exponentiating, so huge logit scales and far-apart keys never overflow and never give an all-zero row
(P§4; the log-sum-exp trick).

The methods that run them live in :mod:`ttr_stats.methods` (``kernel_smoother/`` and ``kernel_ridge/``):
the growing cache (``"recurrent"``, the reference), the per-query definition with dense weights
(``"direct"``) and the fast dense form (``"parallel"``).

With ``causal=False`` every query sees every pair, weighted as at the last step (the set regression that
diagnostics and the scikit-learn facade use).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import _array
from ..similarity import ExpDot, Similarity
from .linear import Regressor

__all__ = [
    "CacheState",
    "NonparametricRegressor",
    "kept_pairs",
    "log_gamma",
    "last_log_weights",
    "log_strength",
    "normalised_weights",
]


class CacheState(NamedTuple):
    """The memory of a nonparametric layer: every stored pair and its current log-weight.

    Attributes
    ----------
    K : array of shape (..., n, d_k)
    V : array of shape (..., n, d_v)
    log_weight : array of shape (..., n)
        :math:`\\log\\Gamma_{Ti}` at the last step T (``-inf`` for pairs outside a window or reset).
    """

    K: object
    V: object
    log_weight: object


def log_strength(xp, b):
    """``log(b)`` of write strengths ``b >= 0``, ``-inf`` where ``b = 0`` (a padded pair: excluded).

    Written with ``where`` so that no library warns about log(0) (array-api-strict wraps NumPy outside
    the layer's ``quiet_overflow``); equal to ``xp.log(b)`` bit for bit.
    """
    pos = b > 0
    safe = xp.where(pos, b, xp.ones((), dtype=b.dtype, device=_array.device(b)))
    return xp.where(pos, xp.log(safe), xp.asarray(-math.inf, dtype=b.dtype, device=_array.device(b)))


def kept_pairs(xp, t, i, window, sinks=0):
    r"""Whether a window keeps pair ``i`` at step ``t`` (broadcasting integer arrays, positions from 0):
    :math:`t - i < w` or :math:`i < s` (the s attention sinks never leave; StreamingLLM). Causality
    (``i <= t``) is the caller's."""
    inside = (t - i) < window
    return (inside | (i < sinks)) if sinks else inside


def last_log_weights(xp, P):
    r"""Log weights of every pair at the last step, :math:`\log\Gamma_{Ti}`, shape (..., T_k).

    Suffix sums of the log-decays (no differences of cumulative sums, so ``-inf`` resets are exact). Under
    a window the last step of a sequence is its last valid token (``P.lengths``, right padding), and its
    first ``P.sinks`` pairs stay (attention sinks).
    """
    g = P.g[..., 0]
    T = g.shape[-1]
    suffix = xp.flip(xp.cumulative_sum(xp.flip(g, axis=-1), axis=-1), axis=-1)  # sum_{j >= i} g_j
    zero = xp.zeros(g.shape[:-1] + (min(T, 1),), dtype=g.dtype, device=_array.device(g))
    after = xp.concat([suffix[..., 1:], zero], axis=-1)
    L = after + log_strength(xp, P.b)
    if P.window is not None and P.window < T:
        # the window ends at each sequence's last valid pair (padded pairs have -inf already): as the
        # loop's final cache, which keeps the w pairs before the end of the sequence, not of the padding
        last = T - 1 if P.lengths is None else P.lengths[..., None] - 1
        keep = kept_pairs(xp, last, xp.arange(T, device=P.device), P.window, P.sinks)
        L = xp.where(keep, L, xp.asarray(-math.inf, dtype=L.dtype, device=_array.device(L)))
    return L


def log_gamma(xp, P, *, causal=True):
    r"""Log weights :math:`\log\Gamma` of shape (..., T_q, T_k), ``-inf`` where a pair is excluded.

    Causal: :math:`\log\Gamma_{ti} = \sum_{j=i+1}^t g_j + \log\beta_i` for ``i <= t`` and inside the
    window (:func:`kept_pairs`: the last w pairs and the first ``P.sinks``). Non-causal: the last row,
    broadcast over the T_q queries.
    """
    if not causal:
        last = last_log_weights(xp, P)
        return xp.broadcast_to(last[..., None, :], P.Q.shape[:-1] + last.shape[-1:])
    T = P.K.shape[-2]
    L = _array.segsum(xp, P.g[..., 0]) + log_strength(xp, P.b)[..., None, :]
    if P.window is not None and P.window < T:
        idx = xp.arange(T, device=P.device)
        inside = kept_pairs(xp, idx[:, None], idx[None, :], P.window, P.sinks)
        L = xp.where(inside, L, xp.asarray(-math.inf, dtype=L.dtype, device=_array.device(L)))
    return L


def normalised_weights(xp, logW):
    """Row-normalised weights exp(logW - max) / sum, shape unchanged.

    A row without a finite entry (no pair of positive weight: a query of a length-0 sequence, or a read
    of a cache whose every pair is padding) gets all-zero weights, so it reads 0 (the empty memory's
    value, as for a cache of no pairs) instead of 0/0 = NaN. Other rows are unchanged, bit for bit.
    """
    if logW.shape[-1] == 0:  # no pairs (an empty sequence): nothing to weight
        return logW
    mx = xp.max(logW, axis=-1, keepdims=True)
    some = mx > -math.inf
    zero = xp.zeros((), dtype=mx.dtype, device=_array.device(mx))
    W = xp.exp(logW - xp.where(some, mx, zero))  # exp(-inf) = 0 in empty rows
    return W / xp.where(some, xp.sum(W, axis=-1, keepdims=True), zero + 1)


class NonparametricRegressor(Regressor):
    """Base class of regressors that keep the (weighted) cache of pairs.

    Subclasses implement :meth:`solve` (the per-query weighted regression from its definition, used by
    ``"recurrent"`` and ``"direct"``) and :meth:`parallel` (the fast form); both take the full
    log-weights ``logW`` (..., T_q, T_k).
    """

    linear_in_features = False
    nonparametric = True
    #: the family of methods that compute this regressor (``ttr_stats.methods.registry``)
    family = None
    #: whether decay / write gates are supported (kernel ridge needs uniform weights)
    supports_gates = True

    def similarity_of(self):
        return getattr(self, "similarity", None)

    def prepare(self, xp, x):
        """Transform applied to queries and keys (QKNorm of the similarity)."""
        sim = self.similarity_of()
        return sim.prepare(xp, x) if sim is not None else x

    def features(self, xp, x):
        """What the layer stores and compares: the prepared (e.g. L2-normalised) keys and queries."""
        return self.prepare(xp, x)

    def log_similarity(self, xp, Q, K):  # pragma: no cover - abstract
        raise NotImplementedError

    def solve(self, xp, Q, K, V, logW):  # pragma: no cover - abstract
        raise NotImplementedError

    def parallel(self, xp, Q, K, V, logW):
        """The fast dense form (the ``"parallel"`` method); the definition unless a subclass has one."""
        return self.solve(xp, Q, K, V, logW)

    def read(self, xp, state, Q):
        """Evaluate the cached memory at queries Q of shape (..., n_q, d_k) (every pair, last weights)."""
        Q = self.prepare(xp, Q)
        logW = state.log_weight[..., None, :] + self.log_similarity(xp, Q, state.K)
        return self.solve(xp, Q, state.K, state.V, logW)


class SimilaritySmoother(NonparametricRegressor):
    """A local constant fit under one :class:`~ttr_stats.similarity.Similarity` (``ExpDot`` by default).

    The shared part of the smoothers whose families differ only in what they cache (PaTH's transported
    keys, DeltaFormer's corrected values): the read is ``softmax(logW) @ V`` over that cache.
    """

    def __init__(self, similarity=None):
        self.similarity = ExpDot() if similarity is None else similarity

    def _validate(self):
        if not isinstance(self.similarity, Similarity):
            raise TypeError(f"similarity must be a ttr_stats.similarity.Similarity, got {self.similarity!r}")
        self.similarity._validate()

    def log_similarity(self, xp, Q, K):
        return self.similarity.log_weights(xp, Q, K)

    def solve(self, xp, Q, K, V, logW):
        """The local constant fit: the normalised weights times the (cached) values."""
        return xp.matmul(normalised_weights(xp, logW), V)
