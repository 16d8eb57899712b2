r"""A fused chunked forward of the scalar-decay identity family (linear attention, RetNet, Mamba-2) on
CuPy, float32 and float64: CUDA kernels on the UNPADDED inputs, no padding, chunking or gate copies.

With ``G_i`` the float64 cumulative sum of the clamped log-gates from the chunk start (``<= 0``, clamped
at :data:`~ttr_stats.methods.identity.chunked.LOG_FLOOR`), ``L`` the chunk's last valid row and
:math:`S_n` (d_k, d_v) the transposed state before chunk n, the chunk states come from (:data:`STATE_ALGO`)

* ``"pipelined"`` (the default), two kernels:

  - 0 ``chunk_factors`` (one thread per row, all independent): every row's write factor
    :math:`f_j = e^{G_L - G_j} b_j` and every chunk's decay :math:`e^{G_L}`, rounded to the working dtype;
  - 1p ``chunk_states_pf`` (grid: sequence x d_k tile x d_v tile, sequential over chunks, the state tile
    in registers, :data:`PIPE_TK` x :data:`PIPE_TV` a thread): stores every chunk's starting state, then
    :math:`S \leftarrow e^{G_L} S + \sum_j (f_j k_j)\, v_j^\top`, with the NEXT chunk's keys, values and
    decay already loaded into registers while this chunk's sums run (two shared buffers, one barrier a
    chunk). The same sums in the same order as ``"sequential"``: bit-identical results;

* ``"scan"``, two kernels:

  - 1a ``chunk_deltas`` (grid: sequence x chunk x d_k tile x d_v tile, all independent): every chunk's
    own contribution :math:`D_n = \sum_j k_j (e^{G_L - G_j} b_j)\, v_j^\top` (and its z sum), a
    :data:`DELTA_TK` x :data:`DELTA_TV` tile a thread, and the chunk's decay :math:`e^{G_L}`;
  - 1b ``chunk_scan`` (one thread per state entry): :math:`S_0 = M_0`, :math:`S_{n+1} = e^{G_L} S_n +
    D_n`, written over the D's in place, loads of :data:`SCAN_UNROLL` chunks in flight; the last is the
    final (M, z);

* or ``"sequential"``: one kernel, ``chunk_states``, kernel 1p without the prefetch and with the gate
  arithmetic inline (every chunk costs a memory latency);

measured on an H200 (B H = 128, T = 4096, d = 64, float32, C = 32, each kernel between CUDA events):
``chunk_factors`` + ``chunk_states_pf`` 0.020 + 0.347 ms against ``chunk_deltas`` + ``chunk_scan`` 0.364 +
0.378 ms and ``chunk_states`` 0.865 ms (the scan moves the states through memory four times, the
pipelined pass twice and without waiting on each chunk's loads);

then kernel 2, ``chunk_outputs`` (grid: sequence x chunk x d_v tile, all independent; for float32 also
``chunk_outputs_tc`` on the tensor cores in 3xTF32, :data:`OUT_ALGO`, the same products):
:math:`A_{ij} = (q_i\cdot k_j)(e^{G_i - G_j} b_j)` for ``j <= i`` (exactly 0 above: exact causality),
then :math:`y_i = e^{G_i}\,q_i^\top S_n + \sum_j A_{ij} v_j` (:data:`OUT_TI` x :data:`OUT_TV` outputs a
thread, from shared-memory tiles: q and k transposed, A transposed with its zeros, vector loads) and, for
``normalize="sum"``, :math:`e^{G_i} q_i^\top z_n + \sum_j A_{ij}`. Ungated layers (``gated=False``:
linear attention, known from the layer, never from gate values) take an instance without the decays,
the same values (0.543 against 0.576 ms gated; 0.687 ms before the rewrite). The output kernel also
reports whether any output or denominator it wrote is not finite (a flag, ``forward(flag=)``): the layer's
input and output checks then read that flag instead of passing over Q, K, V and the outputs
(``_validation.Deferred.vouch``; 3 x 35 us of memory-bound passes at T = 4096 on an H200).

Every exponent is a difference ``G_later - G_earlier`` or a ``G`` itself, ``<= 0``: nothing overflows,
log-gates down to -1000 (and ``-inf``, clamped) are safe, and every decay the scan multiplies by is
<= 1. The exponentials are taken in float64 and rounded to the working dtype, as the array path
(``chunked._intra_scalar``) forms them, except the output kernel's pair decays
:math:`e^{G_i - G_j}` in float32: ``expf`` of the float64 difference rounded to float32, a relative error
of at most about :math:`|G_i - G_j| \cdot 6 \cdot 10^{-8}` (below 1.2e-6 where the factor exceeds
e^-20, and the factor underflows past -88 either way), for far fewer instructions than a float64
exponential. A T that is not a multiple of C is handled by a short last chunk;
d_k, d_v up to :data:`MAX_D` (beyond: ``None``, the caller's old path). The module constants are read at
every call (a GPU run can sweep them: ``benchmarks/gpu_fused_chunk.py``); every distinct setting compiles
its own template instances.

Memory: the chunk states, ``B H ceil(T / C) (d_k d_v + d_k + 1)`` words (1 GiB at B = 8, H = 16, T = 16384,
d = 64, float32, C = 32), as ``chunked_bytes`` counts for a device. The kernels' source is also run on
the host by ``tests/cuda_on_host.py`` (``tests/test_fused_chunk.py``).
"""

from __future__ import annotations

import math

import array_api_compat

__all__ = ["ENABLED", "MAX_D", "applies", "forward", "layouts", "scan_states"]

#: set False to take the old device path (``_fused_intra`` + ``_fused`` state pass)
ENABLED = True

#: the largest d_k and d_v handled
MAX_D = 128

#: kernel 1: state tile (d_k rows x d_v columns) a block, and the tile a thread keeps in registers.
#: Swept on an H200 (benchmarks/gpu_fused_chunk.py, B=8 H=16 T=4096 d=64 float32, chunk 32): 32 x 32
#: tiles of 2 x 2 a thread are fastest, kernels 1.66 ms / layer 2.32 ms, against 2.06 / 2.63 ms for
#: 32 x 64 tiles of 2 x 4 (more blocks in flight for the sequential chunk loop)
STATE_BK = 32
STATE_BV = 32
STATE_TK = 2
STATE_TV = 2

#: how the chunk states are formed: ``"pipelined"`` (kernels 0 + 1p: the sequential pass with the next
#: chunk's loads in flight), ``"scan"`` (kernels 1a + 1b: every chunk's own contribution at once, then one
#: thread per state entry scans over the chunks) or ``"sequential"`` (kernel 1: one block per state tile
#: walks the chunks in turn, every chunk a memory latency); 0.37 against 0.74 and 0.87 ms on an H200 at
#: B H = 128, T = 4096 (module docstring)
STATE_ALGO = "pipelined"

#: the values :data:`STATE_ALGO` takes: ``"pipelined"`` is the sequential pass with the next chunk's loads
#: in flight (kernel 1p)
STATE_ALGOS = ("scan", "sequential", "pipelined")

#: the pipelined pass (kernel 1p): state tile a block and a thread, as kernel 1's. Swept on an H200 (B H =
#: 128, T = 4096, d = 64, float32, C = 32, one barrier a chunk): 64 x 64 tiles of 4 x 4 0.347 ms, against
#: 0.44-0.50 ms for 64 x 32, 32 x 32 and 32 x 64 and 0.68-0.74 ms for 16 x 64 and 64 x 16 (a block per
#: head: few blocks, but each chunk's sums amortise its barrier); at C = 64 0.300 ms, but the output kernel
#: takes 0.88 against 0.54 ms there
PIPE_BK = 64
PIPE_BV = 64
PIPE_TK = 4
PIPE_TV = 4

#: kernel 0 (``"pipelined"``): threads a block (one a row)
FACTOR_THREADS = 256

#: kernel 1a: state tile a block and the tile a thread keeps in registers (the whole 64 x 64 state of a
#: chunk in one block of 256 threads at d = 64)
DELTA_BK = 64
DELTA_BV = 64
DELTA_TK = 4
DELTA_TV = 4

#: kernel 1b: chunks whose loads are issued together (latency hiding), threads a block
SCAN_UNROLL = 8
SCAN_THREADS = 256

#: d_k values the output kernel is compiled for as a constant (others take its any-d_k instance); empty:
#: always the any-d_k one (the benchmark compares)
SPECIALISED_D = (16, 32, 64, 128)

#: kernel 2: value columns a block, outputs a thread (rows x columns), threads a block. Swept on an H200
#: (B H = 128, T = 4096, d = 64, float32, the pipelined states, kernels alone): at C = 32, 64 x (2 x 4) with
#: 256 threads 0.916 ms, 64 x (2 x 2) / 256 0.950, 64 x (4 x 4) / 128 0.978, the other eight 1.06-1.61 ms;
#: C = 16 and 64 are slower with every tile (best 1.034 and 1.062 ms)
OUT_BV = 64
OUT_TI = 2
OUT_TV = 4
OUT_THREADS = 256

