r"""How long a layer remembers, and how well online solvers track a regression (theory §4).

* :func:`weight_profile`, :func:`effective_window` -- the weights :math:`\gamma_i^{(T)}` of a gated layer
  and the number of recent steps that carry most of them; :func:`constant_decay_window` in closed form.
* :func:`simulate_online_regression` -- Monte Carlo of an online layer on :math:`v = Wk + \sigma\varepsilon`
  (replications as the batch dimension), giving :math:`\|M_t - W\|^2` and the excess MSE.
* Theory: :func:`lms_learning_curve`, :func:`lms_misadjustment` (delta rule = LMS) and
  :func:`rls_excess_error` (RLS with forgetting).

References
----------
Wang, Shi & Fox (2025), *Test-time regression*, arXiv 2501.12352, §2 (weights column, DeltaNet/LMS and
RLS rows); theory.md §4; Haykin, *Adaptive Filter Theory* (LMS misadjustment, RLS with forgetting).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _array
from .._validation import check_counts, check_scalar
from ..datasets import random_keys
from ..optimizers import DeltaRule

__all__ = [
    "weight_profile",
    "effective_window",
    "constant_decay_window",
    "lms_learning_curve",
    "lms_misadjustment",
    "rls_excess_error",
    "simulate_online_regression",
    "OnlineRegression",
]

_GATES = ("alpha", "log_alpha", "beta")


def weight_profile(layer, T, **gates):
    r"""The weights :math:`\gamma_i^{(T)}`, i = 1..T, that the layer's regression puts on each pair at step T.

    Parameters
    ----------
    layer : TestTimeRegression
        A layer with explicit weights: the linear-attention family, exact solvers (least squares, RLS,
        Mesa), batch GD and the nonparametric (attention) layers.
    T : int >= 1
        Sequence length.
    **gates
        ``alpha`` or ``log_alpha`` of shape (..., T), ``beta`` of shape (..., T), as in a call.

    Returns
    -------
    array of shape (..., T)
        The last row of the dense :math:`\Gamma` (times the optimizer's own forgetting factor, for RLS);
        NumPy unless the gates come from another library.

    Raises
    ------
    ValueError
        For delta rules (LMS / DeltaNet, Longhorn, NLMS, leaky LMS): one SGD step per token solves no
        weighted regression, so its weights :math:`\gamma_i^{(t)}` are not defined (the recency is
        implicit in the products :math:`\prod (I - \beta_j k_j k_j^\top)`); and for per-dimension gates.

    Notes
    -----
    :math:`\gamma_i^{(T)} = \beta_i \prod_{j=i+1}^{T}\alpha_j \lambda\, \mathbb 1[T - i < w]` with the
    optimizer's forgetting :math:`\lambda` (1 except for RLS).

    References
    ----------
    Wang, Shi & Fox (2025), §2 (the weights column of the taxonomy).

    Examples
    --------
    >>> import ttr_stats as tt
    >>> from ttr_stats.diagnostics.memory import weight_profile
    >>> weight_profile(tt.recipes.retnet(0.5), 4)
    array([0.125, 0.25 , 0.5  , 1.   ])
    """
    opt = layer.optimizer
    if isinstance(opt, DeltaRule):
        raise ValueError(
            f"layer: the optimizer {type(opt).__name__} is a delta rule (one online gradient step per "
            "token); it solves no weighted regression, so its weights gamma_i^(t) are not defined (its "
            "recency is implicit in the products of (I - beta_j k_j k_j^T)). Use lms_learning_curve for "
            "its memory instead."
        )
    bad = sorted(set(gates) - set(_GATES))
    if bad:
        raise ValueError(f"{bad[0]}: unknown gate; weight_profile accepts {', '.join(_GATES)}")
    T = check_scalar("T", T, low=1, integer=True)
    layer.weights._validate()
    opt._validate()
    row = layer.weights.matrix(T, **gates)[..., -1, :]
    lf = float(opt.log_forgetting())
    if lf:
        xp = _array.namespace(row)
        lag = xp.astype(xp.arange(T - 1, -1, -1, device=_array.device(row)), row.dtype)
        row = row * xp.exp(lf * lag)
    return row


def effective_window(layer, T, mass=0.9, **gates):
    r"""How many of the most recent steps carry a fraction ``mass`` of the layer's weight at step T.

    Parameters
    ----------
    layer : TestTimeRegression
        As in :func:`weight_profile` (delta rules raise).
    T : int
    mass : float in (0, 1], or None
        Fraction of the total weight. ``None`` returns the *equivalent window*
        :math:`\sum_i \gamma_i^{(T)} / \gamma_T^{(T)}` instead: the width of a uniform window with the same
        total weight (for constant decay :math:`\sum_j\gamma^j \to 1/(1-\gamma)`).
    **gates
        As in :func:`weight_profile`.

    Returns
    -------
    array of shape (...)
        Integer w: the smallest w with
        :math:`\sum_{i > T - w}\gamma_i^{(T)} \ge \text{mass}\sum_i\gamma_i^{(T)}` (or the float equivalent
        window when ``mass=None``).

    Notes
    -----
    Constant decay :math:`\gamma`: :func:`constant_decay_window` gives both in closed form,
    :math:`\lceil \log(1 - \text{mass}(1-\gamma^T))/\log\gamma\rceil` and :math:`(1-\gamma^T)/(1-\gamma)`.

    References
    ----------
    theory.md §4 (RLS memory :math:`\sum\gamma^j = 1/(1-\gamma)`).

    Examples
    --------
    >>> import ttr_stats as tt
    >>> from ttr_stats.diagnostics.memory import effective_window
    >>> int(effective_window(tt.recipes.retnet(0.9), 500, mass=0.9))
    22
    """
    w = weight_profile(layer, T, **gates)
    xp = _array.namespace(w)
    total = xp.sum(w, axis=-1)
    if mass is None:
        return total / w[..., -1]
    mass = check_scalar("mass", mass, low=0.0, high=1.0, low_inclusive=False)
    recent = xp.cumulative_sum(xp.flip(w, axis=-1), axis=-1)  # weight of the last 1, 2, ... steps
    short = recent < mass * total[..., None]
    # at mass = 1 the two summation orders may differ by rounding: never report more than T steps
    cap = xp.asarray(T, dtype=xp.int64, device=_array.device(w))
    return xp.minimum(xp.sum(xp.astype(short, xp.int64), axis=-1) + 1, cap)


def constant_decay_window(gamma, mass=None, T=None):
    r"""Closed-form windows of constant decay :math:`\gamma_i^{(T)} = \gamma^{T-i}`.

    Parameters
    ----------
    gamma : float in (0, 1]
    mass : float in (0, 1], optional
        None: the equivalent window :math:`(1-\gamma^T)/(1-\gamma)` (:math:`1/(1-\gamma)` for T = None,
        i.e. infinite). Otherwise the mass window
        :math:`\lceil\log(1-\text{mass}(1-\gamma^T))/\log\gamma\rceil`.
    T : int, optional
        Sequence length (None: the stationary limit; needs gamma < 1).

    Returns
    -------
    float (mass None) or int
    """
    g = check_scalar("gamma", gamma, low=0.0, high=1.0, low_inclusive=False)
    if T is None and g == 1.0:
        raise ValueError("gamma: constant weights (gamma = 1) have an infinite window; pass T")
    if T is not None:
        T = check_scalar("T", T, low=0, integer=True)
    gT = 0.0 if T is None else g**T
    if mass is None:
        return float(T) if g == 1.0 else (1.0 - gT) / (1.0 - g)
    mass = check_scalar("mass", mass, low=0.0, high=1.0, low_inclusive=False)
    if g == 1.0:
        return int(math.ceil(mass * int(T)))
    return int(math.ceil(math.log1p(-mass * (1.0 - gT)) / math.log(g)))


def lms_learning_curve(d, beta, t, initial=1.0):
    r"""Mean squared memory error of the noiseless delta rule (LMS) with isotropic unit keys.

    Parameters
    ----------
    d : int
        Key dimension.
    beta : float in (0, 2)
        Step size.
    t : int or array
        Steps.
    initial : float
        :math:`E\|M_0 - W\|^2` (1: the curve is relative).

    Returns
    -------
    float or ndarray
        :math:`E\|M_t - W\|_F^2 = (1 - \beta(2-\beta)/d)^t\, E\|M_0 - W\|_F^2` (exact).

    Notes
    -----
    :math:`E_t = E_{t-1}(I - \beta kk^\top)` and :math:`E(I-\beta kk^\top)^2 = I - \beta(2-\beta)I/d` for
    unit isotropic k, so the mean squared error contracts by that factor every step.

    References
    ----------
    theory.md §4; Widrow & Hoff (1960).
    """
    check_scalar("d", d, low=1, integer=True)
    check_scalar("beta", beta, low=0.0, high=2.0, low_inclusive=False, high_inclusive=False)
    t = check_counts("t", t, low=0)  # (1 - c)^t grows without bound for t < 0
    initial = check_scalar("initial", initial, low=0.0)
    out = initial * (1.0 - beta * (2.0 - beta) / d) ** t
    return out[()] if out.ndim == 0 else out


def lms_misadjustment(beta, sigma2):
    r"""Steady-state excess MSE of the delta rule (LMS), unit isotropic keys: :math:`\beta\sigma^2/(2-\beta)`.

    Parameters
    ----------
    beta : float in (0, 2)
    sigma2 : float >= 0
        Noise variance of :math:`v = Wk + \varepsilon`.

    Returns
    -------
    float
        :math:`\lim_t E(v - M_t k)^2 - \sigma^2` on a fresh key, per value coordinate.

    Notes
    -----
    :math:`e_t = E\|E_t\|^2` obeys :math:`e_t = (1 - \beta(2-\beta)/d)e_{t-1} + \beta^2\sigma^2` (‖k‖ = 1),
    so :math:`e_\infty = d\beta\sigma^2/(2-\beta)`, and the excess MSE on a fresh key is
    :math:`e_\infty/d` -- independent of d.

    References
    ----------
    theory.md §4.
    """
    check_scalar("beta", beta, low=0.0, high=2.0, low_inclusive=False, high_inclusive=False)
    check_scalar("sigma2", sigma2, low=0.0)
    return beta * sigma2 / (2.0 - beta)


def rls_excess_error(d, gamma, sigma2):
    r"""Steady-state excess MSE of RLS, forgetting :math:`\gamma`: :math:`\sigma^2 d(1-\gamma)/(1+\gamma)`.

    Parameters
    ----------
    d : int
    gamma : float in (0, 1)
    sigma2 : float >= 0

    Returns
    -------
    float

    Notes
    -----
    With :math:`R = \sum_j\gamma^j kk^\top \approx \Sigma/(1-\gamma)` the error
    :math:`M - W = \sum_j\gamma^j\varepsilon_j k_j^\top R^{-1}` has covariance
    :math:`\sigma^2 (1-\gamma)^2/(1-\gamma^2)\,\Sigma^{-1}`, hence the formula. First order in
    :math:`d(1-\gamma)`: the fluctuation of R (an effective sample of :math:`(1+\gamma)/(1-\gamma)` pairs)
    makes the true value slightly larger (d = 16, gamma = 0.99: MC 0.083 vs 0.080).

    References
    ----------
    theory.md §4; Haykin, *Adaptive Filter Theory*, ch. 10.
    """
    check_scalar("d", d, low=1, integer=True)
    check_scalar("gamma", gamma, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
    check_scalar("sigma2", sigma2, low=0.0)
    return sigma2 * d * (1.0 - gamma) / (1.0 + gamma)


class OnlineRegression(NamedTuple):
    """Result of :func:`simulate_online_regression` (NumPy arrays).

    Attributes
    ----------
    t : ndarray of shape (n_t,)
        Steps at which the memory was recorded.
    sq_error : ndarray of shape (n_batch, n_t)
        :math:`\\|M_t - W\\|_F^2` per replication.
    w_norm2 : ndarray of shape (n_batch,)
        :math:`\\|W\\|_F^2` (= :math:`\\|M_0 - W\\|_F^2`).
    excess_mse : ndarray of shape (n_batch, n_t)
        :math:`\\|M_t - W\\|_F^2 / (d\\, d_v)`: the excess MSE per value coordinate on a fresh isotropic key
        with :math:`E kk^\\top = I/d` (exact expectation over the key, no extra sampling noise).
    """

    t: object
    sq_error: object
    w_norm2: object
    excess_mse: object


def simulate_online_regression(
    layer, d, T, *, sigma=0.0, d_v=1, n_batch=64, seed=None, record=None, keys="unit", xp=None
):
    r"""Run an online linear layer on :math:`v_t = W k_t + \sigma\varepsilon_t`, replications as the batch.

    Parameters
    ----------
    layer : TestTimeRegression
        A linear-class layer (``layer.optimizer.memory`` gives M), e.g. ``tt.recipes.deltanet(beta)`` or
        ``tt.recipes.rls(ridge, forgetting=gamma)``.
    d : int
        Key dimension.
    T : int
        Steps.
    sigma : float
        Noise standard deviation.
    d_v : int
        Value dimension (rows of W).
    n_batch : int
        Replications (independent keys, noise and W ~ N(0, I/d) per row).
    seed : int, optional
    record : sequence of int, optional
        Steps (1..T) at which to record the memory (default every step).
    keys : {"unit", "gaussian"}
        Unit keys uniform on the sphere, or N(0, I/d); both have :math:`E kk^\top = I/d`.
    xp : array namespace, optional
        Library to run the layer on (results come back as NumPy).

    Returns
    -------
    OnlineRegression

    Notes
    -----
    The sequence is written once: :meth:`~ttr_stats.TestTimeRegression.memorize` is continued from the
    previous recorded state (``initial_state``) between recorded steps.

    References
    ----------
    theory.md §4.
    """
    if layer.nonparametric or layer.neural:
        kind = "nonparametric (a cache of pairs)" if layer.nonparametric else "neural (a trained network)"
        raise ValueError(
            f"layer: simulate_online_regression compares a memory matrix M with the true W, and a "
            f"{type(layer.regressor).__name__} layer is {kind}; pass a linear-class layer such as "
            "tt.recipes.deltanet() or tt.recipes.rls()"
        )
    d = check_scalar("d", d, low=1, integer=True)
    T = check_scalar("T", T, low=1, integer=True)
    d_v = check_scalar("d_v", d_v, low=1, integer=True)
    B = check_scalar("n_batch", n_batch, low=1, integer=True)
    check_scalar("sigma", sigma, low=0.0)
    if keys not in ("unit", "gaussian"):
        raise ValueError(f"keys must be 'unit' or 'gaussian', got {keys!r}")
    rec = np.arange(1, T + 1) if record is None else np.unique(np.asarray(record, dtype=np.int64))
    if rec.size == 0 or rec[0] < 1 or rec[-1] > T:
        raise ValueError(f"record must hold steps in 1..T = {T}")
    rng = np.random.default_rng(seed)
    K = random_keys(rng, (B, T), d, keys)
    W = rng.standard_normal((B, d_v, d)) / math.sqrt(d)
    V = K @ np.swapaxes(W, -1, -2) + float(sigma) * rng.standard_normal((B, T, d_v))
    put = (lambda a: a) if xp is None else xp.asarray
    Kx, Vx = put(K), put(V)
    state, prev = None, 0
    sq = np.empty((B, rec.size))
    for j, t in enumerate(rec):
        state = layer.memorize(Kx[..., prev:t, :], Vx[..., prev:t, :], initial_state=state)
        E = np.asarray(_numpy(layer.optimizer.memory(state))) - W
        sq[:, j] = np.sum(E * E, axis=(-2, -1))
        prev = int(t)
    return OnlineRegression(rec, sq, np.sum(W * W, axis=(-2, -1)), sq / (d * d_v))


def _numpy(x):
    import array_api_compat

    if array_api_compat.is_cupy_array(x):  # pragma: no cover - needs a GPU
        return x.get()
    return np.asarray(x)
