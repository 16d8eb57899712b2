r"""Tiled local linear regression (p = 1) by matrix products: one pass, raw moments around a centre per
query block, with a per-query check that sends the queries whose moments cancelled to the exact path.

The exact tiled path (:mod:`._tiled_poly`) forms every pair's difference :math:`k_i - k_r` around each
query's own reference pair, in three passes over the tiles: memory-bound elementwise work on
(queries x keys x P) arrays. Here a query block of c queries shares one centre :math:`c_b` (a key of the
block's positions, so in every query's past), and one product per tile

.. math::

    S \mathrel{+}= \tilde W\, F,\qquad
    F_i = [1,\ e_i,\ u_i,\ \mathrm{triu}(e_i \otimes e_i),\ e_i \otimes u_i,\ u_i \odot u_i],\quad
    e_i = k_i - c_b,\ u_i = v_i - v_{c_b}

(:math:`\tilde W = e^{\log w - m}` with the online running maximum m, rescaling S by
:math:`e^{m_\text{old} - m_\text{new}}` as for softmax) accumulates every weighted moment of the block's
queries: a BLAS-3 product of c x c_k by c_k x (1 + d + 2 d_v + d (d + 1) / 2 + d d_v). Then per query, with
:math:`\mu = S_e / S_0`,

.. math::

    C = S_{ee}/S_0 - \mu\mu^\top,\quad C_{zv} = S_{eu}/S_0 - \mu\,\bar u^\top,\quad
    B = (C + \lambda I)^{+} C_{zv},\quad m(q) = v_{c_b} + \bar u - (c_b + \mu - q)^\top B,

the same centred least squares as the reference (the fitted line does not depend on the centre for p = 1).

The subtraction :math:`S_{ee}/S_0 - \mu\mu^\top` cancels: its rounding is ``eps * tr(S_ee) / S_0``
instead of the reference's ``eps * tr(C)``. Each query's cancellation factors
:math:`f_k = \max_l (S_{ee})_{ll} / (S_0 C_{ll})` and :math:`f_v` (the same for the value columns)
bound the ratio of this rounding to the reference's entry by entry: :math:`f_k` for C, :math:`\sqrt{f_k
f_v}` for :math:`C_{zv}` (off-diagonal entries by Cauchy-Schwarz). Every query with :math:`f_k` or
:math:`\sqrt{f_k f_v}` above :data:`MAX_CANCELLATION` (or an exactly zero spread: coincident keys, where the
reference gives the Nadaraya-Watson value exactly) takes the exact path's output instead. The choice is
per query, from that query's own moments, so causality stays exact.
"""

from __future__ import annotations

import functools
import math

import array_api_compat
import numpy as np

from ... import _array
from . import _fused_solve
from ._tiles import unshifted_ok

#: block length (queries and keys) when the call gives no ``chunk_size``, and the bytes of one step's
#: tiles: a few 128 x 128 tiles per step stay in cache (one BLAS thread, n = 2000, d = 8, CPU seconds:
#: c = 64: 0.09-0.20, c = 128: 0.07-0.09, c = 256: 0.07-0.09 and much slower with two BLAS threads under
#: load; steps of 1-32 blocks within 30% of each other)
BLOCK = 128
STEP_BYTES = 2 * 2**20
#: bytes of one query block's row of weights in a non-causal host call (:func:`._tiles.key_block`)
KEY_BYTES = 8 * 2**20
#: bytes of the stacked moments and matrices of one batched solve (:func:`solve`): many small query
#: blocks a call on the host (n = 500, d = 8: 25 blocks), one block a call at B = 8, H = 16, d = 64 on a GPU
#: (1.5 GB a block; all 32 blocks at once did not fit an H200)
SOLVE_BYTES = 32 * 2**20

