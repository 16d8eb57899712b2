r"""A fused CUDA kernel for tiled softmax / Nadaraya-Watson attention (CuPy only), and its reference.

``method="tiled"`` (:mod:`.tiled`) on a GPU is a sequence of batched array operations; this module runs
the whole Nadaraya-Watson pass as one kernel in the FlashAttention style: a block of 256 threads per
(sequence, tile of ``C`` queries) streams the key / value tiles through shared memory and keeps per query
the running maximum :math:`m`, normaliser :math:`\ell` and weighted value sum (online softmax), so nothing
of size T x T exists anywhere. Per pair

.. math::

    \log w_{ti} = \log\Gamma_{ti} + \log\beta_i + \tau\, q_t^\top k_i,

with the gate sums of :mod:`._tiles` (block-local, never a difference of two cumulative sums):

* the diagonal tile (key tile = query tile): :math:`\sum_{j=i+1}^t g_j` as masked running sums in shared
  memory, in the order of :func:`ttr_stats._array.segsum`;
* an earlier key tile: ``pre[t] + mid + suf[i]``, the prefix of the query tile up to t, the totals of the
  tiles strictly between (carried as the kernel walks the key tiles from the diagonal backwards) and the
  suffix of the key tile after i.

Key tiles after the query tile (causal), before a sliding window (but for the sink tiles), or behind a
hard reset (``mid = -inf``) are never visited. Each thread owns ``TM`` query rows x ``TM`` keys of a
tile's logits and ``TM`` rows x ``DVT`` value columns of the accumulator (register tiles: two vector loads
from shared memory per ``TM^2`` multiply-adds). A non-causal call (every query reads the last memory)
visits every key tile with the last step's per-key log-weights.

Two variants (:data:`VARIANT`). ``"v1"`` is the above. ``"v2"`` (``nw_forward2``, the default) has query tiles
longer than key tiles (float32: 128 queries x 64 keys, 128 threads, or 64 x 64 on small grids; float64: 64 x
32; see :data:`CONFIGS`, :data:`SMALL_CONFIGS`, :data:`SWEEP`), each thread owning ``RM`` rows x ``RN`` keys
of the logits and ``RM`` rows x ``DVT`` columns of the accumulator (16 multiply-adds per 16-byte shared load,
twice v1's; row-major tiles with conflict-free strides), logits in log2 units (log2 e folded into the scale,
``exp2``), the normaliser rescaled once per key tile and summed across threads once at the end, and the gate
sums of key tiles before the query tile read from three block-local arrays computed once per call
(:func:`tile_sums`: prefixes within query tiles, suffixes within key tiles, tile totals), so that per pair the
log-weight is two adds; key tiles inside the query tile form running sums per key column as v1's diagonal
does. v2 covers every case v1 does; where its tiles do not fit shared memory it falls back to v1.

Operands are prepared by :func:`operands` (the same for the kernel and :func:`fused_nw_reference`):
``Q, K, V`` as (BH, T, d), the log-gates ``g`` and the log write strengths ``logb`` as (BH, T_k), the logit
scale. QKNorm is already applied to the Problem's queries and keys (the regressor's ``prepare``); a
Gaussian similarity :math:`-\|q - k\|^2 / 2h^2` is the dot-product form with :math:`\tau = h^{-2}` and the
per-key term :math:`-\|k\|^2 / 2h^2` moved into ``logb`` (the per-query term cancels in the normalisation),
after shifting queries and keys by the first key as :func:`ttr_stats.similarity.sq_distances` does.

:func:`nadaraya_watson` returns ``None`` wherever the kernel does not apply (not CuPy, a dtype other than
float32 / float64, ``d_v > 128``, a tile that does not fit shared memory, a similarity other than
``ExpDot`` / ``Gaussian``, a local polynomial of order >= 1), and the caller then runs the array form.
Attention sinks (``weights.SinkWindow``: keys ``i < sinks`` never leave the window) are kept: where the
window would end the walk over key tiles, it jumps to the last tile holding a sink, adding the totals of
the tiles jumped over (computed once per call, ``_tile_totals``) to the gate sum between, and the per-pair
mask is ``t - i < w or i < sinks``. :data:`ENABLED` switches the kernel off; an NVRTC compile failure
does so too, with one warning. Calls where no gate can decay (``Problem.gated`` False: every log-gate is 0)
form no gate sums at all. Inputs are validated by the layer (finite entries); from finite inputs the kernel
gives finite outputs (a row without a pair of positive weight reads 0, as ``normalised_weights`` does).

Trust: :func:`fused_nw_reference` equals ``method="parallel"`` to 1e-10 (float64) on the host, the CUDA
source itself (both variants) run on the host by ``tests/cuda_on_host.py`` equals the reference, and on a
GPU ``tests/test_fused_nw.py`` (v1, and the default through the layers) and ``tests/test_fused_nw_tiled.py``
(v2, every shape of :data:`SWEEP`) compare the kernel with both; ``benchmarks/gpu_tiled.py`` times the
layer against torch SDPA, ``benchmarks/gpu_fused_nw.py`` both variants and v2's tile shapes against torch
SDPA and fla. Both variants were measured on an H200 (docs/benchmarks.md); v2 is the default, with the
small-grid tile shape of :data:`SMALL_CONFIGS`.
"""

from __future__ import annotations

import math

import array_api_compat

from ... import _array
from .._fused import allow_shared, compiled, device_attribute

__all__ = [
    "ENABLED",
    "VARIANT",
    "nadaraya_watson",
    "operands",
    "forward",
    "fused_nw_reference",
    "tile_length",
]

#: set False to run the array form of ``method="tiled"`` on CuPy as well (the tests compare the two)
ENABLED = True

#: threads per side of a block's 16 x 16 thread grid (the tile length is ``NT * TM``)
NT = 16

#: most value columns the register tile holds (``NT * 8``)
MAX_DV = 128

#: tile lengths the kernel is built for (``NT * TM``, TM = 2, 4, 8; 128 in float32 only); :func:`forward`
#: picks 64 (32 where 64 does not fit shared memory) unless told otherwise (``benchmarks/gpu_tiled.py``
#: times all three)
TILES = (32, 64, 128)

