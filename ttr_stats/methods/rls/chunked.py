r"""The exact chunked method of recursive least squares (Woodbury over a chunk, C x C Cholesky).

RLS solves :math:`y_t = S_t R_t^{-1} q_t` with :math:`R_t = c_t R_0 + \sum_{j\le t}\Gamma_{tj} k_j k_j^\top`
and a prior that decays with the forgetting factor. Within a chunk that starts from :math:`(M_0, R_0)`
the prior and the chunk's samples decay together, so every prefix system of the chunk is a leading block
of one C x C matrix :math:`\mathrm{diag}(e^{G_j}/\beta_j) + K P_0 K^\top` (:func:`woodbury_chunk`): one
Cholesky factor per chunk, O(C d + d^2) work per token, no d x d solve per token. Between chunks the
method carries :math:`(M, R)` (the precision is a sum of nonnegative terms, so it accumulates without
the cancellation of the Sherman-Morrison update of P) and inverts R once per chunk.

Everything is computed in float64 (float32 inputs included, cast back at the end): with the default
ridge 1e-6 the prefix systems have cond ~1e7, which float32 cannot resolve. When a prefix precision becomes
numerically singular (strong decay: wind-up) the method raises ``FloatingPointError`` rather than return
a finite wrong number. See docs/derivations/exact_chunked.md.

Guarantee: every chunk-start precision and the final one has :math:`\|R\|_F \|R^{-1}\|_F\,\epsilon \le`
1e-3 (``COND_LIMIT`` of the shared prefix code) and every chunk's C x C Cholesky factor exists, else
``FloatingPointError`` naming the gate and the remedy; a decay that underflows to 0 in float64 (log alpha
below about -745) is refused up front. Measured against exact (rational-arithmetic) weighted least squares
(tests/test_rls_reliability.py): 9e-12 of max |V| at log alpha = -1 (d_k = 6, ridge 1e-6), 4e-6 at -3,
refused from -5 on; float32 inputs 5e-8 from float64 at T = 16384.
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from ... import _validation
from ..._gates import check_decay_representable
from ...optimizers import RLSState
from ...optimizers.rls import singular_prior_error
from .. import _host_threads
from ..least_squares._prefix import (
    Layout,
    Singular,
    as_work,
    chunk_starts,
    chunk_sums,
    chunk_weights,
    group_bytes,
    groups,
    pd_inverse,
    singular_error,
    too_ill,
    woodbury_chunk,
    work_dtype,
)
from ..problem import initial_state
from ..registry import register

#: the host splits the rows over threads from this many B H T d_k^2 on (below, one thread: the pool's
#: dispatch costs more). Measured on the 2-core host, ridge 1e-2, float32, best of 5, threaded / one
#: thread: (1, 4, 256, 16) 4.09 / 2.81 ms; (1, 4, 512, 32) 8.28 / 7.73; (1, 8, 512, 64) 20.5 / 28.1;
#: (1, 16, 1024, 64) 73.8 / 128
THREAD_MIN_WORK = 4 * 10**6

#: default chunk length (docs/derivations/exact_chunked.md, timings): O(C d) work per token against one
#: d x d inversion per chunk; above 64 the host's multithreaded BLAS slows down sharply
DEFAULT_CHUNK = 64

REMEDY = (
    "Use a slower decay (alpha or forgetting closer to 1), a larger ridge, or ClosedForm(ridge=...) "
    "(the mesa recipe), whose fixed ridge keeps every prefix well posed at any decay."
)


#: the most log-decay one chunk may span (e^-6.9 = 1e-3): the chunk's C x C system has the diagonal
#: e^{G_j} / beta_j next to K P_0 K^T, of rank d_k < C, so its condition number grows like e^{-G_C}
#: (log alpha = -1 per step made C = 64 chunks fail to factor while R_t itself had cond ~1e3)
DECAY_PER_CHUNK = 6.9


def layout(P):
    """The chunk grid.

    Chunks span at most :data:`DECAY_PER_CHUNK` of log-decay (strong decay shortens them, down to one
    token: still exact, slower), and the first is at most d_k tokens long: while the prior dominates
    (P_0 = I / ridge, 1e6 by default) a key in the span of earlier keys makes the Woodbury factor cancel
    terms of size |P_0|; after d_k pairs the data dominate and P_0 is moderate (measured at ridge 1e-6:
    8e-10 -> 4e-11 relative to the recurrent loop).
    """
    C = int(P.chunk_size or DEFAULT_CHUNK)
    # one host synchronisation where a gate can decay (an ungated call's log-gates are all 0)
    steepest = float(P.xp.max(-P.g)) if P.T and P.gated else 0.0
    if steepest > 0:
        C = max(1, min(C, int(DECAY_PER_CHUNK / steepest)))
    return Layout(P, C, first=min(C, P.d_k))


def chunked(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v).

    NumPy arrays: the batch rows (heads, sequences) are split over threads (``_host_threads``), every
    slice on the chunk grid of the whole call, so each row gets the very same operations whatever the split
    (every step is per row: batched matmuls, factorisations per matrix). A refusal in any slice reruns the
    whole batch in one piece, so the error names the same first position as an unsplit call.
    """
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    if not P.T:
        return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device), s0
    wd = work_dtype(P)
    if P.gated:  # (an ungated call's log-gates are all 0: nothing to underflow, no sync)
        check_decay_representable(xp, P.g, type(opt).__name__, dtype=wd)
    lay = layout(P)
    L = P.n_batch
    small = L * P.T * P.d_k * P.d_k < THREAD_MIN_WORK
    if not array_api_compat.is_numpy_namespace(xp) or small or _host_threads.n_threads(L) == 1:
        return _run(layer, P, s0, lay, wd)
    flat = _flat_rows(P, s0)
    try:
        parts = _host_threads.run_split(lambda sl: _run(layer, *_slice_rows(P, flat, sl), lay, wd), L)
    except FloatingPointError:
        return _run(layer, P, s0, lay, wd)
    lead = P.batch_shape
    Y = np.reshape(np.concatenate([p[0] for p in parts]), lead + (P.T, P.d_v))
    M = np.reshape(np.concatenate([p[1].M for p in parts]), lead + (P.d_v, P.d_k))
    Pm = np.reshape(np.concatenate([p[1].P for p in parts]), lead + (P.d_k, P.d_k))
    return Y, RLSState(M, Pm)