#: the block length on a device (CuPy, torch CUDA): one H200, B = 8, H = 16, T = 4096, d = 64, float32
#: (moments in float64), seconds by block 128 / 256 / 512 / 1024: 2.59 / 1.66 / 1.24 / 1.06, memory pool
#: peak 32 / 38 / 49 / 73 GiB, same outputs (6.9e-8 from float64); 512 takes most of the gain at two thirds
#: of 1024's memory (docs/benchmarks.md)
DEVICE_BLOCK = 512


def default_block(P):
    """:data:`BLOCK` on the host, :data:`DEVICE_BLOCK` on a device."""
    from ..registry import is_host

    return BLOCK if is_host(P) else DEVICE_BLOCK


#: the largest accepted ratio of raw to centred second moments: rounding at most this times the exact
#: path's, ~2e-13 relative in float64 before the solve's condition number. (64 sent 1% of the queries of
#: a kernel regression on [-1, 1]^8 with h = 0.5 to the exact path, at factors 65-114, and with them
#: their whole blocks: 5x the time at n = 500.)
MAX_CANCELLATION = 1024.0


def n_features(d_k, d_v):
    """Columns of F: 1, e, u, the upper triangle of e (x) e, e (x) u, u * u."""
    return 1 + 2 * d_v + d_k + d_k * (d_k + 1) // 2 + d_k * d_v


def per_pair(c, d_k, d_v):
    """Floats of a step's intermediates per (query, key) pair: log-weights, weights, and F and S spread
    over the c keys / queries of a tile."""
    return 3 + 2 * n_features(d_k, d_v) // c


@functools.lru_cache(maxsize=64)
def _triangle(d):
    """Row-major indices of the upper triangle (with the diagonal) of a d x d matrix, and for each of
    the d * d entries the index of its triangle entry."""
    upper = [(a, b) for a in range(d) for b in range(a, d)]
    where = {ab: i for i, ab in enumerate(upper)}
    full = [where[(min(a, b), max(a, b))] for a in range(d) for b in range(d)]
    return tuple(a for a, _ in upper), tuple(b for _, b in upper), tuple(full)


@functools.lru_cache(maxsize=64)
def _diagonal(d):
    """Positions of the diagonal entries in :func:`_triangle`'s row-major upper triangle."""
    ia, ib, _ = _triangle(d)
    return tuple(i for i, (a, b) in enumerate(zip(ia, ib, strict=True)) if a == b)


def _shift(xp, m):
    return xp.where(m > -math.inf, m, xp.zeros((), dtype=m.dtype, device=_array.device(m)))


def centres(xp, plan, j):
    """The centre key and value of query block ``j``, (*batch, 1, d_k) and (*batch, 1, d_v).

    Causal: the pair at the block's first position (in every query's past). Non-causal (every query reads
    every key): one centre for all blocks, the key nearest the keys' mean (and its value), so that one set
    of features F per key block serves every query block, and the centre sits in the bulk of the keys (a
    key at a fixed position is a random point of an unordered sample)."""
    P = plan.P
    if not P.causal:
        if getattr(plan, "shared_centre", None) is None:
            plan.shared_centre = _nearest_to_mean(xp, P.K, P.V)
        return plan.shared_centre
    pos = min(j * plan.c, P.K.shape[-2] - 1)
    idx = (slice(None),) * plan.nbatch + (slice(pos, pos + 1), slice(None))
    return P.K[idx], P.V[idx]  # (*batch, 1, d_k), (*batch, 1, d_v)


def _nearest_to_mean(xp, K, V):
    """The key (*batch, 1, d_k) nearest the mean of the keys ``K`` (*batch, n, d_k), and its value; the
    first such key on ties."""
    if array_api_compat.is_numpy_namespace(xp):  # the same operations without the wrappers' overhead
        D = K - np.mean(K, axis=-2, keepdims=True)
        i = np.argmin(np.sum(D * D, axis=-1), axis=-1)[..., None, None]
        return np.take_along_axis(K, i, axis=-2), np.take_along_axis(V, i, axis=-2)
    mean = xp.mean(K, axis=-2, keepdims=True)
    D = K - mean
    i = xp.argmin(xp.sum(D * D, axis=-1), axis=-1)  # (*batch,)
    idx = xp.broadcast_to(i[..., None, None], i.shape + (1, K.shape[-1]))
    jdx = xp.broadcast_to(i[..., None, None], i.shape + (1, V.shape[-1]))
    return xp.take_along_axis(K, idx, axis=-2), xp.take_along_axis(V, jdx, axis=-2)


