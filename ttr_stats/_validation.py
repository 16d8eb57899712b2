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


def check_bool(name: str, value) -> bool:
    """``value`` as a ``bool``; a string such as ``"False"`` (truthy!) or a number is a ``TypeError``."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); pass a bool")


def check_not_text(name: str, value) -> None:
    """Refuse text where numbers are expected: ``alpha="0.5"`` would otherwise be parsed as 0.5.

    ``TypeError`` naming ``name`` for a ``str``/``bytes`` or an array-like of strings or objects; arrays of
    an array library and numbers pass (their dtype is checked later)."""
    import numpy as np

    from . import _array

    if value is None or _array.is_array(value):
        if isinstance(value, np.ndarray) and value.dtype.kind in "USO":
            raise TypeError(
                f"{name} must be a numeric array, got dtype {value.dtype}; pass numbers, not text"
            )
        return
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be numeric, got the string {value!r}; pass a number or an array of numbers"
        )
    if isinstance(value, (list, tuple)):
        try:
            kind = np.asarray(value).dtype.kind
        except (TypeError, ValueError):  # ragged: as_float_arrays reports it
            return
        if kind in "USO":
            raise TypeError(f"{name} must be numeric, got a sequence holding text or objects; pass numbers")


def check_counts(name: str, value, *, low=1):
    """``value`` (a number or an array of them) as a float64 array, every entry finite and ``>= low``.

    For the closed forms of :mod:`ttr_stats.diagnostics`, whose formulas give finite nonsense outside their
    domain (a self weight above 1 at n = 0, a recall error of -1/d ...)."""
    import numpy as np

    if isinstance(value, (str, bytes)) or np.asarray(value).dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if arr.size and np.min(arr) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return arr
