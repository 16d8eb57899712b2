"""Argument checks shared by every component. Each error names the argument it is about."""

from __future__ import annotations

import math
import numbers


def check_finite(xp, name: str, x) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or an infinity."""
    if math.prod(x.shape) == 0:
        return
    if not bool(xp.all(xp.isfinite(x))):
        n_nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int64)))
        kind = "NaN" if n_nan else "infinite values"
        raise ValueError(f"{name} contains {kind}; every entry must be finite")


def renamed(name, value, old_name, old_value):
    """The value of a renamed argument: ``old_value`` (with a ``FutureWarning``) when the caller used the
    old spelling ``old_name``, else ``value``. Old spellings stay only where a public signature promised
    them."""
    if old_value is None:
        return value
    import warnings

    warnings.warn(
        f"{old_name}= is renamed {name}=; the old spelling will be removed in a future release",
        FutureWarning,
        stacklevel=3,
    )
    return old_value


def check_scalar(
    name: str,
    value,
    *,
    low=None,
    high=None,
    low_inclusive=True,
    high_inclusive=True,
    integer=False,
):
    """Validate a scalar hyperparameter; return it as ``float`` (or ``int`` when ``integer``)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value!r}")
    return value
