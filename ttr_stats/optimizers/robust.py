r"""Robust attentional losses (Miras): a Huber or :math:`\ell_p` regression on every prefix, solved by IRLS.

Objective at step t (each value coordinate c is its own robust regression, as in statsmodels ``RLM``):

.. math:: M_t = \arg\min_M \sum_{i\le t}\gamma_i^{(t)} \sum_c \rho\big(v_{ic} - (M k_i)_c\big)
          + \tfrac{\lambda}{2}\|M\|_F^2,\qquad y_t = M_t q_t,

with :math:`\rho` the Huber loss (:math:`r^2/2` for :math:`|r|\le\delta`, :math:`\delta|r| - \delta^2/2`
beyond) or :math:`|r|^p/p`, :math:`1 \le p \le 2`. Optimizer: iteratively reweighted least squares from the
weighted least-squares solution, :math:`w_{ic} = \gamma_i\,\psi(r_{ic})/r_{ic}` (Huber:
:math:`\min(1, \delta/|r|)`; :math:`\ell_p`: :math:`\max(|r|, \epsilon)^{p-2}`), until the largest change of
M is below ``tol`` (relative); a prefix that has not converged after ``max_iter`` sweeps raises. The
threshold :math:`\delta` is fixed (statsmodels estimates a scale; its ``HuberT(t)`` with
``update_scale=False`` and initial scale s is :math:`\delta = t s`, what the test compares with).

The state is the weighted cache of pairs (the loss is not quadratic, so there are no sufficient
statistics): memory O(t d), O(t d^2) per IRLS sweep.

References
----------
Behrouz, Razaviyayn, Zhong & Mirrokni (2025), *It's All Connected: A Journey Through Test-Time
Memorization, Attentional Bias, Retention, and Online Optimization* (Miras), arXiv 2504.13173, §5
(Huber and :math:`\ell_p` attentional bias). Huber (1964); Holland & Welsch (1977) (IRLS).
"""

from __future__ import annotations

from typing import NamedTuple

from .. import _array
from .._validation import check_scalar
from .base import Optimizer

__all__ = ["RobustIRLS", "WeightedCache", "irls"]


class WeightedCache(NamedTuple):
    """Every written pair: ``K`` (..., n, d_k), ``V`` (..., n, d_v) and its current weight ``w`` (..., n)."""

    K: object
    V: object
    w: object


def irls(xp, K, V, w, *, loss, delta, p, ridge, max_iter, tol):
    """``M`` of shape (..., d_v, d_k) minimising the robust objective on one weighted cache."""
    d_k = K.shape[-1]
    eye = xp.eye(d_k, dtype=K.dtype, device=_array.device(K))
    Kt = xp.matrix_transpose(K)

    def wls(W):  # W (..., d_v, n): one weighted ridge solve per value coordinate
        A = xp.matmul(Kt[..., None, :, :] * W[..., :, None, :], K[..., None, :, :]) + ridge * eye
        rhs = xp.sum(Kt[..., None, :, :] * (W * xp.matrix_transpose(V))[..., :, None, :], axis=-1)
        return xp.linalg.solve(A, rhs[..., None])[..., 0]

    W0 = xp.broadcast_to(w[..., None, :], w.shape[:-1] + (V.shape[-1], w.shape[-1]))
    M = wls(W0)
    for _ in range(int(max_iter)):
        r = xp.matrix_transpose(V) - xp.matmul(M, Kt)  # (..., d_v, n)
        a = xp.abs(r)
        if loss == "huber":
            one = xp.ones((), dtype=a.dtype, device=_array.device(a))
            f = xp.where(a <= delta, one, delta / xp.maximum(a, 1e-300 + 0 * a))
        else:
            f = xp.maximum(a, 1e-8 + 0 * a) ** (p - 2.0)
        new = wls(W0 * f)
        change = float(xp.max(xp.abs(new - M))) if new.size else 0.0
        scale = 1.0 + (float(xp.max(xp.abs(new))) if new.size else 0.0)
        M = new
        if change <= tol * scale:
            return M
    raise ArithmeticError(
        f"max_iter: IRLS for the {loss} loss did not converge in {max_iter} sweeps (last change "
        f"{change:.3g}); raise max_iter or tol, or use a larger delta / p closer to 2"
    )


