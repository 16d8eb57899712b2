r"""Recursive least squares (Sherman-Morrison), the sequential form of the exact solution."""

from __future__ import annotations

import math

from .. import _array, _validation
from .._validation import check_scalar
from .base import Optimizer, RLSState, matvec, outer

__all__ = ["RecursiveLeastSquares"]


class RecursiveLeastSquares(Optimizer):
    r"""Recursive least squares with forgetting factor (the Mesa layer's recursion).

    With the combined per-step decay :math:`\gamma_t` (weights' ``alpha`` times ``forgetting``) and
    write strength :math:`\beta_t`:

    .. math::

        g_t &= \beta_t P_{t-1} k_t / (\gamma_t + \beta_t k_t^\top P_{t-1} k_t) \\
        M_t &= M_{t-1} + (v_t - M_{t-1} k_t)\, g_t^\top \\
        P_t &= (P_{t-1} - g_t k_t^\top P_{t-1}) / \gamma_t,\qquad P_0 = I/\rho,\ M_0 = 0.

    The gain is written with :math:`\beta_t` in the numerator, not as :math:`\gamma_t/\beta_t` in the
    denominator, so that :math:`\beta_t = 0` (a padded step of ``lengths``) is an exact no-op
    (:math:`g_t = 0`) rather than a division by zero.

    P is re-symmetrised every step (the unsymmetrised update lets skew rounding error grow like
    :math:`\gamma^{-t}`). This is *exactly* :math:`M_t = S_t (R_t + \rho\,\Pi_{j\le t}\gamma_j\, I)^{-1}`: the
    prior decays with the forgetting factor, unlike :class:`ClosedForm`, whose ridge stays fixed. The direct
    method solves that closed form on every prefix.

    Parameters
    ----------
    ridge : float > 0
        :math:`\rho` (the prior precision, ``P_0 = I / ridge``).
    forgetting : float in (0, 1]
        Constant forgetting factor, multiplied with any decay from the weights or call-time gates.

    Notes
    -----
    Under decay, key directions that are never excited wind up (:math:`P` grows like
    :math:`\gamma^{-t}`, theory §5.2), and because the prior decays too, the exact solution needs
    cond(:math:`R_t`) ~ :math:`e^{|\log\alpha| (d_k - 1)}`. Every method computes in float64 (float32
    inputs included, cast back) and returns either the weighted least squares solution or a
    ``FloatingPointError`` naming the gate and the remedy, never a finite wrong number:

    * ``recurrent`` (this update, the definition): refuses when :math:`\|R_t\|_F\|P_t\|_F\,\epsilon/\gamma_t`
      exceeds 1e-5 (1e-3 without decay); returned outputs within about 5e-5 of max |V| (measured 1e-7 at
      worst; 1e-9 at the default ridge);
    * ``direct``: refuses a prefix with :math:`\|R_t\|_F\|R_t^{-1}\|_F\,\epsilon > 10^{-6}`;
    * ``chunked`` (what ``auto`` picks from T = 64 on the host, and on a device): refuses chunk starts with
      cond * eps > 1e-3 (4e-6 of max |V| measured at the edge); float32 within 5e-8 of float64;
    * a decay that underflows to 0 (log alpha below about -745) is refused by all of them.

    At ridge 1e-6 and d_k = 6 the loop refuses from about log alpha = -2 on and the chunked method from
    about -5. :class:`ClosedForm` (``mesa``) with a fixed ridge has no such failure.

    References
    ----------
    Wang, Shi & Fox (2025), §3; von Oswald et al. (2023), the Mesa layer.
    """

    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = "Use a larger ridge ({name}(ridge=...)), float64, or rescale the keys."

    State = RLSState
    family = "rls"
    exact = True
    needs_positive_decay = True

    def __init__(self, ridge=1e-6, forgetting=1.0):
        self.ridge = ridge
        self.forgetting = forgetting

    def _validate(self):
        check_scalar("ridge", self.ridge, low=0.0, low_inclusive=False)
        check_scalar("forgetting", self.forgetting, low=0.0, high=1.0, low_inclusive=False)

    def log_forgetting(self) -> float:
        import math

        return math.log(float(self.forgetting))

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        P = xp.eye(d_k, dtype=dtype, device=device) / float(self.ridge)
        return RLSState(
            xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),
            xp.broadcast_to(P, tuple(batch_shape) + (d_k, d_k)),
        )

    #: the generic loop may pass ``a=None`` when no gate of the call decays (gamma = 1: no division)
    skips_unit_decay = True

    def update(self, state, k, v, a, b):
        xp = _array.namespace(k)
        M, P = state
        Pk = matvec(xp, P, k)
        # s = b / (gamma + b k^T P k): b = 0 gives s = 0 exactly (gamma / b would divide by zero)
        kPk = xp.sum(k * Pk, axis=-1)
        s = b / (kPk * b + (1.0 if a is None else a[..., 0]))
        M = M + outer(v - matvec(xp, M, k), s[..., None] * Pk)
        # P - s (Pk Pk^T): (Pk_i Pk_j) s = (Pk_j Pk_i) s exactly, so a symmetric P stays exactly symmetric
        # with no symmetrising pass. (Not w w^T with w = sqrt(s) Pk: sqrt has an infinite derivative at
        # s = 0, the padded steps of lengths=, where autograd then made 0 * inf = NaN gradients.)
        P = P - s[..., None, None] * outer(Pk, Pk)
        if a is not None:
            P = P / a[..., 0, None, None]
        return RLSState(M, P)

    def memory(self, state):
        return state.M

    def prior_precision(self, state, deferred=False):
        """R_0 = P_0^{-1} (the prior in closed form), shape (..., d_k, d_k).

        ``deferred``: on a torch device whose checks wait (:func:`ttr_stats._validation.defers`), solve
        without the library's error check (a host synchronisation on CUDA); a singular P_0 gives NaN, which
        the caller refuses with its outputs.
        """
        xp = _array.namespace(state.P)
        d = state.P.shape[-1]
        eye = xp.broadcast_to(xp.eye(d, dtype=state.P.dtype, device=_array.device(state.P)), state.P.shape)
        if deferred and _validation.defers(state.P):
            import torch

            R, info = torch.linalg.solve_ex(state.P, eye)
            return torch.where((info == 0)[..., None, None], R, math.nan)
        try:
            return xp.linalg.solve(state.P, eye)
        except Exception as exc:
            if "LinAlgError" in type(exc).__name__:  # NumPy's, torch's and CuPy's all carry the name
                raise singular_prior_error() from None
            raise


def singular_prior_error():
    """The error of a singular prior covariance (``initial_state``'s P has no inverse)."""
    return ValueError(
        "initial_state: its P (the prior covariance P_0) is singular, so the prior precision P_0^{-1} does "
        "not exist; pass a symmetric positive definite P (the default is I / ridge)"
    )
