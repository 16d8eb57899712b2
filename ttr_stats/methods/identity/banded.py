r"""The banded form of a windowed identity-covariance layer (linear attention, RetNet, Mamba-2 under
``SlidingWindow`` / ``GatedWindow``): exact sums over the window, no subtraction.

Under a window of width w, query t reads the pairs :math:`t - w < i \le t` only,

.. math:: y_t = \sum_{t-w < i \le t} \beta_i \Big(\prod_{j=i+1}^{t}\alpha_j\Big)\, v_i\, k_i^\top q_t
          \;+\; c_t\, M_0 q_t,\qquad c_t = \prod_{j\le t}\alpha_j .

Cut the sequence into blocks of :math:`L = w` positions: a query of block n reads keys of blocks
n - 1 and n only. Per block, one (L, 2L) score matrix against the two blocks' keys, masked to the band
:math:`0 \le t - i < w` and weighted by :math:`\beta_i e^{G_t - G_i}`, where G is the cumulative log-gate
*inside the two blocks* (float64, clamped at :data:`~ttr_stats.methods.identity.chunked.LOG_FLOOR`):
every sum of log-gates is at most 2w deep, so its digits do not depend on T, and the exponent is formed
only inside the band, where it is <= 0 (no overflow).

Why it exists beside ``chunked``: the chunked form keeps a running state and removes the pair leaving
the window by subtracting a delayed run, so in float32 the window's few terms are the difference of two
sums over the whole prefix: the relative error grows like :math:`\epsilon\,T/w` (measured, sum-normalised
linear attention, float32, d = 16: 9.5e-6 at T = 1000, w = 7; 2.5e-4 at T = 16000, w = 7). Here every
output is a direct sum of at most w terms: float32 error of a few eps whatever T. The cost is
O(T w (d_k + d_v)) and memory O(T w) (the band's scores), against chunked's O(T C (d_k + d_v) + T d_k d_v):
cheaper for narrow windows, dearer for wide ones (``auto`` below).

The final state is the window after step T, formed directly from the last w pairs (no subtraction).
"""

from __future__ import annotations

import math

from ...optimizers import LinearAttentionState
from ..problem import initial_state
from ..registry import register
from .chunked import _pad_rows, clamped_log_gates

__all__ = ["banded", "banded_bytes", "AUTO_MAX_WINDOW"]

#: ``auto`` picks the banded form for windows up to this width in float64 (beyond, its O(T w d) work
#: costs more than chunked's, whose float64 error stays ~1e-13 at T / w ~ 2000); in float32 and below it
#: picks it at every width that fits (chunked's error grows like eps T / w there)
AUTO_MAX_WINDOW = 64


def _supports(layer):
    if layer.weights.window is None:
        return "banded runs sliding windows only (SlidingWindow, GatedWindow); use 'chunked' without one"
    return None


def _block(P):
    return max(1, min(int(P.window), P.T))


def _with_previous(xp, X, dev):
    """(..., N, L, e) -> (..., N, 2L, e): each block behind the one before it (zeros before the first)."""
    prev = xp.concat([xp.zeros_like(X[..., :1, :, :]), X[..., :-1, :, :]], axis=-3)
    return xp.concat([prev, X], axis=-2)


