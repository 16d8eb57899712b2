r"""Tiled kernel smoothers: blocks of queries x blocks of keys with log-weights made on the fly and an
online (running-max) normaliser; never a T x T array (``docs/derivations/tiled_nonparametric.md``).

* Nadaraya-Watson / softmax attention (p = 0; QKNorm, Gaussian similarity, sliding windows, forgetting
  attention under data-dependent ``Gated`` weights): one pass, per query a running maximum :math:`m`, a
  running normaliser :math:`\ell = \sum_i e^{\log w_i - m}` and a running weighted value sum, each
  rescaled by :math:`e^{m_\text{old} - m_\text{new}}` when the maximum grows (FlashAttention's
  normaliser). Memory O(T (d_k + d_v)) plus one step's tiles.
* Local polynomial (p >= 1): the reference's centred moments summed tile by tile in three passes
  (:mod:`._tiled_poly`), memory O(T P^2), then the same batched pseudo-inverse / ridge solves.

Log-weights come from the per-position log-gates (:mod:`._tiles`): block-local cumulative sums, never a
difference of two cumulative sums, so a pair's rounding is relative to its own gate sum and ``-inf``
resets are exact. Tiles above the diagonal (causal) or outside a window are skipped, so causal attention
does about half the work of the dense form and a window of w does O(T w); attention sinks
(``weights.SinkWindow``: the first s pairs never leave the window) add the tiles of their key blocks only,
O(T s) more. Gaussian similarities are
formed per tile by the ``||q||^2 + ||k||^2 - 2 q.k`` expansion (no T x T x d differences anywhere).

The array API (NumPy, CuPy, torch): on a GPU a sequence of batched matrix products; for softmax / NW on
CuPy the fused kernel of :mod:`._fused_nw` runs instead wherever it applies (float32 / float64,
``d_v <= 128``, ``ExpDot`` or ``Gaussian``; attention sinks included: it jumps from the window to the
sink tiles).

Measured on this project's shared 2-core CPU (one BLAS thread, float64, best of 2-3 calls, causal,
``d_k = d_v``), seconds parallel / tiled and the ratio (> 1: tiled faster):

=====================  ==============  ==============  ==============  ==============  ==============
case                   T = 256         T = 512         T = 1024        T = 2048        T = 4096
=====================  ==============  ==============  ==============  ==============  ==============
softmax H=4 d=64       .0137/.0052 2.6 .0391/.0165 2.4 .226/.0785 2.9  1.17/.292 4.0   10.0/1.12 8.9
window 128 H=4 d=64    .0133/.0072 1.9 .0542/.0148 3.7 .209/.0432 4.8  1.23/.0728 17   6.37/.189 34
local linear H=2 d=16  .125/.115 1.08  .186/.138 1.34  1.42/.895 1.59  2.95/2.06 1.43  --
=====================  ==============  ==============  ==============  ==============  ==============

(softmax d=64 at T = 128: 1.08; below that the dense form wins, 0.1-0.3x at T <= 64; local linear d=4 at
T = 256: 0.83, T = 1024: 1.67.) :data:`AUTO_MIN_T` is the crossover that ``method="auto"`` uses.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ... import _array
from ...regressors.local_polynomial import LocalPolynomial, n_coefficients
from ..registry import register
from ._common import final_cache
from ._tiled_poly import local_polynomial
from ._tiles import STEP_BYTES, TilePlan, in_threads, key_block, unshifted_ok

#: default block lengths (queries and keys) of softmax / NW and of local polynomials
BLOCK_NW = 128
BLOCK_POLY = 64

#: ``method="auto"`` prefers ``"tiled"`` to the dense ``"parallel"`` from this many keys on
AUTO_MIN_T = 256


def _block(layer, P):
    if P.chunk_size is not None:
        return int(P.chunk_size)
    return BLOCK_NW if int(layer.regressor.order) == 0 else BLOCK_POLY


def _per_pair(layer, P):
    """Floats per (query, key) pair of one tile's intermediates."""
    order = int(layer.regressor.order)
    if order == 0:
        return 4
    return 3 * n_coefficients(P.d_k, order) + 2 * P.d_v + P.d_k


