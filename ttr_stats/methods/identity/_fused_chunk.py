r"""A fused chunked forward of the scalar-decay identity family (linear attention, RetNet, Mamba-2) on
CuPy, float32 and float64: CUDA kernels on the UNPADDED inputs, no padding, chunking or gate copies.

With ``G_i`` the float64 cumulative sum of the clamped log-gates from the chunk start (``<= 0``, clamped
at :data:`~ttr_stats.methods.identity.chunked.LOG_FLOOR`), ``L`` the chunk's last valid row and
:math:`S_n` (d_k, d_v) the transposed state before chunk n, the chunk states come from (:data:`STATE_ALGO`)

* ``"scan"`` (the default), two kernels:

  - 1a ``chunk_deltas`` (grid: sequence x chunk x d_k tile x d_v tile, all independent): every chunk's
    own contribution :math:`D_n = \sum_j k_j (e^{G_L - G_j} b_j)\, v_j^\top` (and its z sum), a
    :data:`DELTA_TK` x :data:`DELTA_TV` tile a thread, and the chunk's decay :math:`e^{G_L}`;
  - 1b ``chunk_scan`` (one thread per state entry): :math:`S_0 = M_0`, :math:`S_{n+1} = e^{G_L} S_n +
    D_n`, written over the D's in place, loads of :data:`SCAN_UNROLL` chunks in flight; the last is the
    final (M, z);

* or ``"sequential"``: one kernel, ``chunk_states`` (grid: sequence x d_k tile x d_v tile, sequential
  over chunks, the state tile in registers, :data:`STATE_TK` x :data:`STATE_TV` a thread), stores every
  chunk's starting state, then :math:`S \leftarrow e^{G_L} S + \sum_j k_j (e^{G_L - G_j} b_j)\,
  v_j^\top`. Only a few blocks per SM, and every chunk costs a memory latency;

measured on an H200 (B H = 128, T = 4096, d = 64, float32, C = 32, each kernel between CUDA events):
``chunk_states`` 0.84 ms against ``chunk_deltas`` + ``chunk_scan`` 0.36 + 0.38 ms, with ``chunk_outputs``
0.69 ms in both (1.42 against 1.52 ms: the scan moves the states through memory four times, the
sequential pass twice, and ncu shows the scan waiting on memory latency, 31% of DRAM bandwidth);

then kernel 2, ``chunk_outputs`` (grid: sequence x chunk x d_v tile, all independent):
:math:`A_{ij} = (q_i\cdot k_j)(e^{G_i - G_j} b_j)` for ``j <= i`` (exactly 0 above: exact causality),
then :math:`y_i = e^{G_i}\,q_i^\top S_n + \sum_j A_{ij} v_j` (:data:`OUT_TI` x :data:`OUT_TV` outputs a
thread, from shared-memory tiles) and, for ``normalize="sum"``, :math:`e^{G_i} q_i^\top z_n +
\sum_j A_{ij}`.

Every exponent is a difference ``G_later - G_earlier`` or a ``G`` itself, ``<= 0``: nothing overflows,
log-gates down to -1000 (and ``-inf``, clamped) are safe, and every decay the scan multiplies by is
<= 1. The exponentials are taken in float64 and rounded to the working dtype, as the array path
(``chunked._intra_scalar``) forms them. A T that is not a multiple of C is handled by a short last chunk;
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

#: how the chunk states are formed: ``"scan"`` (kernels 1a + 1b: every chunk's own contribution at once,
#: then one thread per state entry scans over the chunks) or ``"sequential"`` (kernel 1: one block per
#: state tile walks the chunks in turn, a few blocks per SM, every chunk a memory latency); 0.74 against
#: 0.84 ms on an H200 at B H = 128, T = 4096 (module docstring)
STATE_ALGO = "scan"

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

#: kernel 2: value columns a block, outputs a thread (rows x columns), threads a block
OUT_BV = 64
OUT_TI = 4
OUT_TV = 4
OUT_THREADS = 128

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
    for (int n = 0; n < N; ++n) {
        const int c0 = n * C, Cn = min(C, Tn - c0);
        // the state before chunk n
        T* Sn = S + (bh * N + n) * (size_t)dk * dv;
#pragma unroll
        for (int a = 0; a < TK; ++a) {
            const int i = k0 + tr + a * RK;
            if (i >= dk) continue;
#pragma unroll
            for (int u = 0; u < TV; ++u) {
                const int j = v0 + tc + u * RV;
                if (j < dv) Sn[(size_t)i * dv + j] = s[a][u];
            }
            if (store_z && zb) Z[(bh * N + n) * dk + i] = z[a];
        }
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

// kernel 2: every chunk's outputs. Block (sequence * N + chunk, d_v tile); thread (ri, cj) computes rows
// ri + a * RR (a < TI, repeated in passes of RR * TI rows) and columns cj + u * RV (u < TV).
// DK > 0: d_k known at compile time (equal to the dk argument): index arithmetic by constants, unrolled
// inner products; DK = 0: any d_k.
template <typename T, int BV, int TI, int TV, int DK>
__global__ void chunk_outputs(
    const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v, const T* __restrict__ g,
    const T* __restrict__ b, const T* __restrict__ S, const T* __restrict__ Z, T* __restrict__ Y,
    T* __restrict__ den, const int Tn, const int C, const int dk_arg, const int dv, const int need_den)
{
    constexpr int RV = BV / TV;
    const int dk = DK > 0 ? DK : dk_arg;
    const int ldk = dk | 1, ldc = C | 1;                 // odd strides: a warp's rows in distinct banks
    extern __shared__ unsigned char smem_raw[];
    double* sg = reinterpret_cast<double*>(smem_raw);    // (C,) clamped log-gates
    double* sG = sg + C;                                 // (C,) cumulative sums
    T* se = reinterpret_cast<T*>(sG + C);                // (C,) T(exp(G_i))
    T* sb = se + C;                                      // (C,)
    T* sq = sb + C;                                      // (C, ldk)
    T* sk = sq + C * ldk;                                // (C, ldk)
    T* sA = sk + C * ldk;                                // (C, ldc)
    T* sv = sA + C * ldc;                                // (C, BV)
    T* sS = sv + C * BV;                                 // (dk, BV)
    T* sz = sS + dk * BV;                                // (dk,)
    const int N = (Tn + C - 1) / C;
    const size_t bh = blockIdx.x / N;
    const int n = blockIdx.x % N;
    const int v0 = blockIdx.y * BV;
    const int tid = threadIdx.x, nt = blockDim.x;
    const int c0 = n * C, Cn = min(C, Tn - c0);
    const size_t row0 = bh * Tn + c0;
    const bool dens = need_den && blockIdx.y == 0;
    for (int e = tid; e < Cn * dk; e += nt) {
        const int i = e / dk, d = e % dk;
        sq[i * ldk + d] = q[row0 * dk + e];
        sk[i * ldk + d] = k[row0 * dk + e];
    }
    for (int e = tid; e < Cn * BV; e += nt) {
        const int c = e / BV, j = e % BV;
        sv[e] = (v0 + j < dv) ? v[(row0 + c) * dv + v0 + j] : T(0);
    }
    const T* Sn = S + (bh * N + n) * (size_t)dk * dv;
    for (int e = tid; e < dk * BV; e += nt) {
        const int d = e / BV, j = e % BV;
        sS[e] = (v0 + j < dv) ? Sn[(size_t)d * dv + v0 + j] : T(0);
    }
    if (dens)
        for (int d = tid; d < dk; d += nt) sz[d] = Z[(bh * N + n) * dk + d];
    load_gates(g, b, row0, Cn, sg, sb, tid, nt);
    __syncthreads();
    for (int c = tid; c < Cn; c += nt) {
        sG[c] = prefix_sum(sg, c);
        se[c] = T(exp(sG[c]));
    }
    __syncthreads();
    // A on the causal triangle, a 2 x 2 tile a thread (rows 2 ti + {0, 1}, columns 2 tj + {0, 1});
    // tiles wholly above the diagonal are skipped, and nothing reads A above it
    const int h = (Cn + 1) / 2;
    for (int e = tid; e < h * h; e += nt) {
        const int ti = e / h, tj = e % h;
        if (tj > ti) continue;
        T acc[2][2] = {{T(0), T(0)}, {T(0), T(0)}};
        const int i1 = min(2 * ti + 1, Cn - 1), j1 = min(2 * tj + 1, Cn - 1);  // clamped reads
        const T* qa = sq + 2 * ti * ldk;
        const T* qb = sq + i1 * ldk;
        const T* ka = sk + 2 * tj * ldk;
        const T* kb = sk + j1 * ldk;
#pragma unroll 8
        for (int d = 0; d < dk; ++d) {
            const T x0 = qa[d], x1 = qb[d], y0 = ka[d], y1 = kb[d];
            acc[0][0] += x0 * y0; acc[0][1] += x0 * y1;
            acc[1][0] += x1 * y0; acc[1][1] += x1 * y1;
        }
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                const int i = 2 * ti + a, j = 2 * tj + u;
                if (i >= Cn || j > i) continue;
                sA[i * ldc + j] = acc[a][u] * (T(exp(sG[i] - sG[j])) * sb[j]);
            }
    }
    __syncthreads();
    if (dens)
        for (int i = tid; i < Cn; i += nt) {
            T d1 = T(0), d2 = T(0);
            for (int d = 0; d < dk; ++d) d1 += sq[i * ldk + d] * sz[d];
            for (int c = 0; c <= i; ++c) d2 += sA[i * ldc + c];
            den[row0 + i] = d2 + se[i] * d1;
        }
    const int RR = nt / RV;                             // row groups
    const int ri = tid / RV, cj = tid % RV;
    if (ri >= RR) return;                               // (no barrier follows)
    for (int p = 0; p < Cn; p += RR * TI) {
        T yS[TI][TV], yA[TI][TV];
#pragma unroll
        for (int a = 0; a < TI; ++a)
#pragma unroll
            for (int u = 0; u < TV; ++u) { yS[a][u] = T(0); yA[a][u] = T(0); }
        int ir[TI];
#pragma unroll
        for (int a = 0; a < TI; ++a) ir[a] = min(p + ri + a * RR, Cn - 1);  // clamped: read, never written
#pragma unroll 8
        for (int d = 0; d < dk; ++d) {
            T x[TI], y[TV];
#pragma unroll
            for (int a = 0; a < TI; ++a) x[a] = sq[ir[a] * ldk + d];
#pragma unroll
            for (int u = 0; u < TV; ++u) y[u] = sS[d * BV + cj + u * RV];
#pragma unroll
            for (int a = 0; a < TI; ++a)
#pragma unroll
                for (int u = 0; u < TV; ++u) yS[a][u] += x[a] * y[u];
        }
        int imax = ir[0];
#pragma unroll
        for (int a = 1; a < TI; ++a) imax = max(imax, ir[a]);
        for (int c = 0; c <= imax; ++c) {  // A is exactly 0 above the diagonal
            T x[TI], y[TV];
#pragma unroll
            for (int a = 0; a < TI; ++a) x[a] = (c <= ir[a]) ? sA[ir[a] * ldc + c] : T(0);
#pragma unroll
            for (int u = 0; u < TV; ++u) y[u] = sv[c * BV + cj + u * RV];
#pragma unroll
            for (int a = 0; a < TI; ++a)
#pragma unroll
                for (int u = 0; u < TV; ++u) yA[a][u] += x[a] * y[u];
        }
#pragma unroll
        for (int a = 0; a < TI; ++a) {
            const int i = p + ri + a * RR;
            if (i >= Cn) continue;
#pragma unroll
            for (int u = 0; u < TV; ++u) {
                const int j = v0 + cj + u * RV;
                if (j < dv) Y[(row0 + i) * dv + j] = yA[a][u] + se[i] * yS[a][u];
            }
        }
    }
}
"""

