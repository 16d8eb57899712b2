r"""Log-linear Gated DeltaNet: the delta rule's corrected pairs read through Fenwick buckets.

Regression reading. The write is Gated DeltaNet's online regression: one LMS step on
:math:`\tfrac12\|v_t - M k_t\|^2` from the decayed memory,

.. math:: u_t = \beta_t\,(v_t - \alpha_t M_{t-1} k_t),\qquad M_t = \alpha_t M_{t-1} + u_t k_t^\top,

so each pseudo-value :math:`u_t` is the (scaled) residual the delta step corrects, and
:math:`M_t = \sum_{i\le t} (\prod_{j=i+1}^t\alpha_j)\, u_i k_i^\top`. The read is log-linear attention over
the corrected pairs :math:`(k_i, u_i)`: the minimiser of one batch-GD step from 0 on
:math:`\tfrac12\sum_{i\le t}\gamma_i^{(t)}\|u_i - W k_i\|^2` with the hierarchical weights
:math:`\gamma_i^{(t)} = \lambda_t^{(\ell(t,i))}\prod_{j=i+1}^t\alpha_j`, read at :math:`q_t`:

.. math:: y_t = \sum_{i\le t}\lambda_t^{(\ell(t,i))}\Big(\prod_{j=i+1}^t\alpha_j\Big)(q_t^\top k_i)\,u_i
          = \sum_\ell \lambda_t^{(\ell)} S_t^{(\ell)} q_t .

Matrix form (Guo et al. 2025, §3, the mask :math:`M^H` on the output part only):
:math:`O = (QK^\top\odot L\odot M^H)\,(I + \mathrm{tril}(\mathrm{diag}(\beta)\,KK^\top\odot L, -1))^{-1}
\mathrm{diag}(\beta)V` with :math:`L_{ti} = \prod_{j=i+1}^t\alpha_j`. With every :math:`\lambda = 1` the
buckets sum to :math:`M_t` and :math:`y_t = M_t q_t`: Gated DeltaNet exactly (tested).

State: the full delta memory ``M`` (it makes the pseudo-values), the L bucket memories ``S`` of the pairs
:math:`(k_i, u_i)` (merged as in :class:`~ttr_stats.optimizers.log_linear.LogLinearAttention`) and ``t``.

References
----------
Guo, Yang, Goel, Xing, Dao & Kim (2025), *Log-Linear Attention*, arXiv 2506.04761 (log-linear Gated
DeltaNet); Yang, Kautz & Hatamizadeh (2025), *Gated Delta Networks*.
"""

from __future__ import annotations

from typing import NamedTuple

from .. import _array
from .base import matvec, outer
from .log_linear import LogLinearAttention, LogLinearState

__all__ = ["LogLinearDelta", "LogLinearDeltaState"]


class LogLinearDeltaState(NamedTuple):
    """``M`` (..., d_v, d_k) the delta memory, ``S`` (..., L, d_v, d_k) the buckets, ``t`` (...,)."""

    M: object
    S: object
    t: object


class LogLinearDelta(LogLinearAttention):
    r"""Gated DeltaNet's pseudo-values :math:`u_t` read by log-linear attention (log-linear Gated DeltaNet).

    Parameters
    ----------
    levels : int >= 1
        Fenwick levels L (:math:`L \ge \lceil\log_2 T\rceil + 1`, checked).
    level_weights : float, (L,) or (..., T_total, L)
        :math:`\lambda`, as in :class:`~ttr_stats.optimizers.log_linear.LogLinearAttention`.
    beta : float > 0
        Delta step size, overridden by a call-time ``beta``.
    """

    State = LogLinearDeltaState
    family = "log_linear_delta"

    def __init__(self, levels=16, level_weights=1.0, beta=1.0):
        super().__init__(levels, level_weights)
        self.beta = beta

    def _validate(self):
        from .._validation import check_scalar

        super()._validate()
        check_scalar("beta", self.beta, low=0.0, low_inclusive=False)

    def default_beta(self):
        return float(self.beta)

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        base = super().init(xp, batch_shape, d_k, d_v, dtype, device)
        M = xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device)
        return LogLinearDeltaState(M, base.S, base.t)

    def update(self, state, k, v, a, b):
        xp = _array.namespace(k)
        M = state.M if a is None else state.M * a[..., None, :]
        u = b[..., None] * (v - matvec(xp, M, k))  # the residual the delta step corrects, times beta
        M = M + outer(u, k)
        ones = xp.ones_like(b)
        S, t = super().update(LogLinearState(state.S, state.t), k, u, a, ones)
        return LogLinearDeltaState(M, S, t)

    def read(self, state, q):
        return super().read(LogLinearState(state.S, state.t), q)
