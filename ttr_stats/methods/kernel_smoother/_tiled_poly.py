r"""Tiled local polynomial regression (p >= 1): the centred moments of ``LocalPolynomial._centred_moments``
accumulated over key blocks, in three passes, memory O(T P^2) instead of O(T^2 P).

For each query t (``docs/derivations/tiled_nonparametric.md``):

1. the row maximum :math:`m_t` of the log-weights, the normaliser :math:`\ell_t = \sum_i e^{\log w_{ti} -
   m_t}` (online, as for softmax) and the reference pair r (the first pair of largest weight, carried as
   its key and value through one-hot products, exactly);
2. the first moments around r: :math:`\bar d = \sum_i \hat w_i\,[z(d_r + e_i) - z(d_r)]` and
   :math:`\bar v - v_r = \sum_i \hat w_i (v_i - v_r)`, with :math:`e_i = k_i - k_r` formed pair by pair
   (exact differences) and :math:`\hat w_i = e^{\log w_{ti} - m_t}/\ell_t`;
3. the centred second moments :math:`C = \sum_i \hat w_i Z_i Z_i^\top`, :math:`C_{zv} = \sum_i \hat w_i
   Z_i (v_i - v_r)^\top` with :math:`Z_i = z(d_r + e_i) - z(d_r) - \bar d`.

These are the reference's own sums (same centring, same differences), only added up tile by tile, so
coincident keys still give an exactly zero covariance (the Nadaraya-Watson value) and keys 1e-10 apart keep
their digits. Then the same batched solve (``ridge_solve``: the pseudo-inverse cut ``100 P eps`` at ridge
0) and :math:`m(q_t) = \bar v - (z(d_r) + \bar d)^\top B`.
"""

from __future__ import annotations

import math

import numpy as np

from ... import _array
from ...regressors.local_polynomial import n_coefficients
from . import _tiled_moments
from ._precision import narrowed, widened
from ._tiles import TilePlan, in_threads, key_block


def _shift(xp, m):
    """The row maximum, 0 where a row has no finite entry (its weights are then exp(-inf) = 0)."""
    return xp.where(m > -math.inf, m, xp.zeros((), dtype=m.dtype, device=_array.device(m)))


def reference_pairs(xp, plan, blocks, d_k, d_v):
    """Pass 1: per query block the row max ``m``, normaliser ``l`` and reference key / value."""
    m = plan.zeros((), -math.inf)
    ell = plan.zeros(())
    kr, vr = plan.zeros((d_k,)), plan.zeros((d_v,))
    # keys in order, and a strictly larger maximum replaces the reference: ties go to the first pair
    for st in plan.steps(ascending_keys=True, blocks=blocks):
        s = st.logw
        m0, l0 = plan.gather(m, st), plan.gather(ell, st)
        mt = xp.max(s, axis=-1)
        top = s == mt[..., None]
        first = top & (xp.cumulative_sum(xp.astype(top, xp.int32), axis=-1) == 1)
        H = xp.astype(first & (mt > -math.inf)[..., None], s.dtype)
        new = mt > m0
        ktop = xp.matmul(H, st.K)  # one-hot products: the tile's top key and value, exactly
        vtop = xp.matmul(H, st.V)
        plan.scatter(kr, st, xp.where(new[..., None], ktop, plan.gather(kr, st)))
        plan.scatter(vr, st, xp.where(new[..., None], vtop, plan.gather(vr, st)))
        m1 = xp.maximum(m0, mt)
        sh = _shift(xp, m1)
        plan.scatter(ell, st, l0 * xp.exp(m0 - sh) + xp.sum(xp.exp(s - sh[..., None]), axis=-1))
        plan.scatter(m, st, m1)
    return m, ell, kr, vr


def _tile_terms(xp, reg, plan, st, m, ell, kr, vr):
    """Normalised weights (*b, n, c, c_k), design differences (*b, n, c, c_k, P) and value differences."""
    mq, lq = plan.gather(m, st), plan.gather(ell, st)
    krq, vrq = plan.gather(kr, st), plan.gather(vr, st)
    lsafe = xp.where(lq > 0, lq, xp.ones((), dtype=lq.dtype, device=_array.device(lq)))
    W = xp.exp(st.logw - _shift(xp, mq)[..., None]) / lsafe[..., None]
    E = st.K[..., None, :, :] - krq[..., :, None, :]  # e_i = k_i - k_r, pair by pair
    R = krq - st.Q  # d_r = k_r - q
    dZ = reg.design_difference(xp, R[..., None, :], E)
    dV = st.V[..., None, :, :] - vrq[..., :, None, :]
    return W, dZ, dV


