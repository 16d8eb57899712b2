r"""PaTH by chunks: the Householder products of each chunk once, then every (query chunk, key chunk) block
of logits from queries carried back to the chunk boundaries, accumulated with an online softmax.

For a query t in chunk c and a key i in chunk :math:`c' < c` the transform splits at the chunk boundaries,

.. math:: q_t^\top P_{ti} k_i = \hat q_t^\top A_{c-1}A_{c-2}\cdots A_{c'+1}\,\hat k_i,\qquad
          \hat q_t = H_{s_c}\cdots H_t\, q_t,\quad \hat k_i = H_{e_{c'}}\cdots H_{i+1} k_i,

(:math:`s_c, e_c`: the first and last position of chunk c, :math:`A_c = H_{e_c}\cdots H_{s_c}`, every
:math:`H` symmetric), and inside a chunk it is the definition. So: (1) one pass over the C positions of
every chunk at once carries the keys forward (:math:`\hat k`, and the intra-chunk logits row by row) and
builds :math:`A_c` (d x d); (2) one backward pass carries the queries to their chunk's start
(:math:`\hat q`); (3) for lag L = 1, 2, ... every query chunk c >= L meets key chunk c - L, and its carried
query moves on by :math:`A_{c-L}` (as fla's ``q_i = q_i - q_i @ H_mat_j``). Log-weights are sums of
within-chunk prefix / suffix sums and chunk totals (never differences), so ``-inf`` resets stay exact. A
carried cache (keys transported to the previous call's end) is the block behind chunk 0. Work
:math:`O(T^2 d + T C d + (T/C) d^3)`, memory :math:`O(T C + T d)` (one lag's blocks at a time).

fla's naive code forms the within-chunk products in the UT form (a triangular inverse); the sequential
pass here is the same product, vectorised over chunks instead of over positions, and needs no solve.
Dot-product similarities only (``ExpDot``): a distance kernel of transported keys is not a function of
:math:`\hat q^\top\hat k`.
"""

from __future__ import annotations

import math

from ... import _array
from ..._array import segsum
from ...regressors.nonparametric import CacheState
from ...regressors.path import householder
from ...similarity import ExpDot
from ..registry import register
from ._common import new_log_weights, start_cache, transforms
from .recurrent import recurrent

CHUNK = 64


def _pad(xp, x, n, value=0.0, axis=-1):
    """``x`` extended by ``n`` entries of ``value`` along ``axis`` (-1 or -2)."""
    if n == 0:
        return x
    shape = list(x.shape)
    shape[axis] = n
    return xp.concat([x, xp.full(tuple(shape), value, dtype=x.dtype, device=_array.device(x))], axis=axis)


def _chunks(xp, x, n, C, vector=True):
    """(..., n C, d) -> (..., n, C, d), or (..., n C) -> (..., n, C)."""
    lead = tuple(x.shape[: -2 if vector else -1])
    tail = (x.shape[-1],) if vector else ()
    return xp.reshape(x, lead + (n, C) + tail)


class _Online:
    """Running max / sum / numerator of a row-wise softmax over blocks (FlashAttention's recurrence)."""

    def __init__(self, xp, m, l, acc):
        self.xp, self.m, self.l, self.acc = xp, m, l, acc

    def block(self, logits, V):
        """Fold one block: logits (..., C, n_k), values (..., n_k, d_v) into the statistics."""
        xp = self.xp
        zero = xp.zeros((), dtype=logits.dtype, device=_array.device(logits))
        bm = xp.max(logits, axis=-1)  # every block has at least one key
        m_new = xp.maximum(self.m, bm)
        safe = xp.where(m_new > -math.inf, m_new, zero)
        old = xp.exp(self.m - safe)
        p = xp.exp(logits - safe[..., None])
        return m_new, self.l * old + xp.sum(p, axis=-1), self.acc * old[..., None] + xp.matmul(p, V)


