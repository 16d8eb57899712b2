r"""Fused CUDA kernels of the exact chunked least-squares methods (CuPy, float64 and float32).

**Prefix solves** (:func:`prefix_solve`). Under a decay the ridge of ClosedForm (the ``mesa`` recipe) does
not decay with the samples, so the prefix systems of a chunk share no factor and every token needs its
own d x d solve,

.. math:: x_t = (R_t + \rho I)^{-1} q_t,\qquad R_t = \alpha_t R_{t-1} + \beta_t k_t k_t^\top,

from the chunk-start statistic :math:`R_{-1} = R_0`. The array form (:func:`._prefix.prefix_systems` and
a batched solve) writes C d x d matrices per chunk to memory and factors them in a library call: at
B = 8, H = 16, T = 4096, d = 64 that was 256 ms on an H200, 179x slower than fla's 30-step CG. Here one
thread block walks one chunk: thread i keeps column i of :math:`R_t` in shared memory (conflict-free: it
is row i too, R is symmetric) and row i of :math:`A = R_t + \rho I` in registers, and the block solves
:math:`A x = q_t` by Gauss-Jordan elimination without pivoting (A is symmetric positive definite with
every pivot :math:`\ge \rho`: the Schur complements of A are). At step j every thread i >= j publishes its
entry :math:`A_{ij}`, which is also row j of the (symmetric) trailing block, and every thread
:math:`i \ne j` subtracts :math:`(A_{ij}/A_{jj})` times row j from its row and its right-hand side; after
D steps :math:`x_i = \mathrm{rhs}_i / A_{ii}`. One barrier a step (the published column is double
buffered), no division but the pivot's reciprocal, and every register index is a compile-time constant
(``D`` is a template parameter: one compilation per key width). ``G`` thread groups of the block solve
``G`` consecutive tokens at once, each group forming its :math:`R_{t+g}` from the shared :math:`R_t`.

Token t reads :math:`R_0`, rows ``<= t`` of K, q_t and gates ``<= t`` of its chunk only: outputs are as
causal as the recurrence. The result is not bit-equal to the array form (another order of sums); the
tests hold it to 1e-12 relative in float64.

**Chunk-start scan** (:func:`chunk_scan`): :math:`X_{i+1} = a_i X_i + \Delta_i` over the chunks, one
thread per entry of every row, compiled without contraction into FMAs (``--fmad=false``) so that it
gives the very bits of the array loop of :func:`._prefix.chunk_starts` (two launches instead of 4 n).

Both return ``None`` where they do not apply (not CuPy, a dtype other than float32/float64, ``D`` above
:data:`MAX_D`), and the caller runs the array form. The sources also run on the host
(``tests/cuda_on_host.py``, ``tests/test_fused_prefix.py``).
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from . import _fused_trtri

__all__ = ["ENABLED", "MAX_D", "GROUPS", "applies", "prefix_solve", "chunk_scan", "shared_bytes", "threads"]

#: set False to run the array forms on CuPy as well
ENABLED = True

#: the widest key dimension of the solve kernel: a thread holds a row of D values in registers (D = 64 in
#: float64 is 128 of its 255 registers)
MAX_D = 64

#: tokens solved at once by one block (thread groups of 32 ceil(D / 32) threads each)
GROUPS = 1

_SOLVE_SOURCE = r"""
template <typename T, int D, int G>
__global__ void __launch_bounds__(G * 32 * ((D + 31) / 32)) prefix_solve(
    const T* __restrict__ R0,   // (m, D, D) chunk-start statistics (symmetric)
    const T* __restrict__ K,    // (m, C, D)
    const T* __restrict__ Q,    // (m, C, D)
    const T* __restrict__ lg,   // (m, C) log-decays (-inf: a reset)
    const T* __restrict__ bw,   // (m, C) write strengths
    T* __restrict__ X,          // (m, C, D) out: (R_t + rho I)^-1 q_t
    const int C, const T rho)
{
    constexpr int W = 32 * ((D + 31) / 32);  // threads of a group
    constexpr int P = D + 2;                 // a published column: D entries, the rhs, the reciprocal
    extern __shared__ unsigned char smem_raw[];
    T* sR = reinterpret_cast<T*>(smem_raw);  // (D, D): R_t at the start of the block's step
    T* sk = sR + D * D;                      // (G, D): the keys of the step's tokens
    T* sa = sk + G * D;                      // (G, 2): decay and write strength of the step's tokens
    T* sp = sa + 2 * G;                      // (G, 2, P): each group's published column, double-buffered
    const size_t m = blockIdx.x;
    const int tid = threadIdx.x, grp = tid / W, i = tid % W;
    const bool row = i < D;
    for (int e = tid; e < D * D; e += G * W) sR[e] = R0[m * D * D + e];
    T* pub0 = sp + grp * 2 * P;
    for (int t0 = 0; t0 < C; t0 += G) {
        __syncthreads();  // the previous step's reads of sk, sa and sR are done
        for (int e = tid; e < G * D; e += G * W) {
            const int u = e / D, t = t0 + u;
            sk[e] = t < C ? K[(m * C + t) * D + e % D] : T(0);
        }
        if (tid < G) {
            const int t = t0 + tid;
            sa[2 * tid] = t < C ? exp(lg[m * C + t]) : T(1);
            sa[2 * tid + 1] = t < C ? bw[m * C + t] : T(0);
        }
        __syncthreads();
        const int t = t0 + grp;
        const bool live = row && t < C;
        T a[D];
        T rhs = live ? Q[(m * C + t) * D + i] : T(0);
#pragma unroll
        for (int k = 0; k < D; ++k) a[k] = row ? sR[k * D + i] : T(0);  // column i = row i
        for (int u = 0; u <= grp; ++u) {  // R_{t0 + grp} from R_{t0 - 1}: the group's own and earlier tokens
            const T al = sa[2 * u], bk = row ? sa[2 * u + 1] * sk[u * D + i] : T(0);
#pragma unroll
            for (int k = 0; k < D; ++k) a[k] = al * a[k] + bk * sk[u * D + k];
        }
        __syncthreads();  // every group has read sR
        if (grp == G - 1 && row) {
#pragma unroll
            for (int k = 0; k < D; ++k) sR[k * D + i] = a[k];  // R at the next step's start
        }
#pragma unroll
        for (int k = 0; k < D; ++k) if (k == i) a[k] += rho;
        T diag = T(1);
#pragma unroll
        for (int j = 0; j < D; ++j) {
            T* pub = pub0 + (j & 1) * P;
            if (row && i >= j) pub[i] = a[j];  // column j of the trailing block = its row j
            if (i == j) { diag = a[j]; pub[D] = rhs; pub[D + 1] = T(1) / a[j]; }
            __syncthreads();
            if (row && i != j) {
                const T f = a[j] * pub[D + 1];
#pragma unroll
                for (int k = j + 1; k < D; ++k) a[k] -= f * pub[k];
                rhs -= f * pub[D];
            }
        }
        if (live) X[(m * C + t) * D + i] = rhs / diag;
    }
}
"""

_SCAN_SOURCE = r"""
template <typename T>
__global__ void chunk_scan(
    const T* __restrict__ X0,   // (rows, E) before the first chunk
    const T* __restrict__ a,    // (rows, n) each chunk's total decay
    const T* __restrict__ dX,   // (rows, n, E) what each chunk adds
    T* __restrict__ Xs,         // (rows, n, E) out: the value at each chunk start
    T* __restrict__ Xend,       // (rows, E) out: after the last chunk
    const long long rows, const int n, const int E)
{
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= rows * E) return;
    const long long r = idx / E;
    const int e = (int)(idx % E);
    T x = X0[idx];
    for (int c = 0; c < n; ++c) {
        const size_t o = ((size_t)r * n + c) * E + e;
        Xs[o] = x;
        x = a[r * n + c] * x;  // two roundings, as the array loop's a * R + dR (no FMA: --fmad=false)
        x = x + dX[o];
    }
    Xend[idx] = x;
}
"""

_DTYPES = {"float32": "float", "float64": "double"}
_FUNCTIONS = {}
SCAN_THREADS = 256


def threads(D, G=None):
    """Threads of a solve block: G groups of a whole number of warps covering D rows."""
    return (GROUPS if G is None else G) * 32 * -(-max(D, 1) // 32)


def shared_bytes(D, itemsize, G=None):
    """Dynamic shared memory of a solve block: R, the step's keys and gates, the published columns."""
    G = GROUPS if G is None else G
    return (D * D + G * D + 2 * G + G * 2 * (D + 2)) * itemsize


