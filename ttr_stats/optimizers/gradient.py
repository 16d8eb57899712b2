r"""Gradient optimizers: full-batch gradient descent on each prefix, and the online delta rule (LMS).

The delta-rule family shares one update, written once in :class:`DeltaRule`:

.. math:: M' = \alpha_t M_{t-1},\qquad M_t = \ell_t M' + \eta_t (v_t - M' k_t) k_t^\top

with the decay :math:`\alpha_t` from the weights applied *before* the read of the error (the gated delta
rule), a step size :math:`\eta_t` and a leak :math:`\ell_t` that each member defines.
"""

from __future__ import annotations

from .. import _array
from .._validation import check_scalar, renamed
from .base import MemoryState, Optimizer, SufficientStatistics, matvec, outer
from .closed_form import ClosedForm

__all__ = [
    "BatchGradientDescent",
    "DeltaRule",
    "LMS",
    "LeakyLMS",
    "leaky_lms_to_gated_deltanet",
    "gated_deltanet_to_leaky_lms",
]


class BatchGradientDescent(Optimizer):
    r"""``steps`` full-batch gradient steps from :math:`M = 0` on every prefix objective.

    .. math:: M^{(i)} = M^{(i-1)} - \eta\,(M^{(i-1)} R_t - S_t) = M^{(i-1)}(I - \eta R_t) + \eta S_t

    with :math:`R_t = \sum \gamma k k^\top`, :math:`S_t = \sum \gamma v k^\top` (the gradient is a sum, not a
    mean, as in the paper). One step with ``lr=1`` is linear attention; as ``steps`` grows with
    ``lr < 2/lambda_max(R_t)`` it converges to the minimum-norm least-squares solution.

    Parameters
    ----------
    steps : int >= 1
    lr : float > 0

    References
    ----------
    Wang, Shi & Fox (2025), §3 (batch GD row; linear attention as one unpreconditioned step).
    """

    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = (
        "Use a smaller step: lr ({name}(lr=...)) or the call-time beta (per-token step sizes), float64, "
        "or rescale the keys."
    )

    State = SufficientStatistics
    family = "batch_gd"

    def __init__(self, steps=1, lr=1.0):
        self.steps = steps
        self.lr = lr

    def _validate(self):
        check_scalar("steps", self.steps, low=1, integer=True)
        check_scalar("lr", self.lr, low=0.0, low_inclusive=False)

    init = ClosedForm.init
    update = ClosedForm.update
    downdate = ClosedForm.downdate

    def iterate(self, xp, R, S):
        """Run the GD iterations on statistics R (..., d, d), S (..., d_v, d); returns M (..., d_v, d)."""
        lr = float(self.lr)
        M = lr * S  # the first step from M = 0
        for _ in range(int(self.steps) - 1):
            M = M - lr * (xp.matmul(M, R) - S)
        return M

    def memory(self, state):
        xp = _array.namespace(state.R)
        return self.iterate(xp, state.R, state.S)


class DeltaRule(Optimizer):
    """Base of the delta-rule family (one online gradient step per written pair, warm start)."""

    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = (
        "Use a smaller step: beta (the recipe's beta= or the call-time beta), keeping beta ||k||^2 < 2; "
        "normalise the keys, or use nlms() / longhorn() (stable for any key scale), or float64."
    )

    State = MemoryState
    family = "delta"

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        return MemoryState(xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device))

    def step_size(self, xp, b, k):
        """The step :math:`\\eta_t` of shape (...) from the write gate ``b`` and the key ``k``."""
        return b

    def leak(self, xp, b):
        """The leak multiplying the decayed memory (``None``: none)."""
        return None

    def update(self, state, k, v, a, b):
        xp = _array.namespace(k)
        M = state.M * a[..., None]  # decay before the delta read (gated delta rule)
        eta = self.step_size(xp, b, k)
        err = v - matvec(xp, M, k)
        lk = self.leak(xp, b)
        if lk is not None:
            M = lk[..., None, None] * M
        return MemoryState(M + eta[..., None, None] * outer(err, k))

    def memory(self, state):
        return state.M