#: kernel 2 for float32: ``"simt"`` (the default: the float32 FMA kernel, float64's always) or ``"tf32x3"``
#: (``chunk_outputs_tc``: the tensor cores, every product as three TF32 products of split operands,
#: float32 accuracy). Measured on an H200 (B = 8, H = 16, d = 64, C = 32, the kernels of ``forward``):
#: 3xTF32 is slower, 1.070 / 4.050 ms against 0.953 / 3.612 ms at T = 4096 / 16384 (relative error to
#: float64 1.2e-6 against 9.3e-7): the kernel is bound by its loads, shared-memory traffic and the operand
#: splits, not by multiply-adds (it does ~10 GFLOP a call at T = 4096, 25 us of the tensor cores' rate)
OUT_ALGO = "simt"
OUT_ALGOS = ("tf32x3", "simt")
#: its block: the d_v columns (a multiple of 32: strips of 16 x 32 a warp) and the threads (4 warps)
OUT_TC_BV = 64
OUT_TC_THREADS = 128

_SOURCE = r"""
#ifndef TTR_LOG_FLOOR
#define TTR_LOG_FLOOR -1000.0
#endif

// the chunk's log-gates, clamped at the floor (also -inf), in float64, and its write strengths (no barrier)
template <typename T>
__device__ __forceinline__ void load_gates(
    const T* __restrict__ g, const T* __restrict__ b, const size_t row0, const int Cn, double* sg, T* sb,
    const int tid, const int nt)
{
    for (int c = tid; c < Cn; c += nt) {
        const double x = (double)g[row0 + c];
        sg[c] = x > TTR_LOG_FLOOR ? x : TTR_LOG_FLOOR;
        sb[c] = b[row0 + c];
    }
}

// columns [c0, c0 + W) of the chunk's Cn rows of x (row length ld, lim valid columns), zero past lim
template <typename T, int W>
__device__ __forceinline__ void load_tile(
    const T* __restrict__ x, const size_t row0, const int Cn, const int ld, const int c0, const int lim,
    T* dst, const int tid, const int nt)
{
    for (int e = tid; e < Cn * W; e += nt) {
        const int c = e / W, i = e % W;
        dst[e] = (c0 + i < lim) ? x[(row0 + c) * ld + c0 + i] : T(0);
    }
}

// G_c = sum_{l <= c} sg[l], by sequential sums (cumsum's order)
__device__ __forceinline__ double prefix_sum(const double* sg, const int c)
{
    double acc = 0.0;
    for (int l = 0; l <= c; ++l) acc += sg[l];
    return acc;
}

// the register tile of kernels 1 and 1p: thread (tr, tc) holds rows k0 + tr + a * RK (a < TK) and columns
// v0 + tc + u * RV (u < TV) of S^T, and (its zb threads) z's rows. Its initial state M0 (transposed), the
// state before a chunk into S (and Z), and the final state into Mout, zout.
template <typename T, int TK, int TV, int RK, int RV>
__device__ __forceinline__ void tile_init(
    T (&s)[TK][TV], T (&z)[TK], const T* __restrict__ M0, const T* __restrict__ z0, const size_t bh,
    const int dk, const int dv, const int k0, const int v0, const int tr, const int tc)
{
#pragma unroll
    for (int a = 0; a < TK; ++a) {
        const int i = k0 + tr + a * RK;
        z[a] = (i < dk) ? z0[bh * dk + i] : T(0);
#pragma unroll
        for (int u = 0; u < TV; ++u) {
            const int j = v0 + tc + u * RV;
            s[a][u] = (i < dk && j < dv) ? M0[(bh * dv + j) * dk + i] : T(0);
        }
    }
}

template <typename T, int TK, int TV, int RK, int RV>
__device__ __forceinline__ void tile_store(
    const T (&s)[TK][TV], const T (&z)[TK], T* __restrict__ Sn, T* __restrict__ Zn, const bool zb,
    const int dk, const int dv, const int k0, const int v0, const int tr, const int tc)
{
#pragma unroll
    for (int a = 0; a < TK; ++a) {
        const int i = k0 + tr + a * RK;
        if (i >= dk) continue;
#pragma unroll
        for (int u = 0; u < TV; ++u) {
            const int j = v0 + tc + u * RV;
            if (j < dv) Sn[(size_t)i * dv + j] = s[a][u];
        }
        if (zb) Zn[i] = z[a];
    }
}

template <typename T, int TK, int TV, int RK, int RV>
__device__ __forceinline__ void tile_final(
    const T (&s)[TK][TV], const T (&z)[TK], T* __restrict__ Mout, T* __restrict__ zout, const size_t bh,
    const bool zb, const int dk, const int dv, const int k0, const int v0, const int tr, const int tc)
{
#pragma unroll
    for (int a = 0; a < TK; ++a) {
        const int i = k0 + tr + a * RK;
        if (i >= dk) continue;
#pragma unroll
        for (int u = 0; u < TV; ++u) {
            const int j = v0 + tc + u * RV;
            if (j < dv) Mout[(bh * dv + j) * dk + i] = s[a][u];
        }
        if (zb) zout[bh * dk + i] = z[a];
    }
}

// kernel 1: the states before each chunk. Thread (tr, tc) keeps rows tr + a * RK (a < TK) and columns
// tc + u * RV (u < TV) of the block's (BK, BV) tile: a warp's threads read consecutive shared columns.
template <typename T, int BK, int BV, int TK, int TV>
__global__ void chunk_states(
    const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ g, const T* __restrict__ b,
    const T* __restrict__ M0, const T* __restrict__ z0, T* __restrict__ S, T* __restrict__ Z,
    T* __restrict__ Mout, T* __restrict__ zout, const int Tn, const int C, const int dk, const int dv,
    const int store_z)
{
    constexpr int RK = BK / TK, RV = BV / TV;
    extern __shared__ unsigned char smem_raw[];
    double* sg = reinterpret_cast<double*>(smem_raw);   // (C,) clamped log-gates
    double* sG = sg + C;                                // (C,) their cumulative sums
    T* sf = reinterpret_cast<T*>(sG + C);               // (C,) T(exp(G_L - G_j)) * b_j
    T* sk = sf + C;                                     // (C, BK) keys times sf
    T* sv = sk + C * BK;                                // (C, BV)
    const size_t bh = blockIdx.x;
    const int k0 = blockIdx.y * BK, v0 = blockIdx.z * BV;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int tr = tid / RV, tc = tid % RV;
    const int N = (Tn + C - 1) / C;
    const bool zb = (blockIdx.z == 0) && (tc == 0);     // these threads also carry z (d_k rows)
    T s[TK][TV], z[TK];
    tile_init<T, TK, TV, RK, RV>(s, z, M0, z0, bh, dk, dv, k0, v0, tr, tc);
    for (int n = 0; n < N; ++n) {
        const int c0 = n * C, Cn = min(C, Tn - c0);
        // the state before chunk n
        tile_store<T, TK, TV, RK, RV>(s, z, S + (bh * N + n) * (size_t)dk * dv,
                                      store_z ? Z + (bh * N + n) * dk : Z, store_z && zb,
                                      dk, dv, k0, v0, tr, tc);
        // every global load of the chunk in one phase (one memory latency a chunk, not two)
        const size_t row0 = bh * Tn + c0;
        load_gates(g, b, row0, Cn, sg, sf, tid, nt);
        load_tile<T, BK>(k, row0, Cn, dk, k0, dk, sk, tid, nt);
        load_tile<T, BV>(v, row0, Cn, dv, v0, dv, sv, tid, nt);
        __syncthreads();
        // the chunk's decays: G_c, then sf = T(exp(G_L - G_c)) * b_c
        for (int c = tid; c < Cn; c += nt) sG[c] = prefix_sum(sg, c);
        __syncthreads();
        const double GL = sG[Cn - 1];
        for (int c = tid; c < Cn; c += nt) sf[c] = T(exp(GL - sG[c])) * sf[c];
        __syncthreads();
        const T dec = T(exp(GL));
#pragma unroll
        for (int a = 0; a < TK; ++a) {
            z[a] *= dec;
#pragma unroll
            for (int u = 0; u < TV; ++u) s[a][u] *= dec;
        }
        for (int c = 0; c < Cn; ++c) {
            T kr[TK], vr[TV];
            const T f = sf[c];
#pragma unroll
            for (int a = 0; a < TK; ++a) kr[a] = sk[c * BK + tr + a * RK] * f;   // k_c (e^{G_L - G_c} b_c)
#pragma unroll
            for (int u = 0; u < TV; ++u) vr[u] = sv[c * BV + tc + u * RV];
#pragma unroll
            for (int a = 0; a < TK; ++a) {
                if (zb) z[a] += kr[a];
#pragma unroll
                for (int u = 0; u < TV; ++u) s[a][u] += kr[a] * vr[u];
            }
        }
        __syncthreads();  // the next chunk overwrites the shared tiles
    }
    tile_final<T, TK, TV, RK, RV>(s, z, Mout, zout, bh, zb, dk, dv, k0, v0, tr, tc);
}

// kernel 0 (STATE_ALGO "pipelined"): every row's write factor and every chunk's decay, all at once (one
// thread a row): f_c = T(exp(G_L - G_c)) * b_c and dec_n = T(exp(G_L)), G in cumsum's order from the clamped
// log-gates (as prefix_sum: kernel 1's values to the bit). The pipelined pass then has no gate arithmetic
// and no barrier for it between a chunk's loads and its sums.
template <typename T>
__global__ void chunk_factors(
    const T* __restrict__ g, const T* __restrict__ b, T* __restrict__ f, T* __restrict__ dec, const int Tn,
    const int C, const int BH, const int gs, const int bs)
{
    // gs, bs: the sequence strides of g and b (Tn, or 0 for one row shared by every sequence)
    const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= (long long)BH * Tn) return;
    const size_t bh = r / Tn;
    const int t = (int)(r % Tn), n = t / C, c = t - n * C, Cn = min(C, Tn - n * C);
    const size_t grow0 = bh * gs + (size_t)n * C;
    double Gc = 0.0, GL = 0.0;
    for (int l = 0; l < Cn; ++l) {
        const double x = (double)g[grow0 + l];
        GL += x > TTR_LOG_FLOOR ? x : TTR_LOG_FLOOR;
        if (l == c) Gc = GL;
    }
    f[r] = T(exp(GL - Gc)) * b[bh * bs + t];
    if (c == 0) dec[bh * ((Tn + C - 1) / C) + n] = T(exp(GL));
}

// kernel 1p (STATE_ALGO "pipelined"): kernel 1's sequential pass with the next chunk's loads in flight
// while the current chunk is summed. Each thread holds its share of chunk n + 1's keys, values and write
// factors (kernel 0) in registers (PK, PV a thread: the chunk's tile entries over the threads, rounded
// up), issued before chunk n's sums and stored (keys times factors) to shared memory only at chunk n + 1:
// one memory latency for the whole pass instead of one a chunk. Two shared buffers alternate (buffer
// n & 1), so one barrier a chunk suffices: a thread writes a buffer two chunks after it was read, past
// the barrier of the chunk between, which every thread reaches only after its earlier sums. The products
// and sums are kernel 1's, in its order: the same states to the bit.
template <typename T, int BK, int BV, int TK, int TV, int PK, int PV>
__global__ void chunk_states_pf(
    const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ f, const T* __restrict__ dec,
    const T* __restrict__ M0, const T* __restrict__ z0, T* __restrict__ S, T* __restrict__ Z,
    T* __restrict__ Mout, T* __restrict__ zout, const int Tn, const int C, const int dk, const int dv,
    const int store_z)
{
    constexpr int RK = BK / TK, RV = BV / TV, NT = RK * RV;
    extern __shared__ unsigned char smem_raw[];
    T* sk = reinterpret_cast<T*>(smem_raw);             // (2, C, BK) keys times their factors
    T* sv = sk + 2 * C * BK;                            // (2, C, BV)
    const size_t bh = blockIdx.x;
    const int k0 = blockIdx.y * BK, v0 = blockIdx.z * BV;
    const int tid = threadIdx.x;
    const int tr = tid / RV, tc = tid % RV;
    const int N = (Tn + C - 1) / C;
    const bool zb = (blockIdx.z == 0) && (tc == 0);     // these threads also carry z (d_k rows)
    T rk[PK], rf[PK], rv[PV], rd = T(0);
    // issue chunk n's loads into the registers (zero past the chunk's rows and the tile's columns)
    auto fetch = [&](const int n) {
        const int c0 = n * C, Cn = min(C, Tn - c0);
        const size_t row0 = bh * Tn + c0;
#pragma unroll
        for (int p = 0; p < PK; ++p) {
            const int e = tid + p * NT, c = e / BK, i = e % BK;
            const bool in = c < Cn && k0 + i < dk;
            rk[p] = in ? k[(row0 + c) * dk + k0 + i] : T(0);
            rf[p] = in ? f[row0 + c] : T(0);
        }
#pragma unroll
        for (int p = 0; p < PV; ++p) {
            const int e = tid + p * NT, c = e / BV, j = e % BV;
            rv[p] = (c < Cn && v0 + j < dv) ? v[(row0 + c) * dv + v0 + j] : T(0);
        }
        rd = dec[bh * N + n];
    };
    T s[TK][TV], z[TK];
    tile_init<T, TK, TV, RK, RV>(s, z, M0, z0, bh, dk, dv, k0, v0, tr, tc);
    fetch(0);
    for (int n = 0; n < N; ++n) {
        const int Cn = min(C, Tn - n * C);
        T* k_ = sk + (n & 1) * C * BK;
        T* v_ = sv + (n & 1) * C * BV;
        // the state before chunk n
        tile_store<T, TK, TV, RK, RV>(s, z, S + (bh * N + n) * (size_t)dk * dv,
                                      store_z ? Z + (bh * N + n) * dk : Z, store_z && zb,
                                      dk, dv, k0, v0, tr, tc);
        // chunk n's loads (issued during chunk n - 1) into its buffer, then chunk n + 1's issued
#pragma unroll
        for (int p = 0; p < PK; ++p)
            if (tid + p * NT < C * BK) k_[tid + p * NT] = rk[p] * rf[p];   // k_c (e^{G_L - G_c} b_c)
#pragma unroll
        for (int p = 0; p < PV; ++p)
            if (tid + p * NT < C * BV) v_[tid + p * NT] = rv[p];
        const T dn = rd;
        if (n + 1 < N) fetch(n + 1);
        __syncthreads();
#pragma unroll
        for (int a = 0; a < TK; ++a) {
            z[a] *= dn;
#pragma unroll
            for (int u = 0; u < TV; ++u) s[a][u] *= dn;
        }
#pragma unroll 4
        for (int c = 0; c < Cn; ++c) {
            T kr[TK], vr[TV];
#pragma unroll
            for (int a = 0; a < TK; ++a) kr[a] = k_[c * BK + tr + a * RK];
#pragma unroll
            for (int u = 0; u < TV; ++u) vr[u] = v_[c * BV + tc + u * RV];
#pragma unroll
            for (int a = 0; a < TK; ++a) {
                if (zb) z[a] += kr[a];
#pragma unroll
                for (int u = 0; u < TV; ++u) s[a][u] += kr[a] * vr[u];
            }
        }
        // no barrier: the next chunk writes the other buffer
    }
    tile_final<T, TK, TV, RK, RV>(s, z, Mout, zout, bh, zb, dk, dv, k0, v0, tr, tc);
}

// kernel 1a (STATE_ALGO "scan"): every chunk's own contribution, all chunks at once (grid: sequence x
// chunk, x d_k tile x d_v tile): D_n = sum_j k_j (e^{G_L - G_j} b_j) v_j^T into S[n], dz_n = sum_j
// k_j (e^{G_L - G_j} b_j) into Z[n], and the chunk's decay T(e^{G_L}) into dec[n]. Thread (tr, tc) keeps
// rows tr + a * RK (a < TK) and columns tc + u * RV (u < TV) of the block's (BK, BV) tile.
template <typename T, int BK, int BV, int TK, int TV>
__global__ void chunk_deltas(
    const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ g, const T* __restrict__ b,
    T* __restrict__ S, T* __restrict__ Z, T* __restrict__ dec, const int Tn, const int C, const int dk,
    const int dv)
{
    constexpr int RK = BK / TK, RV = BV / TV;
    extern __shared__ unsigned char smem_raw[];
    double* sg = reinterpret_cast<double*>(smem_raw);   // (C,) clamped log-gates
    double* sG = sg + C;                                // (C,) their cumulative sums
    T* sf = reinterpret_cast<T*>(sG + C);               // (C,) T(exp(G_L - G_j)) * b_j
    T* sk = sf + C;                                     // (C, BK)
    T* sv = sk + C * BK;                                // (C, BV)
    const int N = (Tn + C - 1) / C;
    const size_t bh = blockIdx.x / N;
    const int n = blockIdx.x % N;
    const int k0 = blockIdx.y * BK, v0 = blockIdx.z * BV;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int tr = tid / RV, tc = tid % RV;
    const int c0 = n * C, Cn = min(C, Tn - c0);
    const size_t row0 = bh * Tn + c0;
    const bool zb = (blockIdx.z == 0) && (tc == 0);     // these threads also sum z (d_k rows)
    load_gates(g, b, row0, Cn, sg, sf, tid, nt);
    load_tile<T, BK>(k, row0, Cn, dk, k0, dk, sk, tid, nt);
    load_tile<T, BV>(v, row0, Cn, dv, v0, dv, sv, tid, nt);
    __syncthreads();
    for (int c = tid; c < Cn; c += nt) sG[c] = prefix_sum(sg, c);
    __syncthreads();
    const double GL = sG[Cn - 1];
    for (int c = tid; c < Cn; c += nt) sf[c] = T(exp(GL - sG[c])) * sf[c];
    if (tid == 0 && blockIdx.y == 0 && blockIdx.z == 0) dec[bh * N + n] = T(exp(GL));
    __syncthreads();
    for (int e = tid; e < Cn * BK; e += nt) sk[e] *= sf[e / BK];  // k_j (e^{G_L - G_j} b_j), once
    __syncthreads();
    T s[TK][TV], z[TK];
#pragma unroll
    for (int a = 0; a < TK; ++a) {
        z[a] = T(0);
#pragma unroll
        for (int u = 0; u < TV; ++u) s[a][u] = T(0);
    }
    for (int c = 0; c < Cn; ++c) {
        T kr[TK], vr[TV];
#pragma unroll
        for (int a = 0; a < TK; ++a) kr[a] = sk[c * BK + tr + a * RK];
#pragma unroll
        for (int u = 0; u < TV; ++u) vr[u] = sv[c * BV + tc + u * RV];
#pragma unroll
        for (int a = 0; a < TK; ++a)
#pragma unroll
            for (int u = 0; u < TV; ++u) s[a][u] += kr[a] * vr[u];
    }
    if (zb)  // the z sums: only the threads that store them
        for (int c = 0; c < Cn; ++c)
#pragma unroll
            for (int a = 0; a < TK; ++a) z[a] += sk[c * BK + tr + a * RK];
    T* Dn = S + (bh * N + n) * (size_t)dk * dv;
#pragma unroll
    for (int a = 0; a < TK; ++a) {
        const int i = k0 + tr + a * RK;
        if (i >= dk) continue;
#pragma unroll
        for (int u = 0; u < TV; ++u) {
            const int j = v0 + tc + u * RV;
            if (j < dv) Dn[(size_t)i * dv + j] = s[a][u];
        }
        if (zb) Z[(bh * N + n) * dk + i] = z[a];
    }
}

// kernel 1b (STATE_ALGO "scan"): the states before every chunk, in place of the deltas, by a sequential
// scan over chunks of each state entry (entries e < dk * dv) and, with has_z, z entry (the dk after
// them), one thread an entry: S_0 = M0, S_{n+1} = dec_n S_n + D_n; the last one is the final state.
// dec holds da decays a chunk: 1 (scalar) or dk (one per state row i, per-dimension gates). M0 and Mout
// are (dv, dk), the memory's layout, or with m_kd (dk, dv), S's own. Grid: sequence x blocks of entries
// (nblk a sequence); U chunks' loads are issued before their stores.
template <typename T, int U>
__global__ void chunk_scan(
    T* __restrict__ S, T* __restrict__ Z, const T* __restrict__ dec, const T* __restrict__ M0,
    const T* __restrict__ z0, T* __restrict__ Mout, T* __restrict__ zout, const int N, const int dk,
    const int dv, const int nblk, const int da, const int m_kd, const int has_z)
{
    const size_t bh = blockIdx.x / nblk;
    const long long e = (long long)(blockIdx.x % nblk) * blockDim.x + threadIdx.x;
    const long long nS = (long long)dk * dv;
    if (e >= nS + (has_z ? dk : 0)) return;
    T* p;
    T* out;
    long long stride;
    T s;
    int i;
    if (e < nS) {
        i = (int)(e / dv);
        const int j = (int)(e % dv);
        p = S + bh * (size_t)N * nS + e;
        stride = nS;
        const size_t m = m_kd ? bh * (size_t)nS + e : (bh * dv + j) * (size_t)dk + i;
        s = M0[m];
        out = Mout + m;
    } else {
        i = (int)(e - nS);
        p = Z + bh * (size_t)N * dk + i;
        stride = dk;
        s = z0[bh * dk + i];
        out = zout + bh * dk + i;
    }
    const T* dn = dec + bh * (size_t)N * da + (da > 1 ? i : 0);
    for (int n0 = 0; n0 < N; n0 += U) {
        T d[U], a[U];
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (n0 + u < N) { d[u] = p[(n0 + u) * stride]; a[u] = dn[(size_t)(n0 + u) * da]; }
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (n0 + u < N) { p[(n0 + u) * stride] = s; s = a[u] * s + d[u]; }
    }
    *out = s;
}

// N contiguous values from a shared-memory address aligned to the vector width (16-byte vectors where N
// allows: float4, double2; float2 for an even float count)
template <typename T, int N>
__device__ __forceinline__ void vload(const T* p, T* o)
{
    if constexpr (sizeof(T) == 4 && N % 4 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 4) {
            const float4 x = *reinterpret_cast<const float4*>(p + i);
            o[i] = x.x; o[i + 1] = x.y; o[i + 2] = x.z; o[i + 3] = x.w;
        }
    } else if constexpr (sizeof(T) == 4 && N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 2) {
            const float2 x = *reinterpret_cast<const float2*>(p + i);
            o[i] = x.x; o[i + 1] = x.y;
        }
    } else if constexpr (sizeof(T) == 8 && N % 2 == 0) {
#pragma unroll
        for (int i = 0; i < N; i += 2) {
            const double2 x = *reinterpret_cast<const double2*>(p + i);
            o[i] = x.x; o[i + 1] = x.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < N; ++i) o[i] = p[i];
    }
}

// exp of a (non-positive) float64 log-decay in the working dtype: float32 takes the float exponential of
// the rounded argument (a few ulp from T(exp(x)), at a fraction of a float64 exp's instructions)
template <typename T>
__device__ __forceinline__ T exp_in(const double x)
{
    if constexpr (sizeof(T) == 4) return expf((float)x);
    else return exp(x);
}

// kernel 2: every chunk's outputs. Block (sequence * N + chunk, d_v tile). Cp: the chunk's rows padded to
// a multiple of 4 and of a pass's rows (RR * TI; zero rows past the chunk's end). Shared tiles: q and k
// transposed (d, row), A transposed (column j, row i: exactly 0 for j > i), v and the state tile row-major,
// so that a thread's TI consecutive rows and TV consecutive columns are vector loads.
//  * A: a 4 x 2 tile a thread (rows 4 ti .., columns 2 tj ..), zeros written above the diagonal;
//  * outputs: thread (ri, cj) computes rows p + ri * TI + a (a < TI) of each pass p of RR * TI rows and
//    columns cj * TV + u (u < TV): y_i = e^{G_i} q_i^T S_n + sum_{j <= i} A_ij v_j.
// DK > 0: d_k known at compile time (equal to the dk argument); DK = 0: any d_k. GATED = 0: every log-gate
// is 0 (the caller knows it from the layer, Problem.gated): no gate loads, no exponentials (e^0 = 1, so the
// values are the gated instance's).
template <typename T, int BV, int TI, int TV, int DK, int GATED>
__global__ void chunk_outputs(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ g,
    const T* __restrict__ b, const T* __restrict__ S, const T* __restrict__ Z, T* __restrict__ Y,
    T* __restrict__ den, int* __restrict__ bad_out, const int Tn, const int C, const int dk_arg, const int dv,
    const int need_den, const int Cp, const int gs, const int bs)
{
    constexpr int RV = BV / TV;
    const int dk = DK > 0 ? DK : dk_arg;
    const int ld = Cp + 4;                               // a multiple of 4 that shifts the banks of rows
    extern __shared__ unsigned char smem_raw[];
    double* sg = reinterpret_cast<double*>(smem_raw);    // (Cp,) clamped log-gates
    double* sG = sg + Cp;                                // (Cp,) cumulative sums
    T* se = reinterpret_cast<T*>(sG + Cp);               // (Cp,) T(exp(G_i))
    T* sb = se + Cp;                                     // (Cp,)
    T* sqT = sb + Cp;                                    // (dk, ld)
    T* skT = sqT + dk * ld;                              // (dk, ld)
    T* sAT = skT + dk * ld;                              // (Cp, ld): sAT[j * ld + i] = A_ij
    T* sv = sAT + Cp * ld;                               // (Cp, BV)
    T* sS = sv + Cp * BV;                                // (dk, BV)
    T* sz = sS + dk * BV;                                // (dk,)
    const int N = (Tn + C - 1) / C;
    const size_t bh = blockIdx.x / N;
    const int n = blockIdx.x % N;
    const int v0 = blockIdx.y * BV;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int c0 = n * C, Cn = min(C, Tn - c0);
    const size_t row0 = bh * Tn + c0;
    const bool dens = need_den && blockIdx.y == 0;
    int bad = 0;                                         // a written output or denominator not finite
    for (int e = tid; e < Cp * dk; e += nt) {
        const int i = e / dk, d = e - i * dk;
        const bool in = i < Cn;
        sqT[d * ld + i] = in ? q[row0 * dk + e] : T(0);
        skT[d * ld + i] = in ? k[row0 * dk + e] : T(0);
    }
    for (int e = tid; e < Cp * BV; e += nt) {
        const int c = e / BV, j = e - c * BV;
        sv[e] = (c < Cn && v0 + j < dv) ? v[(row0 + c) * dv + v0 + j] : T(0);
    }
    const T* Sn = S + (bh * N + n) * (size_t)dk * dv;
    for (int e = tid; e < dk * BV; e += nt) {
        const int d = e / BV, j = e - d * BV;
        sS[e] = (v0 + j < dv) ? Sn[(size_t)d * dv + v0 + j] : T(0);
    }
    if (dens)
        for (int d = tid; d < dk; d += nt) sz[d] = Z[(bh * N + n) * dk + d];
    for (int c = tid; c < Cp; c += nt) {
        if (GATED) {
            const double x = c < Cn ? (double)g[bh * gs + c0 + c] : 0.0;
            sg[c] = x > TTR_LOG_FLOOR ? x : TTR_LOG_FLOOR;
        }
        sb[c] = c < Cn ? b[bh * bs + c0 + c] : T(0);
    }
    __syncthreads();
    if (GATED) {
        for (int c = tid; c < Cp; c += nt) {
            sG[c] = prefix_sum(sg, c);
            se[c] = T(exp(sG[c]));
        }
        __syncthreads();
    }
    // A (transposed), every entry of the Cp x Cp tile written: the products on and below the diagonal
    // within the chunk, zeros elsewhere (the reads below never need a bound on the diagonal)
    const int ntj = Cp / 2;
    for (int e = tid; e < (Cp / 4) * ntj; e += nt) {
        const int ti = e / ntj, tj = e - ti * ntj;
        const int i0 = 4 * ti, j0 = 2 * tj;
        T acc[4][2];
#pragma unroll
        for (int a = 0; a < 4; ++a) { acc[a][0] = T(0); acc[a][1] = T(0); }
        if (j0 <= i0 + 3 && j0 < Cn && i0 < Cn) {
#pragma unroll 8
            for (int d = 0; d < dk; ++d) {
                T x[4], y[2];
                vload<T, 4>(sqT + d * ld + i0, x);
                vload<T, 2>(skT + d * ld + j0, y);
#pragma unroll
                for (int a = 0; a < 4; ++a) { acc[a][0] += x[a] * y[0]; acc[a][1] += x[a] * y[1]; }
            }
        }
#pragma unroll
        for (int u = 0; u < 2; ++u)
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                const int i = i0 + a, j = j0 + u;
                T val = T(0);
                if (j <= i && i < Cn)
                    val = GATED ? acc[a][u] * (exp_in<T>(sG[i] - sG[j]) * sb[j]) : acc[a][u] * sb[j];
                sAT[j * ld + i] = val;
            }
    }
    __syncthreads();
    if (dens)
        for (int i = tid; i < Cn; i += nt) {
            T d1 = T(0), d2 = T(0);
            for (int d = 0; d < dk; ++d) d1 += sqT[d * ld + i] * sz[d];
            for (int c = 0; c <= i; ++c) d2 += sAT[c * ld + i];
            const T di = GATED ? d2 + se[i] * d1 : d2 + d1;
            den[row0 + i] = di;
            bad |= !isfinite(di);
        }
    const int RR = nt / RV;                             // row groups
    const int ri = tid / RV, cj = tid % RV;
    if (ri >= RR) {                                     // (no barrier follows)
        if (bad) *bad_out = 1;
        return;
    }
    for (int p = 0; p < Cn; p += RR * TI) {
        const int i0 = p + ri * TI;                     // rows i0 .. i0 + TI - 1, all < Cp
        if (i0 >= Cn) break;
        T yS[TI][TV], yA[TI][TV];
#pragma unroll
        for (int a = 0; a < TI; ++a)
#pragma unroll
            for (int u = 0; u < TV; ++u) { yS[a][u] = T(0); yA[a][u] = T(0); }
#pragma unroll 8
        for (int d = 0; d < dk; ++d) {
            T x[TI], y[TV];
            vload<T, TI>(sqT + d * ld + i0, x);
            vload<T, TV>(sS + d * BV + cj * TV, y);
#pragma unroll
            for (int a = 0; a < TI; ++a)
#pragma unroll
                for (int u = 0; u < TV; ++u) yS[a][u] += x[a] * y[u];
        }
        const int cmax = min(i0 + TI - 1, Cn - 1);      // A is exactly 0 above the diagonal
        for (int c = 0; c <= cmax; ++c) {
            T x[TI], y[TV];
            vload<T, TI>(sAT + c * ld + i0, x);
            vload<T, TV>(sv + c * BV + cj * TV, y);
#pragma unroll
            for (int a = 0; a < TI; ++a)
#pragma unroll
                for (int u = 0; u < TV; ++u) yA[a][u] += x[a] * y[u];
        }
#pragma unroll
        for (int a = 0; a < TI; ++a) {
            const int i = i0 + a;
            if (i >= Cn) continue;
            const T ei = GATED ? se[i] : T(1);
#pragma unroll
            for (int u = 0; u < TV; ++u) {
                const int j = v0 + cj * TV + u;
                if (j < dv) {
                    const T yv = GATED ? yA[a][u] + ei * yS[a][u] : yA[a][u] + yS[a][u];
                    Y[(row0 + i) * dv + j] = yv;
                    bad |= !isfinite(yv);
                }
            }
        }
    }
    if (bad) *bad_out = 1;                               // every writer writes the same value: no atomics
}

// ---------------------------------------------------------------------------------------------------------
// kernel 2tc: chunk_outputs for float32 on the tensor cores, every product by 3xTF32: each operand x is split
// into hi = tf32(x) and lo = tf32(x - hi) (11 + 11 significant bits), and a b = lo*hi + hi*lo + hi*hi (the
// lo*lo term, below 2^-22 |a b|, is dropped), accumulated in float32 by mma.sync m16n8k8: float32 accuracy
// at the tensor cores' rate. On the host (tests/cuda_on_host.py, no __CUDA_ARCH__) a lane's four entries are
// computed from shared memory with the same splits, so that the tiles, bounds and barriers are tested there;
// the fragment layout itself (PTX ISA, mma.m16n8k8 .tf32) only on a card.
__device__ __forceinline__ float tf32_round(const float x)
{
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return __uint_as_float(r);
#else
    unsigned u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;  // nearest, ties away from 0
    float y;
    memcpy(&y, &u, 4);
    return y;
#endif
}

// a 16 x 8 tile of A (A[r][c] = p[r * ld + c]) and an 8 x 8 tile of B (B[c][n] = p[c * sk + n * sn]) as
// this lane holds them: on a card the split fragments, on the host the tile's address
struct FragA {
#ifdef __CUDA_ARCH__
    unsigned h[4], l[4];
#else
    const float* p; int ld;
#endif
};
struct FragB {
#ifdef __CUDA_ARCH__
    unsigned h[2], l[2];
#else
    const float* p; int sk, sn;
#endif
};

__device__ __forceinline__ void split_tf32(const float x, unsigned& h, unsigned& l)
{
    const float xh = tf32_round(x);
    const float xl = tf32_round(x - xh);
#ifdef __CUDA_ARCH__
    h = __float_as_uint(xh);
    l = __float_as_uint(xl);
#else
    memcpy(&h, &xh, 4);
    memcpy(&l, &xl, 4);
#endif
}

__device__ __forceinline__ void load_a(FragA& f, const float* p, const int ld, const int lane)
{
#ifdef __CUDA_ARCH__
    const int g = lane >> 2, t = lane & 3;
    split_tf32(p[g * ld + t], f.h[0], f.l[0]);
    split_tf32(p[(g + 8) * ld + t], f.h[1], f.l[1]);
    split_tf32(p[g * ld + t + 4], f.h[2], f.l[2]);
    split_tf32(p[(g + 8) * ld + t + 4], f.h[3], f.l[3]);
#else
    f.p = p; f.ld = ld; (void)lane;
#endif
}

__device__ __forceinline__ void load_b(FragB& f, const float* p, const int sk, const int sn, const int lane)
{
#ifdef __CUDA_ARCH__
    const int g = lane >> 2, t = lane & 3;
    split_tf32(p[t * sk + g * sn], f.h[0], f.l[0]);
    split_tf32(p[(t + 4) * sk + g * sn], f.h[1], f.l[1]);
#else
    f.p = p; f.sk = sk; f.sn = sn; (void)lane;
#endif
}

#ifdef __CUDA_ARCH__
__device__ __forceinline__ void mma_tf32(float (&c)[4], const unsigned (&a)[4], const unsigned (&b)[2])
{
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#endif

// c (this lane's entries of the 16 x 8 tile: rows g, g, g + 8, g + 8, columns 2t, 2t + 1, 2t, 2t + 1 with
// g = lane / 4, t = lane % 4) += A B, 3xTF32
__device__ __forceinline__ void mma3(float (&c)[4], const FragA& a, const FragB& b, const int lane)
{
#ifdef __CUDA_ARCH__
    (void)lane;
    mma_tf32(c, a.l, b.h);
    mma_tf32(c, a.h, b.l);
    mma_tf32(c, a.h, b.h);
#else
    const int g = lane >> 2, t = lane & 3;
    for (int r = 0; r < 4; ++r) {
        const int i = g + (r >= 2 ? 8 : 0), n = 2 * t + (r & 1);
        float lo = 0.0f, hi = 0.0f;
        for (int k = 0; k < 8; ++k) {
            const float x = a.p[i * a.ld + k], y = b.p[k * b.sk + n * b.sn];
            const float xh = tf32_round(x), xl = tf32_round(x - xh);
            const float yh = tf32_round(y), yl = tf32_round(y - yh);
            lo += xl * yh + xh * yl;
            hi += xh * yh;
        }
        c[r] += lo + hi;
    }
#endif
}

// Block (sequence * N + chunk, d_v tile of BV columns), 4 warps. Cp: the chunk's rows padded to a multiple
// of 16 (zero rows past its end); d_k padded to dkp, a multiple of 8 (zero columns). Row strides 4 (mod 8)
// words for the A-side tiles and 8 (mod 32) for the B-side ones: a fragment's 32 loads hit 32 banks.
//  1. A = Q K^T by 16 x 8 tiles (tiles wholly above the diagonal skipped), then A_ij *= e^{G_i - G_j} b_j
//     for j <= i, exactly 0 elsewhere (exact causality);
//  2. (gated) the query rows scaled by e^{G_i} in place;
//  3. y = Q_g S_n + A V by 16 x 32 strips a warp (four 16 x 8 tiles), A's columns up to the strip's last row.
template <int BV, int DK, int GATED>
__global__ void __launch_bounds__(128) chunk_outputs_tc(
    const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
    const float* __restrict__ g, const float* __restrict__ b, const float* __restrict__ S,
    const float* __restrict__ Z, float* __restrict__ Y, float* __restrict__ den, int* __restrict__ bad_out,
    const int Tn, const int C, const int dk_arg, const int dv, const int need_den, const int Cp, const int gs,
    const int bs)
{
    const int dk = DK > 0 ? DK : dk_arg;
    const int dkp = (dk + 7) & ~7;
    const int ldq = dkp + 4, lda = Cp + 4, ldv = BV + 8;
    extern __shared__ unsigned char smem_raw[];
    double* sg = reinterpret_cast<double*>(smem_raw);    // (Cp,) clamped log-gates
    double* sG = sg + Cp;                                // (Cp,) cumulative sums
    float* se = reinterpret_cast<float*>(sG + Cp);       // (Cp,) float(exp(G_i))
    float* sb = se + Cp;                                 // (Cp,)
    float* sq = sb + Cp;                                 // (Cp, ldq) queries (then scaled by e^{G_i})
    float* sk = sq + Cp * ldq;                           // (Cp, ldq) keys
    float* sA = sk + Cp * ldq;                           // (Cp, lda) A, exactly 0 above the diagonal
    float* sv = sA + Cp * lda;                           // (Cp, ldv) values
    float* sS = sv + Cp * ldv;                           // (dkp, ldv) the state tile
    float* sz = sS + dkp * ldv;                          // (dkp,)
    const int N = (Tn + C - 1) / C;
    const size_t bh = blockIdx.x / N;
    const int n = blockIdx.x % N;
    const int v0 = blockIdx.y * BV;
    const int tid = threadIdx.x, nt = blockDim.x, lane = tid & 31, warp = tid >> 5, nw = nt >> 5;
    const int c0 = n * C, Cn = min(C, Tn - c0);
    const size_t row0 = bh * Tn + c0;
    const bool dens = need_den && blockIdx.y == 0;
    int bad = 0;                                         // a written output or denominator not finite
    for (int e = tid; e < Cp * dkp; e += nt) {
        const int i = e / dkp, d = e - i * dkp;
        const bool in = i < Cn && d < dk;
        sq[i * ldq + d] = in ? q[(row0 + i) * dk + d] : 0.0f;
        sk[i * ldq + d] = in ? k[(row0 + i) * dk + d] : 0.0f;
    }
    for (int e = tid; e < Cp * BV; e += nt) {
        const int c = e / BV, j = e - c * BV;
        sv[c * ldv + j] = (c < Cn && v0 + j < dv) ? v[(row0 + c) * dv + v0 + j] : 0.0f;
    }
    const float* Sn = S + (bh * N + n) * (size_t)dk * dv;
    for (int e = tid; e < dkp * BV; e += nt) {
        const int d = e / BV, j = e - d * BV;
        sS[d * ldv + j] = (d < dk && v0 + j < dv) ? Sn[(size_t)d * dv + v0 + j] : 0.0f;
    }
    if (dens)
        for (int d = tid; d < dkp; d += nt) sz[d] = d < dk ? Z[(bh * N + n) * dk + d] : 0.0f;
    for (int c = tid; c < Cp; c += nt) {
        if (GATED) {
            const double x = c < Cn ? (double)g[bh * gs + c0 + c] : 0.0;
            sg[c] = x > TTR_LOG_FLOOR ? x : TTR_LOG_FLOOR;
        }
        sb[c] = c < Cn ? b[bh * bs + c0 + c] : 0.0f;
    }
    __syncthreads();
    if (GATED) {
        for (int c = tid; c < Cp; c += nt) {
            sG[c] = prefix_sum(sg, c);
            se[c] = (float)exp(sG[c]);
        }
        __syncthreads();
    }
    const int gq = lane >> 2, tq = lane & 3;
    const int MT = Cp / 16, NA = Cp / 8;
    for (int tile = warp; tile < MT * NA; tile += nw) {  // 1. A, every entry of the Cp x Cp tile written
        const int i0 = (tile / NA) * 16, j0 = (tile % NA) * 8;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (j0 <= i0 + 15 && j0 < Cn && i0 < Cn) {
            for (int kk = 0; kk < dkp; kk += 8) {
                FragA fa;
                FragB fb;
                load_a(fa, sq + i0 * ldq + kk, ldq, lane);
                load_b(fb, sk + j0 * ldq + kk, 1, ldq, lane);
                mma3(acc, fa, fb, lane);
            }
        }
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const int i = i0 + gq + (r >= 2 ? 8 : 0), j = j0 + 2 * tq + (r & 1);
            float val = 0.0f;
            if (j <= i && i < Cn)
                val = GATED ? acc[r] * (exp_in<float>(sG[i] - sG[j]) * sb[j]) : acc[r] * sb[j];
            sA[i * lda + j] = val;
        }
    }
    __syncthreads();
    if (GATED) {                                         // 2. Q_g = diag(e^{G}) Q (A has read Q)
        for (int e = tid; e < Cn * dkp; e += nt) {
            const int i = e / dkp;
            sq[i * ldq + (e - i * dkp)] *= se[i];
        }
        __syncthreads();
    }
    if (dens)
        for (int i = tid; i < Cn; i += nt) {
            float d1 = 0.0f, d2 = 0.0f;
            for (int d = 0; d < dk; ++d) d1 += sq[i * ldq + d] * sz[d];
            for (int c = 0; c <= i; ++c) d2 += sA[i * lda + c];
            const float di = d2 + d1;
            den[row0 + i] = di;
            bad |= !isfinite(di);
        }
    constexpr int NG = BV / 32;
    for (int pr = warp; pr < MT * NG; pr += nw) {        // 3. y, a 16 x 32 strip a warp
        const int i0 = (pr / NG) * 16, cs = (pr % NG) * 32;
        if (i0 >= Cn) continue;
        float acc[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[u][r] = 0.0f;
        for (int kk = 0; kk < dkp; kk += 8) {
            FragA fa;
            load_a(fa, sq + i0 * ldq + kk, ldq, lane);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                FragB fb;
                load_b(fb, sS + kk * ldv + cs + 8 * u, ldv, 1, lane);
                mma3(acc[u], fa, fb, lane);
            }
        }
        const int kend = min(i0 + 16, Cp);               // A is exactly 0 right of the strip's last row
        for (int kk = 0; kk < kend; kk += 8) {
            FragA fa;
            load_a(fa, sA + i0 * lda + kk, lda, lane);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                FragB fb;
                load_b(fb, sv + kk * ldv + cs + 8 * u, ldv, 1, lane);
                mma3(acc[u], fa, fb, lane);
            }
        }
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int i = i0 + gq + (r >= 2 ? 8 : 0), j = v0 + cs + 8 * u + 2 * tq + (r & 1);
                if (i < Cn && j < dv) {
                    Y[(row0 + i) * dv + j] = acc[u][r];
                    bad |= !isfinite(acc[u][r]);
                }
            }
    }
    if (bad) *bad_out = 1;                               // every writer writes the same value: no atomics
}
"""

