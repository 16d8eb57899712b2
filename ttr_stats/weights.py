r"""Weights :math:`\gamma_i^{(t)}`: how much the pair :math:`(k_i, v_i)` counts in the regression at time t.

Every weighting here factors as

.. math:: \gamma_i^{(t)} = \beta_i \prod_{j=i+1}^{t} \alpha_j \; \mathbb{1}[t - i < w],

a per-step decay :math:`\alpha_j \in [0, 1]` (kept in log space, :math:`g_j = \log \alpha_j \le 0`),
a write strength :math:`\beta_i > 0` and an optional window :math:`w`. A weights object holds the
hyperparameters only (``matrix(T)`` gives the dense weights); data-dependent gates (``alpha`` /
``log_alpha``) are passed when the layer is called, like ``sample_weight`` in scikit-learn. ``beta`` is
resolved by the layer, since for gradient optimizers it is a step size rather than a sample weight.

References
----------
Wang, Shi & Fox (2025), *Test-time regression*, arXiv 2501.12352, §2 (the weights column of the taxonomy).
"""

from __future__ import annotations

import math

from sklearn.base import BaseEstimator

from . import _array
from ._validation import check_scalar

__all__ = ["Weights", "Uniform", "ExponentialDecay", "Gated", "SlidingWindow", "decay_matrix"]


