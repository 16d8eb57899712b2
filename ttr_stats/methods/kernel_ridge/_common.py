"""What the kernel-ridge methods share."""

from __future__ import annotations

from ... import _array
from ..kernel_smoother._common import final_cache  # noqa: F401 - every pair with its last log-weight


def empty(xp, P):
    return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device)


def gram_bytes(P):
    """The T x T Gram matrix, its factor and a few copies."""
    return 4 * P.n_batch * P.Q.shape[-2] * P.K.shape[-2] * P.itemsize


def cholesky(xp, reg, A):
    """Lower factor of ``A``; a matrix that is not numerically positive definite raises the regressor's
    FloatingPointError (increase ridge), whichever way the library reports it (NumPy and torch raise,
    CuPy returns NaN)."""
    try:
        with _array.quiet_overflow(xp):
            L = _array.cholesky(xp, A)
    except Exception as exc:
        if any(c.__name__ in ("LinAlgError", "_LinAlgError") for c in type(exc).__mro__):
            reg._check_pd(xp, xp.asarray(float("nan"), device=_array.device(A)))
        raise
    reg._check_pd(xp, L)
    return L
