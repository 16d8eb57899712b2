r"""Titans' memory update with a mini-batch anchor: momentum SGD whose gradients, within a chunk of
``batch_size`` tokens, are all taken at the parameters at the chunk's start (flash-linear-attention's
``chunk_titans_linear``, fla-core 0.5.2 ``fla/ops/titans/naive.py``).

.. math::

    S_t = \eta\,S_{t-1} - \beta_t\nabla\ell_t(\theta_{t_0}),\qquad
    \theta_t = a_t\,\theta_{t-1} + S_t,\qquad a_t = \alpha_t(1 - \lambda),

with :math:`t_0` the last token of the previous chunk (the anchor is *not* decayed: fla keeps
``M_prev_nabla`` as written at the chunk boundary). ``batch_size=1`` is
:class:`~ttr_stats.optimizers.Momentum` (the gradient at :math:`\theta_{t-1}` before the decay).

fla's names: ``theta`` is :math:`\beta/2` (fla's update carries a factor 2, the gradient of a squared norm
without the half), ``alpha`` is :math:`1 - a_t` (the forgetting rate), ``eta`` the momentum (per token in
fla; constant here: the layer's call has no gate for it), ``chunk_size`` is ``batch_size`` (16 in fla).
"""

from __future__ import annotations

from .. import _array
from .._validation import check_scalar
from .neural import Momentum, _expand

__all__ = ["MiniBatchMomentum"]


class MiniBatchMomentum(Momentum):
    r"""Momentum SGD with weight decay whose gradients are taken at the chunk's start (module notes).

    Parameters
    ----------
    lr, momentum, weight_decay
        As in :class:`~ttr_stats.optimizers.Momentum`.
    batch_size : int >= 1
        Tokens per chunk; the position in the chunk is part of the state (``step_in_batch``), so
        ``initial_state`` continues a chunk where it stopped.

    References
    ----------
    Behrouz, Zhong & Mirrokni (2024), *Titans*, arXiv 2501.00663, §3.2 (parallel, chunked training);
    flash-linear-attention ``fla/ops/titans/naive.py`` (``chunk_titans_linear``).
    """

    buffers = ("{p}_momentum", "{p}_start")
    counters = ("step_in_batch",)

    def __init__(self, lr=0.1, momentum=0.9, weight_decay=0.0, batch_size=16):
        super().__init__(lr, momentum, weight_decay)
        self.batch_size = batch_size

    def _validate(self):
        super()._validate()
        check_scalar("batch_size", self.batch_size, low=1, integer=True)

    def init_buffers(self, xp, params, batch_shape, dtype, device):
        zeros = tuple(xp.zeros(p.shape, dtype=dtype, device=device) for p in params)
        return params + zeros + params + (xp.zeros(batch_shape, dtype=dtype, device=device),)

    def step(self, xp, regressor, params, buffers, counters, k, v, a, b):
        (S, start), (count,) = buffers, counters
        _, grads = regressor.loss_grad(xp, start, k, v)
        eta = float(self.momentum)
        S = tuple(eta * s - _expand(b, g) * g for s, g in zip(S, grads, strict=True))
        params = tuple(_expand(a, p) * p + s for p, s in zip(params, S, strict=True))
        count = count + 1.0
        full = count >= float(self.batch_size)
        start = tuple(xp.where(_expand(full, p), p, s) for p, s in zip(params, start, strict=True))
        count = xp.where(full, xp.zeros((), dtype=count.dtype, device=_array.device(count)), count)
        return params + S + start + (count,)