def _name(dtype):
    """``"float64"`` for a dtype object or a scalar type (``xp.float64``); None if it is neither."""
    try:
        return np.dtype(dtype).name
    except TypeError:
        return None


def applies(xp, dtype, D) -> bool:
    """Whether :func:`prefix_solve` runs: CuPy, float32/float64, 1 <= D <= MAX_D, shared memory enough."""
    name = _name(dtype)
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp) or name not in _DTYPES:
        return False
    return 1 <= D <= MAX_D and shared_bytes(D, 8 if name == "float64" else 4) <= _fused_trtri._shared_limit()


def _function(source, name, options=()):
    if name not in _FUNCTIONS:
        import cupy

        mod = cupy.RawModule(code=source, options=("-std=c++17", *options), name_expressions=[name])
        _FUNCTIONS[name] = mod.get_function(name)
    return _FUNCTIONS[name]


def prefix_solve(xp, R0, K, Q, g, b, rho, G=None):
    r"""``X[..., t, :] = (R_t + rho I)^{-1} q_t`` for every token of every chunk, or ``None``.

    R0 (..., d, d): chunk-start statistics (symmetric); K, Q (..., C, d); g, b (..., C): log-decays and
    write strengths, with :math:`R_t = e^{g_t} R_{t-1} + b_t k_t k_t^\top`, :math:`R_{-1} = R_0`; rho > 0.
    All of one dtype; broadcast batch dimensions are expanded.
    """
    D, dt = K.shape[-1], K.dtype
    if not applies(xp, dt, D) or not float(rho) > 0:
        return None
    import cupy

    G = GROUPS if G is None else int(G)
    C = K.shape[-2]
    shapes = (R0.shape[:-2], K.shape[:-2], Q.shape[:-2], g.shape[:-1], b.shape[:-1])
    batch = tuple(np.broadcast_shapes(*shapes))
    m = math.prod(batch)
    X = cupy.empty(batch + (C, D), dtype=dt)
    if m == 0 or C == 0:
        return X

    def flat(x, tail):
        return cupy.ascontiguousarray(cupy.broadcast_to(x, batch + tail)).astype(dt, copy=False)

    args = (flat(R0, (D, D)), flat(K, (C, D)), flat(Q, (C, D)), flat(g, (C,)), flat(b, (C,)))
    name = f"prefix_solve<{_DTYPES[_name(dt)]}, {D}, {G}>"
    fn = _function(_SOLVE_SOURCE, name)
    smem = shared_bytes(D, dt.itemsize, G)
    if smem > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = smem
    fn((m,), (threads(D, G),), (*args, X, cupy.int32(C), dt.type(rho)), shared_mem=smem)
    return X


