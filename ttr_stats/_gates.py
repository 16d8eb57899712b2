"""Validation and conversion of call-time gates (alpha / log_alpha / beta)."""

from __future__ import annotations

import math


def resolve_log_alpha(xp, alpha, log_alpha, checks=None):
    """Return log-gates from exactly one of ``alpha`` (in [0, 1]) and ``log_alpha`` (<= 0), or None.

    ``alpha = 0`` (a hard reset) becomes ``-inf``; every later computation is written to accept it.
    Under autograd the gradient with respect to such an ``alpha`` entry is 0 in every method, where the
    layer's true derivative (it is linear in each alpha_t) is not: train gates through ``log_alpha`` (e.g.
    ``logsigmoid``) or keep ``alpha > 0``; elsewhere gradients equal the loop's (tests/test_torch_grad.py).

    ``checks``: a call's :class:`~ttr_stats._validation.Deferred`, which keeps the verdicts of the range
    and finiteness checks on the device until the call reads them with its output; None checks at once.
    """
    if alpha is not None and log_alpha is not None:
        raise ValueError("alpha and log_alpha: pass at most one of them (log_alpha = log(alpha))")
    checks = _eager(xp, checks)
    if alpha is not None:

        def out_of_range():
            lo, hi = float(xp.min(alpha)), float(xp.max(alpha))
            return ValueError(f"alpha must lie in [0, 1], got values in [{lo:g}, {hi:g}]")

        checks.finite_within("alpha", alpha, 0.0, 1.0, error=out_of_range)
        zero = alpha == 0
        dev = _device_of(alpha)
        safe = xp.where(zero, xp.ones((), dtype=alpha.dtype, device=dev), alpha)
        return xp.where(zero, xp.asarray(-math.inf, dtype=alpha.dtype, device=dev), xp.log(safe))
    if log_alpha is not None:

        def too_big():
            return ValueError(f"log_alpha must be <= 0, got a maximum of {float(xp.max(log_alpha)):g}")

        checks.finite_within("log_alpha", log_alpha, hi=0.0, error=too_big)
        return log_alpha
    return None


def _eager(xp, checks):
    """``checks`` (a :class:`~ttr_stats._validation.Deferred` of the call), or one that checks at once."""
    if checks is not None:
        return checks
    from ._validation import Deferred

    return Deferred(xp, lazy=False)


def check_decay_representable(xp, g, who, dtype=None):
    """Refuse log-decays whose decay ``exp(g)`` underflows to 0 in ``dtype`` (default: g's own).

    For optimizers that divide by the decay (RLS: ``P <- (P - g k^T P) / alpha``). ``alpha = 0`` itself
    (``g = -inf``) is refused earlier, by the layer, as a ValueError; a finite ``log_alpha`` such as -1e4
    passes that check but ``exp(-1e4)`` is exactly 0 in float64 (below about -745; -104 in float32), so
    the division would turn the state into inf / NaN. Raises ``FloatingPointError`` naming the gate and
    the remedy; ``who`` names the optimizer in the message.
    """
    if g is None or not math.prod(g.shape):
        return
    if dtype is not None and g.dtype != dtype:
        g = xp.astype(g, dtype)
    under = (xp.exp(g) == 0) & (g > -math.inf)
    if bool(xp.any(under)):
        lo = float(xp.min(xp.where(under, g, xp.zeros((), dtype=g.dtype, device=_device_of(g)))))
        raise FloatingPointError(
            f"log_alpha / alpha: {who} divides by the decay alpha = exp(log_alpha), and exp({lo:g}) "
            f"underflows to 0 in {g.dtype} (below about -745 in float64, -104 in float32). A decay this "
            "strong forgets every earlier pair; use log_alpha >= -50, or ClosedForm(ridge=...) (the mesa "
            "recipe), whose fixed ridge keeps every prefix well posed at any decay."
        )


def check_beta(xp, beta, checks=None):
    """``beta`` must be finite and strictly positive (``checks``: see :func:`resolve_log_alpha`)."""
    if beta is None:
        return None
    checks = _eager(xp, checks)
    checks.finite_within(
        "beta", beta, lo=0.0, lo_open=True,
        error=lambda: ValueError(f"beta must be > 0, got a minimum of {float(xp.min(beta)):g}"),
    )  # fmt: skip
    return beta


def check_lengths(xp, lengths, batch_shape, T, device=None):
    """``lengths`` as an integer array of the batch shape with values in [0, T]; errors name it."""
    import numpy as np

    from . import _array

    host = _array.to_numpy(lengths) if _array.is_array(lengths) else np.asarray(lengths)
    if host.dtype.kind not in "iu" and not (
        host.dtype.kind == "f" and host.size and np.all(np.isfinite(host)) and np.all(host == np.round(host))
    ):
        raise ValueError(f"lengths must hold integers (valid tokens per sequence), got dtype {host.dtype}")
    try:
        host = np.broadcast_to(host.astype(np.int64), tuple(batch_shape))
    except ValueError as exc:
        raise ValueError(
            f"lengths must have the batch shape {tuple(batch_shape)} (one length per sequence), got shape "
            f"{tuple(host.shape)}"
        ) from exc
    if host.size and (host.min() < 0 or host.max() > T):
        raise ValueError(f"lengths must lie in [0, T] = [0, {T}], got values in [{host.min()}, {host.max()}]")
    return xp.asarray(np.array(host), device=device)  # a writable copy: torch warns on read-only views