_SOURCE = r"""
#define NT 16
#define NTHREADS (NT * NT)

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ULL);
}
__device__ __forceinline__ float ex(float x) { return expf(x); }
__device__ __forceinline__ double ex(double x) { return exp(x); }
__device__ __forceinline__ float mx(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double mx(double a, double b) { return fmax(a, b); }

// N contiguous values from / to shared memory as 16-byte (or 8-byte) accesses; addresses are aligned to them
template <typename T, int N> struct Vec {  // N = 1, and the fallback
    static __device__ __forceinline__ void load(const T* p, T* o) {
#pragma unroll
        for (int i = 0; i < N; ++i) o[i] = p[i];
    }
    static __device__ __forceinline__ void store(T* p, const T* o) {
#pragma unroll
        for (int i = 0; i < N; ++i) p[i] = o[i];
    }
};
template <> struct Vec<float, 2> {
    static __device__ __forceinline__ void load(const float* p, float* o) {
        const float2 v = *reinterpret_cast<const float2*>(p);
        o[0] = v.x; o[1] = v.y;
    }
    static __device__ __forceinline__ void store(float* p, const float* o) {
        float2 v;
        v.x = o[0]; v.y = o[1];
        *reinterpret_cast<float2*>(p) = v;
    }
};
template <> struct Vec<float, 4> {
    static __device__ __forceinline__ void load(const float* p, float* o) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        o[0] = v.x; o[1] = v.y; o[2] = v.z; o[3] = v.w;
    }
    static __device__ __forceinline__ void store(float* p, const float* o) {
        float4 v;
        v.x = o[0]; v.y = o[1]; v.z = o[2]; v.w = o[3];
        *reinterpret_cast<float4*>(p) = v;
    }
};
template <> struct Vec<float, 8> {
    static __device__ __forceinline__ void load(const float* p, float* o) {
        Vec<float, 4>::load(p, o);
        Vec<float, 4>::load(p + 4, o + 4);
    }
    static __device__ __forceinline__ void store(float* p, const float* o) {
        Vec<float, 4>::store(p, o);
        Vec<float, 4>::store(p + 4, o + 4);
    }
};
template <> struct Vec<double, 2> {
    static __device__ __forceinline__ void load(const double* p, double* o) {
        const double2 v = *reinterpret_cast<const double2*>(p);
        o[0] = v.x; o[1] = v.y;
    }
    static __device__ __forceinline__ void store(double* p, const double* o) {
        double2 v;
        v.x = o[0]; v.y = o[1];
        *reinterpret_cast<double2*>(p) = v;
    }
};
template <> struct Vec<double, 4> {
    static __device__ __forceinline__ void load(const double* p, double* o) {
        Vec<double, 2>::load(p, o);
        Vec<double, 2>::load(p + 2, o + 2);
    }
    static __device__ __forceinline__ void store(double* p, const double* o) {
        Vec<double, 2>::store(p, o);
        Vec<double, 2>::store(p + 2, o + 2);
    }
};
template <> struct Vec<double, 8> {
    static __device__ __forceinline__ void load(const double* p, double* o) {
        Vec<double, 4>::load(p, o);
        Vec<double, 4>::load(p + 4, o + 4);
    }
    static __device__ __forceinline__ void store(double* p, const double* o) {
        Vec<double, 4>::store(p, o);
        Vec<double, 4>::store(p + 4, o + 4);
    }
};

// One block: sequence bh, query tile qt (rows q0 .. q0 + C - 1). Thread (ty, tx) owns the query rows
// ty*TM .. ty*TM+TM-1, the keys tx*TM .. tx*TM+TM-1 of each tile's logits and the value columns
// tx*DVT .. tx*DVT+DVT-1 of the accumulator. gated = 0: every log-gate is 0 (no gate sums formed).
// sinks > 0 (with a window): keys i < sinks stay at every t >= i (attention sinks); TOT holds every key
// tile's total log-gate (BH, nkt), for the tiles jumped over between the window and the sink tiles.
template <typename T, int TM, int DVT>
__global__ void __launch_bounds__(NTHREADS) nw_forward(
    const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
    const T* __restrict__ G, const T* __restrict__ LB, const T* __restrict__ TOT, T* __restrict__ Y,
    int* __restrict__ FLAG, const int BH, const int Tq, const int Tk, const int dk, const int dv,
    const T tau, const int causal, const int window, const int gated, const int sinks)
{
    constexpr int C = NT * TM;            // tile length, queries and keys
    constexpr int LD = C + 16 / (int)sizeof(T);  // padded row of the transposed tiles (keeps 16 B alignment)
    constexpr int DVP = NT * DVT;         // value columns held (zero beyond dv)
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* Qs = reinterpret_cast<T*>(smem_raw);  // (dk, LD): the query tile, transposed
    T* Ks = Qs + dk * LD;                    // (dk, LD): the key tile, transposed
    T* Ps = Ks + dk * LD;                    // (C, LD): weights [query][key]; first the diagonal gate sums
    T* Vs = Ps + C * LD;                     // (C, DVP)
    T* gk = Vs + C * DVP;                    // (C): the key tile's log-gates
    T* lbk = gk + C;                         // (C): log write strengths, -inf past Tk
    T* sufk = lbk + C;                       // (C): sum_{j=i+1}^{end} g_j within the key tile
    T* preq = sufk + C;                      // (C): sum_{j=q0}^{t} g_j within the query tile
    T* totk = preq + C;                      // (1): the key tile's total

    const T NEG = neg_inf<T>();
    const int nqt = (Tq + C - 1) / C;
    const long long idx = blockIdx.x;
    const int bh = (int)(idx % BH);
    const int qt = causal ? nqt - 1 - (int)(idx / BH) : (int)(idx / BH);  // causal: heavy tiles first
    const int q0 = qt * C;
    const int tid = threadIdx.x;
    const int tx = tid % NT, ty = tid / NT;
    const int lane = tid % 32, warp = tid / 32;
    const bool gsum = causal && gated;

    const T* Qb = Q + (size_t)bh * Tq * dk;
    const T* Kb = K + (size_t)bh * Tk * dk;
    const T* Vb = V + (size_t)bh * Tk * dv;
    const T* Gb = G + (size_t)bh * Tk;
    const T* LBb = LB + (size_t)bh * Tk;

    // tiles are loaded a row per warp (coalesced), transposed into shared memory
    int bad = 0;  // a non-finite entry read or written (FLAG: the output vouches for Q, K, V; see v2)
    for (int r = warp; r < C; r += NTHREADS / 32) {
        const int t = q0 + r;
        for (int k = lane; k < dk; k += 32) {
            const T x = (t < Tq) ? Qb[(size_t)t * dk + k] : T(0);
            bad |= !isfinite(x);
            Qs[k * LD + r] = x;
        }
    }
    if (gsum && tid < C) {
        T s = T(0);
        for (int j = 0; j <= tid; ++j) {
            const int t = q0 + j;
            s += (t < Tk) ? Gb[t] : T(0);
        }
        preq[tid] = s;
    }

    T acc[TM][DVT];
    T m[TM], l[TM];
#pragma unroll
    for (int a = 0; a < TM; ++a) {
        m[a] = NEG;
        l[a] = T(0);
#pragma unroll
        for (int j = 0; j < DVT; ++j) acc[a][j] = T(0);
    }
    T mid = T(0);  // sum of the totals of the key tiles strictly between kt and qt

    const int nkt = (Tk + C - 1) / C;
    const int kt_hi = causal ? qt : nkt - 1;
    const int last_sink_tile = (causal && window > 0 && sinks > 0) ? (sinks - 1) / C : -1;
    for (int kt = kt_hi; kt >= 0; --kt) {
        // every pair of this tile and of all earlier ones is outside the window: go on at the last tile
        // holding a sink (adding the totals of the tiles jumped over to mid), or stop
        if (causal && window > 0 && q0 - (kt * C + C - 1) >= window) {
            if (kt > last_sink_tile) {
                if (last_sink_tile < 0) break;
                if (gsum)
                    for (int j = kt; j > last_sink_tile; --j) mid += TOT[(size_t)bh * nkt + j];
                kt = last_sink_tile;
            }
        }
        const int k0 = kt * C;
        if (gsum && kt < qt && mid == NEG) break;  // behind a hard reset: every earlier weight is 0
        __syncthreads();  // the previous tile's Ks / Vs / Ps / gk reads are done
        const bool chk = causal ? kt == qt : qt == 0;  // every key tile is checked by one block, once
        for (int r = warp; r < C; r += NTHREADS / 32) {
            const int t = k0 + r;
            for (int k = lane; k < dk; k += 32) {
                const T x = (t < Tk) ? Kb[(size_t)t * dk + k] : T(0);
                if (chk) bad |= !isfinite(x);
                Ks[k * LD + r] = x;
            }
            for (int c = lane; c < DVP; c += 32) {
                const T x = (t < Tk && c < dv) ? Vb[(size_t)t * dv + c] : T(0);
                if (chk) bad |= !isfinite(x);
                Vs[r * DVP + c] = x;
            }
        }
        if (tid < C) {
            const int t = k0 + tid;
            gk[tid] = (gsum && t < Tk) ? Gb[t] : T(0);
            lbk[tid] = (t < Tk) ? LBb[t] : NEG;
        }
        __syncthreads();
        const bool diag = causal && kt == qt;
        if (gsum && tid < C) {
            T s = T(0);  // suffix after tid, summed from the tile's end as flip(cumsum(flip)) does
#pragma unroll 8
            for (int j = C - 1; j > tid; --j) s += gk[j];
            sufk[tid] = s;
            if (tid == 0) *totk = s + gk[0];
            if (diag) {  // column i = tid: sum_{j=i+1}^{t} g_j for t >= i, in segsum's order
                T u = T(0);
                Ps[tid * LD + tid] = T(0);
                for (int t = tid + 1; t < C; ++t) {
                    u += gk[t];
                    Ps[t * LD + tid] = u;
                }
            }
        }
        if (gsum) __syncthreads();

        // logits of the register tile: rows ty*TM + a, keys tx*TM + b
        T s[TM][TM];
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
            for (int b = 0; b < TM; ++b) s[a][b] = T(0);
        for (int k = 0; k < dk; ++k) {
            T qa[TM], kb[TM];
            Vec<T, TM>::load(Qs + k * LD + ty * TM, qa);
            Vec<T, TM>::load(Ks + k * LD + tx * TM, kb);
#pragma unroll
            for (int a = 0; a < TM; ++a)
#pragma unroll
                for (int b = 0; b < TM; ++b) s[a][b] += qa[a] * kb[b];
        }
        const T tot = gsum ? *totk : T(0);
        T rmax[TM];
#pragma unroll
        for (int a = 0; a < TM; ++a) {
            const int r = ty * TM + a;
            rmax[a] = NEG;
#pragma unroll
            for (int b = 0; b < TM; ++b) {
                const int n = tx * TM + b;
                T lg;
                if (!causal) lg = lbk[n];
                else if (diag) lg = (n <= r) ? (gsum ? Ps[r * LD + n] + lbk[n] : lbk[n]) : NEG;
                else lg = gsum ? ((preq[r] + mid) + sufk[n]) + lbk[n] : lbk[n];  // 0 + 0 + 0 + x = x
                if (causal && window > 0 && (q0 + r) - (k0 + n) >= window && k0 + n >= sinks) lg = NEG;
                const T v = (lg == NEG) ? NEG : lg + tau * s[a][b];  // masked: -inf whatever the logit
                s[a][b] = v;
                rmax[a] = mx(rmax[a], v);
            }
        }
#pragma unroll
        for (int a = 0; a < TM; ++a)
#pragma unroll
            for (int off = NT / 2; off > 0; off >>= 1)
                rmax[a] = mx(rmax[a], __shfl_xor_sync(0xffffffffu, rmax[a], off));
#pragma unroll
        for (int a = 0; a < TM; ++a) {
            const T mn = mx(m[a], rmax[a]);
            const T sh = (mn == NEG) ? T(0) : mn;  // a row with no pair yet: shift 0, weights exp(-inf) = 0
            const T scale = ex(m[a] - sh);          // 0 while the row had no pair (m = -inf)
            T rs = T(0);
#pragma unroll
            for (int b = 0; b < TM; ++b) {
                const T p = ex(s[a][b] - sh);
                s[a][b] = p;
                rs += p;
            }
#pragma unroll
            for (int off = NT / 2; off > 0; off >>= 1) rs += __shfl_xor_sync(0xffffffffu, rs, off);
            l[a] = l[a] * scale + rs;
            m[a] = mn;
#pragma unroll
            for (int j = 0; j < DVT; ++j) acc[a][j] *= scale;
        }
        __syncthreads();  // every thread has read the diagonal gate sums from Ps
#pragma unroll
        for (int a = 0; a < TM; ++a)  // 16-byte stores, conflict-free
            Vec<T, TM>::store(Ps + (ty * TM + a) * LD + tx * TM, s[a]);
        __syncthreads();
        for (int n0 = 0; n0 < C; n0 += TM) {  // TM keys at a time: a TM x TM block of weights, TM value rows
            T pa[TM][TM];
#pragma unroll
            for (int a = 0; a < TM; ++a) Vec<T, TM>::load(Ps + (ty * TM + a) * LD + n0, pa[a]);
#pragma unroll
            for (int b = 0; b < TM; ++b) {
                T vb[DVT];
                Vec<T, DVT>::load(Vs + (n0 + b) * DVP + tx * DVT, vb);
#pragma unroll
                for (int a = 0; a < TM; ++a)
#pragma unroll
                    for (int j = 0; j < DVT; ++j) acc[a][j] += pa[a][b] * vb[j];
            }
        }
        if (gsum && kt < qt) mid += tot;
    }

    T* Yb = Y + (size_t)bh * Tq * dv;
#pragma unroll
    for (int a = 0; a < TM; ++a) {
        const int t = q0 + ty * TM + a;
        if (t >= Tq) continue;
        const T den = (l[a] > T(0)) ? l[a] : T(1);  // no pair of positive weight: reads 0
#pragma unroll
        for (int j = 0; j < DVT; ++j) {
            const int c = tx * DVT + j;
            if (c < dv) {
                const T y = acc[a][j] / den;
                bad |= !isfinite(y);
                Yb[(size_t)t * dv + c] = y;
            }
        }
    }
    if (bad) *FLAG = 1;  // a plain store: every writer writes the same value
}

// ---- variant "v2": register tiles of RM query rows x RN keys, key tiles of BK = NTX * RN, query tiles of
// BQ = NTY * RM (a multiple of BK), NTY * NTX threads. Thread (ty, tx) owns the query rows ty + NTY * a,
// the keys tx + NTX * b of each key tile (conflict-free 16-byte reads of the row-major key tile: its row
// length in 16-byte units is odd) and the value columns tx * W + NTX * W * c + w (W = 16 / sizeof(T)).
// Logits are in log2 units (log2 e folded into tau2 and the log-weights): p = exp2(v - max). Gated calls
// read three precomputed block-local gate sums: PRE (inclusive prefix within each query tile), SUF
// (exclusive suffix within each key tile), TOT (each key tile's total); a key tile inside the query tile
// forms its gate sums as running sums per key column in shared memory (segsum's order). vec: bit 1 - Q / K
// rows are 16-byte aligned (d_k % W == 0), bit 2 - V rows are (d_v % W == 0).
template <typename T> __device__ __forceinline__ T ex2(T x);
#ifdef __CUDA_ARCH__  // the MUFU approximation (relative error ~2^-22; a result below 2^-126 reads 0)
template <> __device__ __forceinline__ float ex2<float>(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#else
template <> __device__ __forceinline__ float ex2<float>(float x) { return exp2f(x); }
#endif
template <> __device__ __forceinline__ double ex2<double>(double x) { return exp2(x); }

template <typename T, int N>
__device__ __forceinline__ void load_row(const T* __restrict__ src, int n_valid, bool vec, T* o) {
    if (vec && n_valid >= N) {
        Vec<T, N>::load(src, o);
    } else {
#pragma unroll
        for (int w = 0; w < N; ++w) o[w] = (w < n_valid) ? src[w] : T(0);
    }
}

// one 16-byte chunk of a key / value row into shared memory; async (DB, 16-byte aligned rows): cp.async,
// zero-filled where n_valid < W (past the sequence or the row), waited for by cp_async_wait
template <typename T, int W>
__device__ __forceinline__ void copy_chunk(T* dst, const T* src, int n_valid, bool vec, bool async) {
#ifdef __CUDA_ARCH__
    if (async && vec) {
        const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
        const int bytes = (n_valid >= W) ? 16 : 0;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(bytes)
                     : "memory");
        return;
    }
#endif
    T v[W];
    load_row<T, W>(src, n_valid, vec, v);
    Vec<T, W>::store(dst, v);
}
#ifdef __CUDA_ARCH__
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait1() { asm volatile("cp.async.wait_group 1;\n" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }
#else  // the host emulator copies at once
static inline void cp_async_commit() {}
static inline void cp_async_wait1() {}
static inline void cp_async_wait_all() {}
#endif

// DB = 1: two key / value buffers, the next tile fetched with cp.async while this one is used
template <typename T, int NTY, int NTX, int RM, int RN, int DVT, int DB>
__global__ void __launch_bounds__(NTY * NTX) nw_forward2(
    const T* __restrict__ Q, const T* __restrict__ K, const T* __restrict__ V,
    const T* __restrict__ G, const T* __restrict__ LB, const T* __restrict__ PRE,
    const T* __restrict__ SUF, const T* __restrict__ TOT, T* __restrict__ Y, int* __restrict__ FLAG,
    const int BH, const int Tq, const int Tk, const int dk, const int dv,
    const T tau2, const int causal, const int window, const int gated, const int sinks, const int vec)
{
    constexpr int NTH = NTY * NTX;
    constexpr int W = 16 / (int)sizeof(T);
    constexpr int BQ = NTY * RM, BK = NTX * RN;
    constexpr int DVP = NTX * DVT;
    constexpr int LDP = BK + 32 / (int)sizeof(T);  // weights' row: conflict-free scalar stores
    static_assert(BQ % BK == 0, "a key tile lies before or inside a query tile");
    static_assert(BK % W == 0 && DVT % W == 0 && 32 % NTX == 0 && NTH % 32 == 0, "tile shape");
    const T NEG = neg_inf<T>();
    const T L2E = T(1.4426950408889634);
    const int dkp = (dk + W - 1) / W * W;
    const int LDK = ((dkp / W) % 2 == 0) ? dkp + W : dkp;  // odd in 16-byte units
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* Qs = reinterpret_cast<T*>(smem_raw);  // (BQ, LDK) the query tile, zero past dk
    T* Ks0 = Qs + BQ * LDK;                  // (1 + DB, BK, LDK) the key tile(s)
    T* Vs0 = Ks0 + (1 + DB) * BK * LDK;      // (1 + DB, BK, DVP) the value tile(s), zero past dv
    T* Ps = Vs0 + (1 + DB) * BK * DVP;       // (BQ, LDP) weights; first the in-tile gate sums
    T* gq = Ps + BQ * LDP;                   // (BQ) the query tile's log-gates
    T* preq = gq + BQ;                       // (BQ) PRE of the query tile
    T* keyk = preq + BQ;                     // (BK) (SUF +) log write strength, times log2 e; -inf past Tk

    const int nqt = (Tq + BQ - 1) / BQ;
    const long long idx = blockIdx.x;
    const int bh = (int)(idx % BH);
    const int qt = causal ? nqt - 1 - (int)(idx / BH) : (int)(idx / BH);  // causal: heavy tiles first
    const int q0 = qt * BQ;
    const int tid = threadIdx.x;
    const int tx = tid % NTX, ty = tid / NTX;
    const bool gsum = causal && gated;
    const bool vqk = (vec & 1) != 0, vv = (vec & 2) != 0;

    const T* Qb = Q + (size_t)bh * Tq * dk;
    const T* Kb = K + (size_t)bh * Tk * dk;
    const T* Vb = V + (size_t)bh * Tk * dv;
    const T* Gb = G + (size_t)bh * Tk;
    const T* LBb = LB + (size_t)bh * Tk;
    const int nch = dkp / W, nvc = DVP / W;  // 16-byte chunks of a query / key row, of a value row

    // FLAG (the output's vouch for Q, K, V: Deferred.vouch): set where an entry of Q, K or V this call
    // reads, or an output it writes, is not finite. Each block tests its query rows; each key / value tile
    // is tested once, by the block that meets it inside its query tile (causal: every block visits those
    // first, before any skip or stop) or by the first query tile's block (non-causal: all tiles)
    int bad = 0;
    for (int e = tid; e < BQ * nch; e += NTH) {
        const int r = e / nch, c = (e - r * nch) * W;
        const int t = q0 + r;
        T v[W];
        load_row<T, W>(Qb + (size_t)t * dk + c, (t < Tq) ? dk - c : 0, vqk, v);
#pragma unroll
        for (int w = 0; w < W; ++w) bad |= !isfinite(v[w]);  // zero past the row and the sequence
        Vec<T, W>::store(Qs + r * LDK + c, v);
    }
    if (gsum)
        for (int r = tid; r < BQ; r += NTH) {
            const int t = q0 + r;
            gq[r] = (t < Tk) ? Gb[t] : T(0);
            preq[r] = (t < Tq) ? PRE[(size_t)bh * Tq + t] : T(0);
        }

    T acc[RM][DVT];
    T m[RM], lp[RM];  // running max (log2 units) and this thread's part of the normaliser
#pragma unroll
    for (int a = 0; a < RM; ++a) {
        m[a] = NEG;
        lp[a] = T(0);
#pragma unroll
        for (int j = 0; j < DVT; ++j) acc[a][j] = T(0);
    }
    T mid = T(0);  // sum of the totals of the key tiles strictly between kt and the query tile

    const int nkt = (Tk + BK - 1) / BK;
    const int kt_hi = causal ? (min(q0 + BQ, Tk) - 1) / BK : nkt - 1;
    const int last_sink_tile = (causal && window > 0 && sinks > 0) ? (sinks - 1) / BK : -1;
    // key tiles (rows k0 .. k0 + BK - 1) into buffer b: cp.async where DB, else loads and stores
    auto fetch = [&](int k0, int b) {
        T* Kd = Ks0 + b * (BK * LDK);
        T* Vd = Vs0 + b * (BK * DVP);
        for (int e = tid; e < BK * nch; e += NTH) {
            const int r = e / nch, c = (e - r * nch) * W;
            const int t = k0 + r;
            const T* src = (t < Tk) ? Kb + (size_t)t * dk + c : Kb;
            copy_chunk<T, W>(Kd + r * LDK + c, src, (t < Tk) ? dk - c : 0, vqk, DB != 0);
        }
        for (int e = tid; e < BK * nvc; e += NTH) {
            const int r = e / nvc, c = (e - r * nvc) * W;
            const int t = k0 + r;
            const T* src = (t < Tk && c < dv) ? Vb + (size_t)t * dv + c : Vb;
            copy_chunk<T, W>(Vd + r * DVP + c, src, (t < Tk) ? dv - c : 0, vv, DB != 0);
        }
    };
    // the walk: from kt_hi backwards; where the window would end it (every pair of the next tile and of all
    // earlier ones outside it), on at the last tile holding a sink, or stop
    int kt = kt_hi, buf = 0;
    if (DB) {
        fetch(kt * BK, 0);
        cp_async_commit();
    }
    while (kt >= 0) {
        const int k0 = kt * BK;
        const bool before = causal && k0 < q0;  // else: inside the query tile (causal) or non-causal
        const bool diag = causal && !before;
        if (gsum && before && mid == NEG) break;  // behind a hard reset: every earlier weight is 0
        int nxt = kt - 1;
        if (nxt >= 0 && causal && window > 0 && q0 - (nxt * BK + BK - 1) >= window && nxt > last_sink_tile)
            nxt = last_sink_tile;  // -1 without sinks: stop
        __syncthreads();  // the previous tile's reads of Ks / Vs / Ps / keyk are done
        if (DB) {
            if (nxt >= 0) fetch(nxt * BK, buf ^ 1);
            cp_async_commit();
            cp_async_wait1();  // this tile's copies (the group before the newest) have landed
        } else {
            fetch(k0, 0);
        }
        const T* Ks = Ks0 + buf * (BK * LDK);
        const T* Vs = Vs0 + buf * (BK * DVP);
        for (int n = tid; n < BK; n += NTH) {
            const int i = k0 + n;
            T lb = (i < Tk) ? LBb[i] : NEG;
            if (gsum && before && i < Tk) lb = SUF[(size_t)bh * Tk + i] + lb;
            keyk[n] = lb * L2E;
            if (gsum && diag) {  // column n: sum_{j=i+1}^{t} g_j for t >= i, in segsum's order
                const int ri = i - q0;
                T u = T(0);
                Ps[ri * LDP + n] = T(0);
                for (int r = ri + 1; r < BQ; ++r) {
                    u += gq[r];
                    Ps[r * LDP + n] = u;
                }
            }
        }
        __syncthreads();
        if (causal ? diag : qt == 0) {  // this tile's keys and values, as they landed (zero past Tk)
            for (int e = tid; e < BK * dk; e += NTH) {
                const int r = e / dk;
                bad |= !isfinite(Ks[r * LDK + (e - r * dk)]);
            }
            for (int e = tid; e < BK * dv; e += NTH) {
                const int r = e / dv;
                bad |= !isfinite(Vs[r * DVP + (e - r * dv)]);
            }
        }

        T s[RM][RN];
#pragma unroll
        for (int a = 0; a < RM; ++a)
#pragma unroll
            for (int b = 0; b < RN; ++b) s[a][b] = T(0);
        for (int k = 0; k < dkp; k += W) {
            T kv[RN][W];
#pragma unroll
            for (int b = 0; b < RN; ++b) Vec<T, W>::load(Ks + (tx + NTX * b) * LDK + k, kv[b]);
#pragma unroll
            for (int a = 0; a < RM; ++a) {
                T qv[W];
                Vec<T, W>::load(Qs + (ty + NTY * a) * LDK + k, qv);
#pragma unroll
                for (int b = 0; b < RN; ++b)
#pragma unroll
                    for (int w = 0; w < W; ++w) s[a][b] += qv[w] * kv[b][w];
            }
        }
        const bool wedge = causal && window > 0 && (q0 + BQ - 1) - k0 >= window;  // a pair outside it
        T kterm[RN];
#pragma unroll
        for (int b = 0; b < RN; ++b) kterm[b] = keyk[tx + NTX * b];
#pragma unroll
        for (int a = 0; a < RM; ++a) {
            const int r = ty + NTY * a;
            const T rterm = (gsum && before) ? (preq[r] + mid) * L2E : T(0);
            T rmax = NEG;
#pragma unroll
            for (int b = 0; b < RN; ++b) {
                const int n = tx + NTX * b;
                T lg = rterm + kterm[b];
                if (diag || wedge) {
                    const int t = q0 + r, i = k0 + n;
                    if (diag) {
                        if (i > t) lg = NEG;
                        else if (gsum) lg = Ps[r * LDP + n] * L2E + kterm[b];
                    }
                    if (wedge && t - i >= window && i >= sinks) lg = NEG;
                }
                const T v = (lg == NEG) ? NEG : lg + tau2 * s[a][b];  // masked: -inf whatever the logit
                s[a][b] = v;
                rmax = mx(rmax, v);
            }
#pragma unroll
            for (int off = NTX / 2; off > 0; off >>= 1)
                rmax = mx(rmax, __shfl_xor_sync(0xffffffffu, rmax, off));
            const T mn = mx(m[a], rmax);
            const T sh = (mn == NEG) ? T(0) : mn;  // a row with no pair yet: weights exp2(-inf) = 0
            const T scale = ex2(m[a] - sh);         // 0 while the row had no pair (m = -inf)
            T rs = T(0);
#pragma unroll
            for (int b = 0; b < RN; ++b) {
                const T p = ex2(s[a][b] - sh);
                s[a][b] = p;
                rs += p;
            }
            lp[a] = lp[a] * scale + rs;
            m[a] = mn;
#pragma unroll
            for (int j = 0; j < DVT; ++j) acc[a][j] *= scale;
        }
        // each thread overwrites only the gate sums it read itself: no barrier between
#pragma unroll
        for (int a = 0; a < RM; ++a)
#pragma unroll
            for (int b = 0; b < RN; ++b) Ps[(ty + NTY * a) * LDP + tx + NTX * b] = s[a][b];
        __syncthreads();
        for (int n0 = 0; n0 < BK; n0 += W) {
            T pv[RM][W];
#pragma unroll
            for (int a = 0; a < RM; ++a) Vec<T, W>::load(Ps + (ty + NTY * a) * LDP + n0, pv[a]);
#pragma unroll
            for (int w = 0; w < W; ++w) {
#pragma unroll
                for (int c = 0; c < DVT / W; ++c) {
                    T vw[W];
                    Vec<T, W>::load(Vs + (n0 + w) * DVP + tx * W + NTX * W * c, vw);
#pragma unroll
                    for (int a = 0; a < RM; ++a)
#pragma unroll
                        for (int j = 0; j < W; ++j) acc[a][c * W + j] += pv[a][w] * vw[j];
                }
            }
        }
        if (gsum && before) mid += TOT[(size_t)bh * nkt + kt];
        if (gsum)
            for (int j = kt - 1; j > nxt && nxt >= 0; --j) mid += TOT[(size_t)bh * nkt + j];  // jumped over
        kt = nxt;
        buf ^= DB;
    }
    if (DB) cp_async_wait_all();  // no copy outstanding when the block ends (a break behind a reset)

    T* Yb = Y + (size_t)bh * Tq * dv;
#pragma unroll
    for (int a = 0; a < RM; ++a) {
        T l = lp[a];
#pragma unroll
        for (int off = NTX / 2; off > 0; off >>= 1) l += __shfl_xor_sync(0xffffffffu, l, off);
        const int t = q0 + ty + NTY * a;
        if (t >= Tq) continue;
        const T den = (l > T(0)) ? l : T(1);  // no pair of positive weight: reads 0
#pragma unroll
        for (int c = 0; c < DVT / W; ++c)
#pragma unroll
            for (int j = 0; j < W; ++j) {
                const int col = tx * W + NTX * W * c + j;
                if (col < dv) {
                    const T y = acc[a][c * W + j] / den;
                    bad |= !isfinite(y);
                    Yb[(size_t)t * dv + col] = y;
                }
            }
    }
    if (bad) *FLAG = 1;  // a plain store: every writer writes the same value
}

// v2's gate sums (tile_sums) in one launch: thread i < BH * nqt sums query tile i % nqt of sequence
// i / nqt from its start (PRE, inclusive); the next BH * nkt threads sum a key tile from its end (SUF, the
// exclusive suffix; TOT, the total). Sequential in each tile: NumPy's cumsum order, so the bits of
// tile_sums on the host; zero past the sequence, as the padded tiles there
template <typename T>
__global__ void gate_tile_sums(const T* __restrict__ G, T* __restrict__ PRE, T* __restrict__ SUF,
                               T* __restrict__ TOT, const int BH, const int Tq, const int Tk, const int BQ,
                               const int BK)
{
    const int nqt = (Tq + BQ - 1) / BQ, nkt = (Tk + BK - 1) / BK;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long nq = (long long)BH * nqt;
    if (i < nq) {
        const int bh = (int)(i / nqt), t0 = (int)(i % nqt) * BQ;
        const T* g = G + (size_t)bh * Tk;
        T* pre = PRE + (size_t)bh * Tq;
        T s = T(0);
        for (int t = t0; t < t0 + BQ && t < Tq; ++t) {
            s += (t < Tk) ? g[t] : T(0);
            pre[t] = s;
        }
    } else if (i < nq + (long long)BH * nkt) {
        const long long j = i - nq;
        const int bh = (int)(j / nkt), kt = (int)(j % nkt);
        const T* g = G + (size_t)bh * Tk;
        T* suf = SUF + (size_t)bh * Tk;
        T s = T(0);
        for (int t = kt * BK + BK - 1; t >= kt * BK; --t) {
            if (t < Tk) {
                suf[t] = s;  // sum_{j = t + 1}^{end of the tile}
                s += g[t];
            } else {
                s += T(0);  // (the padding's zeros, added as the array form adds them)
            }
        }
        TOT[(size_t)bh * nkt + kt] = s;
    }
}
"""