_DTYPES = {"float32": "float", "float64": "double"}
_MODULES = {}

#: each kernel's parameters: P a ``const T*``, W a ``T*``, i an ``int`` (host emulation reads these)
SIGNATURES = {
    "chunk_states": "PPPPPPWWWWiiiii",
    "chunk_deltas": "PPPPWWWiiii",
    "chunk_scan": "WWPPPWWiiiiiii",
    "chunk_outputs": "PPPPPPPWWiiiii",
}


def _names(dt, dk=0):
    """The template instances one call launches, in launch order (the state kernels, then outputs);
    the output kernel is specialised to ``dk`` where it is one of :data:`SPECIALISED_D`."""
    t = _DTYPES[str(dt)]
    DK = dk if dk in SPECIALISED_D else 0
    out = f"chunk_outputs<{t}, {OUT_BV}, {OUT_TI}, {OUT_TV}, {DK}>"
    if STATE_ALGO == "sequential":
        return (f"chunk_states<{t}, {STATE_BK}, {STATE_BV}, {STATE_TK}, {STATE_TV}>", out)
    return (
        f"chunk_deltas<{t}, {DELTA_BK}, {DELTA_BV}, {DELTA_TK}, {DELTA_TV}>",
        f"chunk_scan<{t}, {SCAN_UNROLL}>",
        out,
    )