class RobustIRLS(Optimizer):
    r"""A Huber / :math:`\ell_p` test-time regression on every prefix, solved by IRLS (Miras).

    Parameters
    ----------
    loss : {"huber", "lp"}
    delta : float > 0
        Huber threshold (in the units of v).
    p : float in [1, 2]
        Exponent of the :math:`\ell_p` loss.
    ridge : float > 0
        :math:`\lambda` (keeps early prefixes, t < d_k, well posed).
    max_iter, tol :
        IRLS sweeps and relative tolerance on the change of M.
    """

    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = "Use a larger ridge ({name}(ridge=...)), float64, or rescale the keys."

    State = WeightedCache
    family = "robust"

    def __init__(self, loss="huber", delta=1.0, p=1.5, ridge=1e-6, max_iter=200, tol=1e-12):
        self.loss = loss
        self.delta = delta
        self.p = p
        self.ridge = ridge
        self.max_iter = max_iter
        self.tol = tol

    def _validate(self):
        if self.loss not in ("huber", "lp"):
            raise ValueError(f"loss must be 'huber' or 'lp', got {self.loss!r}")
        check_scalar("delta", self.delta, low=0.0, low_inclusive=False)
        check_scalar("p", self.p, low=1.0, high=2.0)
        check_scalar("ridge", self.ridge, low=0.0, low_inclusive=False)
        check_scalar("max_iter", self.max_iter, low=1, integer=True)
        check_scalar("tol", self.tol, low=0.0, low_inclusive=False)

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        b = tuple(batch_shape)
        return WeightedCache(
            xp.zeros(b + (0, d_k), dtype=dtype, device=device),
            xp.zeros(b + (0, d_v), dtype=dtype, device=device),
            xp.zeros(b + (0,), dtype=dtype, device=device),
        )

    def check_state(self, xp, state, batch_shape, d_k, d_v, dtype, name="initial_state"):
        """A cache of any length n (the template's n = 0 is not a constraint)."""
        if not isinstance(state, WeightedCache):
            raise ValueError(f"{name} must be a WeightedCache(K, V, w) for RobustIRLS, got {type(state)}")
        K, V, w = (xp.asarray(x, dtype=dtype) for x in state)
        n = K.shape[-2]
        if K.shape[-1] != d_k or V.shape[-1] != d_v or V.shape[-2] != n or w.shape[-1] != n:
            raise ValueError(
                f"{name}: a WeightedCache of (..., n, {d_k}), (..., n, {d_v}), (..., n), got "
                f"{tuple(K.shape)}, {tuple(V.shape)}, {tuple(w.shape)}"
            )
        b = tuple(batch_shape)
        return WeightedCache(
            xp.asarray(xp.broadcast_to(K, b + (n, d_k)), copy=True),
            xp.asarray(xp.broadcast_to(V, b + (n, d_v)), copy=True),
            xp.asarray(xp.broadcast_to(w, b + (n,)), copy=True),
        )

    def update(self, state, k, v, a, b):
        xp = _array.namespace(k)
        w = state.w if a is None else state.w * a
        return WeightedCache(
            xp.concat([state.K, k[..., None, :]], axis=-2),
            xp.concat([state.V, v[..., None, :]], axis=-2),
            xp.concat([w, b[..., None]], axis=-1),
        )

    def memory(self, state):
        xp = _array.namespace(state.K)
        return irls(xp, state.K, state.V, state.w, loss=self.loss, delta=float(self.delta),
                    p=float(self.p), ridge=float(self.ridge), max_iter=self.max_iter,
                    tol=float(self.tol))  # fmt: skip
