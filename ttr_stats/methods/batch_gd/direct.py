r"""The direct method of batch gradient descent: ``steps`` GD iterations on every prefix's statistics.

.. math:: M^{(i)} = M^{(i-1)}(I - \eta R_t) + \eta S_t,\qquad M^{(0)} = 0,\qquad y_t = M^{(s)} q_t.
"""

from __future__ import annotations

from ...optimizers import SufficientStatistics
from .._dense import direct_bytes
from .._rules import device_fits
from ..least_squares.direct import prefix_statistics
from ..problem import initial_state
from ..registry import register


def direct(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v)."""
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    R, S = prefix_statistics(xp, P, s0)
    y = xp.matmul(opt.iterate(xp, R, S), P.Q[..., None])[..., 0]
    return y, SufficientStatistics(R[..., -1, :, :], S[..., -1, :, :]) if P.T else s0


register(
    "direct",
    "batch_gd",
    run=direct,
    memory=direct_bytes,
    auto=device_fits(direct_bytes),
    rank=20,
    window=True,
    summary="the GD iterations on every prefix's statistics",
)
