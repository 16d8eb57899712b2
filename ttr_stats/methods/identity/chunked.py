r"""The chunked form of the identity-covariance family (linear attention, RetNet, Mamba-2, GLA, feature maps).

The recurrence (:class:`~ttr_stats.optimizers.IdentityCovariance`, ``methods/recurrent.py``)

.. math:: M_t = M_{t-1}\,\mathrm{Diag}(\alpha_t) + \beta_t v_t k_t^\top,\qquad
          z_t = z_{t-1}\circ\alpha_t + \beta_t k_t,\qquad y_t = \mathrm{finish}(M_t q_t,\ q_t^\top z_t)

is cut into chunks of ``C`` tokens. With :math:`G_i = \sum_{s=\text{start}}^{i} \log\alpha_s` the log-decay
from the chunk start (``<= 0``) and :math:`S` the state before the chunk,

.. math:: y_i = \sum_{j\le i,\ j\in\text{chunk}} \beta_j\,(q_i\circ e^{G_i-G_j})^\top k_j\; v_j
          + S\,(q_i\circ e^{G_i}),

          S' = S\,\mathrm{Diag}(e^{G_L})
          + \sum_{j\in\text{chunk}} \beta_j v_j (k_j\circ e^{G_L-G_j})^\top

with L the chunk's last position.

Every exponent is a sum of log-gates over a forward range, ``<= 0``: no factor :math:`e^{+G}` is formed, so
log-gates of -50 a step (or ``-inf``, a hard reset) cannot overflow. Derivation, stability argument and the
tests that check them: ``docs/derivations/identity_chunked.md``.

* Scalar decay: :math:`\Gamma_{ij} = \beta_j e^{G_i - G_j}` (``j <= i``), one (C, C) matrix per chunk, and
  the intra-chunk term is :math:`(Q K^\top\circ\Gamma)V`. The log-decays are kept in float64 (also for
  float32 data: a difference of two of them then loses nothing that float32 could show) and clamped at
  :data:`LOG_FLOOR`, where ``exp`` is already exactly 0, so a difference is never ``-inf - -inf``.
* Per-dimension decay (GLA): :math:`e^{G_{id}-G_{jd}}` has no bounded factorisation over a whole chunk
  (``q e^{G}``, ``k e^{-G}`` overflows), and a (C, C, d) tensor costs ``O(T C d)`` exponentials. The
  chunk (padded to a power of two) is halved recursively: the pairs (i, j) with i in the second half of a
  block and j in the first are :math:`(q_i\circ F^q_i)^\top(k_j\circ F^k_j)` with :math:`F^q_i` the gates'
  product from the second half's start to i and :math:`F^k_j` from j + 1 to the first half's end, both
  ``<= 1`` (fla's GLA secondary chunking, at every level). Each pair belongs to one level; ``log2 C``
  levels of small matmuls; the factors are products of gates, as in the recurrence (no logs at all).
* The state pass. On the host a loop over chunks, and for scalar decay everything of one chunk at a time
  while it is in cache (measured: 1.3-1.5x faster than whole-array passes; the all-at-once matrix form
  below does N/2 times the state arithmetic, ~7x slower at T = 4096). For NumPy arrays
  (:func:`_scalar_numpy`) every product goes into a preallocated buffer, the state is kept as M^T and
  the batch rows (heads) are split over threads (``methods/_host_threads.py``; no bit depends on the
  split): B = 1, H = 16, T = 4096, d = 64, float64 on 2 cores, 77 -> 53 ms a call with 2 threads.
  On a device (CuPy, torch CUDA) a loop of tiny ops is launch-bound, so the chunk states are formed
  :data:`DEVICE_GROUP` at a time,
  :math:`S_n = \sum_{m\le n} e^{\bar G_n - \bar G_m}\,\Delta S_m + e^{\bar G_n} S_{\text{in}}`: one lower
  triangular (64, 64) matmul per group, a loop over ``N / 64`` groups only, ``O(64^2)`` memory per batch
  and dimension (not ``O(N^2)``), and the matmul's arithmetic (64 d^2 per chunk) is nothing to a GPU.
  On CuPy the chunk recurrence runs instead as one fused kernel (``methods/_fused.py``; measured on an
  H200 at B = 8, H = 16, T = 4096, d = 64, float32, chunk 32: 4.6 ms a call against 5.7 ms grouped),
  and the grouped form is the fallback where the kernel does not apply. The kernel is handed the
  intra-chunk matrix A as well and adds its reads :math:`A V` (and their denominators) to the state
  reads itself, so the output is written once (no ``A @ v`` matmul, no sum of two outputs). Since
  2026-12-03 CuPy takes two faster routes by default. Scalar decay runs entirely in
  ``_fused_chunk.py``. Per-dimension decay forms its states by a scan (:data:`DEVICE_STATES`,
  :func:`_inter_scan`): every chunk's contribution as one batched product, one thread a state entry over
  the chunks, then the reads as batched products. The fused pass stays as ``DEVICE_STATES = "pass"``.
* Sliding windows: the recurrence removes the pair leaving the window with the weight it has reached,
  :math:`\beta_i\prod_{j=i+1}^{i+w}\alpha_j`, and lets the removal decay from then on, i.e. it subtracts
  the same layer run on keys and values delayed by ``w`` steps whose weights carry that in-window decay
  (same gates, zero initial state; the in-window log-sums run in blocks of ``w``, so their digits do not
  depend on T). Both runs go through the kernel at once, stacked on a leading axis. The window's few
  terms are then a difference of two prefix sums: in float32 the relative error grows like eps T / w
  (measured 2.5e-4 at T = 16000, w = 7, sum-normalised); ``method="banded"`` (``banded.py``) sums the
  window directly and ``auto`` prefers it for float32 windows and narrow float64 ones.

Memory ``O(T d + T C)`` on the host; on a device ``O(T d^2 / C + T C)``; never ``O(T^2)``.
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ... import _array
from ...optimizers import LinearAttentionState
from .. import _fused, _host_threads
from ..problem import initial_state
from ..registry import register
from . import _fused_chunk, _fused_intra

__all__ = ["chunked", "chunked_bytes", "DEFAULT_CHUNK", "HOST_MIN_T", "LOG_FLOOR"]

#: chunk length when ``chunk_size`` is None (host, B=1, H=16, d=64, T=4096: 32 is fastest, 16 and 64 are
#: within ~20%; docs/derivations/identity_chunked.md)
DEFAULT_CHUNK = 32

#: on the host ``method="auto"`` takes the chunked form from this many tokens on (measured; below it the
#: T x T parallel form is as fast or faster)
HOST_MIN_T = 16

#: tokens per block of the per-dimension halving on the host (see :func:`_block`)
HOST_BLOCK_TOKENS = 128

#: chunk states formed at once on a device
DEVICE_GROUP = 64

#: the host splits a scalar-decay call's rows over threads from this many B H T d_k d_v on (below, one
#: thread: the pool's dispatch costs more). Measured on the 2-core host, linear attention float32, best
#: of 5: (1, 4, 1024, 64) 3.80 ms threaded against 2.64 ms one thread; (1, 16, 1024, 64) 9.96 / 9.38;
#: (1, 16, 2048, 64) 18.5 / 18.9; (1, 16, 4096, 64) 36.5 / 39.2; (2, 16, 4096, 64) 58 / 86
THREAD_MIN_WORK = 10**8

#: on CuPy, hand the intra-chunk matrix to the fused state pass, which adds its reads (False: form
#: ``A v`` apart and add it, as before; benchmarks/gpu_chunked_profile.py compares the two)
FUSE_INTRA_READS = True

#: how a device forms the per-dimension path's chunk states (the scalar path's are in ``_fused_chunk``):
#: ``"scan"``, every chunk's contribution as one batched product, then one thread a state entry scans
#: the chunks (:func:`_inter_scan`), or ``"pass"``, the fused state pass (``_fused.state_pass``: a block
#: a sequence walks the chunks in turn). GLA layer at B = 8, H = 16, T = 4096, d = 64 on an H200:
#: 3.45 ms by scan against 4.66 ms by pass (docs/benchmarks.md)
DEVICE_STATES = "scan"

#: log-gates are clamped here: exp(-1000) is exactly 0 in float32 and float64, so the clamp changes no
#: product of gates, and sums of clamped gates stay finite (their differences are never nan)
LOG_FLOOR = -1000.0


def _on_host(xp, device) -> bool:
    """NumPy, array_api_strict and CPU tensors run the host loops; CUDA arrays the grouped matrix form."""
    if array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_array_api_strict_namespace(xp):
        return True
    return str(device) == "cpu"


def _chunk(P):
    """The chunk length used: ``chunk_size`` (default :data:`DEFAULT_CHUNK`), at most T."""
    C = DEFAULT_CHUNK if P.chunk_size is None else int(P.chunk_size)
    return max(1, min(C, P.T))


def _ex(xp, x, dt):
    """``exp(x)`` (float64 log-decays) in the working dtype."""
    return xp.astype(xp.exp(x), dt, copy=False)


def _pad_rows(xp, X, n, axis, device):
    """``X`` with ``n`` zero rows appended along ``axis`` (identity steps: no write, no decay, no read)."""
    if n == 0:
        return X
    shape = list(X.shape)
    shape[axis] = n
    return xp.concat([X, xp.zeros(tuple(shape), dtype=X.dtype, device=device)], axis=axis)


def _chunks(xp, X, N, C, Cp, device):
    """(..., T, d) -> (..., N, Cp, d): pad T to N*C, split, pad each chunk to Cp rows."""
    X = _pad_rows(xp, X, N * C - X.shape[-2], -2, device)
    X = xp.reshape(X, X.shape[:-2] + (N, C, X.shape[-1]))
    return _pad_rows(xp, X, Cp - C, -2, device)


def _delay(xp, X, w, axis, device):
    """``X`` delayed by ``w`` steps along ``axis`` (-1 or -2): ``w`` zero rows, then all but the last w."""
    n = X.shape[axis]
    shape = list(X.shape)
    shape[axis] = w
    body = X[..., : n - w, :] if axis == -2 else X[..., : n - w]
    return xp.concat([xp.zeros(tuple(shape), dtype=X.dtype, device=device), body], axis=axis)


def chunked(layer, P):
    """Return ``(Y, final_state)`` of an identity-covariance layer by the chunked form.

    Parameters
    ----------
    layer : TestTimeRegression
        Its optimizer is an :class:`~ttr_stats.optimizers.IdentityCovariance`.
    P : Problem
        Q (..., T, d_k), K (..., T, d_k), V (..., T, d_v), g (..., T, 1) or (..., T, d_k), b (..., T).

    Returns
    -------
    Y : array of shape (*batch, T, d_v)
    state : LinearAttentionState
        M (*batch, d_v, d_k), z (*batch, d_k): the state after step T.
    """
    opt = layer.optimizer
    xp, dev = P.xp, P.device
    if P.T == 0:
        return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=dev), initial_state(opt, P)
    need_den = getattr(opt, "normalize", None) == "sum"  # finish reads the denominator only then
    Q, K, V, g, b, w = P.Q, P.K, P.V, P.g, P.b, P.window
    windowed = w is not None and w < P.T
    if P.state0 is None and not windowed and not _on_host(xp, dev):
        M0 = z0 = None  # the zero state: _kernel passes cached zeros to the fused kernels (no memsets)
    else:
        s0 = initial_state(opt, P)
        M0 = xp.broadcast_to(s0.M, P.batch_shape + (P.d_v, P.d_k))
        z0 = xp.broadcast_to(s0.z, P.batch_shape + (P.d_k,))
    if windowed:  # the run on the pairs delayed by w (the removals), stacked behind the run itself
        # a removed pair carries the decay it took inside the window: at t it is pair t - w with weight
        # b_{t-w} prod_{j=t-w+1}^{t} alpha_j (windowed weights have scalar gates, g is (..., T, 1))
        Kd, bd = _delay(xp, K, w, -2, dev), _delay(xp, b, w, -1, dev)
        if P.gated:  # from the layer and call, never from gate values (causality, Problem.gated)
            bd = bd * _ex(xp, _window_log_sum(xp, g, w, dev), b.dtype)[..., 0]
        K = xp.stack([K, Kd])
        V = xp.stack([V, _delay(xp, V, w, -2, dev)])
        b = xp.stack([b, bd])
        Q = xp.broadcast_to(Q, (2,) + Q.shape)
        g = xp.broadcast_to(g, (2,) + g.shape)
        M0 = xp.stack([M0, xp.zeros_like(M0)])
        z0 = xp.stack([z0, xp.zeros_like(z0)])
    # the output vouches for the finiteness of Q, K and V (Problem.checks) where it is y itself: every
    # entry of them reaches y through products and sums (a NaN or infinity in q_t, k_s or v_s makes y_t,
    # t >= s, non-finite: 0 * inf is NaN), while the normalisations' selects (finish) and the window's
    # difference are left out
    vouch = P.checks is not None and not windowed and getattr(opt, "normalize", None) is None
    flag = P.checks.new_flag() if vouch else None
    y, den, M, z, flagged = _kernel(
        xp, Q, K, V, g, b, M0, z0, _chunk(P), need_den, _on_host(xp, dev), dev, gated=P.gated, flag=flag,
        need_z=P.want_state,
    )  # fmt: skip
    if windowed:
        y, M = y[0, ...] - y[1, ...], M[0, ...] - M[1, ...]
        z = None if z is None else z[0, ...] - z[1, ...]
        den = den[0, ...] - den[1, ...] if need_den else None
    Y = opt.finish(xp, y, den)  # den is None unless finish reads it
    if vouch and Y is y:
        P.checks.vouch(Y, flag if flagged else None)
    # z is None where the caller drops the state (P.want_state) and it would cost passes of its own
    return Y, (LinearAttentionState(M, z) if P.want_state else None)


def clamped_log_gates(xp, g, dev):
    """``g`` in float64, clamped below at :data:`LOG_FLOOR` (exact, and every sum stays finite)."""
    f64 = xp.float64
    return xp.maximum(xp.astype(g, f64, copy=False), xp.asarray(LOG_FLOOR, dtype=f64, device=dev))


def _window_log_sum(xp, g, w, dev):
    """``(..., T, e)`` float64: at t, the sum of the (clamped) log-gates over ``(t - w, t]``.

    Sums run inside aligned blocks of ``w`` steps (a window spans at most two), so every partial sum is
    at most ``w`` gates deep: the digits do not depend on T, and the clamp at :data:`LOG_FLOOR` keeps
    every sum finite (``alpha = 0`` gives ``-1000 w``, exactly 0 after ``exp``).
    """
    f64 = xp.float64
    g = clamped_log_gates(xp, g, dev)
    T, e = g.shape[-2], g.shape[-1]
    nb = -(-T // w)
    gp = _pad_rows(xp, g, nb * w - T, -2, dev)
    blocks = xp.reshape(gp, gp.shape[:-2] + (nb, w, e))
    pre = xp.cumulative_sum(blocks, axis=-2)  # inclusive prefix sums inside each block
    total = pre[..., -1:, :]
    # suffix of the previous block from offset r + 1 (t = n w + r): total - prefix up to r
    suf = total - pre
    zero = xp.zeros(suf.shape[:-3] + (1, w, e), dtype=f64, device=dev)
    suf_prev = xp.concat([zero, suf[..., :-1, :, :]], axis=-3)
    out = xp.reshape(pre + suf_prev, gp.shape)
    return out[..., :T, :]


def _kernel(xp, Q, K, V, g, b, M0, z0, C, need_den, host, dev, gated=True, flag=None, need_z=True):
    """The unwindowed chunked recurrence on raw outputs: ``(y, den, M, z, flagged)``.

    ``y`` (..., T, d_v) = M_t q_t, ``den`` (..., T) = q_t^T z_t (None unless ``need_den``), ``M``, ``z``:
    the state after step T. ``gated=False`` promises every log-gate is 0 (``Problem.gated``; the fused
    output kernel then skips the decays). ``flag`` (a zeroed device int32 array of one entry, or None):
    the fused kernels set it where an output is not finite; ``flagged`` says whether they ran (else the
    flag is untouched and says nothing). ``need_z=False``: the final z may come back as None where it
    would take passes of its own (the device's scan and fused state paths without a denominator).
    """
    T, dv, dt = Q.shape[-2], V.shape[-1], Q.dtype
    per_dim = g.shape[-1] > 1
    lead, dk = Q.shape[:-2], Q.shape[-1]
    zero_start = M0 is None  # the zero initial state: read-only cached zeros where only kernels read it
    if not host and not per_dim and _fused_chunk.ENABLED:  # CuPy: two kernels on the unpadded inputs
        if zero_start:
            M0 = _array.constant(xp, lead + (dv, dk), 0.0, dt, dev)
            z0 = _array.constant(xp, lead + (dk,), 0.0, dt, dev)
        fused = _fused_chunk.forward(xp, Q, K, V, g, b, M0, z0, C, need_den, gated=gated, flag=flag)
        if fused is not None:
            return fused + (flag is not None,)
    if zero_start:  # the array forms below may update the state in place: fresh zeros
        M0 = xp.zeros(lead + (dv, dk), dtype=dt, device=dev)
        z0 = xp.zeros(lead + (dk,), dtype=dt, device=dev)
    N = -(-T // C)
    Cp = 1 << (C - 1).bit_length() if per_dim else C  # the halving needs a power of two
    Qc, Kc, Vc = (_chunks(xp, X, N, C, Cp, dev) for X in (Q, K, V))
    bc = _chunks(xp, b[..., None], N, C, Cp, dev)  # (..., N, Cp, 1)
    g64 = None
    if not (per_dim and host):  # log-gates in float64, clamped at LOG_FLOOR (module docstring)
        g64 = clamped_log_gates(xp, g, dev)
        g64 = _chunks(xp, g64, N, C, Cp, dev)
    # the host writes each block into preallocated outputs: fresh memory is the dearest thing there
    # (first touch of a new 32 MB array costs more than two passes over it)
    out = xp.zeros(lead + (N, Cp, dv), dtype=dt, device=dev) if host else None
    dout = xp.zeros(lead + (N, Cp), dtype=dt, device=dev) if host and need_den else None
    if not per_dim:
        G = xp.cumulative_sum(g64[..., 0], axis=-1)  # (..., N, C): log-decay from the chunk start
        if host:
            M, z = _scalar_host(xp, Qc, Kc, Vc, G, g64[..., 0], bc[..., 0], M0, z0, out, dout, dev)
            return _unchunk(xp, out, dout, lead, C, T, dv) + (M, z, False)
    else:
        gc = _chunks(xp, g, N, C, Cp, dev)  # padded with log-gate 0: the padding does not decay
    step = max(1, HOST_BLOCK_TOKENS // Cp) if host else N
    M, z = M0, z0
    for n0 in range(0, N, step):
        n1 = min(N, n0 + step)
        q, k, v = Qc[..., n0:n1, :, :], Kc[..., n0:n1, :, :], Vc[..., n0:n1, :, :]
        if per_dim:  # the halving multiplies gates, as the recurrence does: no logs needed
            terms = None
            if not host:  # CuPy float32/float64: one kernel (_fused_intra.py; the chunk products unused)
                terms = _fused_intra.intra_per_dim(xp, q, k, g64[..., n0:n1, :, :], bc[..., n0:n1, :, 0])
            if terms is None:
                kb = k * bc[..., n0:n1, :, :]
                A, Qg, Kx, a = _intra_per_dim(xp, q, kb, xp.exp(gc[..., n0:n1, :, :]))
            else:
                A, Qg, Kx = terms
        else:  # (only a device gets here) CuPy float32/float64: one kernel (_fused_intra.py)
            terms = _fused_intra.intra_scalar(xp, q, k, G[..., n0:n1, :], bc[..., n0:n1, :, 0])
            if terms is None:
                terms = _intra_scalar(xp, q, k, g64[..., n0:n1, :, 0], bc[..., n0:n1, :, 0], dev)
            A, Qg, Kx = terms
        if host:
            y, den = _intra_reads(xp, A, v, need_den)
            yS, dS, M, z = _inter_loop(xp, Qg, v, Kx, a, M, z, need_den)
            out[..., n0:n1, :, :] = y + yS
            if need_den:
                dout[..., n0:n1, :] = den + dS
            continue
        # a device: one block, every chunk at once
        Gc = xp.sum(g64, axis=-2)  # (..., N, dg): whole-chunk log-decays
        scan = DEVICE_STATES == "scan"
        scanned = _inter_scan(xp, Qg, v, Kx, Gc, M, z, need_den, A, need_z) if scan else None
        if scanned is not None:  # every state at once, then the reads as batched products
            out, dout, M, z = scanned
            continue
        fused = _inter_fused(xp, Qg, v, Kx, Gc, M, z, need_den, A if FUSE_INTRA_READS else None, need_z)
        if fused is not None and FUSE_INTRA_READS:  # the kernel added the intra-chunk reads A v itself
            out, dout, M, z = fused
        elif fused is not None:
            y, den = _intra_reads(xp, A, v, need_den)
            out, dout, M, z = y + fused[0], (den + fused[1] if need_den else None), fused[2], fused[3]
        else:
            y, den = _intra_reads(xp, A, v, need_den)
            yS, dS, M, z = _inter_grouped(xp, Qg, v, Kx, Gc, M, z, need_den)
            out, dout = y + yS, (den + dS if need_den else None)
    return _unchunk(xp, out, dout, lead, C, T, dv) + (M, z, False)


def _intra_reads(xp, A, v, need_den):
    """The intra-chunk reads ``A v`` and, when ``need_den``, their denominators ``A 1``."""
    return A @ v, (xp.sum(A, axis=-1) if need_den else None)


def _unchunk(xp, y, den, lead, C, T, dv):
    """(..., N, Cp, dv) -> (..., T, dv), and the denominators likewise: drop the padding rows."""
    N = y.shape[-3]
    y = xp.reshape(y[..., :C, :], lead + (N * C, dv))[..., :T, :]
    if den is not None:
        den = xp.reshape(den[..., :C], lead + (N * C,))[..., :T]
    return y, den


def _after(xp, g):
    """``sum_{m > i} g[..., m]`` along the last axis (reverse cumulative sums, not ``G_last - G_i``).

    Equal to rounding in the forward pass, but a difference of cumulative sums differentiates into O(1)
    terms that cancel: after a gate of exp(-50), autograd's dL/dalpha (= dL/dlog_alpha / alpha) was 0 where
    the loop's is O(1). Segment sums (:func:`_segsum`) and these suffix sums keep every derivative a sum of
    terms of its own size.
    """
    rc = xp.flip(xp.cumulative_sum(xp.flip(g, axis=-1), axis=-1), axis=-1)  # sum_{m >= i}
    return xp.concat([rc[..., 1:], xp.zeros_like(rc[..., :1])], axis=-1)


def _scalar_host(xp, Qc, Kc, Vc, G, g, b, M, z, out, dout, dev):
    """Scalar decay on the host: one chunk at a time, all of its work while its arrays are in cache.

    Qc, Kc (..., N, C, dk), Vc (..., N, C, dv), G (..., N, C) float64 log-decays from each chunk start,
    g (..., N, C) the float64 log-gates themselves, b (..., N, C), (M, z) the initial state. Per chunk:
    ``A = (q k^T) o Gamma`` (Gamma from segment sums of g),
    ``y = A v + e^G o (q M^T)``, ``M <- a M + v^T (k o b e^{G_last - G})``. The outputs are written into
    ``out`` (..., N, C, dv) and, unless it is None, ``dout`` (..., N, C); returns the final ``(M, z)``.
    """
    C, dt = G.shape[-1], Qc.dtype
    decays = bool(xp.any(G != 0))  # False: no decay in the call, every factor e^{...} is exactly 1
    if array_api_compat.is_numpy_namespace(xp):
        return _scalar_numpy(xp, Qc, Kc, Vc, G, g, b, M, z, out, dout, decays)
    idx = xp.arange(C, device=dev)
    causal = idx[:, None] >= idx[None, :]
    if not decays:
        return _nodecay_host(xp, Qc, Kc, Vc, b, M, z, out, dout, xp.astype(causal, dt))
    Glast = G[..., -1:]
    eG = _ex(xp, G, dt)[..., None]  # (..., N, C, 1): decay from the chunk start
    fac = (_ex(xp, _after(xp, g), dt) * b)[..., None]  # (..., N, C, 1): write strength decayed to the end
    a = _ex(xp, Glast, dt)[..., None]  # (..., N, 1, 1): the whole chunk's decay
    for n in range(Qc.shape[-3]):
        q, k, v = Qc[..., n, :, :], Kc[..., n, :, :], Vc[..., n, :, :]
        W = _ex(xp, _segsum(xp, g[..., n, :], dev), dt) * b[..., n, None, :]
        A = (q @ xp.matrix_transpose(k)) * W
        out[..., n, :, :] = A @ v + eG[..., n, :, :] * (q @ xp.matrix_transpose(M))
        if dout is not None:
            dout[..., n, :] = xp.sum(A, axis=-1) + eG[..., n, :, 0] * (q @ z[..., :, None])[..., 0]
        kx = k * fac[..., n, :, :]
        M = M * a[..., n, :, :] + xp.matrix_transpose(v) @ kx
        z = z * a[..., n, 0, :] + xp.sum(kx, axis=-2)
    return M, z


def _scalar_numpy(xp, Qc, Kc, Vc, G, g, b, M0, z0, out, dout, decays):
    """:func:`_scalar_host` for NumPy arrays: the same per-chunk sums with every product written into
    preallocated buffers (``matmul(out=)``, in-place adds), the state kept as M^T (so that the read
    ``q M^T`` is a plain product), and the batch rows split over threads (``_host_threads``: each row gets
    the very same calls whatever the split, so the thread count changes no bit).

    Without decay (``decays`` False) the factors e^{...} are exactly 1 and are skipped, and with unit write
    strengths so are the weights: the skipped products are by exact ones, so the outputs before a first
    decaying gate are bit for bit those of a call without it (the path is chosen per call from gate values:
    exact causality needs this).
    """
    lead, (N, C, dk), dv = Qc.shape[:-3], Qc.shape[-3:], Vc.shape[-1]
    L = math.prod(lead)
    Qf, Kf, Vf, bf = (np.reshape(X, (L,) + X.shape[len(lead) :]) for X in (Qc, Kc, Vc, b))
    Mf = np.reshape(np.broadcast_to(M0, lead + M0.shape[-2:]), (L,) + M0.shape[-2:])
    zf = np.reshape(np.broadcast_to(z0, lead + z0.shape[-1:]), (L, dk))
    of = np.reshape(out, (L, N, C, dv))  # views: out and dout are fresh contiguous arrays
    df = None if dout is None else np.reshape(dout, (L, N, C))
    mask = np.tril(np.ones((C, C), dtype=Qc.dtype))
    unit = not decays and not bool(np.any(b != 1))
    if decays:  # float64 factors, as the generic path forms them, cast to the working dtype
        gf, G = np.reshape(g, (L, N, C)), np.reshape(G, (L, N, C))
        eG = np.exp(G).astype(Qc.dtype, copy=False)[..., None]  # (L, N, C, 1)
        fac = (np.exp(_after(xp, gf)).astype(Qc.dtype, copy=False) * bf)[..., None]  # (L, N, C, 1)
        a = np.exp(G[..., -1:]).astype(Qc.dtype, copy=False)[..., None]  # (L, N, 1, 1)

    def rows(sl):
        q_, k_, v_ = Qf[sl], Kf[sl], Vf[sl]
        n_ = q_.shape[0]
        MT = np.array(np.swapaxes(Mf[sl], -1, -2), dtype=Qc.dtype, order="C")  # (n, dk, dv), owned
        z = np.array(zf[sl], dtype=Qc.dtype, order="C")
        # each chunk's sum of weighted keys, as one batched product (a per-chunk sum over the C axis
        # was 8 ms of a call): w^T K with w = b e^{G_last - G} (exactly b without decay; the same
        # product on both paths, so the denominators agree bit for bit)
        w = fac[sl, ..., 0] if decays else bf[sl]
        dz = np.matmul(w[:, :, None, :], k_)[:, :, 0, :]  # (n, N, dk)
        A = np.empty((n_, C, C), dtype=Qc.dtype)
        Av = np.empty((n_, C, dv), dtype=Qc.dtype)
        dM = np.empty((n_, dk, dv), dtype=Qc.dtype)
        for n in range(N):
            q, k, v = q_[:, n], k_[:, n], v_[:, n]
            np.matmul(q, np.swapaxes(k, -1, -2), out=A)
            if decays:
                A *= np.exp(_segsum(xp, gf[sl, n], None)).astype(Qc.dtype, copy=False) * bf[sl, n, None, :]
            else:
                A *= mask if unit else mask * bf[sl, n, None, :]
            o = of[sl, n]
            np.matmul(q, MT, out=o)
            if decays:
                o *= eG[sl, n]
            np.matmul(A, v, out=Av)
            o += Av
            if df is not None:
                d = (q @ z[:, :, None])[..., 0]
                if decays:
                    d *= eG[sl, n, :, 0]
                df[sl, n] = np.sum(A, axis=-1) + d
            kx = k * fac[sl, n] if decays else (k if unit else k * bf[sl, n, :, None])
            if decays:
                MT *= a[sl, n]
                z *= a[sl, n, 0]
            np.matmul(np.swapaxes(kx, -1, -2), v, out=dM)
            MT += dM
            z += dz[:, n]
        return MT, z

    parts = _host_threads.run_split(rows, L, work=L * N * C * dk * dv, min_work=THREAD_MIN_WORK)
    MT = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    z = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    M = np.reshape(np.swapaxes(MT, -1, -2), lead + (dv, dk))
    return M, np.reshape(z, lead + (dk,))


def _nodecay_host(xp, Qc, Kc, Vc, b, M, z, out, dout, mask):
    """:func:`_scalar_host` when no gate decays (linear attention): the weights are ``b_j`` on the causal
    triangle, so no exponentials, no decay of the state and, with unit write strengths, no weights at all
    (the same sums: the skipped factors are exactly 1)."""
    unit = not bool(xp.any(b != 1))
    for n in range(Qc.shape[-3]):
        q, k, v = Qc[..., n, :, :], Kc[..., n, :, :], Vc[..., n, :, :]
        kb = k if unit else k * b[..., n, :, None]
        # (q k^T) o (mask b), in the general path's order, so that a decaying gate later in the call (which
        # switches the call to the general path) changes no bit of these outputs: exact causality
        A = (q @ xp.matrix_transpose(k)) * (mask if unit else mask * b[..., n, None, :])
        out[..., n, :, :] = A @ v + q @ xp.matrix_transpose(M)
        if dout is not None:
            dout[..., n, :] = xp.sum(A, axis=-1) + (q @ z[..., :, None])[..., 0]
        M = M + xp.matrix_transpose(v) @ kb
        z = z + xp.sum(kb, axis=-2)
    return M, z


def _intra_scalar(xp, q, k, g, b, dev):
    """The intra-chunk matrix of scalar decay for a block of chunks, and the chunk factors (device).

    q, k (..., n, C, dk), g (..., n, C) float64 log-gates, b (..., n, C); ``G`` below is their cumulative
    sum from each chunk start (the differences come from :func:`_segsum` and :func:`_after`).

    Returns
    -------
    A (..., n, C, C) = (q k^T) o (e^{G_i - G_j} b_j) on the causal triangle, Qg = q e^G,
    Kx = k b e^{G_last - G}
    """
    dt = q.dtype
    A = (q @ xp.matrix_transpose(k)) * (_ex(xp, _segsum(xp, g, dev), dt) * b[..., None, :])
    Qg = q * _ex(xp, xp.cumulative_sum(g, axis=-1), dt)[..., None]
    Kx = k * (_ex(xp, _after(xp, g), dt) * b)[..., None]
    return A, Qg, Kx


def _intra_per_dim(xp, q, kb, alpha):
    """The intra-chunk matrix of per-dimension decay by recursive halving, and the chunk factors.

    q, kb (..., n, Cp, dk) (kb = k b), alpha (..., n, Cp, dk) the gates; Cp a power of two. Level h
    (blocks of 2h, halves of h) gives the pairs (i in the second half, j in the first)
    ``O = (q o Fq) (kb o Fk)^T`` (module docstring); the next level's factors are this level's, one half
    multiplied by the other half's whole product P. The levels' blocks are assembled into the (Cp, Cp)
    intra-chunk matrix A (the reads are A v). The top level's factors are the chunk's.

    Returns
    -------
    A (..., n, Cp, Cp), Qg = q o prod_{start..i} alpha, Kx = kb o prod_{j+1..end} alpha,
    a (..., n, dk) = prod over the chunk
    """
    Cp, dk = q.shape[-2], q.shape[-1]
    lead = q.shape[:-2]
    A = xp.sum(q * kb, axis=-1)[..., None, None]  # (..., Cp, 1, 1): i = j, no decay
    Qt, Kt, P = q * alpha, kb, alpha[..., None, :]  # level 1: Fq_i = alpha_i, Fk_j = 1; P (..., Cp, 1, dk)
    h = 1
    while h < Cp:
        nb = Cp // (2 * h)
        Qr = xp.reshape(Qt, lead + (nb, 2, h, dk))
        Kr = xp.reshape(Kt, lead + (nb, 2, h, dk))
        Pr = xp.reshape(P, lead + (nb, 2, 1, dk))
        q2, k1 = Qr[..., 1, :, :], Kr[..., 0, :, :]
        if h == 1:  # 1 x 1 blocks: an elementwise dot beats a stack of tiny matmuls
            O = xp.sum(q2 * k1, axis=-1)[..., None]
        else:
            O = q2 @ xp.matrix_transpose(k1)  # (..., nb, h, h)
        Ar = xp.reshape(A, lead + (nb, 2, h, h))
        top = xp.concat([Ar[..., 0, :, :], xp.zeros_like(O)], axis=-1)
        A = xp.concat([top, xp.concat([O, Ar[..., 1, :, :]], axis=-1)], axis=-2)  # (..., nb, 2h, 2h)
        P0, P1 = Pr[..., 0:1, :, :], Pr[..., 1:2, :, :]  # (..., nb, 1, 1, dk): the halves' products
        one = xp.ones_like(P0)
        # next level: the second half's Fq and the first half's Fk extend over the other half
        Qt = Qr * xp.concat([one, P0], axis=-3)
        Kt = Kr * xp.concat([P1, one], axis=-3)
        P = P0 * P1
        h *= 2
    A = xp.reshape(A, lead + (Cp, Cp))
    Qt = xp.reshape(Qt, lead + (Cp, dk))
    Kt = xp.reshape(Kt, lead + (Cp, dk))
    return A, Qt, Kt, xp.reshape(P, lead + (dk,))


def _inter_loop(xp, Qg, v, Kx, a, M, z, need_den):
    """The state read and update by a loop over the chunks of a block (host).

    Qg, Kx (..., n, C, dk), v (..., n, C, dv), a (..., n, dg) whole-chunk decays, (M, z) the state before
    the block. Chunk by chunk: ``y = Qg M^T``, then ``M <- M Diag(a) + v^T Kx``.

    Returns
    -------
    y (..., n, C, dv), den (..., n, C) or None, M, z
    """
    ys, dens = [], []
    dz = xp.sum(Kx, axis=-2)  # (..., n, dk)
    for n in range(Qg.shape[-3]):
        q = Qg[..., n, :, :]
        ys.append(q @ xp.matrix_transpose(M))
        if need_den:
            dens.append((q @ z[..., :, None])[..., 0])
        an = a[..., n, :]
        M = M * an[..., None, :] + xp.matrix_transpose(v[..., n, :, :]) @ Kx[..., n, :, :]
        z = z * an + dz[..., n, :]
    return xp.stack(ys, axis=-3), (xp.stack(dens, axis=-2) if need_den else None), M, z


def _inter_grouped(xp, Qg, v, Kx, Gc, M, z, need_den):
    """The state read and update with the chunk states formed :data:`DEVICE_GROUP` at a time (device).

    As :func:`_inter_loop`, but Gc (..., n, dg) are the chunks' float64 log-decays: the fallback of
    :func:`_inter_fused` (the fused kernel of ``methods/_fused.py``), where it does not apply.
    """
    dS = xp.matrix_transpose(v) @ Kx  # (..., n, dv, dk): each chunk's writes, decayed to its end
    Sp, zp, M, z = _states_grouped(xp, dS, xp.sum(Kx, axis=-2), Gc, M, z, Qg.dtype)
    y = Qg @ xp.matrix_transpose(Sp)
    den = xp.sum(Qg * zp[..., None, :], axis=-1) if need_den else None
    return y, den, M, z


def _inter_fused(xp, Qg, v, Kx, Gc, M, z, need_den, A=None, need_z=True):
    """The whole output by the fused kernel (or None where it does not apply): ``(y, den, M, z)``.

    With ``A`` (..., n, C, C), the intra-chunk matrix, the kernel adds the intra-chunk reads ``A v`` to
    the state reads itself (``Y = Q_g S^T + A V``: the output is written once, no ``A v`` matmul and no
    sum of two outputs); without it y holds the state reads only. The denominator state z is the state of
    a ones column appended to the values (read when ``need_den``: then ``A 1`` comes with it); without it
    z is only needed after the last chunk:
    ``z_N = sum_n exp(sum_{m > n} Gc_m) dz_n + exp(sum_m Gc_m) z_0`` (reverse cumulative sums: no
    difference of large sums, every exponent <= 0), None unless ``need_z``.
    """
    dt, dv = Qg.dtype, v.shape[-1]
    U, St0, zb = _state_operands(xp, Qg, v, M, z, need_den)
    res = _fused.state_pass(xp, Qg, U, Kx, _ex(xp, Gc, dt), St0, A=A)
    if res is None:
        return None
    Y, St = res
    M = xp.matrix_transpose(St[..., :dv])
    if need_den:
        return Y[..., :dv], Y[..., dv], M, St[..., dv]
    return Y, None, M, (_final_z(xp, Kx, Gc, zb, dt) if need_z else None)


def _state_operands(xp, Qg, v, M, z, need_den):
    """``(U, S0^T, z0)`` of the device state paths: the values (with a ones column when ``need_den``, whose
    state column is z), the transposed state before chunk 0 (z appended likewise) and z broadcast."""
    dt, dv = Qg.dtype, v.shape[-1]
    lead, dk = Qg.shape[:-3], Qg.shape[-1]
    St0 = xp.matrix_transpose(xp.broadcast_to(M, lead + (dv, dk)))
    zb = xp.broadcast_to(z, lead + (dk,))
    U = v
    if need_den:
        ones = xp.ones(v.shape[:-1] + (1,), dtype=dt, device=array_api_compat.device(Qg))
        U = xp.concat([v, ones], axis=-1)
        St0 = xp.concat([St0, zb[..., None]], axis=-1)
    return U, St0, zb


def _final_z(xp, Kx, Gc, z0, dt):
    """The denominator state after the last chunk, ``sum_n exp(sum_{m > n} Gc_m) dz_n + exp(sum_m Gc_m)
    z_0`` (reverse cumulative sums: no difference of large sums, every exponent <= 0)."""
    rc = xp.flip(xp.cumulative_sum(xp.flip(Gc, axis=-2), axis=-2), axis=-2)  # sum_{m >= n}
    after = xp.concat([rc[..., 1:, :], xp.zeros_like(rc[..., :1, :])], axis=-2)  # sum_{m > n}
    dz = xp.sum(Kx, axis=-2)
    return xp.sum(_ex(xp, after, dt) * dz, axis=-2) + _ex(xp, rc[..., 0, :], dt) * z0


def _inter_scan(xp, Qg, v, Kx, Gc, M, z, need_den, A, need_z=True):
    """The whole output from every chunk's state at once, ``(y, den, M, z)``, or None where the scan
    kernel does not apply (not CuPy float32/float64).

    Every chunk's own contribution ``D_n = K_x^T U`` is one batched product, the states before every
    chunk come from :func:`_fused_chunk.scan_states` (one thread a state entry, scanning the chunks: no
    chunk loop of a few blocks per SM), and the outputs ``Y = Q_g S_n + A U`` are two more batched
    products. ``U = v``, with a ones column when ``need_den`` (z is then the state's last column, and
    ``A 1`` comes with ``A U``); without it z is only needed after the last chunk (:func:`_final_z`).
    Qg, Kx (..., N, C, dk), v (..., N, C, dv), A (..., N, C, C), Gc (..., N, dg) float64 whole-chunk
    log-decays, dg = 1 or dk. ``need_z=False``: the final z (its own passes without a denominator) is
    None.
    """
    dt, dv = Qg.dtype, v.shape[-1]
    U, St0, zb = _state_operands(xp, Qg, v, M, z, need_den)
    res = _fused_chunk.scan_states(xp, xp.matrix_transpose(Kx) @ U, _ex(xp, Gc, dt), St0)
    if res is None:
        return None
    S, St = res
    Y = _fused.matmul_add(xp, Qg, S, A, U)  # one output, the second product accumulated into it
    M = xp.matrix_transpose(St[..., :dv])
    if need_den:
        return Y[..., :dv], Y[..., dv], M, St[..., dv]
    return Y, None, M, (_final_z(xp, Kx, Gc, zb, dt) if need_z else None)


def _segsum(xp, x, dev):
    """``out[..., n, m] = sum_{l=m+1}^{n} x[..., l]`` for ``m <= n``, ``-inf`` above the diagonal.

    Masked cumulative sums (a difference of two cumulative sums would lose small sums after a large
    one); ``_array.segsum`` with the index arrays on ``x``'s device.
    """
    n = x.shape[-1]
    idx = xp.arange(n, device=dev)
    zero = xp.zeros((), dtype=x.dtype, device=dev)
    S = xp.cumulative_sum(xp.where(idx[:, None] > idx[None, :], x[..., :, None], zero), axis=-2)
    return xp.where(idx[:, None] >= idx[None, :], S, xp.asarray(-math.inf, dtype=x.dtype, device=dev))


def _states_grouped(xp, dS, dz, Gc, M, z, dt, group=None):
    """The states before each chunk, ``group`` (:data:`DEVICE_GROUP`) chunks at a time.

    dS (..., N, dv, dk), dz (..., N, dk), Gc (..., N, dg) float64; (M, z) the state before chunk 0.
    Within a group ``S_n = sum_{m<=n} L_nm dS_m + c_n S_in`` with ``L = exp(segsum(Gc))`` and
    ``c_n = exp(Gc_0 + ... + Gc_n)`` (exact segment sums, exponents <= 0).

    Returns
    -------
    the states before each chunk (..., N, dv, dk) and (..., N, dk), and the state after the last
    """
    group = DEVICE_GROUP if group is None else group
    N, dv, dk = dS.shape[-3:]
    dg, shape = Gc.shape[-1], dS.shape[:-3]
    dev = array_api_compat.device(dS)
    nb = len(shape)
    M = xp.broadcast_to(M, shape + (dv, dk))
    z = xp.broadcast_to(z, shape + (dk,))
    Ms, zs = [], []
    for n0 in range(0, N, group):
        n1 = min(N, n0 + group)
        n = n1 - n0
        Gb = xp.moveaxis(Gc[..., n0:n1, :], -1, -2)  # (..., dg, n)
        L = _ex(xp, _segsum(xp, Gb, dev), dt)  # (..., dg, n, n)
        cin = xp.moveaxis(_ex(xp, xp.cumulative_sum(Gb, axis=-1), dt), -1, -2)  # (..., n, dg)
        blk, zb = dS[..., n0:n1, :, :], dz[..., n0:n1, :]
        if dg == 1:
            Sb = xp.reshape(L[..., 0, :, :] @ xp.reshape(blk, shape + (n, dv * dk)), shape + (n, dv, dk))
            zn = L[..., 0, :, :] @ zb
        else:  # one (n, n) matrix per key dimension: (..., dk, n, n) @ (..., dk, n, dv)
            batch = tuple(range(nb))
            Sb = L @ xp.permute_dims(blk, batch + (nb + 2, nb, nb + 1))
            Sb = xp.permute_dims(Sb, batch + (nb + 1, nb + 2, nb))
            zn = xp.moveaxis((L @ xp.moveaxis(zb, -1, -2)[..., None])[..., 0], -2, -1)
        Sb = Sb + cin[..., :, None, :] * M[..., None, :, :]
        zn = zn + cin * z[..., None, :]
        Ms += [M[..., None, :, :], Sb[..., :-1, :, :]]
        zs += [z[..., None, :], zn[..., :-1, :]]
        M, z = Sb[..., -1, :, :], zn[..., -1, :]
    return xp.concat(Ms, axis=-3), xp.concat(zs, axis=-2), M, z


def chunked_bytes(P):
    """Bytes of the largest intermediates: a few padded copies of Q, K, V, the (C, C) weights or the
    halving's blocks, the float64 log-gates and, on a device, every chunk's state; twice that with a
    window (both runs are stacked)."""
    C = _chunk(P) if P.T else 1
    N = -(-P.T // C)
    per_dim = P.g is not None and P.g.shape[-1] > 1
    Cp = 1 << (C - 1).bit_length() if per_dim else C
    Tp, it = N * Cp, P.itemsize
    rows = 6 * Tp * (P.d_k + P.d_v) * it + 2 * Tp * (P.d_k if per_dim else 1) * 8
    work = Tp * Cp * (8 + 2 * it)
    states = 2 * N * P.d_v * P.d_k * it if not _on_host(P.xp, P.device) else 0
    total = P.n_batch * (rows + work + states)
    return total * (2 if P.window is not None and P.window < P.T else 1)


def _auto(P, free):
    """On a device whenever it fits a quarter of free memory; on the host from :data:`HOST_MIN_T` tokens
    on, within the registry's memory budget."""
    if free is not None:
        return chunked_bytes(P) <= free // 4
    from .. import registry  # read at call time: tests and users may lower the budget

    return P.T >= HOST_MIN_T and chunked_bytes(P) <= registry.host_budget()


register(
    "chunked",
    "identity",
    run=chunked,
    memory=chunked_bytes,
    auto=_auto,
    rank=5,
    window=True,
    per_dimension=True,
    summary="chunkwise (Q K^T o Gamma) V plus a state per chunk, O(T d + T C) memory",
)
