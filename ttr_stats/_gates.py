"""Validation and conversion of call-time gates (alpha / log_alpha / beta)."""

from __future__ import annotations

import math

from ._validation import check_finite


def resolve_log_alpha(xp, alpha, log_alpha):
    """Return log-gates from exactly one of ``alpha`` (in [0, 1]) and ``log_alpha`` (<= 0), or None.

    ``alpha = 0`` (a hard reset) becomes ``-inf``; every later computation is written to accept it.
    """
    if alpha is not None and log_alpha is not None:
        raise ValueError("alpha and log_alpha: pass at most one of them (log_alpha = log(alpha))")
    if alpha is not None:
        check_finite(xp, "alpha", alpha)
        if math.prod(alpha.shape) and bool(xp.any((alpha < 0) | (alpha > 1))):
            lo, hi = float(xp.min(alpha)), float(xp.max(alpha))
            raise ValueError(f"alpha must lie in [0, 1], got values in [{lo:g}, {hi:g}]")
        zero = alpha == 0
        safe = xp.where(zero, xp.ones((), dtype=alpha.dtype), alpha)
        return xp.where(zero, xp.asarray(-math.inf, dtype=alpha.dtype), xp.log(safe))
    if log_alpha is not None:
        check_finite(xp, "log_alpha", log_alpha)
        if math.prod(log_alpha.shape) and bool(xp.any(log_alpha > 0)):
            raise ValueError(f"log_alpha must be <= 0, got a maximum of {float(xp.max(log_alpha)):g}")
        return log_alpha
    return None


def check_beta(xp, beta):
    """``beta`` must be finite and strictly positive."""
    if beta is None:
        return None
    check_finite(xp, "beta", beta)
    if math.prod(beta.shape) and bool(xp.any(beta <= 0)):
        raise ValueError(f"beta must be > 0, got a minimum of {float(xp.min(beta)):g}")
    return beta