_DTYPES = {"float32": "float", "float64": "double"}

#: whether a layer call's output vouches for Q, K and V by the kernels' flag (``Deferred.vouch``: no
#: finiteness pass over Q, K, V or the output); off, they are tested by passes of their own, as before
#: (``benchmarks/gpu_host_profile.py`` times both)
VOUCH = True

#: which kernel :func:`forward` runs by default: ``"v2"`` (register tiles of ``RM`` x ``RN``, query tiles
#: longer than key tiles, exp2 with log2 e folded in, precomputed gate sums) or ``"v1"`` (square ``C``-long
#: tiles, 16 x 16 threads; kept so that a GPU run can compare). v2 falls back to v1 where its tiles do not
#: fit shared memory.
VARIANT = "v2"

#: v2's default tile shape per dtype, ``(NTY, NTX, RM, RN[, DB])``: ``NTY * NTX`` threads, query tiles of
#: ``BQ = NTY * RM`` rows, key tiles of ``BK = NTX * RN`` (``BQ % BK == 0``, ``NTX`` divides 32); ``DB = 1``:
#: two key / value buffers in shared memory, the next tile copied by ``cp.async`` while this one is used
#: (more shared memory: fewer blocks per SM; default 0, one buffer, two blocks per SM in float32 at d = 64)
CONFIGS = {"float32": (16, 8, 8, 8), "float64": (16, 8, 4, 4)}

