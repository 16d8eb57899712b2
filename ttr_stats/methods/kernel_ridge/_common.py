"""What the kernel-ridge methods share."""

from __future__ import annotations

from ... import _array
from ...regressors.nonparametric import CacheState, last_log_weights


def final_cache(xp, P, *, always=False):
    """Every pair with its log-weight: 0 (weight 1, uniform weights only), ``-inf`` for a pair written
    with strength 0 (the padding of ``lengths``), which :meth:`KernelRidge.read` leaves out. ``None`` when
    the caller drops the state (``P.want_state`` false), unless ``always`` (the cache is read here)."""
    if not (always or P.want_state):
        return None
    return CacheState(P.K, P.V, last_log_weights(xp, P))


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