class Weights(BaseEstimator):
    """Base class of the weighting schemes.

    Subclasses define :meth:`constant_log_decay` (``None`` when the decay must come from call-time gates).
    """

    #: whether call-time gates are per key dimension, shape (..., T, d_k)
    per_dimension = False
    #: whether call-time ``alpha``/``log_alpha`` are accepted
    accepts_gates = True

    @property
    def window(self):
        """Window width w, or ``None`` for no window."""
        return None

    def constant_log_decay(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _validate(self):
        """Check the hyperparameters (called by the layer before any computation)."""

    def resolve(self, xp, log_alpha, *, T, d_k, dtype, device=None):
        """Per-step log-decay ``g`` of shape (..., T, 1), or (..., T, d_k) for per-dimension decay.

        Parameters
        ----------
        log_alpha : array of shape (..., T) or (..., T, d_k), or None
            Call-time log-gates (already checked to be finite and ``<= 0``). Overrides the constant.
        device : optional
            Where a constant decay is created (the inputs' device, :func:`ttr_stats._array.device`).
        """
        self._validate()
        if log_alpha is None:
            c = self.constant_log_decay()
            if c is None:
                raise ValueError(
                    f"alpha: {type(self).__name__} weights are data-dependent; pass alpha (or log_alpha) "
                    "of shape (..., T) when calling the layer"
                    + (", (..., T, d_k) for per-dimension decay" if self.per_dimension else "")
                )
            return _array.constant(xp, (T, d_k if self.per_dimension else 1), c, dtype, device)
        if not self.accepts_gates:
            raise ValueError(f"alpha: {type(self).__name__} weights take no decay gates (alpha/log_alpha)")
        name = "alpha"
        if self.per_dimension:
            if log_alpha.ndim < 2 or log_alpha.shape[-2:] != (T, d_k):
                raise ValueError(
                    f"{name} must have shape (..., T, d_k) = (..., {T}, {d_k}) for per-dimension decay, "
                    f"got {tuple(log_alpha.shape)}"
                )
            return log_alpha
        if log_alpha.ndim < 1 or log_alpha.shape[-1] != T:
            raise ValueError(
                f"{name} must have shape (..., T) = (..., {T}) for scalar decay"
                + (" (per-dimension decay needs Gated(per_dimension=True))" if log_alpha.ndim >= 2 else "")
                + f", got {tuple(log_alpha.shape)}"
            )
        return log_alpha[..., None]

    def matrix(self, T, *, alpha=None, log_alpha=None, beta=None):
        r"""Dense causal weight matrix :math:`\Gamma_{ti} = \gamma_i^{(t)}`.

        Parameters
        ----------
        T : int
            Sequence length.
        alpha, log_alpha : array of shape (..., T), optional
            Call-time decay gates (exactly one, or neither to use the constant).
        beta : array of shape (..., T), optional
            Write strengths; 1 when omitted.

        Returns
        -------
        array of shape (..., T, T)
            Lower triangular: zero for ``i > t``.
        """
        from ._gates import resolve_log_alpha

        xp, arrs, dtype = _array.as_float_arrays({"alpha": alpha, "log_alpha": log_alpha, "beta": beta})
        la = resolve_log_alpha(xp, arrs["alpha"], arrs["log_alpha"])
        if self.per_dimension:
            raise ValueError("alpha: per-dimension decay has no scalar weight matrix Gamma")
        dev = next((_array.device(a) for a in arrs.values() if a is not None), None)
        g = self.resolve(xp, la, T=int(T), d_k=1, dtype=dtype, device=dev)[..., 0]
        b = arrs["beta"]
        return decay_matrix(xp, g, b, self.window)


def decay_matrix(xp, g, b=None, window=None):
    r"""Dense :math:`\Gamma_{ti} = \beta_i \exp(\sum_{j=i+1}^t g_j) \mathbb{1}[t-i<w]`, shape (..., T, T).

    Parameters
    ----------
    g : array of shape (..., T)
        Log-decays.
    b : array of shape (..., T), optional
        Write strengths.
    window : int, optional
    """
    T = g.shape[-1]
    dev = _array.device(g)
    if not bool(xp.any(g != 0)):  # no decay: the causal mask itself (skips the T x T segment sums)
        idx = xp.arange(T, device=dev)
        G = xp.astype(idx[:, None] >= idx[None, :], g.dtype)
    else:
        G = xp.exp(_array.segsum(xp, g))
    if window is not None and window < T:
        idx = xp.arange(T, device=dev)
        inside = (idx[:, None] - idx[None, :]) < window
        G = xp.where(inside, G, xp.zeros((), dtype=G.dtype, device=dev))
    if b is not None:
        G = G * b[..., None, :]
    return G


class Uniform(Weights):
    r"""Equal weights :math:`\gamma_i^{(t)} = 1` (linear attention, OLS).

    Call-time ``alpha`` gates, if passed, override the constant 1.

    Examples
    --------
    >>> import ttr_stats as tt
    >>> tt.weights.Uniform().matrix(3)
    array([[1., 0., 0.],
           [1., 1., 0.],
           [1., 1., 1.]])
    """

    def __init__(self):
        pass

    def constant_log_decay(self):
        return 0.0


class ExponentialDecay(Weights):
    r"""Constant decay :math:`\gamma_i^{(t)} = \gamma^{t-i}` (RetNet, forgetting-factor RLS).

    Parameters
    ----------
    gamma : float in [0, 1]
        Per-step decay. ``ExponentialDecay(1.0)`` equals :class:`Uniform`.

    Notes
    -----
    Effective memory :math:`\sum_j \gamma^j = 1/(1-\gamma)` steps. Call-time ``alpha`` overrides ``gamma``.
    """

    def __init__(self, gamma=0.9):
        self.gamma = gamma

    def _validate(self):
        check_scalar("gamma", self.gamma, low=0.0, high=1.0)

    def constant_log_decay(self):
        g = float(self.gamma)
        return math.log(g) if g > 0 else -math.inf


class Gated(Weights):
    r"""Data-dependent decay from call-time gates (Mamba-2, GLA, Gated DeltaNet, MesaNet).

    :math:`\gamma_i^{(t)} = \beta_i \prod_{j=i+1}^t \alpha_j`, with ``alpha`` (or ``log_alpha``) passed when
    the layer is called.

    Parameters
    ----------
    alpha : float in [0, 1] or None
        Constant used when the call passes no gates; ``None`` makes the gates mandatory.
    per_dimension : bool
        Gates of shape (..., T, d_k), one decay per key dimension (GLA, RWKV-6):
        :math:`M_t = M_{t-1}\,\mathrm{Diag}(\alpha_t) + v_t k_t^\top`. This is not a scalar-weighted
        regression, so only the identity-covariance optimizer supports it.
    """

    def __init__(self, alpha=None, per_dimension=False):
        self.alpha = alpha
        self.per_dimension = per_dimension

    def _validate(self):
        if self.alpha is not None:
            check_scalar("alpha", self.alpha, low=0.0, high=1.0)
        if not isinstance(self.per_dimension, bool):
            raise ValueError(f"per_dimension must be a bool, got {self.per_dimension!r}")

    def constant_log_decay(self):
        if self.alpha is None:
            return None
        a = float(self.alpha)
        return math.log(a) if a > 0 else -math.inf


class SlidingWindow(Weights):
    r"""Window weights :math:`\gamma_i^{(t)} = \mathbb{1}[t - i < w]`: only the last ``width`` pairs count.

    Parameters
    ----------
    width : int >= 1

    Notes
    -----
    The recurrent method adds the new pair and removes the one leaving the window (a rank-one downdate),
    so only optimizers with additive sufficient statistics support it. No decay gates.
    """

    accepts_gates = False

    def __init__(self, width=64):
        self.width = width

    def _validate(self):
        check_scalar("width", self.width, low=1, integer=True)

    @property
    def window(self):
        return int(self.width)

    def constant_log_decay(self):
        return 0.0


class GatedWindow(Weights):
    r"""Sliding window and data-dependent decay together:
    :math:`\gamma_i^{(t)} = \beta_i\prod_{j=i+1}^t\alpha_j\,\mathbb{1}[t - i < w]`.

    Under a softmax regressor this is sliding-window forgetting attention (SWA with a forget gate, as in
    flash-linear-attention's ``forgetting_attn(window_size=w)``). Only methods with additive statistics
    or a cache run it (the nonparametric families, identity covariance, least squares).

    Parameters
    ----------
    width : int >= 1
    alpha : float in [0, 1] or None
        Constant decay when the call passes no gates; ``None`` makes the gates mandatory.
    """

    def __init__(self, width=64, alpha=1.0):
        self.width = width
        self.alpha = alpha

    def _validate(self):
        check_scalar("width", self.width, low=1, integer=True)
        if self.alpha is not None:
            check_scalar("alpha", self.alpha, low=0.0, high=1.0)

    @property
    def window(self):
        return int(self.width)

    def constant_log_decay(self):
        if self.alpha is None:
            return None
        a = float(self.alpha)
        return math.log(a) if a > 0 else -math.inf


def sink_window_mask(xp, T, width, sinks, device=None):
    r"""Boolean (T, T): :math:`i \le t` and (:math:`t - i < w` or :math:`i < s`), the pairs a sliding window
    of width w with s attention sinks keeps (positions counted from 0)."""
    idx = xp.arange(int(T), device=device)
    t, i = idx[:, None], idx[None, :]
    return (i <= t) & (((t - i) < int(width)) | (i < int(sinks)))


class SinkWindow(GatedWindow):
    r"""Sliding window (optionally gated) with attention sinks: the first ``sinks`` pairs never leave it,

    .. math:: \gamma_i^{(t)} = \beta_i \prod_{j=i+1}^t \alpha_j\,
              \mathbb{1}\big[t - i < w \;\text{or}\; i < s\big]

    (positions from 0; StreamingLLM, Xiao et al. 2024, keeps s = 4 initial tokens with a window of recent
    ones). Regression reading: the weights :math:`\gamma_i^{(t)}` keep the sink pairs
    :math:`(k_i, v_i)_{i<s}` in every prefix's weighted regression, whatever t, besides the w most recent
    pairs; under a softmax regressor (Nadaraya-Watson) they are always-present design points that take
    the weight the recent pairs do not claim, which is what a trained model's sink tokens do. Decay
    gates (``alpha``) multiply the sinks' weights as every other pair's (forgetting attention's bias
    :math:`\sum_{j>i}\log\alpha_j` on every logit); with ``alpha=1`` and no gates this is StreamingLLM's
    mask. ``sinks=0`` is :class:`GatedWindow` exactly.

    In a layer the kernel smoothers (softmax / Nadaraya-Watson and local polynomial regressors: every
    method, ``"tiled"`` included, whose tile skipping keeps the sink tiles), Parallax (both methods) and
    the generic recurrent loop
    of the additive-statistics optimizers (linear attention, least squares: the loop downdates the pair
    leaving the window only when it is not a sink) run it exactly; a method that would drop the sinks is
    refused with an error naming these weights (its registry entry has ``sinks=False``). The memory of
    such a layer is the s sinks plus the last w pairs.

    Parameters
    ----------
    width : int >= 1
        w, the recent pairs kept.
    sinks : int >= 0
        s, the initial pairs always kept.
    alpha : float in [0, 1] or None
        Constant decay when the call passes no gates; ``None`` makes the gates mandatory.
    """

    def __init__(self, width=64, sinks=4, alpha=1.0):
        super().__init__(width, alpha)
        self.sinks = sinks

    def _check(self):
        super()._validate()
        check_scalar("sinks", self.sinks, low=0, integer=True)

    def _validate(self):
        self._check()

    def matrix(self, T, *, alpha=None, log_alpha=None, beta=None):
        r"""Dense causal :math:`\Gamma_{ti} = \gamma_i^{(t)}`, shape (..., T, T), sinks included.

        Parameters as :meth:`Weights.matrix`.
        """
        from ._gates import resolve_log_alpha

        self._check()
        T = int(T)
        xp, arrs, dtype = _array.as_float_arrays({"alpha": alpha, "log_alpha": log_alpha, "beta": beta})
        la = resolve_log_alpha(xp, arrs["alpha"], arrs["log_alpha"])
        dev = next((_array.device(a) for a in arrs.values() if a is not None), None)
        if la is None:
            c = self.constant_log_decay()
            if c is None:
                raise ValueError("alpha: SinkWindow(alpha=None) weights are data-dependent; pass alpha (or "
                                 f"log_alpha) of shape (..., T) = (..., {T})")  # fmt: skip
            la = xp.full((T,), c, dtype=dtype, device=dev)
        elif la.ndim < 1 or la.shape[-1] != T:
            raise ValueError(f"alpha must have shape (..., T) = (..., {T}), got {tuple(la.shape)}")
        G = decay_matrix(xp, la, arrs["beta"], None)
        keep = sink_window_mask(xp, T, self.width, self.sinks, device=_array.device(G))
        return xp.where(keep, G, xp.zeros((), dtype=G.dtype, device=_array.device(G)))


__all__ += ["SinkWindow", "sink_window_mask"]
