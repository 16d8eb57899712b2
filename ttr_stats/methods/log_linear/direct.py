r"""The direct (T x T) method of log-linear attention, and its registration with the generic loop.

.. math:: y_t = \sum_{i\le t} H_{ti}\,(q_t^\top k_i)\,v_i,\qquad
          H_{ti} = \lambda_t^{(\ell(t,i))}\,\beta_i\prod_{j=i+1}^t\alpha_j

(flash-linear-attention's ``construct_H_matrix``). A carried initial state contributes linearly: its part
is the loop run on zero pairs, added to the dense part of the new pairs (at absolute positions).
"""

from __future__ import annotations

import numpy as np

from ..._array import segsum
from .._dense import direct_bytes, state_bytes
from ..problem import initial_state
from ..recurrent import loop, recurrent
from ..registry import register


def level_matrix(T, t0=0):
    """Fenwick levels ``ell[t, i]`` of absolute positions t0 + t, t0 + i (-1 above the diagonal)."""
    pos = np.arange(t0, t0 + T)
    x = pos[:, None] ^ pos[None, :]
    lev = np.where(x > 0, np.floor(np.log2(np.maximum(x, 1))).astype(int) + 1, 0)
    return np.where(pos[:, None] >= pos[None, :], lev, -1)


def level_weights(xp, opt, P, t0=0):
    """``Lam[..., t, i] = lambda_t^(ell(t, i))`` of shape (..., T, T) (0 above the diagonal), for a
    Fenwick-level optimizer (``levels``, ``lam``) whose tokens start at absolute position ``t0``; a
    ValueError naming ``levels`` when the call needs more levels than it has."""
    lev = level_matrix(P.T, t0)
    L = int(opt.levels)
    if lev.max() >= L:
        raise ValueError(
            f"levels: {t0 + P.T} tokens need {int(lev.max()) + 1} Fenwick levels, {type(opt).__name__} has "
            f"levels = {L}; pass levels >= ceil(log2 T) + 1"
        )
    lam = xp.stack([opt.lam(xp, t0 + t, P.batch_shape, P.dtype, P.device) for t in range(P.T)], axis=-2)
    onehot = xp.asarray(np.eye(L)[np.maximum(lev, 0)] * (lev >= 0)[..., None], dtype=P.dtype, device=P.device)
    return xp.sum(lam[..., :, None, :] * onehot, axis=-1)


def direct(layer, P):
    """``(Y, final_state)``: the dense form for the new pairs plus the carried state's contribution."""
    xp, opt = P.xp, layer.optimizer
    if P.T == 0:  # nothing to read: the loop returns the empty output and the unchanged state
        return loop(opt, P)
    s0 = initial_state(opt, P)
    t0 = int(xp.max(s0.t)) if P.T else 0
    Lam = level_weights(xp, opt, P, t0)
    H = Lam * xp.exp(segsum(xp, P.g[..., 0])) * P.b[..., None, :]
    A = H * xp.matmul(P.Q, xp.matrix_transpose(P.K))
    Y = xp.matmul(A, P.V)
    if P.state0 is not None:  # the carried buckets, read through the same merges: the loop on zero pairs
        Z = P._replace(K=P.K * 0, V=P.V * 0)
        Y = Y + loop(opt, Z)[0]
    _, state = loop(opt, P, read=False)
    return Y, state


register(
    "recurrent",
    "log_linear",
    run=recurrent,
    memory=state_bytes,
    reference=True,
    rank=90,
    summary="the generic loop over the Fenwick buckets (definition)",
)
register(
    "direct",
    "log_linear",
    run=direct,
    memory=direct_bytes,
    rank=20,
    summary="dense H_ti (lambda per Fenwick level x decay) times q^T k, O(T^2)",
)
