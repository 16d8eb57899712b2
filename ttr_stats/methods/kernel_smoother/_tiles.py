r"""Tiles of log-weights made on the fly: blocks of queries x blocks of keys, never the T x T matrix.

A causal call is cut into ``nb`` blocks of ``c`` positions (the last one padded: zero queries, keys and
values, log-gate 0 and write strength 0, i.e. log-weight ``-inf``). The tile of query block ``q`` and key
block ``q - o`` (offset ``o >= 0``) has log-weights

.. math::

    \log w_{ti} = \log\Gamma_{ti} + \log\beta_i + \log s(q_t, k_i),\qquad
    \log\Gamma_{ti} = \sum_{j=i+1}^{t} g_j,

with the gate sum split at the block edges into three sums of non-positive terms, each a block-local
cumulative sum (``docs/derivations/tiled_nonparametric.md``):

* ``o = 0`` (the diagonal tile): the masked cumulative sums of :func:`ttr_stats._array.segsum` on the
  block, the same additions in the same order as the dense reference, ``-inf`` above the diagonal;
* ``o >= 1``: :math:`\sum_{j=i+1}^{\mathrm{end}(k)} g_j` (suffix within the key block) +
  :math:`\sum` of the whole blocks strictly between (``segsum`` of the block totals) +
  :math:`\sum_{j=\mathrm{start}(q)}^{t} g_j` (prefix within the query block).

No difference of two cumulative sums is ever formed, so the rounding of a pair's log-weight is relative to
that pair's own gate sum (not to the whole sequence's, which in float32 would cost ``T |g| eps`` on every
pair) and a hard reset (``g = -inf``) never meets ``-inf - -inf``. Offsets whose tiles are entirely outside
a sliding window are skipped, except the tiles of the key blocks that hold attention sinks (``P.sinks``,
``weights.SinkWindow``: the first s pairs never leave the window), and so are the tiles above the
diagonal (causal). A non-causal call (every query reads the last memory) has one tile per (query block,
key block) pair with the last step's per-key log-weights.

A *step* is one offset (causal) or one key block (non-causal) for a group of consecutive query blocks,
grouped so that the step's intermediates stay within a byte budget; the accumulators of a method live in
a list with one entry per query block (:meth:`TilePlan.gather` / :meth:`TilePlan.scatter`), so a step only
touches its own blocks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import array_api_compat
import numpy as np

from ... import _array
from ...regressors.nonparametric import last_log_weights, log_strength

#: bytes of one step's tile intermediates on the host (GPU: an eighth of free memory, at least this)
STEP_BYTES = 32 * 2**20


class Step(NamedTuple):
    """One step: query blocks ``q0 .. q1 - 1`` against one key block each.

    ``logw`` (*batch, n, c, c_k) log-weights, ``Q`` (*batch, n, c, d_k), ``K`` / ``V`` (*batch, n or 1,
    c_k, d); ``n = q1 - q0``; ``k0`` the key block of the first tile (a non-causal step has one).
    """

    q0: int
    q1: int
    logw: object
    Q: object
    K: object
    V: object
    k0: int = 0


def _pad(xp, x, n, axis, value=0.0):
    """``x`` with ``n`` entries of ``value`` appended along ``axis`` (negative)."""
    if n == 0:
        return x
    shape = list(x.shape)
    shape[axis] = n
    fill = xp.full(tuple(shape), value, dtype=x.dtype, device=_array.device(x))
    return xp.concat([x, fill], axis=axis)


def _blocks(xp, x, nb, c):
    """(*batch, nb * c, *tail) -> (*batch, nb, c, *tail), with ``x``'s time axis at -2 (or -1 for 1-D)."""
    return xp.reshape(x, x.shape[:-2] + (nb, c, x.shape[-1]))