def chunk_scan(xp, X0, a, dX):
    """``(Xs, X_end)`` of :math:`X_{c+1} = a_c X_c + \\Delta_c` over the chunk axis, or ``None``.

    X0 (..., r, c) before the first chunk, a (..., n), dX (..., n, r, c), batch dimensions broadcast;
    Xs (..., n, r, c) holds each chunk's start value.
    """
    dt = dX.dtype
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp) or _name(dt) not in _DTYPES:
        return None
    import cupy

    n, tail = a.shape[-1], dX.shape[-2:]
    batch = tuple(cupy.broadcast_shapes(a.shape[:-1], dX.shape[:-3], X0.shape[:-2]))
    E, rows = math.prod(tail), math.prod(batch)

    def flat(x, shape):
        return cupy.ascontiguousarray(cupy.broadcast_to(x, shape)).astype(dt, copy=False)

    x0 = flat(X0, batch + tail)
    Xs = cupy.empty(batch + (n,) + tail, dtype=dt)
    if rows * E == 0 or n == 0:
        return Xs, x0.copy()
    X_end = cupy.empty(batch + tail, dtype=dt)
    fn = _function(_SCAN_SOURCE, f"chunk_scan<{_DTYPES[_name(dt)]}>", ("--fmad=false",))
    blocks = -(-rows * E // SCAN_THREADS)
    args = (x0, flat(a, batch + (n,)), flat(dX, batch + (n,) + tail), Xs, X_end)
    fn((blocks,), (SCAN_THREADS,), (*args, cupy.int64(rows), cupy.int32(n), cupy.int32(E)))
    return Xs, X_end
