r"""DeltaFormer in closed form: the corrected values by one unit-triangular solve, then a softmax read.

With :math:`A` the strictly causal softmax weights (row t normalised over the pairs before t, the carried
cache included) the writes are :math:`u = v - \mathrm{Diag}(\beta)(A_{\mathrm{new}}u + A_{\mathrm{old}}u_0)`,
i.e. :math:`(I + \mathrm{Diag}(\beta)A_{\mathrm{new}})\,u = v - \mathrm{Diag}(\beta)A_{\mathrm{old}}u_0`, a
unit lower-triangular system (fla's ``invcum``); the outputs are the inclusive softmax weights times
:math:`(u_0, u)`. :math:`O(T^2(d + d_v))` work plus the :math:`O(T^2 d_v)` substitution, :math:`T^2` memory.
"""

from __future__ import annotations

import math

from ... import _array
from ...regressors.nonparametric import CacheState, normalised_weights
from ..registry import fits_host, is_host, register
from ._common import check_causal, pair_log_weights, start_cache
from .recurrent import recurrent


def direct(layer, P):
    """Return ``(Y, CacheState)``, the same as the recurrent reference up to rounding."""
    xp, reg = P.xp, layer.regressor
    check_causal(P)
    T, dt = P.T, P.dtype
    if T == 0:  # nothing to solve: the carried cache, unchanged (the reference's loop runs no step)
        return recurrent(layer, P)
    K0, U0, lw0 = start_cache(xp, P)
    n0 = K0.shape[-2]
    g = P.g[..., 0]
    neg = xp.asarray(-math.inf, dtype=dt, device=P.device)
    # log-weights of every (query t, pair) at step t: new pairs by segment sums, old ones by prefix sums
    lg = _array.segsum(xp, g) + pair_log_weights(xp, P)[..., None, :]
    prefix = xp.cumulative_sum(g, axis=-1)
    L_new = lg + reg.log_similarity(xp, P.Q, P.K)
    L_old = (lw0[..., None, :] + prefix[..., :, None]) + reg.log_similarity(xp, P.Q, K0)
    idx = xp.arange(T, device=P.device)
    strict = idx[:, None] > idx[None, :]
    A = normalised_weights(xp, xp.concat([L_old, xp.where(strict, L_new, neg)], axis=-1))
    Bv = P.b[..., :, None]
    rhs = P.V - Bv * xp.matmul(A[..., :n0], U0)
    eye = xp.eye(T, dtype=dt, device=P.device)
    U = _array.solve_triangular(xp, eye + Bv * A[..., n0:], rhs, lower=True)
    W = normalised_weights(xp, xp.concat([L_old, L_new], axis=-1))  # inclusive (L_new is -inf above)
    Y = xp.matmul(W[..., :n0], U0) + xp.matmul(W[..., n0:], U)
    last = xp.concat([lw0 + prefix[..., -1:], lg[..., -1, :]], axis=-1)  # the cache's, after the last step
    return Y, CacheState(xp.concat([K0, P.K], axis=-2), xp.concat([U0, U], axis=-2), last)


def dense_bytes(P):
    n = P.T + (0 if P.state0 is None else P.state0.K.shape[-2])
    return 6 * P.n_batch * P.T * n * P.itemsize


register(
    "direct",
    "deltaformer",
    run=direct,
    memory=dense_bytes,
    auto=lambda P, free: is_host(P) and fits_host(P, dense_bytes),
    rank=20,
    dtypes=("float32", "float64"),
    summary="the corrected values by one unit-triangular solve, then the softmax read (O(T^2))",
)
