r"""The chunked (WY / UT-transform) form of the delta-rule family.

The definition (:meth:`ttr_stats.optimizers.DeltaRule.update`, one write):

.. math:: M' = \alpha_t M_{t-1},\quad M_t = \ell_t M' + \eta_t (v_t - M' k_t) k_t^\top,\quad y_t = M_t q_t

with the step :math:`\eta_t` = ``opt.step_size(b, k)`` (LMS / Gated DeltaNet / DeltaProduct: b; Longhorn:
:math:`b/(1 + b\|k\|^2)`; NLMS: :math:`b/\|k\|^2`) and the leak :math:`\ell_t` = ``opt.leak(b)`` (leaky
LMS: :math:`1 - b\lambda`; else 1). In a chunk of C writes with state :math:`M_0` at its start, the
corrections :math:`\delta_j = \eta_j (v_j - \alpha_j M_{j-1} k_j)` solve one unit lower-triangular system

.. math:: (I + \operatorname{tril}(\operatorname{diag}(\eta)(R \circ K K^\top), -1))\,\Delta
          = \operatorname{diag}(\eta) V - \operatorname{diag}(\eta \rho) K M_0^\top

(:math:`R_{jl}` the decay from write l to the read at j, :math:`\rho_j` from the chunk start to the read at
j), so :math:`\Delta = U - W M_0^\top` with :math:`U, W` the solves of the two right-hand sides (the UT
transform), and

.. math:: Y = \operatorname{diag}(\gamma) Q M_0^\top + (\Gamma \circ Q K^\top) \Delta,\qquad
          M_C = M_0 \underbrace{(\gamma_C I - W^\top D K)}_{A_n} + \underbrace{U^\top D K}_{B_n}

(:math:`\Gamma_{ij} = \prod_{m=j+1}^i \alpha_m\ell_m`, :math:`\gamma_i = \Gamma_{i0}`,
:math:`D = \operatorname{diag}(\Gamma_{C,:})`). Every decay is ``exp`` of a log-space segment sum relative
to the chunk start (<= 1, exact for log alpha = -50 a step and for hard resets). The leak enters in log
space as :math:`\log\alpha + \log\ell` for the state and plain :math:`\log\alpha` for the read (the
reparameterisation :math:`\alpha' = \ell\alpha`, :math:`\eta' = \eta/\ell`, :math:`v' = \ell v` of
Gated DeltaNet, without ever dividing by :math:`\ell`). A call with some :math:`\ell_t \le 0`
(:math:`b\lambda \ge 1`: the leak flips or zeroes the memory, no logarithm) runs the recurrent loop
instead, so the answer is right, not fast.

DeltaProduct (``steps_per_token = n``) is the same form on the T n writes: the token's log-decay at its
first write, 0 at the others, and token t's query read at write ``t n + n - 1``; ``chunk_size`` counts
tokens (default ``64 // n``, about 64 writes a chunk).

The inter-chunk recurrence :math:`S_n = S_{n-1} A_n + B_n` runs as a Python loop over chunks on the host
(NumPy, array_api_strict: one d_v x d_k x d_k matmul a chunk, negligible next to the batched chunk work)
and as an associative scan on a device (CuPy, torch CUDA: ceil(log2 N) levels of batched matmuls, so no
loop of N tiny kernel launches; O(N log N d^3) flops instead of O(N d^3), which a GPU absorbs at the
d <= 256 of these layers). See :func:`ttr_stats.methods.delta._wy.inter_chunk`.
On CuPy the recurrence runs as one fused kernel instead (``methods/_fused.py``: O(N d^2) work, a thread
block per sequence and block of value columns walking the chunks; measured on an H200 at B = 8, H = 16,
T = 4096, d = 64, float32: 8.6 ms a call at chunk 32 against 17.3 ms with the scan at its best chunk, 64),
the scan where the kernel does not apply. The per-chunk terms (decays, the strictly lower
:math:`\operatorname{diag}(\eta)(R \circ K K^\top)`, the triangular solve, P and D K) run on CuPy as one
kernel as well (``_fused_wy.py``: a block per chunk, forward substitution in shared memory), the array form
of :func:`~ttr_stats.methods.delta._wy.chunk_terms` where it does not apply and as its reference.

Exact causality: the triangular system is solved by recursive 2 x 2 blocking with explicit zeros
above the diagonal (:func:`~ttr_stats.methods.delta._wy.unit_lower_solve`; the kernel by forward
substitution, row i reading rows <= i only), every intra-chunk matrix
is zero above the diagonal (``exp(-inf)``), and chunk n's start state depends on chunks < n only, so
changing inputs at positions >= s leaves the outputs before s bit-for-bit unchanged (the leak fallback
is chosen per call, so it is the one exception: a future ``b lambda >= 1`` switches the whole call to
the loop, whose outputs agree to rounding).
"""