def _native(xp):
    """NumPy or CuPy itself (ufuncs with ``out=``), else None."""
    if array_api_compat.is_numpy_namespace(xp):
        return np
    if array_api_compat.is_cupy_namespace(xp):  # pragma: no cover - needs a GPU
        import cupy

        return cupy
    return None


def _features_into(mod, E, U):
    """:func:`_features` written in place into one array of module ``mod`` (NumPy or CuPy: the same calls):
    each column group once, no concatenation and no gathered copies of E (the triangle of e (x) e and
    e (x) u row by row). The same products, so the same bits."""
    d, dv = E.shape[-1], U.shape[-1]
    F = mod.empty_like(E, shape=E.shape[:-1] + (n_features(d, dv),))  # CuPy: the current device, E's
    F[..., 0] = 1
    F[..., 1 : 1 + d] = E
    F[..., 1 + d : 1 + d + dv] = U
    o = 1 + d + dv
    for a in range(d):  # row a of the upper triangle: e_a * e_b for b >= a
        mod.multiply(E[..., a : a + 1], E[..., a:], out=F[..., o : o + d - a])
        o += d - a
    for a in range(d):  # e_a * u, the row-major e (x) u
        mod.multiply(E[..., a : a + 1], U, out=F[..., o : o + dv])
        o += dv
    mod.multiply(U, U, out=F[..., o:])
    return F


def _features(xp, E, U):
    """F of keys E (..., n, d_k) and values U (..., n, d_v) around the centre: (..., n, nf)."""
    mod = _native(xp)
    if mod is not None:
        return _features_into(mod, E, U)
    d, dv = E.shape[-1], U.shape[-1]
    ones = xp.ones(E.shape[:-1] + (1,), dtype=E.dtype, device=_array.device(E))
    ia, ib, _ = _triangle(d)
    dev = _array.device(E)
    ee = xp.take(E, xp.asarray(ia, device=dev), axis=-1) * xp.take(E, xp.asarray(ib, device=dev), axis=-1)
    eu = xp.reshape(E[..., :, None] * U[..., None, :], E.shape[:-1] + (d * dv,))
    uu = U * U
    return xp.concat([ones, E, U, ee, eu, uu], axis=-1)