def _group(xp, reg, plan, blocks, P, npar):
    """Outputs of the query blocks ``blocks`` (a list of (*batch, c, d_v))."""
    d_v = P.d_v
    m, ell, kr, vr = reference_pairs(xp, plan, blocks, P.d_k, d_v)
    dbar, dvbar = plan.zeros((npar,)), plan.zeros((d_v,))
    for st in plan.steps(blocks=blocks):  # pass 2: first moments around the reference pair
        W, dZ, dV = _tile_terms(xp, reg, plan, st, m, ell, kr, vr)
        Wr = W[..., None, :]
        plan.scatter(dbar, st, plan.gather(dbar, st) + xp.matmul(Wr, dZ)[..., 0, :])
        plan.scatter(dvbar, st, plan.gather(dvbar, st) + xp.matmul(Wr, dV)[..., 0, :])
    C, Czv = plan.zeros((npar, npar)), plan.zeros((npar, d_v))
    for st in plan.steps(blocks=blocks):  # pass 3: centred second moments
        W, dZ, dV = _tile_terms(xp, reg, plan, st, m, ell, kr, vr)
        Zc = dZ - plan.gather(dbar, st)[..., None, :]
        ZcW_t = xp.matrix_transpose(Zc * W[..., None])
        plan.scatter(C, st, plan.gather(C, st) + xp.matmul(ZcW_t, Zc))
        plan.scatter(Czv, st, plan.gather(Czv, st) + xp.matmul(ZcW_t, dV))
    out = []
    for j in range(*blocks):  # the batched small solves
        R = kr[j] - plan.Qb[(slice(None),) * plan.nbatch + (j, ...)]
        zbar = (R if int(reg.order) == 1 else reg.design(xp, R)) + dbar[j]
        B = reg._coef_solve(xp, C[j], Czv[j])
        out.append(vr[j] + dvbar[j] - xp.matmul(zbar[..., None, :], B)[..., 0, :])
    return out


def local_polynomial(xp, reg, P, c, per_pair, step_budget, budget):
    """Outputs (*batch, T_q, d_v) of the tiled local polynomial regression.

    Tiles of ``c`` queries (``per_pair`` floats per pair, ``step_budget`` bytes a step) for p >= 2; query
    blocks are taken in groups whose accumulators (P^2 + P d_v + ... floats per query) fit in
    ``budget`` bytes, so the memory is O(T (d_k + d_v)) for the inputs and outputs plus the budget. A
    float32 call runs in float64 (:mod:`._precision`). Local linear (p = 1) takes the one-pass matrix-product
    form of :mod:`._tiled_moments` (its own block length and step size) and the exact three passes here
    only for the query blocks with a query whose moments cancelled.
    """
    W = widened(reg, P)
    order = int(reg.order)
    if order == 1:  # the matrix-product form: its own block length and step size
        c = c if P.chunk_size is not None else _tiled_moments.default_block(P)
        per_pair = _tiled_moments.per_pair(c, P.d_k, P.d_v)
        step_budget = _tiled_moments.STEP_BYTES if P.causal else _tiled_moments.KEY_BYTES
        ck = key_block(W, c, per_pair, _tiled_moments.KEY_BYTES)
        plan = TilePlan(xp, W, reg.log_similarity, c, per_pair, step_budget, key_block=ck)
    else:  # (made from the float64 copies of a float32 call: half the tiles a step)
        plan = TilePlan(xp, W, reg.log_similarity, c, per_pair, step_budget)
    npar = n_coefficients(P.d_k, order)
    if order == 1:
        per_query = _tiled_moments.n_features(P.d_k, P.d_v) + 2 * P.d_k * P.d_k + 2 * P.d_v + 4
    else:
        per_query = 2 * npar * npar + npar * (P.d_v + 2) + 2 * P.d_v + P.d_k
    per_block = max(1, P.n_batch) * plan.c * per_query
    n = max(1, int(budget // (per_block * W.itemsize)))

    def blocks_out(blocks):
        out = []
        for b0 in range(blocks[0], blocks[1], n):
            group = (b0, min(blocks[1], b0 + n))
            if order == 1:
                out += _moments_group(xp, reg, plan, group, W)
            else:
                out += _group(xp, reg, plan, group, W, npar)
        return out

    return narrowed(xp, plan.output(in_threads(W, plan.nbq, blocks_out)), P)


def _moments_group(xp, reg, plan, blocks, P):
    """Local linear outputs of the query blocks ``blocks`` by :mod:`._tiled_moments`; a block with a query
    that fails its cancellation check is also computed exactly, and that query takes the exact value."""
    S, cen = _tiled_moments.accumulate(xp, plan, blocks, P.d_k, P.d_v)
    per_block = max(1, P.n_batch) * plan.c * (_tiled_moments.n_features(P.d_k, P.d_v) + 4 * P.d_k * P.d_k)
    m = max(1, int(_tiled_moments.SOLVE_BYTES // (per_block * P.itemsize)))  # blocks a batched solve takes
    out, oks = [], []
    for j in range(*blocks):
        if (j - blocks[0]) % m == 0:
            j0 = j
            Y, OK = _tiled_moments.solve(xp, reg, plan, S, cen, (j, min(blocks[1], j + m)), P.d_k, P.d_v)
        at = (slice(None),) * plan.nbatch + (j - j0, ...)
        out.append(Y[at])
        oks.append(OK[at])
    # which blocks passed, in one read for the group (a read a block was a device sync each on a GPU)
    passed = _array.to_numpy(xp.stack([xp.all(ok) for ok in oks]))
    for i in np.flatnonzero(~passed.astype(bool)):
        j = blocks[0] + int(i)
        exact = _group(xp, reg, plan, (j, j + 1), P, P.d_k)[0]
        out[i] = xp.where(oks[i][..., None], out[i], exact)
    return out