from __future__ import annotations

import array_api_compat
import numpy as np

from ... import _array
from ...optimizers import MemoryState
from ...optimizers.gradient import DeltaRule
from .. import _fused, _host_threads
from ..problem import Problem, initial_state
from ..recurrent import loop
from ..registry import register
from . import _fused_wy
from ._wy import chunk_outputs, chunk_terms, inter_chunk, transpose_copy

__all__ = ["chunked", "chunked_bytes", "DEFAULT_CHUNK_WRITES", "HOST_MIN_T"]

#: writes per chunk by default on the host (measured on 2 CPU cores, d = 64: 32 is 1.2-1.4x faster than
#: 16 or 64) and on a device (measured with the fused kernel on an H200, Gated DeltaNet at B = 8, H = 16,
#: T = 4096, d = 64, float32: 16: 8.56 ms, 32: 8.70, 64: 9.66, 128: 14.5; 32 keeps the C x C work small)
DEFAULT_CHUNK_WRITES = {"host": 32, "device": 32}

#: on the host ``auto`` takes the chunked form from this many tokens on (measured: docstring of _auto)
HOST_MIN_T = 16

#: bytes of C x C matrices a host group of chunks holds: 128 KiB, one chunk of B H = 16 at C = 32, so a
#: chunk's intermediates stay in cache (measured, 2 CPU cores: 10-25% faster than 0.5-8 MiB groups; small
#: problems still batch many chunks a call)
HOST_GROUP_BYTES = 2**17

#: ... when the rows are split over threads: larger groups, fewer calls a thread makes under the GIL
#: (measured, 2 CPU cores, Gated DeltaNet B = 1, H = 16, T = 4096, d = 64, float64: 161-204 ms at 128 KiB,
#: 118-131 at 512 KiB, 126-134 at 1 MiB, 123-132 at 2 MiB; one thread is fastest at 128 KiB)
HOST_SPLIT_GROUP_BYTES = 2**20

#: the host splits the batch rows over threads from this many B H T n d_k (d_k + d_v) on (below, one
#: thread: the pool's dispatch costs more than it saves). Measured as above, one thread / split, best
#: of 3+: (1, 4, 256) 2.4 / 2.7 ms (8e6); (1, 16, 256) 9.4 / 7.1 (3e7); (1, 4, 1024) 10.1 / 8.1 (3e7);
#: (1, 16, 1024) 37.3 / 26.9 (1.3e8); (1, 16, 4096) 181 / 130 (5.4e8)
THREAD_MIN_WORK = 2 * 10**7

#: the inter-chunk recurrence: ``"auto"`` (scan on a device, loop on the host), ``"scan"`` or ``"loop"``
INTER_CHUNK = "auto"

#: on CuPy, the sequential kernel forms the recurrence alone (every chunk's Delta and starting state
#: stored, ``_fused.chunk_states``) and the reads ``diag(gamma_r) Q S^T + P Delta`` are batched products
#: over all chunks at once; False: the kernel also does the reads, inside its chunk loop
#: (``_fused.state_pass``: half of its multiply-adds, on a few blocks per SM). Gated DeltaNet at B = 8,
#: H = 16, T = 4096, d = 64 on an H200: 5.33 ms split against 5.91 ms in the pass
SPLIT_READS = True


def _on_device(xp, device) -> bool:
    """True for CuPy and CUDA torch tensors (where a loop of tiny kernels costs launches)."""
    if array_api_compat.is_cupy_namespace(xp):
        return True
    return array_api_compat.is_torch_namespace(xp) and getattr(device, "type", "cpu") != "cpu"