class TilePlan:
    """The tiles of one call and the bookkeeping of per-query-block accumulators.

    Parameters
    ----------
    xp : namespace
    P : Problem
    log_similarity : callable ``(xp, Q, K) -> (..., n_q, n_k)``
    c : int
        Block length (queries and keys).
    per_pair : int
        Floats of intermediates per (query, key) pair of a tile (1 for softmax, ~3 P + d_v for a local
        polynomial), for the step budget.
    budget : int
        Bytes of one step's intermediates.
    key_block : int or None
        Key block length of a non-causal call (default ``c``; a causal call's tiles are square). Longer
        key blocks make fewer, larger products: one step per query group when a query block's whole row
        of keys fits the budget.
    """

    def __init__(self, xp, P, log_similarity, c, per_pair=4, budget=STEP_BYTES, key_block=None):
        self.xp, self.P, self.sim, self.c = xp, P, log_similarity, int(c)
        self.nbatch = len(P.batch_shape)
        c = self.c
        ck = c if (key_block is None or P.causal) else max(1, int(key_block))
        self.ck = ck
        Tq, Tk = P.Q.shape[-2], P.K.shape[-2]
        self.Tq = Tq
        self.nbq = -(-Tq // c)
        self.nbk = -(-Tk // ck)
        self.Qb = _blocks(xp, _pad(xp, P.Q, self.nbq * c - Tq, -2), self.nbq, c)
        self.Kb = _blocks(xp, _pad(xp, P.K, self.nbk * ck - Tk, -2), self.nbk, ck)
        self.Vb = _blocks(xp, _pad(xp, P.V, self.nbk * ck - Tk, -2), self.nbk, ck)
        #: key blocks holding an attention sink (``P.sinks``, kept by every query however far back)
        self.sink_blocks = -(-int(P.sinks) // c) if (P.window is not None and P.causal) else 0
        self.last_zero = self.unshifted = False
        batch = max(1, P.n_batch)
        self.group = max(1, int(budget // max(1, batch * c * ck * per_pair * P.itemsize)))
        shape = P.batch_shape + (self.nbk, ck)
        if P.causal:
            g = _pad(xp, P.g[..., 0], self.nbk * c - Tk, -1)
            logb = _pad(xp, log_strength(xp, P.b), self.nbk * c - Tk, -1, -math.inf)
            self.gb = xp.reshape(g, shape)
            self.logb = xp.reshape(logb, shape)
            self.pre = xp.cumulative_sum(self.gb, axis=-1)  # sum_{j = start}^{t} g_j, block-local
            incl = xp.flip(xp.cumulative_sum(xp.flip(self.gb, axis=-1), axis=-1), axis=-1)
            zero = xp.zeros(P.batch_shape + (self.nbk, 1), dtype=g.dtype, device=P.device)
            self.suf = xp.concat([incl[..., 1:], zero], axis=-1)  # sum_{j = i+1}^{end} g_j
            tot = self.pre[..., -1]  # (*batch, nb): each block's total
            # mid[q, k] = sum of the totals of the blocks strictly between k and q: segsum(tot)[q - 1, k]
            self.mid = xp.reshape(_array.segsum(xp, tot), P.batch_shape + (self.nbk * self.nbk,))
        else:
            last = _pad(xp, last_log_weights(xp, P), self.nbk * ck - Tk, -1, -math.inf)
            self.last = xp.reshape(last, shape)
            #: NumPy: whether every last log-weight is exactly 0 (uniform weights, no padding), so that a
            #: step's similarities are its log-weights as they are (x + 0 = x: the same exponentials)
            self.last_zero = array_api_compat.is_numpy_namespace(xp) and not np.any(self.last)
            #: whether a method may exponentiate the log-weights unshifted (:func:`unshifted_ok`): NumPy,
            #: non-causal, every last log-weight 0 (no pair excluded, so an empty row is only an underflow)
            #: and one key block (each query block has one step, no online rescaling)
            self.unshifted = self.last_zero and self.nbk == 1

    # --- which tiles ------------------------------------------------------------------------------------
    def offsets(self):
        """Causal: the offsets ``o`` with a pair inside the window (all of 0..nb-1 without one); with
        attention sinks every offset, since key block 0 holds a sink for query block ``o``
        (:meth:`query_blocks` says which query blocks an offset outside the window visits)."""
        nb = self.nbq
        if self.P.window is None or self.sink_blocks:
            return list(range(nb))
        return [o for o in range(nb) if self._in_window(o)]

    def _in_window(self, o):
        """Whether a tile at offset ``o`` has a pair inside the window (its nearest pair is)."""
        w = self.P.window
        return w is None or o * self.c - (self.c - 1) < w

    def query_blocks(self, o, b0, b1):
        """The query blocks of ``b0 .. b1 - 1`` that offset ``o`` visits: all from ``o`` on inside the
        window; outside it only those whose key block ``q - o`` holds a sink (``q - o < sink_blocks``)."""
        lo = max(o, b0)
        return (lo, b1) if self._in_window(o) else (lo, min(b1, o + self.sink_blocks))

    def steps(self, ascending_keys=False, blocks=None):
        """Every step of the query blocks ``blocks = (b0, b1)`` (default all); with ``ascending_keys``
        each query block meets its key blocks from the first on."""
        n = self.group
        b0, b1 = (0, self.nbq) if blocks is None else blocks
        if self.P.causal:
            offs = [o for o in self.offsets() if o < b1]
            for o in reversed(offs) if ascending_keys else offs:
                lo, hi = self.query_blocks(o, b0, b1)
                for q0 in range(lo, hi, n):
                    yield self._causal(o, q0, min(hi, q0 + n))
        else:
            for kb in range(self.nbk):
                for q0 in range(b0, b1, n):
                    yield self._noncausal(kb, q0, min(b1, q0 + n))

    def redo(self, step):
        """The step ``step`` made again (fresh log-weights: a method that exponentiated them in place and
        rejected the result, :func:`unshifted_ok`, takes the shifted path on these)."""
        if self.P.causal:
            return self._causal(step.q0 - step.k0, step.q0, step.q1)
        return self._noncausal(step.k0, step.q0, step.q1)

    def _causal(self, o, q0, q1):
        xp, c, P = self.xp, self.c, self.P
        k0, k1 = q0 - o, q1 - o
        if o == 0:
            lg = _array.segsum(xp, self.gb[..., q0:q1, :])  # exactly the dense reference's sums
        else:
            idx = xp.asarray([(q - 1) * self.nbk + (q - o) for q in range(q0, q1)], device=P.device)
            mid = xp.take(self.mid, idx, axis=-1)  # (*batch, n)
            lg = self.pre[..., q0:q1, :, None] + mid[..., None, None] + self.suf[..., k0:k1, None, :]
        lg = lg + self.logb[..., k0:k1, None, :]
        w = P.window
        if w is not None and o * c + (c - 1) >= w:  # some pairs of the tile are outside the window
            t = xp.arange(c, device=P.device)
            inside = (o * c + t[:, None] - t[None, :]) < w  # (c, c): the same for every query block
            if k0 < self.sink_blocks:  # but sinks stay: the key (k0 + n) c + j of the n-th tile, if < s
                key = xp.arange(k0, k1, device=P.device)[:, None, None] * c + t[None, None, :]
                inside = inside | (key < P.sinks)  # (n, c, c)
            lg = xp.where(inside, lg, xp.asarray(-math.inf, dtype=lg.dtype, device=P.device))
        Qt, Kt = self.Qb[..., q0:q1, :, :], self.Kb[..., k0:k1, :, :]
        return Step(q0, q1, lg + self.sim(xp, Qt, Kt), Qt, Kt, self.Vb[..., k0:k1, :, :], k0)

    def _noncausal(self, kb, q0, q1):
        xp = self.xp
        Qt = self.Qb[..., q0:q1, :, :]
        Kt = self.Kb[..., kb : kb + 1, :, :]
        lg, last = self.sim(xp, Qt, Kt), self.last[..., kb : kb + 1, None, :]
        if _own_full(xp, lg, last):  # the similarity's fresh array (NumPy)
            if not self.last_zero:  # (adding zeros changes nothing: one pass over the tile saved)
                lg += last  # in place: the same sums, no T x T temporary
        else:
            lg = last + lg
        return Step(q0, q1, lg, Qt, Kt, self.Vb[..., kb : kb + 1, :, :], kb)

    # --- per-query-block accumulators --------------------------------------------------------------------
    def zeros(self, tail, value=0.0):
        """One accumulator: a list of ``nbq`` arrays (*batch, c, *tail) filled with ``value``."""
        xp, P = self.xp, self.P
        z = xp.full(P.batch_shape + (self.c,) + tuple(tail), value, dtype=P.dtype, device=P.device)
        return [z] * self.nbq

    def gather(self, acc, step):
        """The accumulator's entries of the step's query blocks, stacked: (*batch, n, c, *tail)."""
        return self.xp.stack(acc[step.q0 : step.q1], axis=self.nbatch)

    def scatter(self, acc, step, new):
        """Write the step's new entries (*batch, n, c, *tail) back into the list ``acc``."""
        for j in range(step.q1 - step.q0):
            acc[step.q0 + j] = new[(slice(None),) * self.nbatch + (j, ...)]

    def output(self, blocks):
        """The per-block outputs (*batch, c, d_v) as (*batch, T_q, d_v), padding removed."""
        xp = self.xp
        if not blocks:
            return xp.zeros(self.P.batch_shape + (0, self.P.d_v), dtype=self.P.dtype, device=self.P.device)
        Y = xp.concat(blocks, axis=-2) if len(blocks) > 1 else blocks[0]
        return Y[..., : self.Tq, :]


#: the per-row normalisers :func:`unshifted_ok` accepts
UNSHIFTED_RANGE = (2.0**-256, 2.0**256)


def unshifted_ok(norm, sums):
    r"""Whether a step's sums of unshifted exponentials ``exp(log w)`` (NumPy) are as good as the online
    normaliser's ``exp(log w - m)`` with the row maximum m: every row's normaliser ``norm`` (the sum of its
    weights) within :data:`UNSHIFTED_RANGE` and every sum in ``sums`` finite (no overflow; NaN fails
    both).

    The two differ by the factor :math:`e^m` per row, which every method divides out (normalised weights,
    moments over their sum), and by rounding, except where a weight is subnormal or 0 unshifted
    (:math:`\log w < -708`) but normal shifted. A normaliser :math:`\ell \ge 2^{-256}` over n keys has
    a largest weight :math:`\ge 2^{-256} / n`, so such a weight is below :math:`e^{-708} n 2^{256} <
    10^{-230} n` times the largest: its loss is far below rounding (shifted, weights under
    :math:`e^{-745}` times the largest underflow too). A rejected step is made again (:meth:`TilePlan.redo`)
    and takes the shifted path: an empty or underflowing row (every key far from the query), an
    overflow (logits above ~177: ``ExpDot`` of long keys). Saves the row maxima and the shift, two passes
    over the tile: set regression n = 500 on the 2-core CPU, about 0.1 ms of 1.2-2.5 ms.
    """
    lo, hi = UNSHIFTED_RANGE
    return bool(np.all((norm >= lo) & (norm <= hi)) and np.all(np.isfinite(sums)))


def _own_full(xp, a, b):
    """Whether ``a += b`` may run in place: a writeable NumPy array owning its data, of the sum's shape
    (``Similarity.log_weights`` returns a new array; a broadcast view or a smaller shape is not modified)."""
    return (
        array_api_compat.is_numpy_namespace(xp)
        and a.flags.writeable
        and a.flags.owndata
        and a.shape == np.broadcast_shapes(a.shape, b.shape)
    )


#: a non-causal NumPy call with at least this many (query, key) pairs splits its query blocks over
#: threads (2-core CPU, set regression, d in {2, 8}: n = 500 ran 10-20% slower in two threads, n = 2000
#: 1.3-1.6x faster)
THREAD_MIN_PAIRS = 2**20


def in_threads(P, nbq, fn):
    """``fn((0, nbq))``: the per-block outputs of every query block. A non-causal NumPy call of at least
    :data:`THREAD_MIN_PAIRS` pairs splits the query blocks into contiguous ranges, one per host thread
    (:mod:`ttr_stats.methods._host_threads`), each ``fn(range)`` in its own thread: every query reads all
    keys, so the ranges are independent and each query gets the same sums as in one thread. Not bit for
    bit: a share groups its blocks into other steps (other product shapes and memory alignments, so other
    SIMD summation orders), so the digits agree to rounding (``tests/test_tiled_host_fast.py``: 1e-13)."""
    if P.causal or not array_api_compat.is_numpy_namespace(P.xp):
        return fn((0, nbq))
    from .. import _host_threads

    pairs = max(1, P.n_batch) * P.Q.shape[-2] * P.K.shape[-2]
    parts = _host_threads.run_split(
        lambda sl: fn((sl.start, sl.stop)), nbq, work=pairs, min_work=THREAD_MIN_PAIRS
    )
    return [y for part in parts for y in part]


def key_block(P, c, per_pair, budget):
    """The key block length of a non-causal host call: every key in one block where a query block's row
    fits ``budget`` bytes (one large product per query block instead of many c x c ones), else the
    longest multiple of ``c`` that fits; ``None`` (square tiles) for causal calls and on a device. With
    the threads over query blocks: set regression n = 2000, d = 8 on the 2-core CPU, local linear 97 ->
    25 ms, Nadaraya-Watson 46 -> 13 ms (``benchmarks/cpu_tiled.py``)."""
    from ..registry import is_host

    if P.causal or not is_host(P):
        return None
    per_block = max(1, P.n_batch) * c * per_pair * P.itemsize
    fit = max(c, int(budget // max(1, per_block)) // c * c)
    return min(P.K.shape[-2], fit)