def _token_mask(xp, lengths, T, steps):
    """valid[..., i] for the T * steps written pairs (pair i belongs to token i // steps)."""
    pos = xp.arange(T * steps, device=_device_of(lengths)) // steps
    return pos < lengths[..., None]


def _device_of(x):
    from . import _array

    return _array.device(x)


def mask_padding(xp, lengths, K, V, g, b, steps, *, nonparametric=False):
    """Make the padded steps identities: zero keys, values, log-decays and write strengths.

    Parameters
    ----------
    lengths : integer array of shape batch_shape
    K : array of shape (..., T * steps, d_k)
    V : array of shape (..., T * steps, d_v)
    g : array of shape (..., T, 1) or (..., T, d_k)
        Per-token log-decay.
    b : array of shape (..., T * steps)
        Write strengths / step sizes.
    steps : int
        Pairs written per token.
    nonparametric : bool
        Kept for the callers; the padded pairs get write strength 0 (log-weight -inf, excluded) for every
        family.

    Returns
    -------
    K, V, g, b : the same shapes, with the padded pairs and tokens replaced

    Notes
    -----
    A zero log-decay keeps the state, and a pair written with strength 0 writes nothing. Zero keys and
    values alone are not enough: the regressor's feature map runs after this and may send a zero key to a
    nonzero feature (``elu_plus_one``, Taylor, positive random features), which a normalised layer would
    add to its normaliser ``z``; the zero strength removes it. Replacing (``where``), not multiplying,
    keeps huge garbage in the padding out of every sum (0 * 1e300 is 0, 1e300 * 1e300 is not).
    """
    T = g.shape[-2]
    valid = _token_mask(xp, lengths, T, steps)  # (..., T * steps)
    zero = xp.zeros((), dtype=K.dtype, device=_device_of(K))
    K = xp.where(valid[..., None], K, zero)
    V = xp.where(valid[..., None], V, zero)
    tok = xp.arange(T, device=_device_of(lengths)) < lengths[..., None]  # (..., T)
    g = xp.where(tok[..., None], g, zero)
    b = xp.where(valid, b, zero)
    return K, V, g, b


def mask_queries(xp, lengths, Q):
    """Queries at padded positions set to 0: Q (..., T, d_k).

    Their outputs are padding (set to 0 by :func:`zero_padding`), but a huge or non-finite query there
    would still overflow a feature map or a read, and the layer's finiteness check would then reject a
    valid call; a zero query reads a finite value from any memory.
    """
    tok = xp.arange(Q.shape[-2], device=_device_of(lengths)) < lengths[..., None]
    return xp.where(tok[..., None], Q, xp.zeros((), dtype=Q.dtype, device=_device_of(Q)))


def zero_padding(xp, Y, lengths):
    """Outputs at padded positions set to 0: Y (..., T, d_v)."""
    tok = xp.arange(Y.shape[-2], device=_device_of(lengths)) < lengths[..., None]
    return xp.where(tok[..., None], Y, xp.zeros((), dtype=Y.dtype, device=_device_of(Y)))


def roll_rows(xp, X, shift, axis_len, batch_shape, steps=1):
    r"""``X`` (..., axis_len * steps, e) with each sequence's rows rolled forward by ``shift * steps``:
    ``out[t] = X[(t - shift * steps) mod n]``; ``shift`` is an integer array of shape ``batch_shape``.

    With ``shift = T - lengths`` the padding (identity steps) moves in front of each sequence and its
    valid tokens end at T, where a windowed method's final state is read (:func:`right_align`).
    A negative shift undoes it.
    """
    n = axis_len * steps
    X = xp.broadcast_to(X, tuple(batch_shape) + tuple(X.shape[-2:]))
    t = xp.arange(n, device=_device_of(X))
    idx = xp.remainder(t - xp.astype(shift, t.dtype)[..., None] * steps, n)  # (..., n)
    idx = xp.broadcast_to(idx[..., None], idx.shape + (X.shape[-1],))
    return xp.take_along_axis(X, idx, axis=-2)


def right_align(xp, P):
    """``(P', shift)``: the problem with each padded sequence rolled so that its valid tokens end at T.

    Under a sliding window the padding steps are identities for the state's contents but still move the
    window: a method that reads its final state after step T (the dense and chunked forms) would return
    the window after the padding, pairs removed by steps that do not exist. Rolling the padding to the
    front makes step T the sequence's last valid step; the outputs are rolled back by the caller.
    """
    shift = P.T - xp.astype(P.lengths, xp.int64)
    bs, T, steps = P.batch_shape, P.T, P.steps_per_token
    Q = roll_rows(xp, P.Q, shift, T, bs)
    K = roll_rows(xp, P.K, shift, T, bs, steps)
    V = roll_rows(xp, P.V, shift, T, bs, steps)
    g = roll_rows(xp, P.g, shift, T, bs)
    b = roll_rows(xp, P.b[..., None], shift, T, bs, steps)[..., 0]
    return P._replace(Q=Q, K=K, V=V, g=g, b=b), shift
