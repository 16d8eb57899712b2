r"""Array-API helpers of the chunked (WY / UT-transform) delta rule: log-space chunk decays, the exactly
causal inverse of a unit lower-triangular matrix, and the inter-chunk recurrence
:math:`S_n = S_{n-1} A_n + B_n` (a loop or an associative scan).

Every helper takes the namespace ``xp`` and the ``device`` of its arrays and uses only standard calls
(``matmul``, ``concat``, ``cumulative_sum``, slicing), so the same code runs on NumPy, array_api_strict,
CuPy and torch. Derivation: docs/derivations/delta_chunked.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = [
    "segsum",
    "exclusive_cumsum",
    "shift_down",
    "unit_lower_inverse",
    "inter_chunk",
    "ChunkTerms",
    "chunk_terms",
    "chunk_outputs",
    "transpose_copy",
]


def segsum(xp, g, device=None):
    r"""Segment sums ``out[..., i, j] = sum_{m=j+1}^{i} g[..., m]`` for ``j <= i``, ``-inf`` above.

    ``exp(segsum(g))`` is the decay matrix :math:`\Gamma_{ij} = \prod_{m=j+1}^i \alpha_m \le 1`. Masked
    cumulative sums, never a difference of two prefix sums: exact for ``g = -50`` a step and for hard
    resets (``g = -inf`` never meets ``-inf - -inf``). (As :func:`ttr_stats._array.segsum`, with the mask
    made on ``device`` so that torch CUDA tensors do not meet a host mask.)

    Parameters
    ----------
    g : array of shape (..., C)

    Returns
    -------
    array of shape (..., C, C)
    """
    C = g.shape[-1]
    idx = xp.arange(C, device=device)
    x = xp.broadcast_to(g[..., :, None], g.shape + (C,))
    x = xp.where(idx[:, None] > idx[None, :], x, xp.zeros((), dtype=g.dtype, device=device))
    s = xp.cumulative_sum(x, axis=-2)
    return xp.where(idx[:, None] >= idx[None, :], s, xp.asarray(-math.inf, dtype=g.dtype, device=device))


def exclusive_cumsum(xp, g, device=None):
    """``out[..., i] = sum_{m < i} g[..., m]`` along the last axis (a shifted cumulative sum, so that no
    ``-inf - -inf`` is formed)."""
    s = xp.cumulative_sum(g, axis=-1)
    zero = xp.zeros(g.shape[:-1] + (1,), dtype=g.dtype, device=device)
    return xp.concat([zero, s[..., :-1]], axis=-1)


def shift_down(xp, X, fill, device=None):
    """Rows moved down by one along axis -2 (``out[..., i, :] = X[..., i - 1, :]``), row 0 = ``fill``."""
    top = xp.full(X.shape[:-2] + (1, X.shape[-1]), fill, dtype=X.dtype, device=device)
    return xp.concat([top, X[..., :-1, :]], axis=-2)


def unit_lower_inverse(xp, L, device=None):
    r"""Inverse of unit lower-triangular matrices ``L`` (..., C, C) by recursive 2 x 2 blocking.

    .. math:: \begin{pmatrix} A & 0 \\ B & D \end{pmatrix}^{-1} =
              \begin{pmatrix} A^{-1} & 0 \\ -D^{-1} B A^{-1} & D^{-1} \end{pmatrix}

    Both halves are inverted together (stacked along a new leading axis), so there are
    ``ceil(log2 C)`` levels of batched matmuls and no Python loop over rows. Row ``i`` of the result
    depends only on rows ``<= i`` of ``L``, and the entries above the diagonal are exact zeros: exact
    causality (changing rows ``>= s`` of ``L`` leaves rows ``< s`` of the inverse bit-for-bit
    unchanged). Only the strictly lower part of ``L`` is read: its diagonal is taken to be 1 and its
    upper part 0 whatever they hold. ``C`` that is not a power of two is padded with an identity block
    (its inverse is the same identity).

    Returns
    -------
    array of shape (..., C, C)
    """
    C = L.shape[-1]
    n = 1 << max(C - 1, 0).bit_length()
    if n != C:
        pad = n - C
        eye = xp.eye(pad, dtype=L.dtype, device=device)
        lead = L.shape[:-2]
        top = xp.concat([L, xp.zeros(lead + (C, pad), dtype=L.dtype, device=device)], axis=-1)
        bot = xp.concat(
            [
                xp.zeros(lead + (pad, C), dtype=L.dtype, device=device),
                xp.broadcast_to(eye, lead + (pad, pad)),
            ],
            axis=-1,
        )
        return _inverse_pow2(xp, xp.concat([top, bot], axis=-2), device)[..., :C, :C]
    return _inverse_pow2(xp, L, device)


def _inverse_pow2(xp, L, device):
    n = L.shape[-1]
    if n == 1:
        return xp.ones(L.shape, dtype=L.dtype, device=device)  # the unit diagonal, exactly
    h = n // 2
    halves = _inverse_pow2(xp, xp.stack([L[..., :h, :h], L[..., h:, h:]], axis=0), device)
    Ai, Di = halves[0, ...], halves[1, ...]
    X = -xp.matmul(Di, xp.matmul(L[..., h:, :h], Ai))
    zero = xp.zeros(Ai.shape, dtype=L.dtype, device=device)
    return xp.concat([xp.concat([Ai, zero], axis=-1), xp.concat([X, Di], axis=-1)], axis=-2)


def inter_chunk(xp, A, B, S0, *, scan=False):
    r"""States at the chunk starts of :math:`S_n = S_{n-1} A_n + B_n`.

    Parameters
    ----------
    A : array of shape (..., N, d_k, d_k)
        Chunk transitions :math:`A_n` (products of :math:`\alpha (I - \eta k k^\top)`, norm <= 1 in the
        stable regime, so neither the loop nor the scan can grow).
    B : array of shape (..., N, d_v, d_k)
    S0 : array of shape (..., d_v, d_k)
    scan : bool
        ``False``: a loop over the N chunks (one matmul each; the host choice, where a kernel costs
        nothing to launch). ``True``: a Hillis-Steele inclusive scan over chunks with the associative
        composition :math:`(A_1, B_1) \circ (A_2, B_2) = (A_1 A_2, B_1 A_2 + B_2)`, ``ceil(log2 N)``
        levels of batched matmuls (the device choice: no Python loop of tiny kernels). Element ``n``
        only ever combines with elements ``< n``, so the scan is exactly causal too.

    Returns
    -------
    starts : array of shape (..., N, d_v, d_k)
        The state before each chunk.
    final : array of shape (..., d_v, d_k)
        The state after the last chunk.
    """
    N = A.shape[-3]
    if not scan:
        S, starts = S0, []
        for n in range(N):
            starts.append(S)
            S = xp.matmul(S, A[..., n, :, :]) + B[..., n, :, :]
        return xp.stack(starts, axis=-3), S
    off = 1
    while off < N:
        # element i >= off absorbs the block before it: A' = A_{i-off} A_i, B' = B_{i-off} A_i + B_i
        Ah, Bh = A[..., off:, :, :], B[..., off:, :, :]
        A_new = xp.matmul(A[..., :-off, :, :], Ah)
        B_new = xp.matmul(B[..., :-off, :, :], Ah) + Bh
        A = xp.concat([A[..., :off, :, :], A_new], axis=-3)
        B = xp.concat([B[..., :off, :, :], B_new], axis=-3)
        off *= 2
    # inclusive prefix n: S after chunk n = S0 A_{1..n} + B_{1..n}
    after = xp.matmul(S0[..., None, :, :], A) + B
    starts = xp.concat([S0[..., None, :, :], after[..., :-1, :, :]], axis=-3)
    return starts, after[..., -1, :, :]


class ChunkTerms(NamedTuple):
    """What a group of G chunks contributes, independent of the state at its start.

    Attributes
    ----------
    U : array of shape (..., G, C, d_v)
        The UT transform of the values, ``(I + A)^{-1} diag(eta) V``.
    W : array of shape (..., G, C, d_k)
        The UT transform of the keys, ``(I + A)^{-1} diag(eta rho) K``.
    DK : array of shape (..., G, C, d_k)
        Each key decayed from its write to the chunk end.
    gamC : array of shape (..., G)
        The decay of the whole chunk.
    gam_r : array of shape (..., G, c)
        The decay from the chunk start to each read.
    P : array of shape (..., G, c, C)
        ``Gamma[reads, :] o Q K^T`` (zero above the diagonal).
    Q : array of shape (..., G, c, d_k)
    """

    U: object
    W: object
    DK: object
    gamC: object
    gam_r: object
    P: object
    Q: object


def chunk_terms(xp, K, V, Q, eta, gs, gr, n, device=None):
    r"""The state-independent terms of G chunks of C = c n writes each.

    Parameters
    ----------
    K : array of shape (..., G, C, d_k)
    V : array of shape (..., G, C, d_v)
    Q : array of shape (..., G, c, d_k)
        One query per token, read after the token's last write (row ``r n + n - 1``).
    eta : array of shape (..., G, C)
        Steps.
    gs : array of shape (..., G, C)
        Log-decay of the state at each write (the leak included).
    gr : array of shape (..., G, C) or None
        Log-decay before the delta read at each write (``None``: the same as ``gs``, no leak).
    n : int
        Writes per token.

    Returns
    -------
    ChunkTerms
    """
    C = K.shape[-2]
    seg = segsum(xp, gs, device)  # (..., G, C, C), -inf above the diagonal
    Gam = xp.exp(seg)  # state decay from write j to after write i, <= 1, zero above the diagonal
    gam = xp.exp(xp.cumulative_sum(gs, axis=-1))  # chunk start -> after write i
    if gr is None:
        rho, Rd = gam, Gam  # the read at j decays like the state (the diagonal is masked below)
    else:  # the read at j sees write l after the leaks of l+1..j-1 and j's decay without its leak
        rho = xp.exp(exclusive_cumsum(xp, gs, device) + gr)
        Rd = xp.exp(gr[..., :, None] + shift_down(xp, seg, -math.inf, device))
    Kt = transpose_copy(xp, K)  # a C-ordered K^T: BLAS runs 1.5-2x slower on transposed views
    # I + tril(diag(eta) (Rd o K K^T), -1): the inverse reads only the strictly lower part, so the
    # diagonal and the upper part are left as they are (no mask, no identity to add)
    Linv = unit_lower_inverse(xp, eta[..., :, None] * Rd * xp.matmul(K, Kt), device)
    d_v = V.shape[-1]
    UW = xp.matmul(Linv, xp.concat([eta[..., None] * V, (eta * rho)[..., None] * K], axis=-1))
    Gr = Gam[..., n - 1 :: n, :]
    return ChunkTerms(
        U=UW[..., :d_v],
        W=UW[..., d_v:],
        DK=Gam[..., C - 1, :][..., None] * K,
        gamC=gam[..., C - 1],
        gam_r=gam[..., n - 1 :: n],
        P=Gr * xp.matmul(Q, Kt),
        Q=Q,
    )


def transpose_copy(xp, x):
    """``x^T`` over the last two axes as a new C-ordered array (not a strided view)."""
    xt = xp.matrix_transpose(x)
    return xp.reshape(xt, xt.shape, copy=True)


def chunk_outputs(xp, t: ChunkTerms, St, Delta):
    r"""Reads of G chunks: :math:`Y = \operatorname{diag}(\gamma_r) Q S^\top + P \Delta`.

    Parameters
    ----------
    t : ChunkTerms
    St : array of shape (..., G, d_k, d_v)
        The transposed state at each chunk start.
    Delta : array of shape (..., G, C, d_v)
        The corrections ``U - W S^T``.

    Returns
    -------
    array of shape (..., G, c, d_v)
    """
    return t.gam_r[..., None] * xp.matmul(t.Q, St) + xp.matmul(t.P, Delta)