def accumulate(xp, plan, blocks, d_k, d_v):
    """Moments S (per block: (*batch, c, nf)) of the query blocks ``blocks``, each row's up to a positive
    factor (its weights' shift: the online maximum, or none where :func:`._tiles.unshifted_ok` accepts the
    plain exponentials), and the centres."""
    nf = n_features(d_k, d_v)
    m = plan.zeros((), -math.inf)
    S = plan.zeros((nf,))
    cen = [centres(xp, plan, j) for j in range(plan.nbq)]
    inplace = array_api_compat.is_numpy_namespace(xp)
    shared, F, F_block = not plan.P.causal, None, None
    seen = [False] * plan.nbq  # whether a query block has met a key block yet
    for st in plan.steps(blocks=blocks):
        if shared:  # one centre: the key block's features serve every query block (steps go key block
            if F_block != st.k0:  # by key block, so each is made once per call)
                ck, cv = cen[0][0][..., None, :, :], cen[0][1][..., None, :, :]  # (*b, 1, 1, d)
                F, F_block = _features(xp, st.K - ck, st.V - cv), st.k0  # (*b, 1, c_k, nf)
        else:
            ck = xp.stack([cen[j][0] for j in range(st.q0, st.q1)], axis=plan.nbatch)  # (*b, n, 1, d_k)
            cv = xp.stack([cen[j][1] for j in range(st.q0, st.q1)], axis=plan.nbatch)
            F = _features(xp, st.K - ck, st.V - cv)  # (*b, n, c_k, nf)
        if plan.unshifted:  # one key block: exp(log w) without the row maxima where it is as good
            new = xp.matmul(np.exp(st.logw, out=st.logw), F)
            if unshifted_ok(new[..., 0], new):  # (S scaled by e^m per row: solve divides it out)
                plan.scatter(S, st, new)
                seen[st.q0 : st.q1] = [True] * (st.q1 - st.q0)
                continue
            st = plan.redo(st)  # rejected (an underflow or overflow): the shifted sums below
        s = st.logw
        first = not any(seen[st.q0 : st.q1])  # every row still empty: m0 = -inf, S = 0
        if first:
            m1 = xp.max(s, axis=-1)
        else:
            m0 = plan.gather(m, st)
            m1 = xp.maximum(m0, xp.max(s, axis=-1))
        sh = _shift(xp, m1)
        if inplace:  # NumPy: the step's log-weights are its own fresh array
            s -= sh[..., None]
            p = np.exp(s, out=s)
        else:
            p = xp.exp(s - sh[..., None])
        new = xp.matmul(p, F)
        if not first:  # (a first visit's scale is exp(-inf) = 0 on S = 0: new is the sum)
            scale = xp.exp(m0 - sh)  # 0 while the row had no pair
            if not _scaled_add_into(xp, new, S, st, scale, plan.nbatch):
                new = plan.gather(S, st) * scale[..., None] + new
        plan.scatter(S, st, new)
        plan.scatter(m, st, m1)
        seen[st.q0 : st.q1] = [True] * (st.q1 - st.q0)
    return S, cen


#: CuPy: add the rescaled old moments into the step's product in one elementwise pass a block (False: the
#: stacked copy, the product by the scales and the sum, three passes over S's size and two temporaries)
SCALED_ADD = True
_SCALED_ADD = []  # the CuPy kernel, made at first use


def _scaled_add_into(xp, new, S, st, scale, nb):
    """``new[..., j, :, :] = S[q0 + j] * scale[..., j, :, None] + new[..., j, :, :]`` in place for the step's
    query blocks (one read of each S block and of ``new``, one write), or False where this does not apply
    (not CuPy, :data:`SCALED_ADD` off): the caller forms the sum itself."""
    if not SCALED_ADD or not array_api_compat.is_cupy_namespace(xp):
        return False
    import cupy  # pragma: no cover - needs a GPU

    if not _SCALED_ADD:  # (CuPy compiles it per device and dtype at first call)
        _SCALED_ADD.append(cupy.ElementwiseKernel("T s, T f", "T y", "y = s * f + y", "ttr_scaled_add"))
    kern = _SCALED_ADD[0]
    at = (slice(None),) * nb
    for j in range(st.q1 - st.q0):
        kern(S[st.q0 + j], scale[at + (j, slice(None), None)], new[at + (j, Ellipsis)])
    return True