def _flat_rows(P, s0):
    """The per-row arrays of P and the initial state, broadcast to the batch and flattened to one axis."""
    lead, L = P.batch_shape, P.n_batch

    def f(x, tail):
        return np.reshape(np.broadcast_to(x, lead + tail), (L,) + tail)

    T, n = P.T, P.K.shape[-2]
    return dict(
        Q=f(P.Q, (T, P.d_k)), K=f(P.K, (n, P.d_k)), V=f(P.V, (n, P.d_v)), g=f(P.g, (T, P.g.shape[-1])),
        b=f(P.b, (n,)), M=f(s0.M, (P.d_v, P.d_k)), P=f(s0.P, (P.d_k, P.d_k)),
        lengths=None if P.lengths is None else f(P.lengths, ()),
    )  # fmt: skip


def _slice_rows(P, flat, sl):
    """``(P_slice, state_slice)``: rows ``sl`` of the flattened batch, as a problem of batch (rows,)."""
    rows = len(range(*sl.indices(P.n_batch)))
    Ps = P._replace(
        Q=flat["Q"][sl], K=flat["K"][sl], V=flat["V"][sl], g=flat["g"][sl], b=flat["b"][sl],
        lengths=None if flat["lengths"] is None else flat["lengths"][sl], batch_shape=(rows,), state0=None,
    )  # fmt: skip
    return Ps, RLSState(flat["M"][sl], flat["P"][sl])


def _run(layer, P, s0, lay, wd):
    """The chunked method on P from state s0 on the chunk grid ``lay``."""
    opt = layer.optimizer
    xp = P.xp
    Q, K, V = (lay.split(xp, as_work(xp, x, wd)) for x in (P.Q, P.K, P.V))  # (..., n, C, .)
    g = lay.split(xp, as_work(xp, P.g[..., 0], wd), time_axis_last=True)  # (..., n, C)
    b = lay.split(xp, as_work(xp, P.b, wd), time_axis_last=True)
    c, w = chunk_weights(xp, g, b, full=False)
    M0, P0 = as_work(xp, s0.M, wd), as_work(xp, s0.P, wd)
    # torch on CUDA: no factorisation reads its status at once (four host syncs a call); one that fails
    # gives NaN outputs, refused by _check with the rest (a chunk's position, as an immediate error names)
    dfr = _validation.defers(P.Q)
    R0 = as_work(xp, opt.prior_precision(s0, deferred=dfr), wd)
    per_chunk = P.n_batch * lay.C * (lay.C + 2 * P.d_k + P.d_v) * 8
    ys, conds = [], []
    R, S = R0, xp.matmul(M0, R0)  # the statistics at the current chunk start
    try:
        for sl in groups(lay.n, per_chunk, group_bytes(xp)):
            # the chunk-start statistics of this group only (the scan carries R, S on): all of them at
            # once were 64 MB at B = 1, H = 16, T = 4096, d = 64, a fifth of the call in memory traffic
            Kg, Vg = K[..., sl, :, :], V[..., sl, :, :]
            Rs, Ss, R, S = chunk_starts(xp, R, S, c[..., sl, -1], *chunk_sums(xp, w[..., sl, :], Kg, Vg))
            # P and M at each chunk start: the given state for the first chunk, S R^{-1} from the
            # accumulated statistics after (cond(R) * eps, where updating M by Woodbury would cancel terms
            # of size |P_0|)
            Pg, cond = pd_inverse(xp, Rs, dfr)
            Mg = xp.matmul(Ss, Pg)
            if sl.start == 0:
                Pg = xp.concat([P0[..., None, :, :], Pg[..., 1:, :, :]], axis=-3)
                Mg = xp.concat([M0[..., None, :, :], Mg[..., 1:, :, :]], axis=-3)
            conds.append(cond)
            ys.append(woodbury_chunk(xp, Pg, Mg, Kg, Vg, Q[..., sl, :, :], b[..., sl, :], c[..., sl, :], dfr))
        R_end, S_end = R, S
        P_end, cond_end = pd_inverse(xp, R_end, dfr)
    except Singular as exc:  # the error path: every chunk start, for the first one that does not factor
        Rs, _, R_end, _ = chunk_starts(xp, R0, xp.matmul(M0, R0), c[..., -1], *chunk_sums(xp, w, K, V))
        raise singular_error(layer, _first_failure(xp, lay, Rs, R_end), exc.detail, REMEDY) from None
    Y = xp.concat(ys, axis=-3)
    cond = xp.concat(conds, axis=-1)
    _check(layer, xp, lay, cond, cond_end, Y, ~xp.all(xp.isfinite(R0)), P.checks)
    M_end = xp.matmul(S_end, P_end)
    Y = as_work(xp, lay.join(xp, Y), P.dtype)
    return Y, RLSState(as_work(xp, M_end, P.dtype), as_work(xp, P_end, P.dtype))


