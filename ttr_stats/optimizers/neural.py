r"""Gradient optimizers over a regressor's parameters: TTT's mini-batch GD and Titans' momentum.

They train any regressor that exposes ``param_names`` / ``init_params`` / ``predict`` / ``loss_grad``
(:class:`~ttr_stats.regressors.MLP`, :class:`~ttr_stats.regressors.Linear`, with or without layer norm) on
the per-token loss :math:`\ell_t(\theta) = \tfrac12\|v_t - m_\theta(k_t)\|^2`. The layer pairs the optimizer
with its regressor through :meth:`GradientOptimizer.bind`; the bound object is what the recurrent loop runs.

Gates (call time, per token):

* ``beta`` is the step size (learning rate) :math:`\eta_t` (TTT) / :math:`\theta_t` (Titans); it defaults
  to ``lr``.
* ``alpha`` is the retention :math:`a_t \in [0, 1]` multiplying the parameters (1: keep everything). For
  :class:`Momentum` it is multiplied by ``1 - weight_decay``, so Titans' forgetting gate is
  :math:`\alpha^{\mathrm{Titans}}_t = 1 - a_t`.
* Titans' momentum :math:`\eta_t` has no call-time gate: it is the constant ``momentum``.

State: a flat ``NamedTuple`` of arrays named after the regressor's parameters (``W1, b1, W2, b2`` or
``M[, b]``), followed by the optimizer's buffers (``<name>_start`` and ``step_in_batch`` for mini-batch GD,
``<name>_momentum`` for momentum).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import _array
from .._validation import check_scalar
from .base import Optimizer

__all__ = ["GradientOptimizer", "MiniBatchGD", "Momentum", "BoundOptimizer", "state_type"]

_STATE_TYPES: dict = {}


def state_type(name, fields):
    """The (cached) ``NamedTuple`` class ``name`` with array fields ``fields``: one class per layout, so
    ``isinstance`` checks work across calls.

    The classes are made at run time, so pickle cannot find them by name; each instance pickles as a call
    to :func:`_rebuild_state` (layout + values), which recreates the class in the unpickling process.
    """
    key = (name, tuple(fields))
    if key not in _STATE_TYPES:
        cls = NamedTuple(name, [(f, object) for f in fields])
        cls.__reduce__ = lambda self, key=key: (_rebuild_state, (key[0], key[1], tuple(self)))
        _STATE_TYPES[key] = cls
    return _STATE_TYPES[key]


def _rebuild_state(name, fields, values):
    """Unpickle a state made by :func:`state_type`."""
    return state_type(name, fields)(*values)


def _expand(x, like):
    """``x`` of shape (batch) with trailing axes added to broadcast against ``like`` (batch + param)."""
    return x[(...,) + (None,) * (like.ndim - x.ndim)]


class GradientOptimizer(Optimizer):
    """Base of the optimizers that train a regressor's parameters by per-token gradients."""

    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = (
        "Use a smaller step: lr ({name}(lr=...)) or the call-time beta (per-token step sizes), float64, "
        "or rescale the keys."
    )

    family = "neural"
    beta_role = "step"

    #: names of the buffers kept beside the parameters: ``"{p}"`` is formatted with each parameter name
    buffers: tuple = ()
    #: extra per-batch scalar fields of the state
    counters: tuple = ()

    def default_beta(self):
        return float(self.lr)

    def bind(self, regressor):
        """The pure ``init`` / ``update`` / ``read`` functions of this optimizer on ``regressor``."""
        return BoundOptimizer(self, regressor)

    def memory(self, state):
        """The linear memory, when the state is a plain :class:`~ttr_stats.regressors.Linear` one."""
        if state._fields[0] == "M" and "b" not in state._fields:
            return state.M
        raise ValueError(
            f"{type(self).__name__} trains a nonlinear memory ({', '.join(state._fields)}); "
            "it has no matrix M"
        )

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        raise TypeError(
            f"{type(self).__name__}'s state is laid out by its regressor's parameters: use "
            "optimizer.bind(regressor).init(...)"
        )

    def step(self, xp, regressor, params, buffers, counters, k, v, a, b):  # pragma: no cover - abstract
        raise NotImplementedError


class BoundOptimizer:
    """A :class:`GradientOptimizer` bound to its regressor: the object the recurrent loop runs.

    Its state type is built from the regressor's parameter names (a flat ``NamedTuple`` of arrays).
    """

    family = "neural"
    steps_per_token = 1
    check_state = Optimizer.check_state

    def __init__(self, optimizer, regressor):
        self.optimizer = optimizer
        self.regressor = regressor
        names = tuple(regressor.param_names())
        self._n = len(names)
        self._nb = len(optimizer.buffers)
        fields = names + tuple(f.format(p=p) for f in optimizer.buffers for p in names)
        self.State = state_type(f"{type(optimizer).__name__}State", fields + tuple(optimizer.counters))

    def _split(self, state):
        n, nb = self._n, self._nb
        params = tuple(state[:n])
        buffers = tuple(tuple(state[n * (j + 1) : n * (j + 2)]) for j in range(nb))
        return params, buffers, tuple(state[n * (nb + 1) :])

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        params = self.regressor.init_params(xp, batch_shape, d_k, d_v, dtype, device=device)
        return self.State(*self.optimizer.init_buffers(xp, params, tuple(batch_shape), dtype, device))

    def update(self, state, k, v, a, b):
        from .._array import namespace

        xp = namespace(k)
        params, buffers, counters = self._split(state)
        out = self.optimizer.step(xp, self.regressor, params, buffers, counters, k, v, a[..., 0], b)
        return self.State(*out)

    def read(self, state, q):
        from .._array import namespace

        return self.regressor.predict(namespace(q), tuple(state[: self._n]), q)