def _budget(xp, device=None):
    free = _array.free_device_bytes(xp, device)  # a CUDA device's free memory (CuPy or torch), or None
    return max(STEP_BYTES, free // 8) if free is not None else STEP_BYTES


def nadaraya_watson(xp, plan, P):
    """Softmax-weighted values (*batch, T_q, d_v) by the online normaliser."""
    return plan.output(in_threads(P, plan.nbq, lambda blocks: _nw_blocks(xp, plan, P, blocks)))


def _nw_blocks(xp, plan, P, blocks):
    inplace = array_api_compat.is_numpy_namespace(xp)
    m = plan.zeros((), -math.inf)
    ell = plan.zeros(())
    acc = plan.zeros((P.d_v,))
    for st in plan.steps(blocks=blocks):
        if plan.unshifted:  # one key block: exp(log w) without the row maxima where it is as good
            p = np.exp(st.logw, out=st.logw)
            total, sums = xp.sum(p, axis=-1), xp.matmul(p, st.V)
            if unshifted_ok(total, sums):  # (both scaled by e^m per row: divided out below)
                plan.scatter(ell, st, total)
                plan.scatter(acc, st, sums)
                continue
            st = plan.redo(st)  # rejected (an underflow or overflow): the shifted sums below
        s = st.logw
        m0 = plan.gather(m, st)
        m1 = xp.maximum(m0, xp.max(s, axis=-1))
        zero = xp.zeros((), dtype=m1.dtype, device=P.device)
        sh = xp.where(m1 > -math.inf, m1, zero)  # a row with no pair yet: shift 0
        if inplace:  # NumPy: the step's log-weights are its own fresh array
            s -= sh[..., None]
            p = np.exp(s, out=s)
        else:
            p = xp.exp(s - sh[..., None])
        scale = xp.exp(m0 - sh)  # 0 while the row had no pair (m0 = -inf)
        plan.scatter(ell, st, plan.gather(ell, st) * scale + xp.sum(p, axis=-1))
        plan.scatter(acc, st, plan.gather(acc, st) * scale[..., None] + xp.matmul(p, st.V))
        plan.scatter(m, st, m1)
    one = xp.ones((), dtype=P.dtype, device=P.device)
    # a row without a pair of positive weight reads 0 (the empty memory), as normalised_weights does
    return [acc[j] / xp.where(ell[j] > 0, ell[j], one)[..., None] for j in range(*blocks)]


def tiled(layer, P):
    """Return ``(Y, CacheState)``."""
    xp, reg = P.xp, layer.regressor
    if P.Q.shape[-2] == 0 or P.K.shape[-2] == 0:
        Y = xp.zeros(P.batch_shape + (P.Q.shape[-2], P.d_v), dtype=P.dtype, device=P.device)
        return Y, final_cache(xp, P)
    if int(reg.order) == 0:
        from . import _fused_nw  # the fused CUDA kernel on CuPy; None elsewhere or where it does not apply

        Y = _fused_nw.nadaraya_watson(layer, P)
        if Y is not None:
            return Y, final_cache(xp, P)
    plan_budget = _budget(xp, P.device)
    c, per_pair = _block(layer, P), _per_pair(layer, P)
    if int(reg.order) == 0:
        ck = key_block(P, c, per_pair, plan_budget)
        plan = TilePlan(xp, P, reg.log_similarity, c, per_pair, plan_budget, key_block=ck)
        Y = nadaraya_watson(xp, plan, P)
    else:
        Y = local_polynomial(xp, reg, P, c, per_pair, plan_budget, 4 * plan_budget)
    return Y, final_cache(xp, P)


def tiled_bytes(P):
    """O(T (d_k + d_v)): padded copies of Q, K, V, the per-query accumulators of softmax (or a local
    polynomial's outputs and reference pairs) and the fixed budgets of one step's tiles and of a local
    polynomial's group of moment accumulators (``5 * STEP_BYTES`` on the host)."""
    T = max(P.Q.shape[-2], P.K.shape[-2]) + BLOCK_NW
    per_row = 3 * P.d_k + 4 * P.d_v + 8
    return P.n_batch * T * per_row * P.itemsize + 5 * STEP_BYTES


def _supports(layer):
    if not isinstance(layer.regressor, LocalPolynomial):
        return f"tiled runs LocalPolynomial regressors, not {type(layer.regressor).__name__}"
    return None


def _auto(P, free):
    """From :data:`AUTO_MIN_T` keys on (causal: half the tiles are skipped), or whenever the dense T x T
    weights would not fit (host budget or a quarter of free device memory). Non-causal calls too since the
    one-pass local linear form (``_tiled_moments``): ``benchmarks/cpu_tiled.py`` on the 2-core CPU, set
    regression n in {500, 2000}, d in {2, 8}, parallel / tiled = 3.0-3.7 for local linear, 0.84-1.56 for
    local constant on 2026-12-03; after the sweep solve and the unshifted single-block path of 2026-12-04
    8.5-11 for local linear and 1.4-2.8 for local constant at n = 500 (``--quick``). A non-causal call
    with fewer queries than that keeps the dense form (a few queries against many keys: one thin row of
    weights, where query blocks of 128 would be mostly padding)."""
    from ..registry import fits_device, fits_host, is_host
    from ._common import dense_bytes

    if P.K.shape[-2] >= AUTO_MIN_T and (P.causal or P.Q.shape[-2] >= AUTO_MIN_T):
        return True
    if free is not None:
        return not fits_device(P, dense_bytes, free)
    return is_host(P) and not fits_host(P, dense_bytes)


def _plan(layer, P, log_alpha=None):
    """The fused kernel's launch for repeated calls (:func:`._fused_nw.plan`); ``None`` elsewhere."""
    if int(getattr(layer.regressor, "order", -1)) != 0:
        return None
    from . import _fused_nw

    return _fused_nw.plan(layer, P, log_alpha)


register(
    "tiled",
    "kernel_smoother",
    run=tiled,
    plan=_plan,
    supports=_supports,
    memory=tiled_bytes,
    auto=_auto,
    rank=5,
    window=True,
    sinks=True,  # the tile plan keeps the sink tiles (_tiles.TilePlan.query_blocks)
    summary="query blocks x key blocks, on-the-fly log-weights, online normaliser (never T x T)",
)
