r"""Shared machinery of the nonparametric regressors (they keep every pair: the state is a cache).

The weight of pair i for the query at t is :math:`w_{ti} = \Gamma_{ti}\, s(q_t, k_i)`: the layer's weights
:math:`\Gamma` times the regressor's similarity. Both are handled in log space,
:math:`\log w_{ti} = \log\Gamma_{ti} + \log s(q_t, k_i)`, and every row is shifted by its maximum before
exponentiating, so huge logit scales and far-apart keys never overflow and never give an all-zero row
(P§4; the log-sum-exp trick).

Methods (the same three names as the linear family):

* ``"recurrent"`` -- the growing cache: at step t decay the cached log-weights by :math:`g_t`, append
  :math:`(k_t, v_t, \log\beta_t)`, drop what leaves a window, then solve the weighted regression for
  :math:`q_t` from its definition. The reference.
* ``"direct"`` -- the same per-query weighted least squares from its definition, for all queries at once
  with the dense T x T weights.
* ``"parallel"`` -- the fast masked form (for local polynomials the offset-softmax / weighted-covariance
  form; for kernel ridge one Cholesky factor of the whole Gram matrix).

With ``causal=False`` every query sees every pair, weighted as at the last step (the set regression that
diagnostics and the scikit-learn facade use).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import _array
from .linear import Regressor

__all__ = ["CacheState", "NonparametricRegressor", "log_gamma", "last_log_weights", "normalised_weights"]


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


def last_log_weights(xp, P):
    r"""Log weights of every pair at the last step, :math:`\log\Gamma_{Ti}`, shape (..., T_k).

    Suffix sums of the log-decays (no differences of cumulative sums, so ``-inf`` resets are exact).
    """
    g = P.g[..., 0]
    T = g.shape[-1]
    suffix = xp.flip(xp.cumulative_sum(xp.flip(g, axis=-1), axis=-1), axis=-1)  # sum_{j >= i} g_j
    after = xp.concat([suffix[..., 1:], xp.zeros(g.shape[:-1] + (min(T, 1),), dtype=g.dtype)], axis=-1)
    L = after + xp.log(P.b)
    if P.window is not None and P.window < T:
        keep = xp.arange(T) >= T - P.window
        L = xp.where(keep, L, xp.asarray(-math.inf, dtype=L.dtype))
    return L


def log_gamma(xp, P, *, causal=True):
    r"""Log weights :math:`\log\Gamma` of shape (..., T_q, T_k), ``-inf`` where a pair is excluded.

    Causal: :math:`\log\Gamma_{ti} = \sum_{j=i+1}^t g_j + \log\beta_i` for ``i <= t`` (and inside the window).
    Non-causal: the last row, broadcast over the T_q queries.
    """
    if not causal:
        last = last_log_weights(xp, P)
        return xp.broadcast_to(last[..., None, :], P.Q.shape[:-1] + last.shape[-1:])
    T = P.K.shape[-2]
    L = _array.segsum(xp, P.g[..., 0]) + xp.log(P.b)[..., None, :]
    if P.window is not None and P.window < T:
        idx = xp.arange(T)
        inside = (idx[:, None] - idx[None, :]) < P.window
        L = xp.where(inside, L, xp.asarray(-math.inf, dtype=L.dtype))
    return L


def normalised_weights(xp, logW):
    """Row-normalised weights exp(logW - max) / sum, shape unchanged (rows always have a finite entry)."""
    if logW.shape[-1] == 0:  # no pairs (an empty sequence): nothing to weight
        return logW
    mx = xp.max(logW, axis=-1, keepdims=True)
    W = xp.exp(logW - mx)
    return W / xp.sum(W, axis=-1, keepdims=True)


class NonparametricRegressor(Regressor):
    """Base class of regressors that keep the (weighted) cache of pairs.

    Subclasses implement :meth:`solve` (the per-query weighted regression from its definition, used by
    ``"recurrent"`` and ``"direct"``) and :meth:`fast` (the ``"parallel"`` form); both take the full
    log-weights ``logW`` (..., T_q, T_k).
    """

    linear_in_features = False
    nonparametric = True
    methods = ("parallel", "direct", "recurrent")
    #: whether decay / write gates are supported (kernel ridge needs uniform weights)
    supports_gates = True
    supports_window = True

    def similarity_of(self):
        return getattr(self, "similarity", None)

    def prepare(self, xp, x):
        """Transform applied to queries and keys (QKNorm of the similarity)."""
        sim = self.similarity_of()
        return sim.prepare(xp, x) if sim is not None else x

    def features(self, xp, x):
        """What the layer stores and compares: the prepared (e.g. L2-normalised) keys and queries."""
        return self.prepare(xp, x)

    def estimate_bytes(self, method, P):
        """Rough size of the largest intermediates (the T_q x T_k weights and a few copies)."""
        item = 8 if P.dtype == P.xp.float64 else 4
        B = math.prod(P.batch_shape) if P.batch_shape else 1
        return 4 * B * P.Q.shape[-2] * P.K.shape[-2] * item if method != "recurrent" else 0

    def log_similarity(self, xp, Q, K):  # pragma: no cover - abstract
        raise NotImplementedError

    def solve(self, xp, Q, K, V, logW):  # pragma: no cover - abstract
        raise NotImplementedError

    def fast(self, xp, Q, K, V, logW):
        return self.solve(xp, Q, K, V, logW)

    # --- the three methods ------------------------------------------------------------------------
    def run(self, method, P, *, causal=True):
        """Return ``(Y, CacheState)`` for a prepared problem (``P.Q``/``P.K`` already prepared)."""
        xp = P.xp
        if method == "recurrent" and causal:
            Y = self._recurrent(xp, P)
        else:
            logW = log_gamma(xp, P, causal=causal) + self.log_similarity(xp, P.Q, P.K)
            Y = (self.fast if method == "parallel" else self.solve)(xp, P.Q, P.K, P.V, logW)
        return Y, CacheState(P.K, P.V, last_log_weights(xp, P))

    def _recurrent(self, xp, P):
        """The growing cache, one query at a time (the reference)."""
        T = P.T
        ys = []
        logw = xp.zeros(P.batch_shape + (0,), dtype=P.dtype)
        logb = xp.log(P.b)
        for t in range(T):
            g = P.g[..., t, 0]
            logw = xp.concat([logw + g[..., None], logb[..., t : t + 1]], axis=-1)
            lo = 0 if P.window is None else max(0, t + 1 - P.window)
            Kc, Vc = P.K[..., lo : t + 1, :], P.V[..., lo : t + 1, :]
            lw = logw[..., lo : t + 1]
            q = P.Q[..., t : t + 1, :]
            logW = lw[..., None, :] + self.log_similarity(xp, q, Kc)
            ys.append(self.solve(xp, q, Kc, Vc, logW)[..., 0, :])
        if not ys:
            return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype)
        return xp.stack(ys, axis=-2)

    def read(self, xp, state, Q):
        """Evaluate the cached memory at queries Q of shape (..., n_q, d_k) (every pair, last weights)."""
        Q = self.prepare(xp, Q)
        logW = state.log_weight[..., None, :] + self.log_similarity(xp, Q, state.K)
        return self.solve(xp, Q, state.K, state.V, logW)
