"""Computation strategies behind ``layer(..., method=...)``.

* ``"recurrent"`` -- the generic loop over t (:mod:`.recurrent`): the definition of every algorithm.
* ``"direct"`` -- solve every prefix from the regression definition with the dense weight matrix Gamma
  (:mod:`.direct`): for exact optimizers, batch gradient descent and the identity-covariance family.
* ``"parallel"`` -- the T x T masked form ``(Q K^T * Gamma) V`` (:mod:`.parallel`): identity covariance.

Which optimizer supports which method is declared once, on the optimizer class (``Optimizer.methods``, in
the order ``"auto"`` prefers them); :func:`support_table` prints it.
"""

from __future__ import annotations

from .direct import direct
from .parallel import parallel
from .recurrent import Problem, recurrent

__all__ = ["Problem", "recurrent", "direct", "parallel", "METHODS", "support_table", "AUTO_MEMORY_BUDGET"]

METHODS = {"recurrent": recurrent, "direct": direct, "parallel": parallel}

#: bytes of intermediate arrays above which ``method="auto"`` falls back to a cheaper-memory method
AUTO_MEMORY_BUDGET = 256 * 2**20


def support_table() -> str:
    """A readable table: optimizer -> supported methods (first = preferred by ``"auto"``), windows,
    per-dimension decay."""
    from .. import optimizers as o

    rows = ["optimizer                 methods                          window  per-dim decay"]
    for cls in (
        o.IdentityCovariance,
        o.ClosedForm,
        o.RecursiveLeastSquares,
        o.BatchGradientDescent,
        o.LMS,
        o.LeakyLMS,
        o.Implicit,
        o.NLMS,
        o.MiniBatchGD,
        o.Momentum,
    ):
        rows.append(
            f"{cls.__name__:<25} {', '.join(cls.methods):<32} {'yes' if cls.supports_window else 'no':<7} "
            f"{'yes' if cls.supports_per_dimension else 'no'}"
        )
    return "\n".join(rows)


def estimate_bytes(method: str, P: Problem) -> int:
    """Rough size of the largest intermediates of ``method`` on problem ``P``."""
    import math

    B = math.prod(P.batch_shape) if P.batch_shape else 1
    T, dk, dv = P.T, P.d_k, P.d_v
    item = 8 if P.dtype == P.xp.float64 else 4
    per_dim = P.g.shape[-1] if P.g is not None else 1
    if method == "parallel":
        return B * T * T * (per_dim + 2) * item
    if method == "direct":
        return B * T * (T * (per_dim + 1) + dk * dk + 2 * dv * dk) * item
    return B * (dk * dk + dv * dk) * 4 * item