class MiniBatchGD(GradientOptimizer):
    r"""TTT's mini-batch gradient descent: within a mini-batch every gradient is taken at its start.

    With :math:`t_0` the last token of the previous mini-batch (``batch_size`` tokens per mini-batch),

    .. math:: \theta_t = \theta_{t_0} - \sum_{s = t_0 + 1}^{t} \beta_s \nabla\ell_s(\theta_{t_0}),
        \qquad y_t = m_{\theta_t}(q_t),

    and :math:`\theta_{t_0}` moves to :math:`\theta_t` when the mini-batch is full. The output at t is read
    from the parameters that include the gradients of the mini-batch *so far* (tokens :math:`t_0 + 1..t`),
    TTT's dual-form convention: causal, and with ``batch_size=1`` it is the plain online delta rule
    :math:`\theta_t = \theta_{t-1} - \beta_t\nabla\ell_t(\theta_{t-1})` (on ``Linear()``: DeltaNet).

    A call-time retention ``alpha`` multiplies both the current and the anchor parameters before the
    token's gradient (the gated delta rule when ``batch_size=1``).

    Parameters
    ----------
    lr : float > 0
        Step size, overridden by a call-time ``beta``.
    batch_size : int >= 1
        Tokens per mini-batch (TTT uses 16). The position in the current mini-batch is part of the state
        (``step_in_batch``), so ``initial_state`` continues a mini-batch where it stopped.

    References
    ----------
    Sun et al. (2024), *Learning to (learn at test time)*, arXiv 2407.04620, §2.4 (mini-batch TTT, dual
    form); Wang, Shi & Fox (2025), §2 (TTT-MLP row).
    """

    buffers = ("{p}_start",)
    counters = ("step_in_batch",)

    def __init__(self, lr=0.1, batch_size=16):
        self.lr = lr
        self.batch_size = batch_size

    def _validate(self):
        check_scalar("lr", self.lr, low=0.0, low_inclusive=False)
        check_scalar("batch_size", self.batch_size, low=1, integer=True)

    def init_buffers(self, xp, params, batch_shape, dtype, device):
        count = xp.zeros(batch_shape, dtype=dtype, device=device)
        return params + params + (count,)

    def step(self, xp, regressor, params, buffers, counters, k, v, a, b):
        (start,), (count,) = buffers, counters
        params = tuple(_expand(a, p) * p for p in params)
        start = tuple(_expand(a, p) * p for p in start)
        _, grads = regressor.loss_grad(xp, start, k, v)
        params = tuple(p - _expand(b, g) * g for p, g in zip(params, grads, strict=True))
        count = count + 1.0
        full = count >= float(self.batch_size)
        start = tuple(xp.where(_expand(full, p), p, s) for p, s in zip(params, start, strict=True))
        count = xp.where(full, xp.zeros((), dtype=count.dtype, device=_array.device(count)), count)
        return params + start + (count,)


class Momentum(GradientOptimizer):
    r"""Titans' memory update: gradient descent with momentum and weight decay.

    .. math::

        S_t = \eta\, S_{t-1} - \beta_t \nabla\ell(\theta_{t-1}; k_t, v_t), \qquad
        \theta_t = a_t\,\theta_{t-1} + S_t, \qquad a_t = \alpha_t (1 - \lambda)

    (Titans' :math:`\theta_t` is the step ``beta``, its forgetting gate
    :math:`\alpha^{\mathrm{T}}_t = 1 - a_t`, its :math:`\eta_t` the constant ``momentum``; the gradient is
    taken at :math:`\theta_{t-1}` before the decay, as in Titans). ``momentum=0, weight_decay=0`` is
    :class:`MiniBatchGD` with ``batch_size=1``.

    Parameters
    ----------
    lr : float > 0
        Step size :math:`\beta` (Titans' :math:`\theta`), overridden by a call-time ``beta``.
    momentum : float in [0, 1)
        :math:`\eta`, the weight of the past surprise.
    weight_decay : float in [0, 1)
        :math:`\lambda`: the parameters are multiplied by :math:`1 - \lambda` at every token (on top of any
        call-time ``alpha``).

    References
    ----------
    Behrouz, Zhong & Mirrokni (2024), *Titans: learning to memorize at test time*, arXiv 2501.00663,
    eqs. (13)-(14); Wang, Shi & Fox (2025), §2 (Titans row).
    """

    buffers = ("{p}_momentum",)

    def __init__(self, lr=0.1, momentum=0.9, weight_decay=0.01):
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay

    def _validate(self):
        check_scalar("lr", self.lr, low=0.0, low_inclusive=False)
        check_scalar("momentum", self.momentum, low=0.0, high=1.0, high_inclusive=False)
        check_scalar("weight_decay", self.weight_decay, low=0.0, high=1.0, high_inclusive=False)

    def log_forgetting(self) -> float:
        # the constant decay joins the weights' log-decay, so the loop passes a_t = alpha_t (1 - lambda)
        return math.log1p(-float(self.weight_decay))

    def init_buffers(self, xp, params, batch_shape, dtype, device):
        return params + tuple(xp.zeros(p.shape, dtype=dtype, device=device) for p in params)

    def step(self, xp, regressor, params, buffers, counters, k, v, a, b):
        (S,) = buffers
        _, grads = regressor.loss_grad(xp, params, k, v)
        eta = float(self.momentum)
        S = tuple(eta * s - _expand(b, g) * g for s, g in zip(S, grads, strict=True))
        params = tuple(_expand(a, p) * p + s for p, s in zip(params, S, strict=True))
        return params + S