def solve(xp, reg, plan, S, cen, blocks, d_k, d_v):
    """Outputs (*batch, n, c, d_v) of the query blocks ``blocks = (j0, j1)`` (``n = j1 - j0``) from their
    moments, in one batched solve, and whether each query passed the cancellation check (*batch, n, c)."""
    j0, j1 = blocks
    nb = plan.nbatch
    if _ridge_kind(reg) and _fused_solve.applies(xp, S[j0].dtype, d_k, d_v, reg.ridge):
        # CuPy with a ridge: one fused kernel a query block, from its moment rows (no stacked copy) to its
        # outputs and flags (a failed pivot or check sends the query to the exact path, as below)
        at = (slice(None),) * nb
        done = [_fused_solve.output(xp, S[j], cen[j][0], cen[j][1], plan.Qb[at + (j, ...)], reg.ridge,
                                    MAX_CANCELLATION) for j in range(j0, j1)]  # fmt: skip
        return xp.stack([y for y, _ in done], axis=nb), xp.stack([ok for _, ok in done], axis=nb)
    Sj = xp.stack(S[j0:j1], axis=nb)
    s0 = Sj[..., 0]
    some = s0 > 0
    dev = _array.device(s0)
    one = xp.ones((), dtype=s0.dtype, device=dev)
    zero = xp.zeros((), dtype=s0.dtype, device=dev)
    inv = 1.0 / xp.where(some, s0, one)
    mu = Sj[..., 1 : 1 + d_k] * inv[..., None]
    ubar = Sj[..., 1 + d_k : 1 + d_k + d_v] * inv[..., None]
    o = 1 + d_k + d_v
    n_tri = d_k * (d_k + 1) // 2
    ia, ib, full = (xp.asarray(i, device=dev) for i in _triangle(d_k))
    diag = xp.asarray(_diagonal(d_k), device=dev)
    See = Sj[..., o : o + n_tri] * inv[..., None]  # the upper triangle of S_ee / S_0
    Ctri = See - xp.take(mu, ia, axis=-1) * xp.take(mu, ib, axis=-1)  # C's triangle
    # the symmetric matrix from its triangle (both triangles are the same products)
    C = xp.reshape(xp.take(Ctri, full, axis=-1), s0.shape + (d_k, d_k))
    o += n_tri
    Seu = xp.reshape(Sj[..., o : o + d_k * d_v], s0.shape + (d_k, d_v)) * inv[..., None, None]
    Suu = Sj[..., -d_v:] * inv[..., None]
    Czv = Seu - mu[..., :, None] * ubar[..., None, :]
    B = reg._coef_solve(xp, C, Czv)
    ck = xp.stack([cen[j][0] for j in range(j0, j1)], axis=nb)  # (*b, n, 1, d_k)
    cv = xp.stack([cen[j][1] for j in range(j0, j1)], axis=nb)
    Qj = plan.Qb[(slice(None),) * nb + (slice(j0, j1), ...)]
    zbar = (ck - Qj) + mu  # c_b + mu - q, the offset of the weighted mean
    y = (cv + ubar) - xp.matmul(zbar[..., None, :], B)[..., 0, :]
    y = xp.where(some[..., None], y, zero)  # no pair of positive weight: the empty memory reads 0
    # the check: the largest raw-over-centred second moment of the keys (C's rounding over the
    # reference's) and that times the values' (C_zv's rounding over the reference's, squared)
    # the diagonals (*b, n, c, d_k): raw, and centred (C's, the same products as raw_k - mu * mu)
    fk = _factor(xp, xp.take(See, diag, axis=-1), xp.take(Ctri, diag, axis=-1))
    fv = _factor(xp, Suu, Suu - ubar * ubar)
    M = MAX_CANCELLATION
    return y, ((fk <= M) & (fk * fv <= M * M)) | ~some


def _ridge_kind(reg):
    """Whether ``reg``'s coefficient solve is the plain ``(C + ridge I)^{-1}`` of ``LocalPolynomial`` with a
    positive ridge (the fused kernel's system), not a subclass's own."""
    from ...regressors.local_polynomial import LocalPolynomial

    return type(reg)._coef_solve is LocalPolynomial._coef_solve and float(reg.ridge) > 0


def _factor(xp, raw, centred):
    """The largest ratio raw / centred over the last axis: 1 for an exactly zero raw moment (every pair
    at the centre: the centred moment is then exactly zero too), inf for a centred moment <= 0 under a
    positive raw one (coincident keys away from the centre: the reference's exact zero)."""
    one = xp.ones((), dtype=raw.dtype, device=_array.device(raw))
    inf = xp.asarray(math.inf, dtype=raw.dtype, device=_array.device(raw))
    ratio = xp.where(centred > 0, raw / xp.where(centred > 0, centred, one), inf)
    return xp.max(xp.where(raw == 0, one, ratio), axis=-1)
