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
source itself run on the host by ``tests/cuda_on_host.py`` equals the reference, and on a GPU
``tests/test_fused_nw.py`` compares the kernel with both; ``benchmarks/gpu_tiled.py`` times it against
torch SDPA. Not yet measured on a GPU at the time of writing.
"""

from __future__ import annotations

import math

import array_api_compat

__all__ = ["ENABLED", "nadaraya_watson", "operands", "forward", "fused_nw_reference", "tile_length"]

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
    const int BH, const int Tq, const int Tk, const int dk, const int dv,
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
    for (int r = warp; r < C; r += NTHREADS / 32) {
        const int t = q0 + r;
        for (int k = lane; k < dk; k += 32) Qs[k * LD + r] = (t < Tq) ? Qb[(size_t)t * dk + k] : T(0);
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
        for (int r = warp; r < C; r += NTHREADS / 32) {
            const int t = k0 + r;
            for (int k = lane; k < dk; k += 32) Ks[k * LD + r] = (t < Tk) ? Kb[(size_t)t * dk + k] : T(0);
            for (int c = lane; c < DVP; c += 32)
                Vs[r * DVP + c] = (t < Tk && c < dv) ? Vb[(size_t)t * dv + c] : T(0);
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
            if (c < dv) Yb[(size_t)t * dv + c] = acc[a][j] / den;
        }
    }
}
"""

_DTYPES = {"float32": "float", "float64": "double"}
_MODULES: dict = {}


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
    import cupy

    dev = cupy.cuda.Device()
    return int(dev.attributes.get("MaxSharedMemoryPerBlockOptin", 48 * 1024))


def _kernel(tname, TM, DVT):
    key = (tname, TM, DVT)
    if key not in _MODULES:
        import cupy

        name = f"nw_forward<{tname}, {TM}, {DVT}>"
        mod = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=[name])
        _MODULES[key] = mod.get_function(name)
    return _MODULES[key]


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
    if P.steps_per_token != 1 or str(P.dtype) not in _DTYPES:
        return None
    Tq, Tk = P.Q.shape[-2], P.K.shape[-2]
    if P.causal and Tq != Tk:
        return None
    BH = P.n_batch
    Q, K, V = P.Q, P.K, P.V
    if P.causal:
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
        return xp.reshape(xp.broadcast_to(x, P.batch_shape + tail), (BH,) + tail)

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
    try:
        Y = forward(xp, **ops)
    except Exception as exc:
        if type(exc).__name__ != "CompileException":  # cupy.cuda.compiler: NVRTC refused the source
            raise
        _disable(exc)
        return None
    if Y is None:
        return None
    return xp.reshape(Y, P.batch_shape + (P.Q.shape[-2], P.d_v))


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


def forward(xp, Q, K, V, g, logb, tau, causal, window, gated=True, sinks=0, C=None):
    """Run the kernel on the operands of :func:`operands` (CuPy); ``(BH, T_q, d_v)`` or ``None`` where the
    tile does not fit shared memory. ``C``: a tile length of :data:`TILES` to prefer (default 64)."""
    import cupy

    BH, Tq, dk = Q.shape
    Tk, dv = V.shape[-2], V.shape[-1]
    tname = _DTYPES[str(Q.dtype)]
    limit = _shared_limit()
    C = tile_length(str(Q.dtype), dk, dv, limit, C)
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
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    nqt = -(-Tq // C)
    i32 = cupy.int32
    scal = cupy.float32 if tname == "float" else cupy.float64
    args = (Qf, Kf, Vf, gf, lf, cupy.ascontiguousarray(tot), Y, i32(BH), i32(Tq), i32(Tk), i32(dk), i32(dv))
    args += (scal(tau), i32(int(causal)), i32(int(window)), i32(int(gated)), i32(int(sinks)))
    kern((BH * nqt,), (NT * NT,), args, shared_mem=smem)
    return Y


def _tile_totals(xp, g, C):
    """Each key tile's total log-gate, (BH, nkt) (zero-padded past T_k)."""
    BH, Tk = g.shape
    nkt = -(-Tk // C)
    pad = nkt * C - Tk
    if pad:
        g = xp.concat([g, xp.zeros((BH, pad), dtype=g.dtype, device=array_api_compat.device(g))], axis=-1)
    return xp.sum(xp.reshape(g, (BH, nkt, C)), axis=-1)


# --- the reference: the kernel's tile order in array operations ------------------------------------------
def fused_nw_reference(xp, Q, K, V, g, logb, tau, causal, window, gated=True, sinks=0, C=64):
    """:func:`forward` as array operations in the kernel's order (any namespace): per query tile the key
    tiles from the diagonal backwards, the same gate sums (diagonal: running sums in ``segsum``'s order;
    earlier tiles: ``((pre + mid) + suf) + logb``), the same skips and the same online normaliser. Vectorised
    over the sequences ``BH`` only, so it is slow: it is what the kernel is tested against. ``gated=False``
    (every log-gate 0, which the kernel then never sums) changes nothing here: sums of zeros are 0."""
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
    return Y[:, :Tq, :]