class LMS(DeltaRule):
    r"""Least mean squares: the delta rule of DeltaNet and fast weights.

    .. math:: M_t = M_{t-1}(I - \beta_t k_t k_t^\top) + \beta_t v_t k_t^\top

    (with decay gates, :math:`M_{t-1}` is first multiplied by :math:`\alpha_t`: Gated DeltaNet).

    Parameters
    ----------
    beta : float > 0
        Step size, overridden by a call-time ``beta`` array. Stable for unit keys when ``0 < beta < 2``.
    steps_per_token : int >= 1
        Pairs written per query (DeltaProduct): keys, values and ``beta`` then have length
        ``T * steps_per_token``, interleaved along time; decay gates stay per token (length T) and apply at
        the token's first write.

    References
    ----------
    Wang, Shi & Fox (2025), §2 (DeltaNet / LMS and DeltaProduct rows); Widrow & Hoff (1960).
    """

    def __init__(self, beta=1.0, steps_per_token=1):
        self.beta = beta
        self.steps_per_token = steps_per_token

    def _validate(self):
        check_scalar("beta", self.beta, low=0.0, low_inclusive=False)
        try:
            check_scalar("steps_per_token", self.steps_per_token, low=1, integer=True)
        except ValueError as exc:  # delta_product() users know it as n_householder
            raise ValueError(
                f"{exc} (pairs written per token; delta_product's n_householder): pass an integer >= 1"
            ) from None

    def default_beta(self):
        return float(self.beta)


class LeakyLMS(DeltaRule):
    r"""LMS on the L2-regularised loss :math:`\tfrac12\|v - Mk\|^2 + \tfrac\lambda2 \|M\|_F^2`.

    .. math:: M_t = (1 - \beta_t\lambda) M_{t-1} + \beta_t (v_t - M_{t-1} k_t) k_t^\top

    Gated DeltaNet is this update reparameterised (:func:`leaky_lms_to_gated_deltanet`).

    Parameters
    ----------
    beta : float > 0
        Step size (overridden by call-time ``beta``).
    l2 : float >= 0
        :math:`\lambda`, the L2 penalty (the memory leaks by :math:`1 - \beta_t\lambda` a step).
    decay : float >= 0, optional
        The old name of ``l2`` (it is an L2 penalty, not a forgetting decay); deprecated.
    """

    def __init__(self, beta=1.0, l2=0.01, *, decay=None):
        self.beta = beta
        # the old spelling warns once, here, and is folded into ``l2`` so that ``get_params``/``clone``
        # carry the value under its one current name
        self.l2 = renamed("l2", l2, "decay", decay)

    @classmethod
    def _get_param_names(cls):
        return ["beta", "l2"]

    def _validate(self):
        check_scalar("beta", self.beta, low=0.0, low_inclusive=False)
        check_scalar("l2", self.l2, low=0.0)

    def default_beta(self):
        return float(self.beta)

    def leak(self, xp, b):
        return 1.0 - b * float(self.l2)


def leaky_lms_to_gated_deltanet(beta, decay):
    r"""Map leaky-LMS parameters to Gated DeltaNet's: returns ``(alpha, eta, value_scale)``.

    :math:`\alpha = 1 - \beta\lambda`, :math:`\eta = \beta/\alpha`, and values are scaled by
    :math:`\alpha` (:math:`v' = \alpha v`). Works elementwise on floats or arrays.
    """
    alpha = 1.0 - beta * decay
    return alpha, beta / alpha, alpha


def gated_deltanet_to_leaky_lms(alpha, eta):
    r"""Inverse map: Gated DeltaNet's ``(alpha, eta)`` to leaky LMS's ``(beta, decay)``.

    :math:`\beta = \alpha\eta`, :math:`\lambda = (1 - \alpha)/(\alpha\eta)`; the values to feed leaky LMS
    are :math:`v = v'/\alpha`.
    """
    return alpha * eta, (1.0 - alpha) / (alpha * eta)