def chunked(layer, P):
    """Return ``(Y, CacheState)``, the same as the recurrent reference up to rounding."""
    xp, reg = P.xp, layer.regressor
    T, d, dv = P.K.shape[-2], P.d_k, P.d_v  # pairs (P.T counts the queries: T_q when non-causal)
    if T == 0:
        return recurrent(layer, P)
    tau = reg.similarity.resolved_scale(d)
    C = min(int(P.chunk_size or CHUNK), T)
    n = -(-T // C)
    pad = n * C - T
    w, bw = transforms(xp, P)
    logb, g = new_log_weights(xp, P)
    # padding to whole chunks: identity transforms, no decay, excluded pairs, zero queries
    Qs = P.Q if P.causal else xp.zeros_like(P.K)  # a non-causal call reads the final cache below
    Q, K, V = (_pad(xp, x, pad, axis=-2) for x in (Qs, P.K, P.V))
    w, bw, g = _pad(xp, w, pad, axis=-2), _pad(xp, bw, pad), _pad(xp, g, pad)
    logb = _pad(xp, logb, pad, value=-math.inf)
    Q, K, V, w = (_chunks(xp, x, n, C) for x in (Q, K, V, w))
    bw, g, logb = (_chunks(xp, x, n, C, vector=False) for x in (bw, g, logb))
    dt = P.dtype
    idx = xp.arange(C, device=P.device)
    neg = xp.asarray(-math.inf, dtype=dt, device=P.device)

    # (1) forward pass inside every chunk: keys carried to each position (intra logits), then to the end;
    # the chunk products A_c = H_{e} ... H_{s}
    Kh = K
    A = xp.broadcast_to(xp.eye(d, dtype=dt, device=P.device), Kh.shape[:-2] + (d, d))
    rows = []
    for s in range(C):
        ws, bs = w[..., s, :], bw[..., s]
        moved = householder(xp, Kh, ws, bs)
        Kh = xp.where((idx < s)[:, None], moved, Kh)  # H_s acts on the keys before s (P_ss = I)
        rows.append(xp.matmul(Kh, Q[..., s, :, None])[..., 0])  # q_s . k_i^(s), (..., n, C)
        A = A - bs[..., None, None] * ws[..., :, None] * xp.matmul(ws[..., None, :], A)
    within = xp.stack(rows, axis=-2)  # (..., n, C_q, C_k)
    # (2) backward pass: queries carried to their chunk's start, q_hat_t = H_s ... H_t q_t
    Qh = Q
    for s in range(C - 1, -1, -1):
        moved = householder(xp, Qh, w[..., s, :], bw[..., s])
        Qh = xp.where((idx >= s)[:, None], moved, Qh)
    # gates: within-chunk prefix (through t), suffix (after i) and chunk totals: sums only
    prefix = xp.cumulative_sum(g, axis=-1)
    incl = xp.flip(xp.cumulative_sum(xp.flip(g, axis=-1), axis=-1), axis=-1)
    suffix = xp.concat([incl[..., 1:], xp.zeros(incl.shape[:-1] + (1,), dtype=dt)], axis=-1)
    total = incl[..., 0]  # (..., n)

    causal = idx[:, None] >= idx[None, :]
    L0 = xp.where(causal, tau * within + segsum(xp, g) + logb[..., None, :], neg)
    acc = _Online(xp, xp.full(L0.shape[:-1], -math.inf, dtype=dt), xp.zeros(L0.shape[:-1], dtype=dt),
                  xp.zeros(L0.shape[:-1] + (dv,), dtype=dt))  # fmt: skip
    acc.m, acc.l, acc.acc = acc.block(L0, V)
    # (3) lags: query chunk c meets key chunk c - L; the carried query then moves through A_{c-L}
    Qc, between = Qh, xp.zeros(total.shape, dtype=dt)
    for lag in range(1, n):
        q, m, l, a = Qc[..., lag:, :, :], acc.m[..., lag:, :], acc.l[..., lag:, :], acc.acc[..., lag:, :, :]
        lw = (prefix[..., lag:, :] + between[..., lag:, None])[..., :, None] + (
            suffix[..., : n - lag, :] + logb[..., : n - lag, :]
        )[..., None, :]
        logits = tau * xp.matmul(q, xp.matrix_transpose(Kh[..., : n - lag, :, :])) + lw
        part = _Online(xp, m, l, a).block(logits, V[..., : n - lag, :, :])
        acc.m = xp.concat([acc.m[..., :lag, :], part[0]], axis=-2)
        acc.l = xp.concat([acc.l[..., :lag, :], part[1]], axis=-2)
        acc.acc = xp.concat([acc.acc[..., :lag, :, :], part[2]], axis=-3)
        Qc = xp.concat([Qc[..., :lag, :, :], xp.matmul(q, A[..., : n - lag, :, :])], axis=-3)
        between = xp.concat([between[..., :lag], between[..., lag:] + total[..., : n - lag]], axis=-1)
    # the carried cache: behind chunk 0, its keys at the previous call's end (Qc has crossed A_{c-1..0})
    K0, V0, lw0 = start_cache(xp, P)
    if K0.shape[-2]:
        logits = tau * xp.matmul(Qc, xp.matrix_transpose(K0)[..., None, :, :])
        logits = logits + (prefix + between[..., None])[..., :, None] + lw0[..., None, None, :]
        acc.m, acc.l, acc.acc = acc.block(logits, V0[..., None, :, :])
    some = acc.l > 0
    Y = acc.acc / xp.where(some, acc.l, xp.ones((), dtype=dt, device=P.device))[..., None]
    Y = xp.where(some[..., None], Y, xp.zeros((), dtype=dt, device=P.device))  # no positive weight: 0
    Y = xp.reshape(Y, P.batch_shape + (n * C, dv))[..., :T, :]

    # the final cache: keys carried to the last step, R_c = A_{n-1} ... A_{c+1}
    R = [None] * n
    R[n - 1] = xp.broadcast_to(xp.eye(d, dtype=dt, device=P.device), A.shape[:-3] + (d, d))
    for c in range(n - 2, -1, -1):
        R[c] = xp.matmul(R[c + 1], A[..., c + 1, :, :])
    Rs = xp.stack(R, axis=-3)  # (..., n, d, d)
    Kf = xp.reshape(xp.matmul(Kh, xp.matrix_transpose(Rs)), P.batch_shape + (n * C, d))[..., :T, :]
    g_all = P.g[..., 0]
    incl_all = xp.flip(xp.cumulative_sum(xp.flip(g_all, axis=-1), axis=-1), axis=-1)
    lwf = xp.concat([incl_all[..., 1:], xp.zeros(g_all.shape[:-1] + (1,), dtype=dt)], axis=-1)
    lwf = lwf + new_log_weights(xp, P)[0]
    Kc, Vc = Kf, P.V
    if K0.shape[-2]:
        A_all = xp.matmul(R[0], A[..., 0, :, :])
        Kc = xp.concat([xp.matmul(K0, xp.matrix_transpose(A_all)), Kf], axis=-2)
        Vc = xp.concat([V0, P.V], axis=-2)
        lwf = xp.concat([lw0 + incl_all[..., :1], lwf], axis=-1)
    state = CacheState(Kc, Vc, lwf)
    if not P.causal:
        Y = reg.solve(xp, P.Q, Kc, Vc, lwf[..., None, :] + reg.log_similarity(xp, P.Q, Kc))
    return Y, state


def _supports(layer):
    if not isinstance(layer.regressor.similarity, ExpDot):
        return "chunked computes dot-product logits (ExpDot) only; use method='recurrent'"
    return None


def chunk_bytes(P):
    """One lag's blocks (T x C logits), the carried queries and keys, the chunk products."""
    T = P.K.shape[-2]
    C = min(int(P.chunk_size or CHUNK), max(T, 1))
    return P.n_batch * (3 * T * C + 8 * T * (P.d_k + P.d_v) + 3 * (T // C + 1) * P.d_k**2) * P.itemsize


register(
    "chunked",
    "path",
    run=chunked,
    supports=_supports,
    memory=chunk_bytes,
    auto=lambda P, free: True,
    rank=30,
    dtypes=("float32", "float64"),
    summary="Householder products per chunk, queries carried back across chunks, online softmax",
)
