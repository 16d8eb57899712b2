r"""The direct method of exact (ridge) least squares: solve every prefix from the regression definition.

.. math:: R_t = \sum_{i\le t} \Gamma_{ti} k_i k_i^\top + c_t R_0, \qquad
          S_t = \sum_{i\le t} \Gamma_{ti} v_i k_i^\top + c_t S_0,\qquad y_t = S_t (R_t + \rho I)^{-1} q_t

with :math:`c_t = \prod_{j\le t}\alpha_j` decaying the initial statistics. Memory O(T (T + d^2)).
"""

from __future__ import annotations

from ...optimizers import SufficientStatistics
from .._dense import direct_bytes, initial_decay, pair_sums, scalar_decay
from .._rules import device_fits
from ..problem import initial_state
from ..registry import register


def prefix_statistics(xp, P, s0):
    """``(R, S)`` of every prefix, shapes (..., T, d_k, d_k) and (..., T, d_v, d_k)."""
    W = scalar_decay(xp, P)
    c2 = initial_decay(xp, P)[..., :, :, None]  # (..., T, 1, 1)
    R = pair_sums(xp, W, P.K, P.K) + c2 * s0.R[..., None, :, :]
    S = pair_sums(xp, W, P.V, P.K) + c2 * s0.S[..., None, :, :]
    return R, S


def direct(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v)."""
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    R, S = prefix_statistics(xp, P, s0)
    y = xp.matmul(S, opt.solve(xp, R, P.Q[..., None]))[..., 0]
    return y, SufficientStatistics(R[..., -1, :, :], S[..., -1, :, :]) if P.T else s0


register(
    "direct",
    "least_squares",
    run=direct,
    memory=direct_bytes,
    auto=device_fits(direct_bytes),
    rank=20,
    window=True,
    summary="a d x d solve per prefix from dense Gamma",
    dtypes=("float32", "float64"),  # factorisations: NumPy has no half-precision linalg
)
