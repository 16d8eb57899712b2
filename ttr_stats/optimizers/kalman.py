r"""The Kalman-filter view of recursive least squares: RLS is a Kalman filter whose state is static.

State-space model of the memory (one row of M per value coordinate, all rows sharing one covariance):

.. math:: M_t = M_{t-1} + W_t,\ \ \mathrm{vec}\,W_t \sim N(0, q\,I);\qquad
          v_t = M_t k_t + e_t,\ \ e_t \sim N(0, I/\beta_t);\qquad M_0 \sim N(0, I/\rho).

The filter (predict, then update with the pair written at t):

.. math::
    P_{t|t-1} &= P_{t-1}/\alpha_t + q I \\
    s_t &= \beta_t / (1 + \beta_t k_t^\top P_{t|t-1} k_t),\qquad g_t = s_t P_{t|t-1} k_t \\
    M_t &= M_{t-1} + (v_t - M_{t-1}k_t)\,g_t^\top,\qquad P_t = P_{t|t-1} - s_t P_{t|t-1}k_t k_t^\top P_{t|t-1}

and :math:`y_t = M_t q_t = E[M_t \mid v_{1..t}]\,q_t`, the posterior mean. Objective: the filtered mean is
the minimiser of :math:`\sum_{i\le t}\beta_i\|v_i - M_i k_i\|^2 + \rho\|M_0\|^2 + \tfrac1q\sum_{i\le t}
\|M_i - M_{i-1}\|^2` over the whole path, read at its last point.

* :math:`q = 0`, :math:`\alpha_t = 1`: the state is static and the filter is exactly
  :class:`~ttr_stats.optimizers.RecursiveLeastSquares` (ridge :math:`\rho`, weights :math:`\beta`).
* :math:`q = 0`, :math:`\alpha_t < 1`: dividing P by :math:`\alpha_t` (multiplicative covariance
  inflation) is exactly RLS's forgetting factor, so the identity holds for every gate (tested).
* :math:`q > 0` (what process noise adds): additive inflation -- every direction of P gains q per step,
  excited or not, so P is bounded below by q I (it never collapses to 0 along well-observed keys: a
  permanent step size of about :math:`q\|k\|^2`, LMS-like tracking) and bounded above in the directions
  the keys excite; RLS forgetting instead multiplies P, so unexcited directions wind up like
  :math:`\alpha^{-t}`. The path objective above is no longer a weighted least squares of one M.

References
----------
Kalman (1960); Haykin, *Adaptive Filter Theory* (2002), ch. 10 (RLS as a Kalman filter with a static
state). Wang, Shi & Fox (2025), §3 (the RLS row).
"""

from __future__ import annotations

from .. import _array
from .._validation import check_scalar
from .base import Optimizer, RLSState, matvec, outer

__all__ = ["KalmanFilter"]


class KalmanFilter(Optimizer):
    r"""A Kalman filter on the memory with random-walk process noise :math:`q I` (RLS when q = 0).

    Parameters
    ----------
    process_noise : float >= 0
        q, the variance added to each entry of M per step (a random walk).
    ridge : float > 0
        :math:`\rho`, the prior precision (:math:`P_0 = I/\rho`), as in RLS.
    """

    #: input dtypes it runs: a covariance update a step, like RLS; in float16 it was 2.3e-2 of max |y| off
    #: float64 at T = 20 (measured), so half precision is refused
    dtypes = ("float32", "float64")
    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = "Use a larger ridge ({name}(ridge=...)), float64, or rescale the keys."

    State = RLSState
    family = "kalman"
    needs_positive_decay = True

    def __init__(self, process_noise=0.0, ridge=1e-2):
        self.process_noise = process_noise
        self.ridge = ridge

    def _validate(self):
        check_scalar("process_noise", self.process_noise, low=0.0)
        check_scalar("ridge", self.ridge, low=0.0, low_inclusive=False)

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        P = xp.eye(d_k, dtype=dtype, device=device) / float(self.ridge)
        return RLSState(
            xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),
            xp.broadcast_to(P, tuple(batch_shape) + (d_k, d_k)),
        )

    def update(self, state, k, v, a, b):
        xp = _array.namespace(k)
        M, P = state
        if a is not None:
            P = P / a[..., 0, None, None]
        q = float(self.process_noise)
        if q:
            P = P + q * xp.eye(P.shape[-1], dtype=P.dtype, device=_array.device(P))
        Pk = matvec(xp, P, k)
        s = b / (1.0 + b * xp.sum(k * Pk, axis=-1))  # b = 0 (padding) is an exact no-op
        M = M + outer(v - matvec(xp, M, k), s[..., None] * Pk)
        # P - s (Pk Pk^T) stays exactly symmetric; not w w^T with w = sqrt(s) Pk, whose derivative is
        # infinite at s = 0 (padded steps), where autograd made NaN gradients
        return RLSState(M, P - s[..., None, None] * outer(Pk, Pk))

    def memory(self, state):
        return state.M
