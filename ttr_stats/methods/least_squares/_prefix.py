r"""Shared pieces of the exact chunked methods of ``least_squares`` (ClosedForm) and ``rls``.

Within a chunk of ``C`` tokens that starts from the statistics :math:`(R_0, S_0)` of the tokens before it,

.. math:: R_t = c_t R_0 + \sum_{j \le t} W_{tj}\, k_j k_j^\top,\qquad
          S_t = c_t S_0 + \sum_{j \le t} W_{tj}\, v_j k_j^\top,

with :math:`c_t = e^{G_t}`, :math:`G_t = \sum_{i \le t} g_i` and :math:`W_{tj} = \beta_j e^{G_t - G_j}`, all
relative to the chunk start and formed as exponentials of segment sums (never :math:`e^{+\sum g}`), so a
log-decay of -50 per step underflows to 0 instead of overflowing. The methods run in three steps, each
batched over all chunks at once (docs/derivations/exact_chunked.md):

1. :class:`Layout` cuts the sequence into chunks (padding with identity steps) and
   :func:`chunk_weights` forms ``c`` and ``W`` of every chunk;
2. :func:`chunk_starts` accumulates the statistics at every chunk start (a scan over chunks of d x d
   matrices: the only sequential part);
3. every prefix of every chunk is read from its chunk-start statistics, either by forming each
   :math:`R_t` and solving (:func:`prefix_systems`, :func:`read_outputs`) or, when the base of the system
   decays with the samples (RLS, or no decay), with one C x C Cholesky factor per chunk
   (:func:`woodbury_chunk`).

An output at t only ever combines rows ``<= t`` of its chunk (masked lower-triangular weights, leading
blocks of a Cholesky factor, triangular inverses) and statistics of earlier chunks, so outputs before s do
not change, bit for bit, when anything at s or later does.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ... import _array, _validation
from . import _fused_prefix, _fused_trtri

__all__ = [
    "Layout",
    "Singular",
    "COND_LIMIT",
    "work_dtype",
    "as_work",
    "chunk_weights",
    "chunk_sums",
    "groups",
    "group_bytes",
    "chunk_starts",
    "masked_apply",
    "prefix_systems",
    "read_outputs",
    "woodbury_chunk",
    "tril_inverse",
    "cholesky_inverse",
    "pd_inverse",
    "too_ill",
    "singular_error",
]

#: a system whose condition number estimate times the working precision exceeds this is refused: its
#: solution has kept fewer than 3 digits (float64 working precision: cond > ~4.5e12)
COND_LIMIT = 1e-3


class Singular(Exception):
    """A system is numerically singular (raised inside a method, reported as a FloatingPointError)."""

    def __init__(self, detail):
        super().__init__(detail)
        self.detail = detail


def work_dtype(P):
    """The dtype the chunked methods compute in: float64, for float32 inputs too (the prefix systems of RLS
    at the default ridge 1e-6 have cond ~1e7, beyond float32's 6e-8 resolution); outputs are cast back."""
    return P.xp.float64


def as_work(xp, x, dtype):
    """``x`` in the working dtype (a no-op when it already is)."""
    return x if x.dtype == dtype else xp.astype(x, dtype)


class Layout:
    """The chunk grid: a first chunk of ``first`` tokens, then chunks of ``C``; every chunk is padded to
    ``C`` rows with identity steps (zero key, value, query and write strength, log-decay 0), which change
    no statistic and whose outputs are dropped.

    Attributes
    ----------
    C, first, n : int
        Chunk length, length of the first chunk, number of chunks.
    starts : list of int
        Position of each chunk's first token.
    """

    def __init__(self, P, C, first=None):
        self.T = P.T
        self.C = int(C)
        self.first = min(self.C if first is None else int(first), P.T)
        rest = P.T - self.first
        self.n = 1 + -(-rest // self.C)
        self.tail = (self.n - 1) * self.C - rest  # padding after the last token
        self.starts = [0] + [self.first + i * self.C for i in range(self.n - 1)]

    def split(self, xp, x, time_axis_last=False):
        """(..., T, m) -> (..., n, C, m) (or (..., T) -> (..., n, C) with ``time_axis_last``)."""
        if time_axis_last:
            return self.split(xp, x[..., None])[..., 0]
        batch, m = x.shape[:-2], x.shape[-1]
        if self.first == self.C and not self.tail:  # no padding: a reshape (a view), not a copy
            return xp.reshape(x, batch + (self.n, self.C, m))
        dev = _array.device(x)
        zeros = lambda k: xp.zeros(batch + (k, m), dtype=x.dtype, device=dev)  # noqa: E731
        parts = [
            x[..., : self.first, :],
            zeros(self.C - self.first),
            x[..., self.first :, :],
            zeros(self.tail),
        ]
        x = xp.concat([p for p in parts if p.shape[-2]], axis=-2)
        return xp.reshape(x, batch + (self.n, self.C, m))

    def join(self, xp, y):
        """(..., n, C, m) -> (..., T, m): the inverse of :meth:`split` (padding rows dropped)."""
        batch = y.shape[:-3]
        y = xp.reshape(y, batch + (self.n * self.C, y.shape[-1]))
        if self.first == self.C and not self.tail:
            return y
        return xp.concat([y[..., : self.first, :], y[..., self.C : self.C + self.T - self.first, :]], axis=-2)

    def chunk_of(self, i):
        """``(start, stop)`` of the tokens of chunk i."""
        return self.starts[i], (self.first if i == 0 else min(self.starts[i] + self.C, self.T))


def chunk_weights(xp, g, b, full=True):
    r"""Decays of every chunk relative to its start.

    Parameters
    ----------
    g : array of shape (..., C)
        Per-token log-decays (``<= 0``, ``-inf`` allowed).
    b : array of shape (..., C)
        Write strengths.
    full : bool
        Return every row of W; otherwise only its last row (all that chunk-end statistics need).

    Returns
    -------
    c : array of shape (..., C)
        :math:`c_t = e^{G_t}`, the weight of the chunk-start statistics at t.
    W : array of shape (..., C, C), or (..., C) when not ``full``
        :math:`W_{tj} = \beta_j e^{G_t - G_j}` for ``j <= t``, 0 above the diagonal.
    """
    c = xp.exp(xp.cumulative_sum(g, axis=-1))
    if full:
        return c, xp.exp(_array.segsum(xp, g)) * b[..., None, :]
    # sum_{i > j} g_i as a suffix sum (a difference G_C - G_j would form -inf - -inf at a hard reset)
    suffix = xp.flip(xp.cumulative_sum(xp.flip(g, axis=-1), axis=-1), axis=-1)
    zero = xp.zeros(g.shape[:-1] + (1,), dtype=g.dtype, device=_array.device(g))
    return c, xp.exp(xp.concat([suffix[..., 1:], zero], axis=-1)) * b


#: bytes of one group's intermediates: cache-sized on the host (batching every chunk at once made the RLS
#: method 2x slower at B*H = 16, d = 64, from memory traffic); on a device large, since each group costs
#: some 30 launches and library calls (at 4 MB, B = 8, H = 16, d = 64 made one chunk a group)
HOST_GROUP_BYTES = 4 * 2**20
DEVICE_GROUP_BYTES = 512 * 2**20


def group_bytes(xp):
    """The group budget of :func:`groups` for arrays of namespace ``xp``."""
    return HOST_GROUP_BYTES if array_api_compat.is_numpy_namespace(xp) else DEVICE_GROUP_BYTES


def groups(n, per_chunk_bytes, budget=HOST_GROUP_BYTES):
    """Slices of chunk indices, each group's intermediates about ``budget`` bytes (:func:`group_bytes`)."""
    g = max(1, int(budget // max(per_chunk_bytes, 1)))
    return [slice(i, min(i + g, n)) for i in range(0, n, g)]


def chunk_sums(xp, w, K, V):
    """What a chunk adds to the statistics by its end: ``K^T diag(w) K`` (..., d_k, d_k) and
    ``V^T diag(w) K`` (..., d_v, d_k), for the last-row weights w (..., C), K (..., C, d_k) and
    V (..., C, d_v)."""
    Kt = xp.matrix_transpose(w[..., :, None] * K)
    dR = xp.matmul(Kt, K)
    return 0.5 * (dR + xp.matrix_transpose(dR)), xp.matrix_transpose(xp.matmul(Kt, V))


def chunk_starts(xp, R0, S0, c_end, dR, dS):
    """The statistics at every chunk start and after the last chunk (the scan over chunks).

    R0 (..., d_k, d_k), S0 (..., d_v, d_k): before the first chunk; c_end (..., n): each chunk's total
    decay; dR (..., n, d_k, d_k), dS (..., n, d_v, d_k): :func:`chunk_sums`. Returns
    ``(Rs, Ss, R_end, S_end)`` with Rs (..., n, d_k, d_k), Ss (..., n, d_v, d_k).
    """
    scanned = _fused_prefix.chunk_scan(xp, R0, c_end, dR)  # CuPy: one kernel (the same bits)
    if scanned is not None:
        Rs, R_end = scanned
        Ss, S_end = _fused_prefix.chunk_scan(xp, S0, c_end, dS)
        return Rs, Ss, R_end, S_end
    return _array_chunk_starts(xp, R0, S0, c_end, dR, dS)


def _array_chunk_starts(xp, R0, S0, c_end, dR, dS):
    """:func:`chunk_starts` by array operations (a loop over chunks): the reference of the scan kernel."""
    Rs, Ss = [], []
    R, S = R0, S0
    for i in range(c_end.shape[-1]):
        Rs.append(R)
        Ss.append(S)
        a = c_end[..., i, None, None]
        R = a * R + dR[..., i, :, :]
        S = a * S + dS[..., i, :, :]
    return xp.stack(Rs, axis=-3), xp.stack(Ss, axis=-3), R, S


def masked_apply(xp, W, X, K, B):
    r"""``out[t] = sum_{j<=t} W[t, j] (k_j . x_t) b_j`` for every row: ``(W o (X K^T)) B``.

    X (..., C, d_k), K (..., C, d_k), B (..., C, m) -> (..., C, m). Row t uses x_t and rows ``<= t`` of K
    and B only (W is zero above the diagonal).
    """
    return xp.matmul(W * xp.matmul(X, xp.matrix_transpose(K)), B)


def prefix_systems(xp, R0, c, W, K):
    r""":math:`R_t = c_t R_0 + \sum_{j\le t} W_{tj} k_j k_j^\top` of every prefix, shape (..., C, d, d).

    One matmul of W with the flattened outer products; R0 (..., d, d), c (..., C), W (..., C, C),
    K (..., C, d).
    """
    C, d = K.shape[-2], K.shape[-1]
    outer = xp.reshape(K[..., :, :, None] * K[..., :, None, :], K.shape[:-2] + (C, d * d))
    R = xp.reshape(xp.matmul(W, outer), K.shape[:-2] + (C, d, d))
    return R + c[..., None, None] * R0[..., None, :, :]


def read_outputs(xp, X, c, W, S0, K, V):
    r"""``y_t = S_t x_t = c_t S_0 x_t + sum_{j<=t} W_tj (k_j . x_t) v_j`` for every row, without forming S_t.

    X, K (..., C, d_k); c (..., C); W (..., C, C); S0 (..., d_v, d_k); V (..., C, d_v) -> (..., C, d_v).
    """
    return c[..., None] * xp.matmul(X, xp.matrix_transpose(S0)) + masked_apply(xp, W, X, K, V)


def tril_inverse(xp, L):
    r"""Inverse of lower-triangular L (..., n, n) by recursive 2 x 2 blocking, with matmuls only.

    :math:`\begin{pmatrix} A & 0 \\ B & D \end{pmatrix}^{-1} = \begin{pmatrix} A^{-1} & 0 \\ -D^{-1} B A^{-1}
    & D^{-1} \end{pmatrix}`, all diagonal blocks of one size at once (log2 n levels; L is padded with an
    identity block to a power of two). Row i of the inverse combines rows ``<= i`` of L only (the upper
    blocks are exact zeros), so it is as causal as forward substitution. Why not a triangular solve: SciPy's
    batched ``solve_triangular`` loops over the batch in Python and multithreaded OpenBLAS ``trsm`` on
    64 x 64 blocks took 7 ms each on the 2-core host (1.1 s of a 1.2 s run); array-API libraries have none.
    For NumPy arrays LAPACK's ``trtri`` runs per matrix instead (27 us for 64 x 64, 5x faster than the
    blocking here; its column sweep also combines rows ``<= i`` only for row i), and for CuPy float32 /
    float64 one CUDA kernel (``_fused_trtri``: forward substitution, as causal; the blocking's ~40
    launches a call were most of chunked RLS's time on a GPU). For torch tensors one batched
    ``torch.linalg.solve_triangular`` against the identity (differentiable; forward substitution, as
    causal): under autograd the blocking's launches were differentiated one by one as well.
    """
    if array_api_compat.is_numpy_array(L) and L.dtype in (np.float32, np.float64):
        return _trtri(L)
    if array_api_compat.is_torch_array(L):  # one batched trsm (differentiable) instead of ~40 launches
        eye = xp.eye(L.shape[-1], dtype=L.dtype, device=_array.device(L))
        return _array.solve_triangular(xp, L, eye)
    fused = _fused_trtri.tril_inverse(xp, L)  # CuPy: forward substitution, one block a matrix
    if fused is not None:
        return fused
    n = L.shape[-1]
    N = 1 << max(n - 1, 0).bit_length()
    batch = L.shape[:-2]
    dev = _array.device(L)
    if N > n:
        z = xp.zeros(batch + (n, N - n), dtype=L.dtype, device=dev)
        eye = xp.broadcast_to(xp.eye(N - n, dtype=L.dtype, device=dev), batch + (N - n, N - n))
        L = xp.concat(
            [xp.concat([L, z], axis=-1), xp.concat([xp.matrix_transpose(z), eye], axis=-1)], axis=-2
        )
    D = L[..., None, :, :]  # (..., blocks, size, size): the diagonal blocks of the current size
    lower = []
    size = N
    while size > 1:
        h = size // 2
        lower.append(D[..., h:, :h])
        D = xp.reshape(xp.stack([D[..., :h, :h], D[..., h:, h:]], axis=-3), batch + (-1, h, h))
        size = h
    X = 1.0 / D  # (..., N, 1, 1)
    for B in reversed(lower):
        Ai, Di = X[..., 0::2, :, :], X[..., 1::2, :, :]
        C21 = -xp.matmul(Di, xp.matmul(B, Ai))
        top = xp.concat([Ai, xp.zeros(Ai.shape, dtype=L.dtype, device=dev)], axis=-1)
        X = xp.concat([top, xp.concat([C21, Di], axis=-1)], axis=-2)
    return X[..., 0, :n, :n]


def _trtri(L, upper_zero=False):
    """LAPACK ``?trtri`` on each lower-triangular matrix of a NumPy stack (..., n, n).

    ``upper_zero``: L's strict upper triangle is zero already (a Cholesky factor), so the result's is.
    """
    from scipy.linalg import lapack

    fn = lapack.dtrtri if L.dtype == np.float64 else lapack.strtri
    flat = np.reshape(L, (-1,) + L.shape[-2:])
    out = np.empty_like(flat)
    for i in range(flat.shape[0]):
        inv, info = fn(flat[i], lower=1)
        if info != 0:
            raise Singular("a zero pivot in its triangular factor")
        out[i] = inv
    out = np.reshape(out, L.shape)
    return out if upper_zero else np.tril(out)  # trtri leaves the strict upper triangle as it found it


def cholesky(xp, A, deferred=False):
    """Lower Cholesky factor; :class:`Singular` where the library reports a failed factorisation.

    ``deferred``: a torch tensor on a device whose checks wait (:func:`_validation.defers`) is factored
    without the library's error check, a host synchronisation on CUDA; a matrix that does not factor gets
    a NaN factor instead, and the caller must refuse non-finite results (as RLS's chunked method does).
    """
    if deferred and _validation.defers(A):
        import torch

        L, info = torch.linalg.cholesky_ex(A)
        return torch.where((info == 0)[..., None, None], L, math.nan)
    try:
        return _array.cholesky(xp, A)
    except Exception as exc:
        if isinstance(exc, np.linalg.LinAlgError) or "LinAlgError" in type(exc).__name__:
            raise Singular("its Cholesky factorisation failed: not numerically positive definite") from exc
        raise


#: the largest matrix whose Cholesky factor and its inverse LAPACK computes directly on the host; larger
#: ones are split in 2 x 2 blocks (:func:`cholesky_inverse`). Measured on the 2-core host, one thread, 32
#: matrices: potrf 2.7 us at 32 x 32 against 17 us at 64 x 64 (LAPACK's unblocked code below its block
#: size 64), factor and inverse of 64 x 64 1.28 ms by potrf + trtri, 0.95 ms split at 32, 1.0 at 16
HOST_LEAF = 32


def cholesky_inverse(xp, A, deferred=False):
    r"""The inverse :math:`L^{-1}` of the lower Cholesky factor of symmetric positive definite A (..., n, n).

    Reads the lower triangle of A only. :class:`Singular` where A is not numerically positive definite.
    For NumPy float32 / float64 matrices above :data:`HOST_LEAF` it works by 2 x 2 blocks,

    .. math:: L_{11} L_{11}^\top = A_{11},\quad L_{21} = A_{21} L_{11}^{-\top},\quad
              L_{22} L_{22}^\top = A_{22} - L_{21} L_{21}^\top,\quad
              (L^{-1})_{21} = -L_{22}^{-1} L_{21} L_{11}^{-1},

    batched matrix products around LAPACK's factor and ``trtri`` of the diagonal blocks. Row i of the result
    combines rows ``<= i`` of A only, as the unblocked factor and inverse do (causal).
    """
    if not (array_api_compat.is_numpy_array(A) and A.dtype in (np.float32, np.float64)):
        return tril_inverse(xp, cholesky(xp, A, deferred))
    return _cholesky_inverse_host(A)[1]


def _cholesky_inverse_host(A):
    """``(L, L^{-1})`` of NumPy A (..., n, n) by :func:`cholesky_inverse`'s blocks."""
    n = A.shape[-1]
    if n <= HOST_LEAF:
        L = cholesky(np, A)  # zero above the diagonal
        return L, _trtri(L, upper_zero=True)
    h = n // 2
    L11, I11 = _cholesky_inverse_host(A[..., :h, :h])
    L21 = np.matmul(A[..., h:, :h], np.swapaxes(I11, -1, -2))
    S = A[..., h:, h:] - np.matmul(L21, np.swapaxes(L21, -1, -2))
    L22, I22 = _cholesky_inverse_host(S)
    L = np.zeros_like(A)
    L[..., :h, :h], L[..., h:, :h], L[..., h:, h:] = L11, L21, L22
    Li = np.zeros_like(A)
    Li[..., :h, :h], Li[..., h:, h:] = I11, I22
    np.matmul(I22, np.matmul(L21, I11), out=Li[..., h:, :h])
    np.negative(Li[..., h:, :h], out=Li[..., h:, :h])
    return L, Li


def pd_inverse(xp, R, deferred=False):
    r"""``(R^{-1}, cond)`` of symmetric positive definite R (..., d, d) by Cholesky.

    ``cond`` (...,) is :math:`\|R\|_F \|R^{-1}\|_F`, an upper bound of the 2-norm condition number (large
    exactly when R is numerically singular; NaN where a ``deferred`` factor failed, see :func:`cholesky`).
    """
    Li = cholesky_inverse(xp, R, deferred)
    Pm = xp.matmul(xp.matrix_transpose(Li), Li)
    return Pm, xp.linalg.matrix_norm(R) * xp.linalg.matrix_norm(Pm)


def too_ill(xp, cond):
    """Boolean array: ``cond * eps`` above :data:`COND_LIMIT`, or not finite (NaN included)."""
    eps = float(xp.finfo(cond.dtype).eps)
    return ~(cond * eps <= COND_LIMIT)


def woodbury_chunk(xp, P0, M0, K, V, Q, b, E, deferred=False):
    r"""Exact outputs of chunks whose prefix systems share a decaying base.

    For :math:`A_t = c_t A_0 + \sum_{j \le t} W_{tj} k_j k_j^\top` with :math:`A_0^{-1} = P_0` and
    :math:`M_0 = S_0 P_0`, the outputs :math:`y_t = S_t A_t^{-1} q_t` are

    .. math:: y_t = M_0 q_t + \sum_{i \le t} (b_i^\top q_t)\, \tilde v_i,\qquad
              B = L^{-1} K P_0,\quad \tilde V = L^{-1} (V - K M_0^\top),

    with :math:`L L^\top = \mathrm{diag}(e^{G_j}/\beta_j) + K P_0 K^\top` (C x C). The system of prefix t is
    the leading t x t block, whose factor is the leading block of L, and row i of :math:`L^{-1}` uses rows
    ``<= i``: one factorisation serves every prefix. No factor :math:`e^{+G}` appears (:math:`e^{G_j}\le 1`).
    Pairs with :math:`\beta_j = 0` (padding) get a zero key and a unit diagonal, which decouples them.

    Parameters
    ----------
    P0 : array of shape (..., d_k, d_k)
    M0 : array of shape (..., d_v, d_k)
    K, Q : arrays of shape (..., C, d_k)
    V : array of shape (..., C, d_v)
    b : array of shape (..., C)
        Write strengths.
    E : array of shape (..., C)
        :math:`e^{G_j}` relative to the chunk start (``c`` of :func:`chunk_weights`).
    deferred : bool
        Factor as :func:`cholesky` does with it: NaN outputs, not an error, where a system does not factor.

    Returns
    -------
    array of shape (..., C, d_v)
    """
    if array_api_compat.is_numpy_array(K) and K.dtype in (np.float32, np.float64):
        return _woodbury_chunk_host(P0, M0, K, V, Q, b, E)
    return _woodbury_chunk_array(xp, P0, M0, K, V, Q, b, E, deferred)


def _woodbury_chunk_array(xp, P0, M0, K, V, Q, b, E, deferred=False):
    """:func:`woodbury_chunk` by array-API operations (every library; the reference of the host path)."""
    dev = _array.device(K)
    zero = xp.zeros((), dtype=K.dtype, device=dev)
    one = xp.ones((), dtype=K.dtype, device=dev)
    live = b > 0
    Kf = xp.where(live[..., None], K, zero)
    Ediag = xp.where(live, E / xp.where(live, b, one), one)
    # separate products, not one of concatenated operands: the (transposing) concatenations cost more
    # than the products they saved (host: 13.3 -> 9 ms for 32 chunks of 64 at d = 64)
    F = xp.matmul(Kf, P0)  # row j is P0 k_j (P0 symmetric)
    M0t = xp.matrix_transpose(M0)
    A = xp.matmul(F, xp.matrix_transpose(Kf))
    A = 0.5 * (A + xp.matrix_transpose(A))  # exactly symmetric for the factorisation
    idx = xp.arange(K.shape[-2], device=dev)
    A = A + xp.where(idx[:, None] == idx[None, :], Ediag[..., :, None], zero)
    Li = cholesky_inverse(xp, A, deferred)
    B = xp.matmul(Li, F)
    Vt = xp.matmul(Li, V - xp.matmul(Kf, M0t))
    scores = xp.matmul(Q, xp.matrix_transpose(B))
    scores = xp.where(idx[:, None] >= idx[None, :], scores, zero)  # b_i . q_t, i <= t
    return xp.matmul(Q, M0t) + xp.matmul(scores, Vt)


def _woodbury_chunk_host(P0, M0, K, V, Q, b, E):
    """:func:`woodbury_chunk` for NumPy arrays: the same products, with what NumPy lets one skip.

    No masking of the keys when every write strength is positive (only the padded first and last chunks
    have zeros), no symmetrisation of the C x C system (LAPACK's factor reads its lower triangle only, as
    does :func:`cholesky_inverse`), the diagonal added in place, and the factor's inverse by blocks.
    Measured on the 2-core host, one thread, 512 chunks of 64 at d = 64 with their chunk-start inverses:
    139 -> 116 ms (with :func:`cholesky_inverse` in :func:`pd_inverse`).
    """
    live = b > 0
    if bool(np.all(live)):
        Kf, Ediag = K, E / b
    else:
        Kf = np.where(live[..., None], K, 0)
        Ediag = np.where(live, E / np.where(live, b, 1), 1)
    C = K.shape[-2]
    F = np.matmul(Kf, P0)  # row j is P0 k_j (P0 symmetric)
    A = np.matmul(F, np.swapaxes(Kf, -1, -2))  # its lower triangle is all that is read
    idx = np.arange(C)
    A[..., idx, idx] += Ediag
    Li = cholesky_inverse(np, A)
    M0t = np.swapaxes(M0, -1, -2)
    B = np.matmul(Li, F)
    W = np.matmul(Kf, M0t)
    np.subtract(V, W, out=W)
    Vt = np.matmul(Li, W)
    scores = np.matmul(Q, np.swapaxes(B, -1, -2))
    scores *= np.tri(C, dtype=scores.dtype)  # b_i . q_t, i <= t
    out = np.matmul(Q, M0t)
    out += np.matmul(scores, Vt)
    return out


def singular_error(layer, t, detail, remedy):
    """The FloatingPointError of a numerically singular prefix system, naming the gate and the remedy."""
    opt = layer.optimizer
    forgetting = getattr(opt, "forgetting", 1.0)
    gate = "The decay (alpha / log_alpha gates" + (
        f" and forgetting={forgetting!r})" if float(forgetting) != 1.0 else ")"
    )
    return FloatingPointError(
        f"{type(opt).__name__}: the prefix system R_t near t = {t} is numerically singular ({detail}). "
        f"{gate} forgets the old pairs faster than the keys excite every direction (wind-up, theory "
        f"§5.2), and its solution would be a finite wrong number. {remedy}"
    )