_DTYPES = {"f": "float", "d": "double"}  # by ``dtype.char`` (``str(dtype)`` costs microseconds a call)
_MODULES = {}
_SMEM_SET = {}  # id of a cached kernel function -> the dynamic shared memory it was opened to

#: each kernel's parameters: P a ``const T*``, W a ``T*``, F an ``int*`` (a flag), i an ``int`` (host
#: emulation reads these)
SIGNATURES = {
    "chunk_states": "PPPPPPWWWWiiiii",
    "chunk_states_pf": "PPPPPPWWWWiiiii",
    "chunk_factors": "PPWWiiiii",
    "chunk_deltas": "PPPPWWWiiii",
    "chunk_scan": "WWPPPWWiiiiiii",
    "chunk_outputs": "PPPPPPPWWFiiiiiiii",
    "chunk_outputs_tc": "PPPPPPPWWFiiiiiiii",
}


def prefetch_counts(C):
    """``(PK, PV)`` of ``chunk_states_pf``: the key and value entries of one chunk a thread holds in
    registers."""
    nt = pipe_threads()
    return -(-C * PIPE_BK // nt), -(-C * PIPE_BV // nt)


def _names(dt, dk=0, C=32, gated=True):
    """The template instances one call launches, in launch order (the state kernels, then outputs);
    the output kernel is specialised to ``dk`` where it is one of :data:`SPECIALISED_D` and to calls
    without decay (``gated=False``); the pipelined state pass to the chunk length ``C`` (its register
    counts)."""
    t = _DTYPES[dt.char]
    DK = dk if dk in SPECIALISED_D else 0
    out = f"chunk_outputs<{t}, {OUT_BV}, {OUT_TI}, {OUT_TV}, {DK}, {int(bool(gated))}>"
    if _tensor_cores(dt.itemsize):
        out = f"chunk_outputs_tc<{OUT_TC_BV}, {DK}, {int(bool(gated))}>"
    if STATE_ALGO == "sequential":
        return (f"chunk_states<{t}, {STATE_BK}, {STATE_BV}, {STATE_TK}, {STATE_TV}>", out)
    if STATE_ALGO == "pipelined":
        pk, pv = prefetch_counts(C)
        tile = f"{PIPE_BK}, {PIPE_BV}, {PIPE_TK}, {PIPE_TV}"
        return (f"chunk_factors<{t}>", f"chunk_states_pf<{t}, {tile}, {pk}, {pv}>", out)
    return (
        f"chunk_deltas<{t}, {DELTA_BK}, {DELTA_BV}, {DELTA_TK}, {DELTA_TV}>",
        f"chunk_scan<{t}, {SCAN_UNROLL}>",
        out,
    )


def _functions(dt, dk=0, C=32, gated=True):
    names = _names(dt, dk, C, gated)
    if names not in _MODULES:
        import cupy

        mod = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=list(names))
        _MODULES[names] = tuple(mod.get_function(nm) for nm in names)
    return _MODULES[names]