#: the shape where :data:`CONFIGS`' query tiles would give fewer than :data:`SMALL_GRID_BLOCKS` blocks a
#: call (BH x query tiles): half as many rows a thread, twice the blocks, so the causal grid's uneven tiles
#: balance over the SMs. One H200, B = 8, H = 16, d = 64, float32 kernel alone (``.dev`` sweep, median of 20):
#: causal softmax 0.774 against 0.912 ms at T = 1024 (1024 blocks), 2.809 against 2.846 at 2048, 10.43
#: against 9.96 at 4096; forgetting attention 1.155 against 1.235 ms at T = 1024. Causal softmax gives the
#: same bits in both shapes; gated weights differ by rounding (7e-8: the gate sums group by query tile).
SMALL_CONFIGS = {"float32": (16, 8, 4, 8)}
SMALL_GRID_BLOCKS = 2048

#: shapes ``benchmarks/gpu_fused_nw.py`` sweeps (each must satisfy the constraints of :data:`CONFIGS`)
SWEEP = {
    "float32": (
        (16, 8, 8, 8),
        (16, 8, 8, 8, 1),
        (16, 8, 4, 8),
        (16, 8, 4, 8, 1),
        (32, 8, 4, 8),
        (8, 8, 8, 8),
        (16, 8, 8, 4),
        (32, 4, 4, 8),
    ),  # fmt: skip
    "float64": ((16, 8, 4, 4), (16, 8, 4, 4, 1), (16, 8, 4, 8), (16, 8, 2, 4), (8, 8, 4, 4)),
}

