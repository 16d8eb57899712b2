r"""Adaptive-step delta rules: the implicit (proximal) update of Longhorn and normalised LMS."""

from __future__ import annotations

from .. import _array
from .._validation import check_scalar
from .gradient import DeltaRule

__all__ = ["Implicit", "NLMS"]


class Implicit(DeltaRule):
    r"""Implicit (proximal) online step: Longhorn.

    .. math:: M_t = \arg\min_M \tfrac12\|M - M_{t-1}\|_F^2 + \tfrac{\delta_t}{2}\|v_t - M k_t\|^2,

    whose closed form is the delta rule with :math:`\beta_t = \delta_t / (1 + \delta_t \|k_t\|^2)`
    (an effective NLMS step :math:`\delta\|k\|^2/(1+\delta\|k\|^2) < 1`: unconditionally stable).

    Parameters
    ----------
    delta : float > 0
        Proximal strength :math:`\delta`, overridden by a call-time ``beta`` array.

    References
    ----------
    Wang, Shi & Fox (2025), §2 (Longhorn row); Liu et al. (2024), Longhorn.
    """

    def __init__(self, delta=1.0):
        self.delta = delta

    def _validate(self):
        check_scalar("delta", self.delta, low=0.0, low_inclusive=False)

    def default_beta(self):
        return float(self.delta)

    def step_size(self, xp, b, k):
        return b / (1.0 + b * xp.sum(k * k, axis=-1))


class NLMS(DeltaRule):
    r"""Normalised LMS (Kaczmarz): step :math:`\beta_t/\|k_t\|^2`.

    With ``beta = 1`` it is the limit :math:`\delta\to\infty` of :class:`Implicit`,
    :math:`\min\|M - M_{t-1}\|` subject to :math:`M k_t = v_t`: the current pair is stored exactly.
    A zero key leaves the memory unchanged (step 0).

    Parameters
    ----------
    beta : float > 0
        Relative step (1: exact interpolation of the current pair), overridden by call-time ``beta``.
    """

    def __init__(self, beta=1.0):
        self.beta = beta

    def _validate(self):
        check_scalar("beta", self.beta, low=0.0, low_inclusive=False)

    def default_beta(self):
        return float(self.beta)

    def step_size(self, xp, b, k):
        n2 = xp.sum(k * k, axis=-1)
        ok = n2 > 0
        zero = xp.zeros((), dtype=n2.dtype, device=_array.device(n2))
        return xp.where(ok, b / xp.where(ok, n2, zero + 1), zero)