def _chunk_tokens(P: Problem) -> int:
    """Tokens per chunk: ``P.chunk_size``, else about ``DEFAULT_CHUNK_WRITES`` writes."""
    if P.chunk_size is not None:
        return int(P.chunk_size)
    writes = DEFAULT_CHUNK_WRITES["device" if _on_device(P.xp, P.device) else "host"]
    return max(1, writes // P.steps_per_token)


def _pad(xp, x, n, axis, device):
    """Append ``n`` zero rows along ``axis`` (-1 or -2): identity writes (k = v = 0, eta = 0, g = 0)."""
    if n == 0:
        return x
    shape = list(x.shape)
    shape[axis] = n
    return xp.concat([x, xp.zeros(tuple(shape), dtype=x.dtype, device=device)], axis=axis)


def chunked(layer, P: Problem):
    """Run the chunked delta rule.

    Parameters
    ----------
    layer : TestTimeRegressionLayer
        A delta-family layer (its solver is a :class:`~ttr_stats.optimizers.DeltaRule`).
    P : Problem
        Q (..., T, d_k), K (..., T n, d_k), V (..., T n, d_v), g (..., T, 1), b (..., T n).

    Returns
    -------
    Y : array of shape (*batch_shape, T, d_v)
    state : MemoryState
        ``M`` of shape (*batch_shape, d_v, d_k) after the last write.
    """
    xp, dev, opt = P.xp, P.device, layer._solver()
    if P.T == 0:
        return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=dev), initial_state(opt, P)
    n = P.steps_per_token
    eta = opt.step_size(xp, P.b, P.K)  # (..., T n): per position, before any chunking
    leak = opt.leak(xp, P.b)
    if leak is not None and bool(xp.any(leak <= 0)):
        return loop(opt, P)  # a sign flip or a zeroed memory has no log-space gate: the definition
    g_read = P.g[..., 0]  # (..., T) scalar decay (per-dimension decay is not supported)
    if n > 1:  # the token's decay at its first write, none at the others
        rest = xp.zeros(P.batch_shape + (P.T, n - 1), dtype=P.dtype, device=dev)
        g_read = xp.reshape(xp.concat([g_read[..., None], rest], axis=-1), P.batch_shape + (P.T * n,))
    g_state = g_read if leak is None else g_read + xp.log(leak)

    c = _chunk_tokens(P)
    N = -(-P.T // c)
    C, pad = c * n, (N * c - P.T) * n
    bs = P.batch_shape
    K = xp.reshape(_pad(xp, P.K, pad, -2, dev), bs + (N, C, P.d_k))
    V = xp.reshape(_pad(xp, P.V, pad, -2, dev), bs + (N, C, P.d_v))
    Q = xp.reshape(_pad(xp, P.Q, N * c - P.T, -2, dev), bs + (N, c, P.d_k))
    eta = xp.reshape(_pad(xp, eta, pad, -1, dev), bs + (N, C))
    gs = xp.reshape(_pad(xp, g_state, pad, -1, dev), bs + (N, C))
    gr = None if leak is None else xp.reshape(_pad(xp, g_read, pad, -1, dev), bs + (N, C))

    scan = _on_device(xp, dev) if INTER_CHUNK == "auto" else INTER_CHUNK == "scan"
    S0 = None
    if scan:  # the device: every chunk at once, the state recurrence as a scan
        # CuPy float32/float64: every chunk's terms in one kernel (_fused_wy.py), else the array form
        t = _fused_wy.chunk_terms(xp, K, V, Q, eta, gs, gr, n, dev)
        if t is None:
            t = chunk_terms(xp, K, V, Q, eta, gs, gr, n, dev)
        S0t = _zero_start(xp, P, opt)  # the kernels' cached zeros (read only), or None
        if S0t is None:
            S0 = initial_state(opt, P)
            S0t = xp.matrix_transpose(S0.M)
        kept = _fused.chunk_states(xp, t.U, t.DK, t.gamC[..., None], S0t, W=t.W) if SPLIT_READS else None
        fused = None
        if kept is None:
            fused = _fused.state_pass(
                xp, t.gam_r[..., None] * t.Q, t.U, t.DK, t.gamC[..., None], S0t, A=t.P, W=t.W
            )
        if kept is not None:  # CuPy: the recurrence alone in one kernel, the reads as batched products
            starts, deltas, St = kept
            Y = chunk_outputs(xp, t, starts, deltas)
            S = xp.matrix_transpose(St)
        elif fused is not None:  # CuPy: the chunk recurrence and its reads in one kernel (methods/_fused.py)
            Y, St = fused
            S = xp.matrix_transpose(St)
        else:
            S0 = initial_state(opt, P)  # the array form (_zero_start gave None: no kernels here)
            An = t.gamC[..., None, None] * xp.eye(P.d_k, dtype=P.dtype, device=dev)
            An = An - xp.matmul(xp.matrix_transpose(t.W), t.DK)
            Bn = xp.matmul(xp.matrix_transpose(t.U), t.DK)
            starts, S = inter_chunk(xp, An, Bn, S0.M, scan=True)
            St = xp.matrix_transpose(starts)
            Y = chunk_outputs(xp, t, St, t.U - xp.matmul(t.W, St))
    else:  # the host: groups of chunks small enough to stay in cache, the state carried in a loop
        S0 = initial_state(opt, P)
        Y, St = _host(xp, P, K, V, Q, eta, gs, gr, n, S0.M, _group(P, C))
        S = transpose_copy(xp, St)
    Y = xp.reshape(Y, bs + (N * c, P.d_v))[..., : P.T, :]
    if P.checks is not None and leak is None and type(opt).step_size is DeltaRule.step_size:
        # Y vouches for the finiteness of Q, K and V (Problem.checks): with the step b itself (no key
        # norm in a denominator, no leak) they enter only products, sums and the unit triangular solve
        # (forward substitution), so a NaN or infinity in q_t, k_s or v_s reaches y_t for t >= s
        P.checks.vouch(Y)
    return Y, (MemoryState if S0 is None else type(S0))(S)


def _host(xp, P, K, V, Q, eta, gs, gr, n, M0, G):
    """The host loop over groups of ``G`` chunks: ``(Y (..., N, c, d_v), S^T (..., d_k, d_v))``.

    NumPy arrays from :data:`THREAD_MIN_WORK` on: the batch rows are split over threads
    (``_host_threads``), every slice on the whole call's chunk grid and groups, so that each row gets the
    very same operations whatever the split (batched matmuls and elementwise work, per row) and the
    result does not depend on the thread count, bit for bit (tests/test_cpu_fast_threads.py).
    """
    L, bs = P.n_batch, P.batch_shape
    work = L * K.shape[-3] * K.shape[-2] * P.d_k * (P.d_k + P.d_v)
    if (
        not array_api_compat.is_numpy_namespace(xp)
        or _host_threads.n_threads(L) == 1
        or work < THREAD_MIN_WORK
    ):
        return _host_rows(xp, K, V, Q, eta, gs, gr, n, M0, G, P.device)
    G = _group(P, K.shape[-2], HOST_SPLIT_GROUP_BYTES)

    def flat(x, tail):  # (L, *the last `tail` axes), broadcast over the batch
        return (
            None
            if x is None
            else np.reshape(np.broadcast_to(x, bs + x.shape[-tail:]), (L,) + x.shape[-tail:])
        )

    Kf, Vf, Qf, Mf = flat(K, 3), flat(V, 3), flat(Q, 3), flat(M0, 2)
    ef, gsf, grf = flat(eta, 2), flat(gs, 2), flat(gr, 2)

    def rows(sl):
        return _host_rows(
            xp, Kf[sl], Vf[sl], Qf[sl], ef[sl], gsf[sl], None if grf is None else grf[sl], n, Mf[sl], G,
            P.device,
        )  # fmt: skip

    parts = _host_threads.run_split(rows, L)
    Y = np.concatenate([p[0] for p in parts])
    St = np.concatenate([p[1] for p in parts])
    return np.reshape(Y, bs + Y.shape[1:]), np.reshape(St, bs + St.shape[1:])


def _host_rows(xp, K, V, Q, eta, gs, gr, n, M0, G, dev):
    """:func:`_host` on the rows it is given, in the calling thread."""
    N = K.shape[-3]
    St, Ys = transpose_copy(xp, M0), []  # the state carried as M^T: no transposed BLAS operand
    for a in range(0, N, G):
        sl = slice(a, min(a + G, N))
        t = chunk_terms(xp, K[..., sl, :, :], V[..., sl, :, :], Q[..., sl, :, :], eta[..., sl, :],
                        gs[..., sl, :], None if gr is None else gr[..., sl, :], n, dev)  # fmt: skip
        sts, deltas = [], []
        for j in range(sl.stop - a):
            D = t.U[..., j, :, :] - xp.matmul(t.W[..., j, :, :], St)
            sts.append(St)
            deltas.append(D)
            St = t.gamC[..., j, None, None] * St + xp.matmul(xp.matrix_transpose(t.DK[..., j, :, :]), D)
        if len(sts) == 1:  # a group of one chunk (the usual case): views, no copies
            Ys.append(chunk_outputs(xp, t, sts[0][..., None, :, :], deltas[0][..., None, :, :]))
        else:
            Ys.append(chunk_outputs(xp, t, xp.stack(sts, axis=-3), xp.stack(deltas, axis=-3)))
    return (Ys[0] if len(Ys) == 1 else xp.concat(Ys, axis=-3)), St


def _zero_start(xp, P, opt):
    """The transposed zero initial state (..., d_k, d_v) as cached read-only zeros (``_array.constant``)
    where the fused kernels will read it: CuPy, no ``initial_state`` given and the delta rule's own zero
    ``init``; else None. Saves the fill and the transposed copy of fresh zeros, two launches a call."""
    if P.state0 is not None or type(opt).init is not DeltaRule.init or not _fused.ENABLED:
        return None
    if not array_api_compat.is_cupy_namespace(xp):
        return None
    return _array.constant(xp, P.batch_shape + (P.d_k, P.d_v), 0.0, P.dtype, P.device)


def _group(P, C, budget=None):
    """Chunks per host group: about ``budget`` (``HOST_GROUP_BYTES``) of C x C matrices (all batch
    elements)."""
    per_chunk = P.n_batch * C * C * P.itemsize
    return max(1, (HOST_GROUP_BYTES if budget is None else budget) // per_chunk)


def chunked_bytes(P: Problem) -> int:
    """Largest intermediates: a few C x C matrices per chunk, the UT-transform outputs and the N chunk
    transitions and states (O(T (C + d) + N d^2) a batch element)."""
    C = _chunk_tokens(P) * P.steps_per_token
    writes = max(P.T, 1) * P.steps_per_token
    N = -(-max(P.T, 1) // _chunk_tokens(P))
    per = writes * (6 * C + 3 * (P.d_k + P.d_v)) + 3 * N * P.d_k * (P.d_k + P.d_v)
    return P.n_batch * per * P.itemsize


def _auto(P: Problem, free) -> bool:
    """Device: whenever it fits in a quarter of free memory. Host: from ``HOST_MIN_T`` tokens on, within
    ``AUTO_MEMORY_BUDGET`` (measured on 2 CPU cores, B = 1, H = 16, d = 64, float64: the chunked form is
    faster than the loop from T = 16 on, and the ratio grows with T; docs/derivations/delta_chunked.md)."""
    if free is not None:
        return chunked_bytes(P) <= free // 4
    from .. import registry  # read at call time: tests and users may lower the budget

    return P.T >= HOST_MIN_T and chunked_bytes(P) <= registry.host_budget()


def _supports(layer):
    if not isinstance(layer._solver(), DeltaRule):
        return f"chunked runs the delta rule (DeltaRule optimizers), not {type(layer.optimizer).__name__}"
    return None


register(
    "chunked",
    "delta",
    run=chunked,
    memory=chunked_bytes,
    auto=_auto,
    rank=5,
    multi_write=True,
    supports=_supports,
    summary="WY/UT chunk form: triangular solve per chunk, state recurrence over chunks",
)