#: most accumulator entries (``RM * DVT``) a v2 thread holds in float32 (double: half): beyond it RM halves
_MAX_ACC = 64


def _dvt(dv):
    """Value columns per thread: 1, 2, 4 or 8 (``NT * DVT >= dv``)."""
    return 1 << max(0, (-(-dv // NT) - 1).bit_length())


def _shared_words(C, dk, dv, itemsize):
    LD = C + 16 // itemsize
    return 2 * dk * LD + C * LD + C * NT * _dvt(dv) + 4 * C + 1


def tile_length(dtype_name, dk, dv, limit_bytes, prefer=None):
    """The kernel's tile length ``C`` (``prefer``, else 64, else 32) whose shared memory fits
    ``limit_bytes``; ``None`` where none does or ``dv > MAX_DV``. ``prefer`` is one of :data:`TILES`."""
    if dtype_name not in _DTYPES or dv > MAX_DV or dk < 1 or dv < 1:
        return None
    itemsize = 4 if dtype_name == "float32" else 8
    if prefer == 128 and itemsize == 8:
        prefer = None  # 8 x 8 double register tiles spill (ptxas: 255 registers and ~1 KiB of spills)
    for C in ((prefer,) if prefer else ()) + (64, 32):
        if _shared_words(C, dk, dv, itemsize) * itemsize <= limit_bytes:
            return C
    return None


def _shared_limit():
    """The opt-in shared memory of a block on the current device, cached per device (reading
    ``Device.attributes`` queries every attribute: tens of microseconds before every launch)."""
    return device_attribute("MaxSharedMemoryPerBlockOptin", 48 * 1024)


def default_config(dtype_name, BH, Tq):
    """The tile shape a call without ``config`` takes: :data:`SMALL_CONFIGS` where :data:`CONFIGS`' query
    tiles would make fewer than :data:`SMALL_GRID_BLOCKS` blocks (from the shapes alone, never values)."""
    base = CONFIGS[dtype_name]
    small = SMALL_CONFIGS.get(dtype_name)
    if small is not None and BH * -(-Tq // (base[0] * base[2])) < SMALL_GRID_BLOCKS:
        return small
    return base


def _v2_shape(dtype_name, dk, dv, limit_bytes, config=None, BH=0, Tq=0):
    """v2's template arguments ``(NTY, NTX, RM, RN, DVT)`` and shared bytes for a call, or ``None`` where its
    tiles do not fit ``limit_bytes`` (or ``dv > MAX_DV``). Without ``config``: :func:`default_config` of
    ``BH`` sequences of ``Tq`` queries (0, 0: :data:`CONFIGS`)."""
    if dtype_name not in _DTYPES or dv > MAX_DV or dk < 1 or dv < 1:
        return None
    itemsize = 4 if dtype_name == "float32" else 8
    W = 16 // itemsize
    NTY, NTX, RM, RN, *rest = config or (default_config(dtype_name, BH, Tq) if BH else CONFIGS[dtype_name])
    DB = int(rest[0]) if rest else 0
    DVT = W * -(-dv // (NTX * W))
    if config is None:
        while RM * DVT * itemsize > _MAX_ACC * 4 and NTY * RM // 2 >= NTX * RN and RM > 1:
            RM //= 2  # wide values: fewer rows a thread, so that the accumulator stays in registers
    BQ, BK = NTY * RM, NTX * RN
    if BQ % BK or BK % W or 32 % NTX or (NTY * NTX) % 32 or DB not in (0, 1):
        raise ValueError(f"config {config}: needs BQ % BK == 0, BK % {W} == 0, NTX | 32, DB in (0, 1)")
    dkp = -(-dk // W) * W
    LDK = dkp + W if (dkp // W) % 2 == 0 else dkp
    LDP = BK + 32 // itemsize
    words = (BQ + (1 + DB) * BK) * LDK + (1 + DB) * BK * NTX * DVT + BQ * LDP + 2 * BQ + BK
    if words * itemsize > limit_bytes:
        return None
    return (NTY, NTX, RM, RN, DVT, DB), words * itemsize


def tile_sums(xp, g, BQ, BK, Tq):
    """v2's gate sums, all block-local: ``PRE`` (BH, T_q) the inclusive prefix of g within each query tile
    of ``BQ``, ``SUF`` (BH, T_k) the exclusive suffix within each key tile of ``BK`` (a shifted inclusive
    suffix, never a difference), ``TOT`` (BH, n_key_tiles) each key tile's total."""
    xp = array_api_compat.array_namespace(g)  # the compatible namespace (raw CuPy has no concat)
    BH, Tk = g.shape
    dev = array_api_compat.device(g)

    def tiles(n, B):
        nt = -(-n // B)
        x = g[:, : min(n, Tk)]
        pad = nt * B - x.shape[1]
        if pad:
            x = xp.concat([x, xp.zeros((BH, pad), dtype=g.dtype, device=dev)], axis=-1)
        return xp.reshape(x, (BH, nt, B))

    pre = xp.reshape(xp.cumulative_sum(tiles(Tq, BQ), axis=-1), (BH, -1))[:, :Tq]
    incl = xp.flip(xp.cumulative_sum(xp.flip(tiles(Tk, BK), axis=-1), axis=-1), axis=-1)  # sum_{j=i}^{end}
    zero = xp.zeros(incl.shape[:2] + (1,), dtype=g.dtype, device=dev)
    suf = xp.reshape(xp.concat([incl[..., 1:], zero], axis=-1), (BH, -1))[:, :Tk]
    return pre, suf, incl[..., 0]


def device_tile_sums(g, BQ, BK, Tq):
    """:func:`tile_sums` of a C-contiguous CuPy ``g`` (BH, T_k) by one launch (``gate_tile_sums``): the
    same sums in the same order as NumPy's, where the array form took two scans, two concatenations and
    their copies (~200 us of host time before a forgetting-attention launch at T = 1024)."""
    import cupy

    BH, Tk = g.shape
    nqt, nkt = -(-Tq // BQ), -(-Tk // BK)
    pre = cupy.empty((BH, Tq), dtype=g.dtype)
    suf = cupy.empty((BH, Tk), dtype=g.dtype)
    tot = cupy.empty((BH, nkt), dtype=g.dtype)
    n = BH * (nqt + nkt)
    fn = compiled(_SOURCE, f"gate_tile_sums<{_DTYPES[_array.dtype_str(g.dtype)]}>")
    i32 = cupy.int32
    fn((-(-n // 128),), (128,), (g, pre, suf, tot, i32(BH), i32(Tq), i32(Tk), i32(BQ), i32(BK)))
    return pre, suf, tot


def _kernel(tname, TM, DVT):
    return compiled(_SOURCE, f"nw_forward<{tname}, {TM}, {DVT}>")


def _kernel2(tname, shape):
    return compiled(_SOURCE, f"nw_forward2<{tname}, {', '.join(str(x) for x in shape)}>")


def _on_device(xp):
    """Whether the kernel can run on this namespace (tests replace it to run the reference on the host)."""
    return array_api_compat.is_cupy_namespace(xp)


# --- operands (shared by the kernel and the reference) --------------------------------------------------
def operands(xp, layer, P):
    """The kernel's operands of a call, or ``None`` where the kernel does not apply to it.

    Returns a dict ``Q (BH, T_q, d_k), K (BH, T_k, d_k), V (BH, T_k, d_v), g (BH, T_k), logb (BH, T_k),
    tau, causal, window, gated, sinks`` (``window`` 0: none; ``sinks``: the first keys a window keeps).
    Non-causal: ``g`` is 0 and ``logb`` the last step's per-key log-weights (window included).
    """
    from ...regressors.nonparametric import last_log_weights, log_strength
    from ...similarity import ExpDot, Gaussian

    reg = layer.regressor
    sim = getattr(reg, "similarity", None)
    if int(getattr(reg, "order", -1)) != 0 or type(sim) not in (ExpDot, Gaussian):
        return None
    if P.steps_per_token != 1 or _array.dtype_str(P.dtype) not in _DTYPES:
        return None
    Tq, Tk = P.Q.shape[-2], P.K.shape[-2]
    if P.causal and Tq != Tk:
        return None
    BH = P.n_batch
    Q, K, V = P.Q, P.K, P.V
    if P.causal and type(sim) is ExpDot and P.b_constant is not None and P.b_constant > 0:
        # strengths fixed by the call (no beta, no padding): (BH, T_k) constants, no launch on a repeat
        shape = (BH, Tk)  # the kernel's own shape: no reshape a call
        logb = _array.constant(xp, shape, math.log(P.b_constant), P.dtype, P.device)
        g = P.g[..., 0] if P.gated else _array.constant(xp, shape, 0.0, P.dtype, P.device)
    elif P.causal:
        g = P.g[..., 0]
        logb = log_strength(xp, P.b)
    else:
        logb = last_log_weights(xp, P)
        g = xp.zeros_like(logb)
    if type(sim) is Gaussian:
        # -|q - k|^2 / 2h^2 = (q.k - |k|^2 / 2) / h^2 - |q|^2 / 2h^2; the last term cancels per query
        h2 = float(sim.bandwidth) ** 2
        if Tk > 0:
            ref = K[..., :1, :]  # the first key: in every query's past (sq_distances' shift)
            Q, K = Q - ref, K - ref
        logb = logb - xp.sum(K * K, axis=-1) / (2.0 * h2)
        tau = 1.0 / h2
    else:
        tau = sim.resolved_scale(P.d_k)

    def flat(x, tail):
        shape = tuple(x.shape)
        if shape == (BH,) + tail:  # a constant made in this shape (or a batch of one dimension)
            return x
        full = P.batch_shape + tail
        if shape != full:  # the usual call's arrays have their full shape: no broadcast view
            x = xp.broadcast_to(x, full)
        return xp.reshape(x, (BH,) + tail)

    w = P.window
    window = 0 if (w is None or not P.causal or w >= Tk) else int(w)
    return {
        "Q": flat(Q, (Tq, P.d_k)),
        "K": flat(K, (Tk, P.d_k)),
        "V": flat(V, (Tk, P.d_v)),
        "g": flat(g, (Tk,)),
        "logb": flat(logb, (Tk,)),
        "tau": float(tau),
        "causal": bool(P.causal),
        "window": window,
        "gated": bool(P.gated),  # False: no gate can decay, every g is 0 (known without reading g)
        "sinks": int(getattr(P, "sinks", 0) or 0) if window else 0,  # a window wider than T keeps all
    }


def nadaraya_watson(layer, P):
    """Outputs (*batch, T_q, d_v) of tiled softmax / NW by the kernel, or ``None`` where it does not
    apply (module docstring)."""
    xp = P.xp
    if not ENABLED or not _on_device(xp):
        return None
    if P.d_v > MAX_DV or P.Q.shape[-2] == 0 or P.K.shape[-2] == 0:
        return None
    ops = operands(xp, layer, P)
    if ops is None:
        return None
    # the output vouches for Q, K and V (Deferred.vouch): the kernel tests every entry of them it reads, and
    # it reads all of them (every key / value tile lies inside some query tile), whatever the weights do
    # to them (an infinite query's row of -inf logits reads a finite 0; a window drops keys from a row)
    flag = P.checks.new_flag() if (VOUCH and P.checks is not None) else None
    if flag is not None:
        ops["flag"] = flag
    try:
        Y = forward(xp, **ops)
    except Exception as exc:
        if type(exc).__name__ != "CompileException":  # cupy.cuda.compiler: NVRTC refused the source
            raise
        _disable(exc)
        return None
    if Y is None:
        return None
    Y = xp.reshape(Y, P.batch_shape + (P.Q.shape[-2], P.d_v))
    if flag is not None:
        P.checks.vouch(Y, flag)
    return Y


#: zeroed device flags (int32, one entry) for planned calls, per device: a flag read back as 0 is handed
#: out again, so a planned call allocates and clears none (a fill is a launch: host time)
_FREE_FLAGS: dict = {}


def _take_flag(xp, dev):
    free = _FREE_FLAGS.get(dev)
    return free.pop() if free else xp.zeros(1, dtype=xp.int32)


def plan(layer, P, log_alpha=None):
    """The launch of :mod:`ttr_stats._plans` for calls after this one with the same signature:
    ``launch(Q, K, V, log_alpha)``, the kernel on the new arrays with this call's other operands (the same
    constants, scale and mode, so the same bits), or ``None`` where a call's operands would depend on
    more than those arrays (strengths, padding, a Gaussian similarity's shifted keys, gates a component
    transforms) or the kernel does not run it.

    ``log_alpha``: the call's own log-gates (forgetting attention), or ``None``. They are the kernel's
    ``g`` as they are (``Weights.resolve`` of scalar decay adds an axis; the optimizer adds no
    forgetting), so a planned call passes the new ones and tests them for finiteness and ``<= 0`` with
    the one-pass kernel the full call uses (``_validation._launch_within``). Weights with a constant
    decay (no ``log_alpha``) keep their gate constants in the plan.

    The launch reports nothing itself: its kernel's flag covers every entry of Q, K, V and the output,
    and where a flag is set, or a switch of this module is off, the launch declines and the full call
    runs (which names the bad argument)."""
    from ... import _validation
    from ...similarity import ExpDot
    from ...weights import Weights

    xp = P.xp
    if not (ENABLED and VOUCH and _on_device(xp)) or P.checks is None or not P.checks.lazy:
        return None
    if not P.causal or P.lengths is not None or P.inputs is not None or P.b_constant is None:
        return None
    if type(getattr(layer.regressor, "similarity", None)) is not ExpDot or P.d_v > MAX_DV:
        return None
    w, opt = layer.weights, layer.optimizer
    if log_alpha is not None and (
        type(w).resolve is not Weights.resolve or w.per_dimension or opt.log_forgetting()
        or opt.needs_positive_decay or log_alpha.dtype != P.dtype or not log_alpha.flags.c_contiguous
        or tuple(log_alpha.shape) != tuple(P.batch_shape) + (P.T,)
    ):  # fmt: skip
        return None  # (gates that reach the kernel other than as they are)
    Tq, Tk = P.Q.shape[-2], P.K.shape[-2]
    if Tq == 0 or Tk == 0 or not all(x.flags.c_contiguous for x in (P.Q, P.K, P.V)):
        return None  # (the full call copies a strided operand; the launch passes pointers as they are)
    ops = operands(xp, layer, P)
    if ops is None:
        return None
    BH, dv = P.n_batch, P.d_v
    shapes = ((BH, Tq, P.d_k), (BH, Tk, P.d_k), (BH, Tk, dv))
    out_shape = P.batch_shape + (Tq, dv)
    gates = log_alpha is not None
    rest = {k: v for k, v in ops.items() if k not in ("Q", "K", "V") + (("g",) if gates else ())}
    dev = _array.device(P.K)
    dev = getattr(dev, "id", dev)
    dt = P.dtype
    g = None if gates else rest["g"]  # (the call's own gates are never kept: they are its inputs)
    lb = rest["logb"]
    gated = bool(rest["gated"])
    go = None
    if forward is _FORWARD and VARIANT == "v2":  # (the key holds the strides: contiguous in every call)
        ok = gates or (g.flags.c_contiguous and g.dtype == dt)
        if ok and lb.flags.c_contiguous and lb.dtype == dt:
            go = _launch2(BH, Tq, Tk, P.d_k, dv, dt, rest["tau"], True, rest["window"], gated,
                          rest["sinks"], None)  # fmt: skip
    settings = _settings(dt)
    # (the launch holds signature-sized constants only: never P, whose arrays are the first call's inputs)

    def launch(Q, K, V, log_alpha=None):
        if not (ENABLED and VOUCH and _validation.FUSED_FINITE) or (log_alpha is not None) != gates:
            return None
        direct = go is not None and settings == _settings(dt) and forward is _FORWARD
        if direct and (Q.data.ptr % 16 or K.data.ptr % 16 or V.data.ptr % 16):
            return None  # (the kernel's 16-byte loads; the full call copies)
        if direct and gates and log_alpha.data.ptr % 16:
            return None  # (the full call copies such gates too: _aligned)
        if gates:  # finite and <= 0, as the full call tests them (its verdicts: read below)
            within = _validation._launch_within(log_alpha, -math.inf, 0.0, False, False)
            gf = xp.reshape(log_alpha, (BH, Tk))
        else:
            gf = g
        flag = _take_flag(xp, dev)
        if direct:
            Y = go(Q, K, V, gf, lb, flag, out_shape)  # no reshape: the kernel reads the pointers
        else:  # the module's forward (another variant, or the tests' host kernel)
            Q3, K3, V3 = (xp.reshape(x, s) for x, s in zip((Q, K, V), shapes, strict=True))
            extra = {"g": gf} if gates else {}
            Y = forward(xp, Q=Q3, K=K3, V=V3, flag=flag, **extra, **rest)
            Y = None if Y is None else xp.reshape(Y, out_shape)
        if Y is None or int(_array.to_numpy(flag)[0]):  # (the one read: it waits for the kernel)
            return None  # a non-finite entry: the full call names it
        _FREE_FLAGS.setdefault(dev, []).append(flag)
        if gates and _array.to_numpy(within).any():
            return None  # a gate out of range or not finite: the full call names it
        return Y

    return launch


def _settings(dt):
    """The module settings a v2 launch's shape depends on (a plan made under others declines)."""
    name = _array.dtype_str(dt)
    return (VARIANT, CONFIGS.get(name), SMALL_CONFIGS.get(name), SMALL_GRID_BLOCKS, _MAX_ACC)


def _disable(exc):
    """NVRTC could not build the kernel on this installation: say so once and run the array form from now
    on (the same outputs, slower), rather than failing every ``method="tiled"`` call."""
    global ENABLED
    import warnings

    ENABLED = False
    first = str(exc).strip().splitlines()[:3]
    warnings.warn(
        "the fused tiled-softmax kernel did not compile (" + " | ".join(first) + "); method='tiled' runs "
        "the array form instead (ttr_stats.methods.kernel_smoother._fused_nw.ENABLED = False)",
        RuntimeWarning,
        stacklevel=3,
    )


def forward(
    xp, Q, K, V, g, logb, tau, causal, window, gated=True, sinks=0, C=None, variant=None, config=None,
    flag=None,
):  # fmt: skip
    """Run the kernel on the operands of :func:`operands` (CuPy); ``(BH, T_q, d_v)`` or ``None`` where the
    tile does not fit shared memory. ``variant``: ``"v1"`` or ``"v2"`` (default :data:`VARIANT`); v1's
    ``C``: a tile length of :data:`TILES` to prefer (default 64); v2's ``config``: ``(NTY, NTX, RM, RN)``
    (default :data:`CONFIGS`). Passing ``C`` alone selects v1. ``flag``: a zeroed device int32 array of one
    entry that both variants set to 1 where an entry of ``Q``, ``K`` or ``V`` or an output is not finite
    (every entry of the three is read and tested once; by default a fresh one, not returned)."""
    variant = variant or ("v1" if C is not None else VARIANT)
    if variant not in ("v1", "v2"):
        raise ValueError(f"variant must be 'v1' or 'v2', not {variant!r}")
    if variant == "v2":
        try:
            Y = _forward2(Q, K, V, g, logb, tau, causal, window, gated, sinks, config, flag)
        except Exception as exc:
            if type(exc).__name__ != "CompileException" or config is not None:
                raise
            _demote(exc)  # NVRTC refused v2 (not v1: the same module would fail there too): v1 from now on
            Y = None
        if Y is not None or config is not None:
            return Y
    return _forward1(Q, K, V, g, logb, tau, causal, window, gated, sinks, C, flag)


_FORWARD = forward  # the module's own (tests replace ``forward`` to run the kernel on the host)


def _demote(exc):
    """v2 did not compile here: say so once and run v1 from now on (the same outputs, slower)."""
    global VARIANT
    import warnings

    VARIANT = "v1"
    first = str(exc).strip().splitlines()[:3]
    warnings.warn(
        "the fused kernel's variant v2 did not compile (" + " | ".join(first) + "); v1 runs instead "
        "(ttr_stats.methods.kernel_smoother._fused_nw.VARIANT = 'v1')",
        RuntimeWarning,
        stacklevel=3,
    )


def _aligned(cupy, x, dt):
    """C-contiguous, of dtype ``dt``, its data 16-byte aligned (a view into another array may not be)."""
    if not (x.dtype == dt and x.flags.c_contiguous):  # (the usual operand is already: no call into CuPy)
        x = cupy.ascontiguousarray(x, dtype=dt)
    return x if x.data.ptr % 16 == 0 else x.copy()


def _flag(cupy, flag):
    return cupy.zeros(1, dtype=cupy.int32) if flag is None else flag


def _forward2(Q, K, V, g, logb, tau, causal, window, gated, sinks, config, flag=None):
    import cupy

    BH, Tq, dk = Q.shape
    Tk, dv = V.shape[-2], V.shape[-1]
    dt = Q.dtype
    go = _launch2(BH, Tq, Tk, dk, dv, dt, tau, causal, window, gated, sinks, config)
    if go is None:
        return None
    Qf, Kf, Vf, gf, lf = (_aligned(cupy, x, dt) for x in (Q, K, V, g, logb))
    return go(Qf, Kf, Vf, gf, lf, _flag(cupy, flag), (BH, Tq, dv))


def _launch2(BH, Tq, Tk, dk, dv, dt, tau, causal, window, gated, sinks, config):
    """v2's launch for one signature: ``go(Q, K, V, g, logb, flag, out_shape) -> Y`` on aligned
    C-contiguous operands of dtype ``dt`` (any leading shape of ``BH`` rows: the kernel reads pointers),
    or ``None`` where its tiles do not fit shared memory. Everything that depends on the signature alone
    (the tile shape, the compiled function, its shared-memory opt-in, the grid, the scalar arguments) is
    made here once; a planned call (:func:`plan`) keeps it."""
    import cupy

    tname = _DTYPES[_array.dtype_str(dt)]
    got = _v2_shape(_array.dtype_str(dt), dk, dv, _shared_limit(), config, BH=BH, Tq=Tq)
    if got is None:
        return None
    shape, smem = got
    NTY, NTX, RM, RN, DVT, _ = shape
    BQ, BK = NTY * RM, NTX * RN
    kern = _kernel2(tname, shape)
    allow_shared(kern, smem)
    W = 16 // dt.itemsize
    vec = (1 if dk % W == 0 else 0) | (2 if dv % W == 0 else 0)
    nqt = -(-Tq // BQ)
    i32 = cupy.int32
    scal = cupy.float32 if tname == "float" else cupy.float64
    tail = (i32(BH), i32(Tq), i32(Tk), i32(dk), i32(dv), scal(tau * _LOG2E))
    tail += (i32(int(causal)), i32(int(window)), i32(int(gated)), i32(int(sinks)), i32(vec))
    grid, block = (BH * nqt,), (NTY * NTX,)
    sums = causal and gated

    def go(Qf, Kf, Vf, gf, lf, flag, out_shape):
        if sums:
            pre, suf, tot = device_tile_sums(gf, BQ, BK, Tq)
        else:
            pre = suf = tot = gf  # never read
        Y = cupy.empty(out_shape, dtype=dt)
        kern(grid, block, (Qf, Kf, Vf, gf, lf, pre, suf, tot, Y, flag) + tail, shared_mem=smem)
        return Y

    return go


_LOG2E = 1.4426950408889634


def _forward1(Q, K, V, g, logb, tau, causal, window, gated, sinks, C, flag=None):
    import cupy

    BH, Tq, dk = Q.shape
    Tk, dv = V.shape[-2], V.shape[-1]
    tname = _DTYPES[_array.dtype_str(Q.dtype)]
    limit = _shared_limit()
    C = tile_length(_array.dtype_str(Q.dtype), dk, dv, limit, C)
    if C is None:
        return None
    TM, DVT = C // NT, _dvt(dv)
    dt = Q.dtype
    Qf, Kf, Vf = (cupy.ascontiguousarray(x, dtype=dt) for x in (Q, K, V))
    gf, lf = (cupy.ascontiguousarray(x, dtype=dt) for x in (g, logb))
    tot = _tile_totals(cupy, gf, C) if (causal and gated and window and sinks) else gf
    Y = cupy.empty((BH, Tq, dv), dtype=dt)
    smem = _shared_words(C, dk, dv, dt.itemsize) * dt.itemsize
    kern = _kernel(tname, TM, DVT)
    allow_shared(kern, smem)
    nqt = -(-Tq // C)
    i32 = cupy.int32
    scal = cupy.float32 if tname == "float" else cupy.float64
    args = (Qf, Kf, Vf, gf, lf, cupy.ascontiguousarray(tot), Y, _flag(cupy, flag))
    args += (i32(BH), i32(Tq), i32(Tk), i32(dk), i32(dv))
    args += (scal(tau), i32(int(causal)), i32(int(window)), i32(int(gated)), i32(int(sinks)))
    kern((BH * nqt,), (NT * NT,), args, shared_mem=smem)
    return Y


def _tile_totals(xp, g, C):
    """Each key tile's total log-gate, (BH, nkt) (zero-padded past T_k)."""
    xp = array_api_compat.array_namespace(g)  # the compatible namespace (raw CuPy has no concat)
    BH, Tk = g.shape
    nkt = -(-Tk // C)
    pad = nkt * C - Tk
    if pad:
        g = xp.concat([g, xp.zeros((BH, pad), dtype=g.dtype, device=array_api_compat.device(g))], axis=-1)
    return xp.sum(xp.reshape(g, (BH, nkt, C)), axis=-1)


# --- the reference: the kernel's tile order in array operations ------------------------------------------
def fused_nw_reference(xp, Q, K, V, g, logb, tau, causal, window, gated=True, sinks=0, C=64, flag=None):
    """:func:`forward` as array operations in the kernel's order (any namespace): per query tile the key
    tiles from the diagonal backwards, the same gate sums (diagonal: running sums in ``segsum``'s order;
    earlier tiles: ``((pre + mid) + suf) + logb``), the same skips and the same online normaliser. Vectorised
    over the sequences ``BH`` only, so it is slow: it is what the kernel is tested against. ``gated=False``
    (every log-gate 0, which the kernel then never sums) changes nothing here: sums of zeros are 0.
    ``flag``: as the kernel's (set to 1 where an entry of ``Q``, ``K``, ``V`` or of the output is not
    finite)."""
    BH, Tq, dk = Q.shape
    Tk, dv = V.shape[-2], V.shape[-1]
    dt = Q.dtype
    dev = array_api_compat.device(Q)
    neg = xp.asarray(-math.inf, dtype=dt, device=dev)
    zero = xp.zeros((), dtype=dt, device=dev)
    nqt, nkt = -(-Tq // C), -(-Tk // C)

    def tile(x, t0, n):  # rows t0 .. t0 + C - 1 of (BH, n, ...), zero past n
        rows = x[:, t0 : min(n, t0 + C), ...]
        if rows.shape[1] == C:
            return rows
        pad = xp.zeros((BH, C - rows.shape[1]) + tuple(x.shape[2:]), dtype=x.dtype, device=dev)
        return xp.concat([rows, pad], axis=1)

    r = xp.arange(C, device=dev)
    tot_all = _tile_totals(xp, g, C) if (causal and window > 0 and sinks > 0) else None
    out = []
    for qt in range(nqt):
        q0 = qt * C
        Qt = tile(Q, q0, Tq)
        m = xp.full((BH, C), -math.inf, dtype=dt, device=dev)
        ell = xp.zeros((BH, C), dtype=dt, device=dev)
        acc = xp.zeros((BH, C, dv), dtype=dt, device=dev)
        preq = xp.cumulative_sum(tile(g, q0, Tk), axis=-1) if causal else None
        mid = xp.zeros((BH,), dtype=dt, device=dev)
        last_sink_tile = (sinks - 1) // C if (causal and window > 0 and sinks > 0) else -1
        kt = qt if causal else nkt - 1
        while kt >= 0:
            if causal and window > 0 and q0 - (kt * C + C - 1) >= window and kt > last_sink_tile:
                if last_sink_tile < 0:
                    break
                for j in range(kt, last_sink_tile, -1):  # the tiles jumped over, into the gate sums
                    mid = mid + tot_all[:, j]
                kt = last_sink_tile
            k0 = kt * C
            if causal and kt < qt and bool(xp.all(mid == -math.inf)):
                break  # the kernel breaks per sequence; skipping all-(-inf) tiles changes nothing
            Kt, Vt = tile(K, k0, Tk), tile(V, k0, Tk)
            valid = (k0 + r) < Tk
            lb = xp.where(valid, tile(logb, k0, Tk), neg)
            if not causal:
                lg = xp.broadcast_to(lb[:, None, :], (BH, C, C))
                tot = None
            else:
                gk = tile(g, k0, Tk)
                incl = xp.flip(xp.cumulative_sum(xp.flip(gk, axis=-1), axis=-1), axis=-1)
                suf = xp.concat([incl[:, 1:], xp.zeros((BH, 1), dtype=dt, device=dev)], axis=-1)
                tot = suf[:, 0] + gk[:, 0]
                if kt == qt:
                    from ... import _array

                    lg = _array.segsum(xp, gk) + lb[:, None, :]
                else:
                    lg = ((preq[:, :, None] + mid[:, None, None]) + suf[:, None, :]) + lb[:, None, :]
                if window > 0:
                    inside = ((q0 + r)[:, None] - (k0 + r)[None, :]) < window
                    inside = inside | ((k0 + r)[None, :] < sinks)  # attention sinks stay
                    lg = xp.where(inside, lg, neg)
            S = xp.matmul(Qt, xp.matrix_transpose(Kt))
            s = xp.where(lg == -math.inf, neg, lg + tau * S)
            mn = xp.maximum(m, xp.max(s, axis=-1))
            sh = xp.where(mn == -math.inf, zero, mn)
            p = xp.exp(s - sh[..., None])
            scale = xp.exp(m - sh)
            ell = ell * scale + xp.sum(p, axis=-1)
            m = mn
            acc = acc * scale[..., None] + xp.matmul(p, Vt)
            if causal and kt < qt:
                mid = mid + tot
            kt -= 1
        one = xp.ones((), dtype=dt, device=dev)
        out.append(acc / xp.where(ell > 0, ell, one)[..., None])
    Y = xp.concat(out, axis=1) if out else xp.zeros((BH, 0, dv), dtype=dt, device=dev)
    Y = Y[:, :Tq, :]
    if flag is not None and not all(bool(xp.all(xp.isfinite(x))) for x in (Q, K, V, Y)):
        flag[0] = 1
    return Y