def _check(layer, xp, lay, cond, cond_end, Y, bad_prior=None, checks=None):
    """Refuse if a chunk-start or the final precision is numerically singular or an output is not finite
    (a backend whose Cholesky returns NaN instead of raising); ``bad_prior``: whether R_0 = P_0^{-1} is
    not finite (a deferred solve's NaN, CuPy's inf), refused as the immediate solve refuses it. With the
    call's deferred ``checks`` (CuPy, torch CUDA) the verdict waits on the device and is read with the
    input checks' and the output's in their one transfer; otherwise it is read here, once."""
    ill = too_ill(xp, cond_end)
    bad_y = ~xp.all(xp.isfinite(Y), axis=(-2, -1))  # (..., n)
    flags = xp.any(bad_y, axis=tuple(range(bad_y.ndim - 1))) if bad_y.ndim > 1 else bad_y
    starts = too_ill(xp, cond)  # (..., n); the first chunk's start is the given prior
    starts = xp.any(starts, axis=tuple(range(starts.ndim - 1))) if starts.ndim > 1 else starts
    flags = flags | xp.concat([xp.zeros((1,), dtype=xp.bool, device=_dev(flags)), starts[1:]])
    verdict = xp.any(flags) | xp.any(ill)
    if bad_prior is not None:
        verdict = verdict | bad_prior

    def error():  # the failure path only: it reads the flags to name the position
        if bad_prior is not None and bool(bad_prior):
            return singular_prior_error()
        for i in range(lay.n):
            if bool(flags[i]):
                t = lay.chunk_of(i)[0]
                return singular_error(layer, t, "cond(R_t) * eps > 1e-3, or non-finite outputs", REMEDY)
        return singular_error(layer, lay.T, "cond(R_T) * eps > 1e-3", REMEDY)

    if checks is not None and checks.lazy:
        checks.when(verdict, error)
    elif bool(verdict):  # one read of every verdict
        raise error()


def _dev(x):
    from ... import _array

    return _array.device(x)


def _first_failure(xp, lay, Rs, R_end):
    """The position of the first chunk start whose precision does not factor (the error path only)."""
    from ..least_squares._prefix import cholesky

    for i in range(1, lay.n):
        try:
            cholesky(xp, Rs[..., i, :, :])
        except Singular:
            return lay.chunk_of(i)[0]
    return lay.T


def chunked_bytes(P):
    """One group of chunks' intermediates (float64: C x C systems, C x d blocks, a few d x d matrices
    a chunk; groups of :func:`group_bytes`), the chunked inputs and the outputs."""
    C = min(int(P.chunk_size or DEFAULT_CHUNK), max(P.T, 1))
    dk, dv = P.d_k, P.d_v
    n = -(-P.T // C) + 1
    per = P.n_batch * (3 * C * C + 4 * C * (dk + dv) + 6 * dk * (dk + dv)) * 8
    inputs = P.n_batch * n * C * (2 * dk + 2 * dv + 2) * 8
    return min(n * per, max(per, group_bytes(P.xp))) + inputs


def auto(P, free):
    """On a device whenever the intermediates fit in a quarter of free memory; on the host from T = 64
    on (docs/derivations/exact_chunked.md: 2.4x the loop at T = 1024 and T = 4096, B = 1, H = 16, d = 64)."""
    if free is not None:
        return chunked_bytes(P) <= free // 4
    return P.T >= HOST_MIN_T


#: the host's shortest T for ``auto``
HOST_MIN_T = 64


register(
    "chunked",
    "rls",
    run=chunked,
    memory=chunked_bytes,
    auto=auto,
    rank=5,
    summary="Woodbury per chunk: one C x C Cholesky serves every prefix",
    dtypes=("float32", "float64"),  # factorisations: NumPy has no half-precision linalg
)