def _functions(dt, dk=0):
    names = _names(dt, dk)
    if names not in _MODULES:
        import cupy

        mod = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=list(names))
        _MODULES[names] = tuple(mod.get_function(nm) for nm in names)
    return _MODULES[names]


def _check_layout():
    """The module constants must give whole thread grids (a ValueError names the constant)."""
    if STATE_ALGO not in ("scan", "sequential"):
        raise ValueError(f"STATE_ALGO={STATE_ALGO!r} must be 'scan' or 'sequential'")
    for name, a, t in (
        ("STATE_TK", STATE_BK, STATE_TK),
        ("STATE_TV", STATE_BV, STATE_TV),
        ("DELTA_TK", DELTA_BK, DELTA_TK),
        ("DELTA_TV", DELTA_BV, DELTA_TV),
        ("OUT_TV", OUT_BV, OUT_TV),
    ):
        if t < 1 or a % t:
            raise ValueError(f"{name}={t} must divide its block size {a}")
    if SCAN_UNROLL < 1 or SCAN_THREADS < 1:
        raise ValueError(f"SCAN_UNROLL={SCAN_UNROLL} and SCAN_THREADS={SCAN_THREADS} must be >= 1")
    if OUT_THREADS < OUT_BV // OUT_TV:
        raise ValueError(f"OUT_THREADS={OUT_THREADS} must be at least OUT_BV // OUT_TV = {OUT_BV // OUT_TV}")


