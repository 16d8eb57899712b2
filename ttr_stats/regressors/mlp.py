r"""A two-layer MLP memory :math:`m_\theta(k) = W_2\,\sigma(W_1 k + b_1) + b_2` (TTT-MLP, Titans)."""

from __future__ import annotations

import numpy as np

from .._validation import check_scalar
from . import _neural as nn
from .linear import Regressor

__all__ = ["MLP"]


class MLP(Regressor):
    r"""Two-layer perceptron memory, trained at test time by gradient steps.

    .. math::

        m_\theta(k) = [k +]\, [\mathrm{LN}](W_2\,\sigma(W_1 k + b_1) + b_2),
        \qquad \theta = (W_1, b_1, W_2, b_2)

    with :math:`W_1 \in \mathbb{R}^{h\times d_k}`, :math:`W_2 \in \mathbb{R}^{d_v\times h}`. Paired with a
    gradient optimizer (:class:`~ttr_stats.optimizers.MiniBatchGD`, :class:`~ttr_stats.optimizers.Momentum`)
    on :math:`\tfrac12\|v - m_\theta(k)\|^2`; gradients are analytic, written in the array namespace.

    Parameters
    ----------
    hidden : int >= 1 or None, default None
        Hidden width h; ``None`` is :math:`4 d_k` (TTT-MLP's expansion).
    activation : {"gelu", "silu", "relu", "tanh"}, default "gelu"
        ``"gelu"`` is the tanh approximation (TTT's); Titans uses ``"silu"``.
    layer_norm : bool, default False
        Normalise the output over the value axis (no gain/bias), as TTT's reconstruction head.
    residual : bool, default False
        Add the key: :math:`m(k) = k + \dots` (TTT's ``f(x) = x + LN(f_res(x))``); needs ``d_v = d_k``.
    seed : int, default 0
        Seed of the initial weights: :math:`W_1 \sim N(0, 1/d_k)`, :math:`W_2 \sim N(0, 1/h)`, biases 0,
        drawn by NumPy's ``default_rng(seed)`` in float64 and moved to the inputs' namespace and dtype, the
        same for every batch element / head. Two layers with the same seed and sizes start from the same
        memory.

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> layer = tt.recipes.ttt_mlp(hidden=16, batch_size=1)
    >>> Q, K, V = np.random.default_rng(0).standard_normal((3, 10, 4))
    >>> layer(Q, K, V).shape
    (10, 4)

    References
    ----------
    Sun et al. (2024), arXiv 2407.04620 (TTT-MLP); Behrouz, Zhong & Mirrokni (2024), *Titans*,
    arXiv 2501.00663; Wang, Shi & Fox (2025), §2 (TTT-MLP and Titans rows).
    """

    linear_in_features = False

    def __init__(self, hidden=None, activation="gelu", layer_norm=False, residual=False, seed=0):
        self.hidden = hidden
        self.activation = activation
        self.layer_norm = layer_norm
        self.residual = residual
        self.seed = seed

    def _validate(self):
        if self.hidden is not None:
            check_scalar("hidden", self.hidden, low=1, integer=True)
        if self.activation not in nn.ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(nn.ACTIVATIONS)}, got {self.activation!r}")
        for name in ("layer_norm", "residual"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        check_scalar("seed", self.seed, low=0, integer=True)

    def width(self, d_k: int) -> int:
        """The hidden width h for keys of dimension ``d_k``."""
        return 4 * d_k if self.hidden is None else int(self.hidden)

    def param_names(self):
        """Names of the parameters, in the order of :meth:`init_params`."""
        return ("W1", "b1", "W2", "b2")

    def init_params(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        """The seeded initial weights (see ``seed``), broadcast over ``batch_shape``."""
        self._validate()
        if self.residual and d_v != d_k:
            raise ValueError(f"residual: MLP(residual=True) needs d_v = d_k, got d_k = {d_k}, d_v = {d_v}")
        h = self.width(d_k)
        rng = np.random.default_rng(self.seed)
        W1 = rng.standard_normal((h, d_k)) / np.sqrt(d_k)
        W2 = rng.standard_normal((d_v, h)) / np.sqrt(h)
        out = []
        for a in (W1, np.zeros(h), W2, np.zeros(d_v)):
            x = xp.asarray(a, dtype=dtype, device=device)
            out.append(xp.broadcast_to(x, tuple(batch_shape) + x.shape))
        return tuple(out)

    def _forward(self, xp, params, k):
        W1, b1, W2, b2 = params
        z = nn.matvec(xp, W1, k) + b1
        a, da = nn.activation(xp, self.activation, z)
        o = nn.matvec(xp, W2, a) + b2
        x_hat = r = None
        if self.layer_norm:
            x_hat, r = nn.layer_norm(xp, o)
            o = x_hat
        if self.residual:
            o = o + k
        return o, (a, da, x_hat, r)

    def predict(self, xp, params, q):
        """:math:`m_\\theta(q)` for q of shape (..., d_k) broadcasting against the parameters' batch dims."""
        return self._forward(xp, params, q)[0]

    def loss_grad(self, xp, params, k, v):
        r"""Loss :math:`\tfrac12\|m_\theta(k) - v\|^2` of shape (...) and its gradient (backpropagation)."""
        y, (a, da, x_hat, r) = self._forward(xp, params, k)
        e = y - v
        d_o = e if not self.layer_norm else nn.layer_norm_backward(xp, e, x_hat, r)
        d_z = nn.rmatvec(xp, params[2], d_o) * da  # W2^T d_o, through the activation
        grads = (nn.outer(d_z, k), d_z, nn.outer(d_o, a), d_o)
        return 0.5 * xp.sum(e * e, axis=-1), grads