def banded(layer, P):
    """Return ``(Y, final_state)`` of a windowed identity-covariance layer by the banded form.

    Parameters
    ----------
    layer : TestTimeRegression
        Identity-covariance optimizer, windowed weights with scalar gates.
    P : Problem

    Returns
    -------
    Y : array of shape (*batch, T, d_v)
    state : LinearAttentionState
        The window after step T: M (*batch, d_v, d_k), z (*batch, d_k).
    """
    opt = layer.optimizer
    xp, dev, dt = P.xp, P.device, P.dtype
    s0 = initial_state(opt, P)
    T, dk, dv = P.T, P.d_k, P.d_v
    if T == 0:
        return xp.zeros(P.batch_shape + (0, dv), dtype=dt, device=dev), s0
    w = min(int(P.window), T)
    L = _block(P)
    N = -(-T // L)
    lead = P.batch_shape
    pad = N * L - T
    bcast = lambda X, e: xp.broadcast_to(X, lead + (X.shape[-2], e))  # noqa: E731
    Q, K, V = bcast(P.Q, dk), bcast(P.K, dk), bcast(P.V, dv)
    g = clamped_log_gates(xp, bcast(P.g, 1), dev)  # (..., T, 1) float64, clamped
    b = bcast(P.b[..., None], 1)

    def blocks(X):
        X = _pad_rows(xp, X, pad, -2, dev)
        return xp.reshape(X, lead + (N, L, X.shape[-1]))

    Qb, Kp, Vp = blocks(Q), _with_previous(xp, blocks(K), dev), _with_previous(xp, blocks(V), dev)
    bp = _with_previous(xp, blocks(b), dev)[..., 0]  # (..., N, 2L)
    G = xp.cumulative_sum(_with_previous(xp, blocks(g), dev)[..., 0], axis=-1)  # (..., N, 2L) float64
    r = xp.arange(L, 2 * L, device=dev)[:, None]
    j = xp.arange(2 * L, device=dev)[None, :]
    band = (j <= r) & ((r - j) < w)  # (L, 2L)
    neg_inf = xp.asarray(-math.inf, dtype=xp.float64, device=dev)
    logw = xp.where(band, G[..., L:, None] - G[..., None, :], neg_inf)  # (..., N, L, 2L), <= 0 in the band
    W = xp.astype(xp.exp(logw), dt, copy=False) * bp[..., None, :]
    # where, not a product with 0: a future pair's score may overflow, and inf * 0 would leak it
    S = xp.matmul(Qb, xp.matrix_transpose(Kp))
    A = xp.where(band, S * W, xp.zeros((), dtype=dt, device=dev))
    y = xp.reshape(xp.matmul(A, Vp), lead + (N * L, dv))[..., :T, :]
    need_den = getattr(opt, "normalize", None) == "sum"
    den = xp.reshape(xp.sum(A, axis=-1), lead + (N * L,))[..., :T] if need_den else None
    # the initial state never leaves the window; it decays by c_t (as in the dense form)
    c = xp.astype(xp.exp(xp.cumulative_sum(g, axis=-2)), dt, copy=False)  # (..., T, 1)
    Qc = Q * c
    y = y + xp.matmul(Qc, xp.matrix_transpose(s0.M))
    if need_den:
        den = den + xp.sum(Qc * s0.z[..., None, :], axis=-1)
    else:
        den = xp.zeros(y.shape[:-1], dtype=dt, device=dev)
    y = opt.finish(xp, y, den)
    # the window after step T: the last w pairs, weights b_i prod_{j=i+1}^{T} alpha_j (suffix sums over
    # at most w gates)
    gl = g[..., T - w :, 0]
    suffix = xp.flip(xp.cumulative_sum(xp.flip(gl, axis=-1), axis=-1), axis=-1) - gl
    wts = xp.astype(xp.exp(suffix), dt, copy=False) * b[..., T - w :, 0]  # (..., w)
    Kl, Vl = K[..., T - w :, :], V[..., T - w :, :]
    cT = c[..., -1, :]  # (..., 1)
    M = xp.matmul(xp.matrix_transpose(Vl * wts[..., None]), Kl) + s0.M * cT[..., None, :]
    z = xp.sum(Kl * wts[..., None], axis=-2) + s0.z * cT
    return y, LinearAttentionState(M, z)


def banded_bytes(P):
    """The band's scores: float64 log-weights and weights, the scores and their product, (N, L, 2L) each,
    plus the blocked copies of Q, K, V (K and V twice: each block behind the previous)."""
    if not P.T or P.window is None:
        return 0
    L = _block(P)
    N = -(-P.T // L)
    band = N * L * 2 * L * (8 + 8 + 3 * P.itemsize)
    rows = N * L * (P.d_k + 2 * (P.d_k + P.d_v)) * P.itemsize
    return P.n_batch * (band + rows)


def _auto(P, free):
    """Windowed calls that fit (a quarter of free device memory, or the host budget): in float32 and
    below at every width (exact sums, where chunked's error grows like eps T / w), in float64 up to
    :data:`AUTO_MAX_WINDOW` (where it is also the cheaper form)."""
    if P.window is None or P.window >= P.T:
        return False
    narrow = P.window <= AUTO_MAX_WINDOW or P.itemsize < 8
    if not narrow:
        return False
    if free is not None:
        return banded_bytes(P) <= free // 4
    from .. import registry

    return banded_bytes(P) <= registry.host_budget()


register(
    "banded",
    "identity",
    run=banded,
    supports=_supports,
    memory=banded_bytes,
    auto=_auto,
    rank=4,
    window=True,
    summary="windowed: each block of w queries against its own and the previous block, O(T w) memory",
)