def state_threads():
    return (STATE_BK // STATE_TK) * (STATE_BV // STATE_TV)


def delta_threads():
    return (DELTA_BK // DELTA_TK) * (DELTA_BV // DELTA_TV)


def state_shared_bytes(C, itemsize):
    """Dynamic shared memory of a ``chunk_states`` block (``"sequential"``) or a ``chunk_deltas`` block
    (``"scan"``; the scan itself needs none)."""
    bk, bv = (STATE_BK, STATE_BV) if STATE_ALGO == "sequential" else (DELTA_BK, DELTA_BV)
    return 16 * C + (C + C * (bk + bv)) * itemsize


def out_shared_bytes(C, dk, itemsize):
    """Dynamic shared memory of a ``chunk_outputs`` block."""
    return 16 * C + (2 * C + 2 * C * (dk | 1) + C * (C | 1) + C * OUT_BV + dk * OUT_BV + dk) * itemsize


def scan_blocks(dk, dv, has_z=True):
    """Blocks of ``chunk_scan`` a sequence: one thread per state entry and (``has_z``) per z entry."""
    return -(-(dk * dv + (dk if has_z else 0)) // SCAN_THREADS)


def layouts(BH, T, C, dk, dv):
    """``(grid, block)`` of every kernel, in launch order (as :func:`_names`)."""
    N = -(-T // C)
    out = ((BH * N, -(-dv // OUT_BV)), (OUT_THREADS,))
    if STATE_ALGO == "sequential":
        return (((BH, -(-dk // STATE_BK), -(-dv // STATE_BV)), (state_threads(),)), out)
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
    if str(dtype) not in _DTYPES or dk > MAX_D or dv > MAX_D or dk < 1 or dv < 1:
        return False
    it = 4 if str(dtype) == "float32" else 8
    lim = _shared_limit()
    return state_shared_bytes(C, it) <= lim and out_shared_bytes(C, dk, it) <= lim


def forward(xp, Q, K, V, g, b, M0, z0, C, need_den):
    """``(y, den, M, z)`` of the unwindowed chunked recurrence (as ``chunked._kernel``), or ``None`` where
    the kernels do not apply.

    Q, K (..., T, d_k), V (..., T, d_v), g (..., T, 1) log-gates (scalar decay), b (..., T), M0
    (..., d_v, d_k), z0 (..., d_k); ``den`` is None unless ``need_den``.
    """
    lead, (T, dk), dv, dt = Q.shape[:-2], Q.shape[-2:], V.shape[-1], Q.dtype
    if g.shape[-1] != 1 or T == 0 or math.prod(lead) == 0 or not applies(xp, dt, C, dk, dv):
        return None
    _check_layout()
    import cupy

    BH, N = math.prod(lead), -(-T // C)

    def flat(x, tail):
        return cupy.ascontiguousarray(xp.reshape(xp.broadcast_to(x, lead + tail), (BH,) + tail), dtype=dt)

    q, k, v = flat(Q, (T, dk)), flat(K, (T, dk)), flat(V, (T, dv))
    gf, bf = flat(g[..., 0], (T,)), flat(b, (T,))
    m0, zz0 = flat(M0, (dv, dk)), flat(z0, (dk,))
    S = cupy.empty((BH, N, dk, dv), dtype=dt)
    M = cupy.empty((BH, dv, dk), dtype=dt)
    z = cupy.empty((BH, dk), dtype=dt)
    Y = cupy.empty((BH, T, dv), dtype=dt)
    den = cupy.empty((BH, T) if need_den else (1,), dtype=dt)
    lay, fns = layouts(BH, T, C, dk, dv), _functions(dt, dk)
    i32 = cupy.int32
    s1, s2 = state_shared_bytes(C, dt.itemsize), out_shared_bytes(C, dk, dt.itemsize)
    for f, s in ((fns[0], s1), (fns[-1], s2)):
        if s > 48 * 1024:
            f.max_dynamic_shared_size_bytes = s
    dims = (i32(T), i32(C), i32(dk), i32(dv))
    if STATE_ALGO == "sequential":
        Z = cupy.empty((BH, N, dk) if need_den else (1,), dtype=dt)
        fns[0](*lay[0], (k, v, gf, bf, m0, zz0, S, Z, M, z, *dims, i32(need_den)), shared_mem=s1)
    else:  # the scan forms z too (the final z is returned): Z always holds every chunk's
        Z = cupy.empty((BH, N, dk), dtype=dt)
        dec = cupy.empty((BH, N), dtype=dt)
        fns[0](*lay[0], (k, v, gf, bf, S, Z, dec, *dims), shared_mem=s1)
        fns[1](*lay[1], (S, Z, dec, m0, zz0, M, z, i32(N), i32(dk), i32(dv), i32(scan_blocks(dk, dv)),
                         i32(1), i32(0), i32(1)))  # fmt: skip
    fns[-1](*lay[-1], (q, k, v, gf, bf, S, Z, Y, den, *dims, i32(need_den)), shared_mem=s2)
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
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp) or str(dt) not in _DTYPES:
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
    name = f"chunk_scan<{_DTYPES[str(dt)]}, {SCAN_UNROLL}>"
    key = (name,)
    if key not in _MODULES:
        import cupy

        mod = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=[name])
        _MODULES[key] = (mod.get_function(name),)
    return _MODULES[key][0]
