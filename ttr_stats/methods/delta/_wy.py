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
    "unit_lower_solve",
    "inter_chunk",
    "ChunkTerms",
    "chunk_terms",
    "chunk_outputs",
    "transpose_copy",
]


def segsum(xp, g, device=None):
    r"""Segment sums ``out[..., i, j] = sum_{m=j+1}^{i} g[..., m]`` for ``j <= i``, ``-inf`` above.

    ``exp(segsum(g))`` is the decay matrix :math:`\Gamma_{ij} = \prod_{m=j+1}^i \alpha_m \le 1`. Each
    entry is a masked sum of the gates of its own segment, never a difference of two prefix sums, so it
    keeps full relative precision for ``g = -50`` a step and after a strong decay early in the chunk.
    The masked sums are one 0/1 matmul, ``tril(1) @ (g_m 1[m > j])`` (numpy's cumulative sum over a
    non-last axis is 4x slower at chunk sizes); a hard reset ``g = -inf`` enters the product as
    ``-1e4``, whose exponential is exactly 0 in float32 and float64 like that of every sum containing
    it (``0 * -inf`` would be NaN), so resets stay exact.

    Parameters
    ----------
    g : array of shape (..., C)
        Log-decays, ``<= 0``.

    Returns
    -------
    array of shape (..., C, C)
    """
    C = g.shape[-1]
    idx = xp.arange(C, device=device)
    zero = xp.zeros((), dtype=g.dtype, device=device)
    g = xp.where(g == -math.inf, xp.asarray(-1e4, dtype=g.dtype, device=device), g)
    x = xp.where(idx[:, None] > idx[None, :], g[..., :, None], zero)  # x[m, j] = g_m 1[m > j]
    s = xp.matmul(xp.astype(idx[:, None] >= idx[None, :], g.dtype), x)  # sum over j < m <= i
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


def unit_lower_inverse(xp, N, device=None):
    r"""``(I - tril(N, -1))^{-1}`` for ``N`` (..., C, C), by recursive 2 x 2 blocking.

    .. math:: \begin{pmatrix} A & 0 \\ -B & D \end{pmatrix}^{-1} =
              \begin{pmatrix} A^{-1} & 0 \\ D^{-1} B A^{-1} & D^{-1} \end{pmatrix}

    Both halves are inverted together (stacked along a new leading axis), so there are
    ``ceil(log2 C)`` levels of batched matmuls and no Python loop over rows; blocks of 4 are inverted
    by the finite Neumann series :math:`(I - N)^{-1} = (I + N)(I + N^2)` (exact, :math:`N^4 = 0`), which
    saves the two smallest levels' small operations. Row ``i`` of the result depends only on rows
    ``<= i`` of ``N``, and the entries above the diagonal are exact zeros: exact causality (changing
    rows ``>= s`` leaves rows ``< s`` of the inverse bit-for-bit unchanged). Only the strictly lower part
    of ``N`` is read (its diagonal and upper part may hold anything). ``C`` that is not a power of two
    is padded with an identity block (its inverse is the same identity).

    Returns
    -------
    array of shape (..., C, C)
    """
    C = N.shape[-1]
    n = 1 << max(C - 1, 0).bit_length()
    if n != C:
        lead, pad = N.shape[:-2], n - C
        N = xp.concat([N, xp.zeros(lead + (C, pad), dtype=N.dtype, device=device)], axis=-1)
        N = xp.concat([N, xp.zeros(lead + (pad, n), dtype=N.dtype, device=device)], axis=-2)
        return _inverse_pow2(xp, N, device)[..., :C, :C]
    return _inverse_pow2(xp, N, device)


def unit_lower_solve(xp, N, R, device=None):
    r"""``(I - tril(N, -1))^{-1} R`` for ``N`` (..., C, C) and ``R`` (..., C, m).

    The top level of :func:`unit_lower_inverse` applied instead of assembled:
    :math:`Y_1 = A^{-1} R_1`, :math:`Y_2 = D^{-1}(R_2 + B Y_1)`, with the two half-inverses computed
    together. A quarter fewer flops than forming the inverse and multiplying, no zero block, and the
    same exact causality (row ``i`` of the result reads rows ``<= i`` of ``N`` and ``R``).

    Returns
    -------
    array of shape (..., C, m)
    """
    C = N.shape[-1]
    if C < 8:
        return xp.matmul(unit_lower_inverse(xp, N, device), R)
    if C % 2:  # one identity row (zero N, zero R) makes the halves equal
        lead = N.shape[:-2]
        N = xp.concat([N, xp.zeros(lead + (C, 1), dtype=N.dtype, device=device)], axis=-1)
        N = xp.concat([N, xp.zeros(lead + (1, C + 1), dtype=N.dtype, device=device)], axis=-2)
        R = xp.concat([R, xp.zeros(R.shape[:-2] + (1, R.shape[-1]), dtype=R.dtype, device=device)], axis=-2)
        return unit_lower_solve(xp, N, R, device)[..., :C, :]
    h = C // 2
    halves = unit_lower_inverse(xp, xp.stack([N[..., :h, :h], N[..., h:, h:]], axis=0), device)
    Y1 = xp.matmul(halves[0, ...], R[..., :h, :])
    Z = R[..., h:, :] + xp.matmul(N[..., h:, :h], Y1)
    return xp.concat([Y1, xp.matmul(halves[1, ...], Z)], axis=-2)


def _inverse_pow2(xp, N, device):
    n = N.shape[-1]
    if n <= 4:
        idx = xp.arange(n, device=device)
        eye = xp.eye(n, dtype=N.dtype, device=device)
        Ns = xp.where(idx[:, None] > idx[None, :], N, xp.zeros((), dtype=N.dtype, device=device))
        if n <= 2:
            return eye + Ns
        return xp.matmul(eye + Ns, eye + xp.matmul(Ns, Ns))
    h = n // 2
    halves = _inverse_pow2(xp, xp.stack([N[..., :h, :h], N[..., h:, h:]], axis=0), device)
    Ai, Di = halves[0, ...], halves[1, ...]
    X = xp.matmul(Di, xp.matmul(N[..., h:, :h], Ai))
    zero = xp.zeros(Ai.shape, dtype=N.dtype, device=device)
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
    Qg : array of shape (..., G, c, d_k) or None
        ``gam_r[..., None] * Q``, where the terms' maker formed it already (the fused kernel); else
        :func:`chunk_outputs` forms it.
    """

    U: object
    W: object
    DK: object
    gamC: object
    gam_r: object
    P: object
    Q: object
    Qg: object = None


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
    # (I + tril(diag(eta) (Rd o K K^T), -1))^{-1}: the inverse reads only the strictly lower part, so
    # the diagonal and the upper part are left as they are (no mask, no identity to add)
    Nm = (-eta)[..., :, None] * Rd * xp.matmul(K, Kt)
    d_v = V.shape[-1]
    UW = unit_lower_solve(
        xp, Nm, xp.concat([eta[..., None] * V, (eta * rho)[..., None] * K], axis=-1), device
    )
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
    if t.Qg is not None:  # the decayed queries are there (the fused terms): one product, accumulated
        from .. import _fused

        return _fused.matmul_add(xp, t.Qg, St, t.P, Delta)
    return t.gam_r[..., None] * xp.matmul(t.Q, St) + xp.matmul(t.P, Delta)
