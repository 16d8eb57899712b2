r"""Higher-order (second-order) linear attention: multiply by the key second moment where RLS inverts it.

.. math:: R_t = \alpha_t R_{t-1} + \beta_t k_t k_t^\top,\qquad S_t = \alpha_t S_{t-1} + \beta_t v_t k_t^\top,
          \qquad y_t = S_t R_t q_t

against RLS's :math:`y_t = S_t R_t^{-1} q_t` (the exact weighted least squares) and linear attention's
:math:`y_t = S_t q_t` (:math:`R \approx I`). Regression view: the readout of the weighted least-squares
statistics through the *forward* operator :math:`R_t` instead of its inverse -- the query is mapped to
:math:`R_t q_t`, the key-covariance-weighted direction, so the layer emphasises the directions the keys
excite where least squares whitens them. There is no objective that this minimises exactly; it is the
second-order term of a polynomial in :math:`R_t` (the inverse's Neumann series would alternate in sign).

Convention: HLA's own second-order statistic pairs values with past *queries*,
:math:`o_t = q_t^\top S^K_t C^{QV}_t`, :math:`C^{QV}_t = \sum_i q_i v_i^\top`; the update protocol here
passes only :math:`(k_i, v_i)`, so this is the key-key form (:math:`C = \sum_i k_i v_i^\top`) and HLA's
extra causal correction term :math:`G_t` does not arise. No query scaling, no normaliser.

References
----------
Zhang, Qin & Gu (2025), *Higher-order Linear Attention*, arXiv 2510.27258 (second-order HLA).
"""

from __future__ import annotations

from .. import _array
from .base import Optimizer, SufficientStatistics, matvec, outer

__all__ = ["HigherOrderLinearAttention"]


class HigherOrderLinearAttention(Optimizer):
    """Second-order linear attention, :math:`y_t = S_t R_t q_t` (state: the statistics ``(R, S)``)."""

    State = SufficientStatistics
    family = "higher_order"

    def __init__(self):
        pass

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        return SufficientStatistics(
            xp.zeros(tuple(batch_shape) + (d_k, d_k), dtype=dtype, device=device),
            xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),
        )

    def update(self, state, k, v, a, b):
        R, S = state
        bb = b[..., None]
        if a is not None:
            R, S = R * a[..., 0, None, None], S * a[..., 0, None, None]
        return SufficientStatistics(R + outer(bb * k, k), S + outer(bb * v, k))

    def memory(self, state):
        xp = _array.namespace(state.S)
        return xp.matmul(state.S, state.R)

    def read(self, state, q):
        xp = _array.namespace(q)
        return matvec(xp, state.S, matvec(xp, state.R, q))