def _check_layout():
    """The module constants must give whole thread grids (a ValueError names the constant)."""
    if STATE_ALGO not in STATE_ALGOS:
        raise ValueError(f"STATE_ALGO={STATE_ALGO!r} must be one of {STATE_ALGOS}")
    for name, a, t in (
        ("STATE_TK", STATE_BK, STATE_TK),
        ("STATE_TV", STATE_BV, STATE_TV),
        ("PIPE_TK", PIPE_BK, PIPE_TK),
        ("PIPE_TV", PIPE_BV, PIPE_TV),
        ("DELTA_TK", DELTA_BK, DELTA_TK),
        ("DELTA_TV", DELTA_BV, DELTA_TV),
        ("OUT_TV", OUT_BV, OUT_TV),
    ):
        if t < 1 or a % t:
            raise ValueError(f"{name}={t} must divide its block size {a}")
    if SCAN_UNROLL < 1 or SCAN_THREADS < 1:
        raise ValueError(f"SCAN_UNROLL={SCAN_UNROLL} and SCAN_THREADS={SCAN_THREADS} must be >= 1")
    if OUT_BV % 4 or OUT_TI < 1:  # (vector loads of its tiles' rows)
        raise ValueError(f"OUT_BV={OUT_BV} must be a multiple of 4 and OUT_TI={OUT_TI} at least 1")
    if OUT_ALGO not in OUT_ALGOS:
        raise ValueError(f"OUT_ALGO={OUT_ALGO!r} must be one of {OUT_ALGOS}")
    if OUT_TC_BV < 32 or OUT_TC_BV % 32 or not 32 <= OUT_TC_THREADS <= 128 or OUT_TC_THREADS % 32:
        raise ValueError(
            f"OUT_TC_BV={OUT_TC_BV} must be a positive multiple of 32 and OUT_TC_THREADS={OUT_TC_THREADS} "
            "a multiple of 32 up to 128 (the kernel's launch bounds)"
        )
    if OUT_THREADS < OUT_BV // OUT_TV:
        raise ValueError(f"OUT_THREADS={OUT_THREADS} must be at least OUT_BV // OUT_TV = {OUT_BV // OUT_TV}")


