r"""The direct method of the identity-covariance family: every prefix's memory from the dense weights.

.. math:: M_t = \sum_{i\le t} \Gamma_{ti} v_i k_i^\top + c_t M_0,\qquad
          z_t = \sum_{i\le t}\Gamma_{ti} k_i + c_t z_0

with :math:`c_t = \prod_{j\le t}\alpha_j` decaying the initial state. Memory O(T (T + d^2)).
"""

from __future__ import annotations

from ...optimizers import LinearAttentionState
from .._dense import direct_bytes, initial_decay, pair_sums, per_dimension_decay, scalar_decay
from .._rules import device_fits
from ..problem import initial_state
from ..registry import register
from . import parallel


def direct(layer, P):
    """Return ``(Y, final_state)`` by forming each prefix's memory. Y: (*batch, T, d_v).

    Per-dimension decay runs big batches in slices (``parallel.MAX_ELEMENTS``)."""
    if P.g.shape[-1] > 1:
        per_seq = P.T * max(P.T, P.d_v) * P.d_k
        if P.n_batch * per_seq > parallel.MAX_ELEMENTS:
            return parallel.in_slices(_direct, "direct", per_seq, layer, P)
    return _direct(layer, P)


def _direct(layer, P):
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    c = initial_decay(xp, P)
    q = P.Q[..., None]
    if P.g.shape[-1] > 1:
        E = per_dimension_decay(xp, P)  # (..., T, T, d)
        Ed = xp.moveaxis(E, -1, -3)  # (..., d, T, T)
        VK = P.V[..., None, :, :] * xp.moveaxis(P.K, -1, -2)[..., :, :, None]  # (..., d, T, d_v)
        M = xp.moveaxis(xp.matmul(Ed, VK), -3, -1)  # (..., T, d_v, d)
        z = xp.sum(E * P.K[..., None, :, :], axis=-2)
    else:
        W = scalar_decay(xp, P)
        M = pair_sums(xp, W, P.V, P.K)
        z = xp.matmul(W, P.K)
    M = M + c[..., :, None, :] * s0.M[..., None, :, :]
    z = z + c * s0.z[..., None, :]
    y = xp.matmul(M, q)[..., 0]
    y = opt.finish(xp, y, xp.sum(z * P.Q, axis=-1))
    return y, LinearAttentionState(M[..., -1, :, :], z[..., -1, :]) if P.T else s0


register(
    "direct",
    "identity",
    run=direct,
    memory=direct_bytes,
    auto=device_fits(direct_bytes),
    rank=20,
    window=True,
    per_dimension=True,
    summary="every prefix's memory from dense Gamma, O(T (T + d^2)) memory",
)