def state_threads():
    return (STATE_BK // STATE_TK) * (STATE_BV // STATE_TV)


def pipe_threads():
    return (PIPE_BK // PIPE_TK) * (PIPE_BV // PIPE_TV)


def delta_threads():
    return (DELTA_BK // DELTA_TK) * (DELTA_BV // DELTA_TV)


def state_shared_bytes(C, itemsize):
    """Dynamic shared memory of a ``chunk_states`` block (``"sequential"``), a ``chunk_states_pf`` block
    (``"pipelined"``; its factor kernel needs none) or a ``chunk_deltas`` block (``"scan"``; the scan
    itself needs none)."""
    if STATE_ALGO == "pipelined":  # two buffers of keys and values
        return 2 * C * (PIPE_BK + PIPE_BV) * itemsize
    bk, bv = (STATE_BK, STATE_BV) if STATE_ALGO == "sequential" else (DELTA_BK, DELTA_BV)
    return 16 * C + (C + C * (bk + bv)) * itemsize


def _tensor_cores(itemsize) -> bool:
    """Whether kernel 2 runs on the tensor cores (:data:`OUT_ALGO`; float32 only)."""
    return OUT_ALGO == "tf32x3" and itemsize == 4


def out_rows(C, itemsize=8):
    """The rows of a ``chunk_outputs`` block's tiles: C padded to a multiple of 4 (its A tiles) and of
    the rows a pass of its threads covers; for ``chunk_outputs_tc``, to a multiple of 16 (its mma tiles)."""
    if _tensor_cores(itemsize):
        return -(-C // 16) * 16
    rows = OUT_THREADS // (OUT_BV // OUT_TV) * OUT_TI
    unit = rows * 4 // math.gcd(rows, 4)
    return -(-C // unit) * unit


def out_shared_bytes(C, dk, itemsize):
    """Dynamic shared memory of a ``chunk_outputs`` (or ``chunk_outputs_tc``) block."""
    Cp = out_rows(C, itemsize)
    if _tensor_cores(itemsize):
        dkp = -(-dk // 8) * 8
        ldq, lda, ldv = dkp + 4, Cp + 4, OUT_TC_BV + 8
        return 16 * Cp + (2 * Cp + 2 * Cp * ldq + Cp * lda + Cp * ldv + dkp * ldv + dkp) * 4
    ld = Cp + 4
    return 16 * Cp + (2 * Cp + 2 * dk * ld + Cp * ld + Cp * OUT_BV + dk * OUT_BV + dk) * itemsize


def scan_blocks(dk, dv, has_z=True):
    """Blocks of ``chunk_scan`` a sequence: one thread per state entry and (``has_z``) per z entry."""
    return -(-(dk * dv + (dk if has_z else 0)) // SCAN_THREADS)


def layouts(BH, T, C, dk, dv, itemsize=8):
    """``(grid, block)`` of every kernel, in launch order (as :func:`_names`)."""
    N = -(-T // C)
    out = ((BH * N, -(-dv // OUT_BV)), (OUT_THREADS,))
    if _tensor_cores(itemsize):
        out = ((BH * N, -(-dv // OUT_TC_BV)), (OUT_TC_THREADS,))
    if STATE_ALGO == "sequential":
        return (((BH, -(-dk // STATE_BK), -(-dv // STATE_BV)), (state_threads(),)), out)
    if STATE_ALGO == "pipelined":
        states = ((BH, -(-dk // PIPE_BK), -(-dv // PIPE_BV)), (pipe_threads(),))
        return (((-(-BH * T // FACTOR_THREADS),), (FACTOR_THREADS,)), states, out)
    return (
        ((BH * N, -(-dk // DELTA_BK), -(-dv // DELTA_BV)), (delta_threads(),)),
        ((BH * scan_blocks(dk, dv),), (SCAN_THREADS,)),
        out,
    )


def _shared_limit():
    from .. import _fused

    return _fused.device_attribute("MaxSharedMemoryPerBlockOptin", 48 * 1024)


def applies(xp, dtype, C, dk, dv) -> bool:
    """Whether :func:`forward` runs: CuPy, float32/float64, d_k and d_v up to :data:`MAX_D`, the tiles
    within shared memory."""
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp):
        return False
    if getattr(dtype, "char", None) not in _DTYPES or dk > MAX_D or dv > MAX_D or dk < 1 or dv < 1:
        return False
    it = dtype.itemsize
    lim = _shared_limit()
    return state_shared_bytes(C, it) <= lim and out_shared_bytes(C, dk, it) <= lim


def forward(xp, Q, K, V, g, b, M0, z0, C, need_den, gated=True, flag=None):
    """``(y, den, M, z)`` of the unwindowed chunked recurrence (as ``chunked._kernel``), or ``None`` where
    the kernels do not apply.

    Q, K (..., T, d_k), V (..., T, d_v), g (..., T, 1) log-gates (scalar decay), b (..., T), M0
    (..., d_v, d_k), z0 (..., d_k); ``den`` is None unless ``need_den``. ``gated=False`` promises that
    every log-gate is 0 (known from the layer and the call, ``Problem.gated``): the output kernel then
    skips the decays (the same values). ``flag``: a device int32 array of one entry that the output
    kernel sets to 1 if any output (or denominator) it writes is not finite, and leaves as it is
    otherwise (the caller zeroes it; ``_validation.Deferred.vouch`` reads it): no pass over the outputs
    to test them.
    """
    lead, (T, dk), dv, dt = Q.shape[:-2], Q.shape[-2:], V.shape[-1], Q.dtype
    if g.shape[-1] != 1 or T == 0 or math.prod(lead) == 0 or not applies(xp, dt, C, dk, dv):
        return None
    _check_layout()
    import cupy

    BH, N = math.prod(lead), -(-T // C)

    def flat(x, tail):  # CuPy's own calls: the array-API wrappers cost microseconds each on the host
        return cupy.ascontiguousarray(cupy.broadcast_to(x, lead + tail).reshape((BH,) + tail), dtype=dt)

    def rows(x):  # (..., T) -> (array, sequence stride): one row shared by every sequence is not copied
        xs = cupy.broadcast_to(x, lead + (T,))
        if (
            STATE_ALGO == "pipelined"  # (kernels 1 and 1a read (BH, T) rows)
            and xs.ndim > 1
            and xs.dtype == dt
            and xs.strides[-1] == dt.itemsize
            and not any(xs.strides[:-1])
        ):
            return xs[(0,) * len(lead)], 0
        return flat(x, (T,)), T

    q, k, v = flat(Q, (T, dk)), flat(K, (T, dk)), flat(V, (T, dv))
    (gf, gs), (bf, bs) = rows(g[..., 0]), rows(b)
    m0, zz0 = flat(M0, (dv, dk)), flat(z0, (dk,))
    S = cupy.empty((BH, N, dk, dv), dtype=dt)
    M = cupy.empty((BH, dv, dk), dtype=dt)
    z = cupy.empty((BH, dk), dtype=dt)
    Y = cupy.empty((BH, T, dv), dtype=dt)
    den = cupy.empty((BH, T) if need_den else (1,), dtype=dt)
    lay, fns = layouts(BH, T, C, dk, dv, dt.itemsize), _functions(dt, dk, C, gated)
    i32 = cupy.int32
    s1, s2 = state_shared_bytes(C, dt.itemsize), out_shared_bytes(C, dk, dt.itemsize)
    for f, s in ((fns[1 if STATE_ALGO == "pipelined" else 0], s1), (fns[-1], s2)):  # the shared-memory users
        if s > 48 * 1024 and _SMEM_SET.get(id(f), 0) < s:  # (a driver call: once a function and size)
            f.max_dynamic_shared_size_bytes = s
            _SMEM_SET[id(f)] = s
    dims = (i32(T), i32(C), i32(dk), i32(dv))
    if STATE_ALGO == "sequential":
        Z = cupy.empty((BH, N, dk) if need_den else (1,), dtype=dt)
        fns[0](*lay[0], (k, v, gf, bf, m0, zz0, S, Z, M, z, *dims, i32(need_den)), shared_mem=s1)
    elif STATE_ALGO == "pipelined":
        Z = cupy.empty((BH, N, dk) if need_den else (1,), dtype=dt)
        fac, dec = cupy.empty((BH, T), dtype=dt), cupy.empty((BH, N), dtype=dt)
        fns[0](*lay[0], (gf, bf, fac, dec, i32(T), i32(C), i32(BH), i32(gs), i32(bs)))
        fns[1](*lay[1], (k, v, fac, dec, m0, zz0, S, Z, M, z, *dims, i32(need_den)), shared_mem=s1)
    else:  # the scan forms z too (the final z is returned): Z always holds every chunk's
        Z = cupy.empty((BH, N, dk), dtype=dt)
        dec = cupy.empty((BH, N), dtype=dt)
        fns[0](*lay[0], (k, v, gf, bf, S, Z, dec, *dims), shared_mem=s1)
        fns[1](*lay[1], (S, Z, dec, m0, zz0, M, z, i32(N), i32(dk), i32(dv), i32(scan_blocks(dk, dv)),
                         i32(1), i32(0), i32(1)))  # fmt: skip
    if flag is None:
        flag = cupy.zeros(1, dtype=i32)
    Cp = i32(out_rows(C, dt.itemsize))
    fns[-1](*lay[-1], (q, k, v, gf, bf, S, Z, Y, den, flag, *dims, i32(need_den), Cp, i32(gs), i32(bs)),
            shared_mem=s2)  # fmt: skip
    return (
        xp.reshape(Y, lead + (T, dv)),
        xp.reshape(den, lead + (T,)) if need_den else None,
        xp.reshape(M, lead + (dv, dk)),
        xp.reshape(z, lead + (dk,)),
    )


def scan_states(xp, D, dec, S0):
    r"""The states before every chunk of a chunked linear recurrence with row decays, and the final one,
    by kernel 1b alone: :math:`S_0 = S0`, :math:`S_{n+1} = \operatorname{diag}(dec_n) S_n + D_n`.

    D (..., N, R, Cc), every chunk's own contribution (the per-dimension chunked path forms it as one
    batched product :math:`K_x^\top V`); dec (..., N, da), da = 1 (scalar) or R (one decay per row:
    per-dimension gates), each <= 1; S0 (..., R, Cc). Returns ``(states, final)``: states (..., N, R, Cc),
    D itself overwritten where it is a C-contiguous CuPy array of its dtype (else a contiguous copy), and
    final (..., R, Cc); or ``None`` where the kernel does not apply (not CuPy, not float32/float64).
    """
    dt = D.dtype
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp) or dt.char not in _DTYPES:
        return None
    lead, (N, R, Cc) = D.shape[:-3], D.shape[-3:]
    da = dec.shape[-1]
    if da not in (1, R):
        raise ValueError(f"dec must hold 1 or {R} decays a chunk, got {da}")
    _check_layout()
    import cupy

    BH = math.prod(lead)
    if N == 0 or BH == 0 or R * Cc == 0:
        return D, xp.broadcast_to(S0, lead + (R, Cc))

    def flat(x, tail):
        return cupy.ascontiguousarray(xp.reshape(xp.broadcast_to(x, lead + tail), (BH,) + tail), dtype=dt)

    Df, a, s0 = flat(D, (N, R, Cc)), flat(dec, (N, da)), flat(S0, (R, Cc))
    final = cupy.empty((BH, R, Cc), dtype=dt)
    nblk = scan_blocks(R, Cc, has_z=False)
    fn = _scan_function(dt)
    i32 = cupy.int32
    fn(
        (BH * nblk,),
        (SCAN_THREADS,),
        (Df, Df, a, s0, s0, final, final, i32(N), i32(R), i32(Cc), i32(nblk), i32(da), i32(1), i32(0)),
    )
    return xp.reshape(Df, lead + (N, R, Cc)), xp.reshape(final, lead + (R, Cc))


def _scan_function(dt):
    name = f"chunk_scan<{_DTYPES[dt.char]}, {SCAN_UNROLL}>"
    key = (name,)
    if key not in _MODULES:
        import cupy

        mod = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=[name])
        _MODULES[key] = (mod.get_function(name),)
    return _MODULES[key][0]
