r"""The intra-chunk terms of the identity family in fused CUDA kernels (CuPy only): scalar decay
(``intra_scalar``, below) and per-dimension decay (``intra_per_dim``, GLA: see ``_PER_DIM_SOURCE``).

:func:`~ttr_stats.methods.identity.chunked._intra_scalar` (the reference: the array form) forms, per
chunk, the masked log-decay differences, their exponentials, the write strengths, ``q k^T`` and the
products, plus the chunk factors ``Q_g = q e^{G}`` and ``K_x = k b e^{G_L - G}``: about ten passes over
(C, C) and (C, d) arrays (1.3 ms of linear attention's 4.95 ms at B = 8, H = 16, T = 4096, d = 64 on an
H200, with the ``A v`` product). Here one thread block per (sequence, chunk) computes, in the same
operations and order as the reference (so the two agree to rounding):

* ``A_ij = (q_i . k_j) * (float(exp(G_i - G_j)) * b_j)`` for ``j <= i``, exactly 0 above the diagonal
  (exact causality), the log-decays G in float64 as the reference keeps them;
* ``Q_g = q_i * float(exp(G_i))`` and ``K_x = k_j * (float(exp(G_L - G_j)) * b_j)``.

Every exponent is ``<= 0`` (G is a cumulative sum of clamped log-gates ``<= 0``, so it only decreases),
so nothing overflows. The reference forms the same exponents as segment and suffix sums of the gates
(so that autograd's derivatives keep their size, a torch concern); the kernel's float64 differences of
cumulative sums equal them to rounding (at most one ulp of G, ~1e-13 for |G| < 1e3), and CuPy has no
autograd. :func:`intra_scalar` returns ``None`` where the kernel does not apply (not CuPy,
not float32/float64, a chunk too big for shared memory). :data:`ENABLED` switches it off.
"""

from __future__ import annotations

import math

import array_api_compat

from ..._array import dtype_str

__all__ = [
    "ENABLED",
    "THREADS",
    "applies",
    "intra_scalar",
    "intra_per_dim",
    "shared_bytes",
    "per_dim_shared_bytes",
]

#: set False to form the intra-chunk terms as array operations on CuPy too
ENABLED = True

#: threads a block
THREADS = 256

_SOURCE = r"""
template <typename T>
__global__ void intra_scalar(
    const T* __restrict__ q, const T* __restrict__ k, const double* __restrict__ G,
    const T* __restrict__ b, T* __restrict__ A, T* __restrict__ Qg, T* __restrict__ Kx,
    const int C, const int dk)
{
    const int ldk = dk | 1;                   // odd row stride: threads reading a column of sk differ in bank
    extern __shared__ unsigned char smem_raw[];
    double* sG = reinterpret_cast<double*>(smem_raw);  // (C,) float64 log-decays from the chunk start
    T* sb = reinterpret_cast<T*>(sG + C);     // (C,): write strengths
    T* seq = sb + C;                          // (C,): float(exp(G_i))
    T* sek = seq + C;                         // (C,): float(exp(G_L - G_j)) * b_j
    T* sq = sek + C;                          // (C, ldk)
    T* sk = sq + C * ldk;                     // (C, ldk)

    const size_t ch = blockIdx.x;             // one block per (sequence, chunk)
    const int tid = threadIdx.x, nt = blockDim.x;
    const T* qc = q + ch * C * dk;
    const T* kc = k + ch * C * dk;
    for (int e = tid; e < C * dk; e += nt) {
        sq[(e / dk) * ldk + e % dk] = qc[e];
        sk[(e / dk) * ldk + e % dk] = kc[e];
    }
    for (int i = tid; i < C; i += nt) {
        sG[i] = G[ch * C + i];
        sb[i] = b[ch * C + i];
    }
    __syncthreads();
    for (int i = tid; i < C; i += nt) {
        seq[i] = T(exp(sG[i]));
        sek[i] = T(exp(sG[C - 1] - sG[i])) * sb[i];
    }
    T* Ac = A + ch * C * C;
    for (int e = tid; e < C * (C + 1) / 2; e += nt) {  // the lower triangle only: no idle half-warps
        int i = (int)((sqrtf(8.0f * (float)e + 1.0f) - 1.0f) * 0.5f);
        while (i * (i + 1) / 2 > e) --i;
        while ((i + 1) * (i + 2) / 2 <= e) ++i;
        const int j = e - i * (i + 1) / 2;
        T d = T(0);
        const T* qi = sq + i * ldk;
        const T* kj = sk + j * ldk;
#pragma unroll 8
        for (int c = 0; c < dk; ++c) d += qi[c] * kj[c];
        Ac[i * C + j] = d * (T(exp(sG[i] - sG[j])) * sb[j]);
    }
    for (int e = tid; e < C * C; e += nt)
        if (e % C > e / C) Ac[e] = T(0);
    __syncthreads();
    T* Qc = Qg + ch * C * dk;
    T* Kc = Kx + ch * C * dk;
    for (int e = tid; e < C * dk; e += nt) {
        const int i = e / dk, c = e % dk;
        Qc[e] = sq[i * ldk + c] * seq[i];
        Kc[e] = sk[i * ldk + c] * sek[i];
    }
}
"""

#: per-dimension decay (GLA): the halving of ``_intra_per_dim`` is ``log2 C`` levels of small matmuls,
#: concatenations and reshapes; here a block per chunk forms the per-dimension cumulative log-decays in
#: float64 (from the clamped float64 gates the call site holds), then
#: ``A_ij = sum_d q_id k_jd e^{G_id - G_jd} b_j`` for ``j <= i`` (one exponential per term: the difference
#: of two float64 sums over the chunk is exact to ~1e-16 of their size, and its float32 exponential is
#: within float32 rounding of the product of the gates; every exponent <= 0),
#: ``Q_g = q e^{G}``, ``K_x = (k b) e^{G_L - G}``. The reference is ``_intra_per_dim`` (products of gates).
_PER_DIM_SOURCE = r"""
__device__ __forceinline__ float exp_of(const double x, float) { return expf((float)x); }
__device__ __forceinline__ double exp_of(const double x, double) { return exp(x); }

template <typename T>
__global__ void intra_per_dim(
    const T* __restrict__ q, const T* __restrict__ k, const double* __restrict__ g,
    const T* __restrict__ b, T* __restrict__ A, T* __restrict__ Qg, T* __restrict__ Kx,
    const int C, const int dk)
{
    const int ldk = dk | 1;                   // odd row strides: a warp's rows fall in distinct banks
    extern __shared__ unsigned char smem_raw[];
    double* sG = reinterpret_cast<double*>(smem_raw);  // (C, ldk): cumulative log-decays per dimension
    T* sb = reinterpret_cast<T*>(sG + C * ldk);        // (C,)
    T* sq = sb + C;                                    // (C, ldk)
    T* sk = sq + C * ldk;                              // (C, ldk)

    const size_t ch = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    const T* qc = q + ch * C * dk;
    const T* kc = k + ch * C * dk;
    const double* gc = g + ch * C * dk;
    for (int e = tid; e < C * dk; e += nt) {
        const int i = e / dk, d = e % dk;
        sq[i * ldk + d] = qc[e];
        sk[i * ldk + d] = kc[e];
        sG[i * ldk + d] = gc[e];
    }
    for (int i = tid; i < C; i += nt) sb[i] = b[ch * C + i];
    __syncthreads();
    for (int d = tid; d < dk; d += nt) {      // running sums down each dimension's column
        double s = 0.0;
        for (int i = 0; i < C; ++i) { s += sG[i * ldk + d]; sG[i * ldk + d] = s; }
    }
    __syncthreads();
    T* Ac = A + ch * C * C;
    for (int e = tid; e < C * (C + 1) / 2; e += nt) {  // the lower triangle (diagonal included)
        int i = (int)((sqrtf(8.0f * (float)e + 1.0f) - 1.0f) * 0.5f);
        while (i * (i + 1) / 2 > e) --i;
        while ((i + 1) * (i + 2) / 2 <= e) ++i;
        const int j = e - i * (i + 1) / 2;
        const T* qi = sq + i * ldk;
        const T* kj = sk + j * ldk;
        const double* Gi = sG + i * ldk;
        const double* Gj = sG + j * ldk;
        T acc = T(0);
        for (int d = 0; d < dk; ++d) acc += qi[d] * kj[d] * exp_of(Gi[d] - Gj[d], T(0));
        Ac[i * C + j] = acc * sb[j];
    }
    for (int e = tid; e < C * C; e += nt)
        if (e % C > e / C) Ac[e] = T(0);
    T* Qc = Qg + ch * C * dk;
    T* Kc = Kx + ch * C * dk;
    const double* GL = sG + (C - 1) * ldk;
    for (int e = tid; e < C * dk; e += nt) {
        const int i = e / dk, d = e % dk;
        Qc[e] = sq[i * ldk + d] * exp_of(sG[i * ldk + d], T(0));
        Kc[e] = (sk[i * ldk + d] * sb[i]) * exp_of(GL[d] - sG[i * ldk + d], T(0));
    }
}
"""

_MODULE = None
_DTYPES = {"float32": "float", "float64": "double"}


def _module():
    global _MODULE
    if _MODULE is None:
        import cupy

        names = [f"{k}<{t}>" for k in ("intra_scalar", "intra_per_dim") for t in _DTYPES.values()]
        _MODULE = cupy.RawModule(
            code=_SOURCE + _PER_DIM_SOURCE, options=("-std=c++17",), name_expressions=names
        )
    return _MODULE


def shared_bytes(C, dk, itemsize):
    """Dynamic shared memory of one block (the layout at the top of the kernel)."""
    return 8 * C + (3 * C + 2 * C * (dk | 1)) * itemsize


def per_dim_shared_bytes(C, dk, itemsize):
    """Dynamic shared memory of one block of ``intra_per_dim``."""
    return 8 * C * (dk | 1) + (C + 2 * C * (dk | 1)) * itemsize


def _shared_limit():
    from .. import _fused

    return _fused.device_attribute("MaxSharedMemoryPerBlockOptin", 48 * 1024)


def applies(xp, dtype, C, dk, per_dim=False) -> bool:
    """Whether :func:`intra_scalar` (or :func:`intra_per_dim`) runs for these sizes (CuPy,
    float32/float64, fits shared memory)."""
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp):
        return False
    name = dtype_str(dtype)
    if name not in _DTYPES:
        return False
    size = per_dim_shared_bytes if per_dim else shared_bytes
    return size(C, dk, 4 if name == "float32" else 8) <= _shared_limit()


def intra_scalar(xp, q, k, G, b):
    """``(A, Qg, Kx)`` of :func:`~ttr_stats.methods.identity.chunked._intra_scalar` by the kernel, or
    ``None`` where it does not apply.

    q, k (..., n, C, dk) in the working dtype, G (..., n, C) float64, b (..., n, C).
    """
    lead = q.shape[:-2]
    C, dk = q.shape[-2:]
    dt = q.dtype
    if math.prod(lead) == 0 or not applies(xp, dt, C, dk):
        return None
    import cupy

    BN = math.prod(lead)

    def flat(x, tail, dtype):
        return cupy.ascontiguousarray(xp.reshape(xp.broadcast_to(x, lead + tail), (BN,) + tail), dtype=dtype)

    qf, kf = flat(q, (C, dk), dt), flat(k, (C, dk), dt)
    Gf, bf = flat(G, (C,), cupy.float64), flat(b, (C,), dt)
    A = cupy.empty((BN, C, C), dtype=dt)
    Qg = cupy.empty((BN, C, dk), dtype=dt)
    Kx = cupy.empty((BN, C, dk), dtype=dt)
    smem = shared_bytes(C, dk, dt.itemsize)
    kern = _module().get_function(f"intra_scalar<{_DTYPES[dtype_str(dt)]}>")
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    i32 = cupy.int32
    kern((BN,), (THREADS,), (qf, kf, Gf, bf, A, Qg, Kx, i32(C), i32(dk)), shared_mem=smem)
    return (xp.reshape(A, lead + (C, C)), xp.reshape(Qg, lead + (C, dk)), xp.reshape(Kx, lead + (C, dk)))


def intra_per_dim(xp, q, k, g64, b):
    """``(A, Qg, Kx)`` of per-dimension decay (``_PER_DIM_SOURCE``), or ``None`` where the kernel does not
    apply: as :func:`~ttr_stats.methods.identity.chunked._intra_per_dim` on ``kb = k b`` and the gates
    ``exp(g64)``, without the chunk products (the device path takes them from the whole-chunk sums).

    q, k (..., n, C, dk), g64 (..., n, C, dk) float64 clamped log-gates, b (..., n, C).
    """
    lead = q.shape[:-2]
    C, dk = q.shape[-2:]
    dt = q.dtype
    if math.prod(lead) == 0 or not applies(xp, dt, C, dk, per_dim=True):
        return None
    import cupy

    BN = math.prod(lead)

    def flat(x, tail, dtype):
        return cupy.ascontiguousarray(xp.reshape(xp.broadcast_to(x, lead + tail), (BN,) + tail), dtype=dtype)

    qf, kf = flat(q, (C, dk), dt), flat(k, (C, dk), dt)
    gf, bf = flat(g64, (C, dk), cupy.float64), flat(b, (C,), dt)
    A = cupy.empty((BN, C, C), dtype=dt)
    Qg = cupy.empty((BN, C, dk), dtype=dt)
    Kx = cupy.empty((BN, C, dk), dtype=dt)
    smem = per_dim_shared_bytes(C, dk, dt.itemsize)
    kern = _module().get_function(f"intra_per_dim<{_DTYPES[dtype_str(dt)]}>")
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    i32 = cupy.int32
    kern((BN,), (THREADS,), (qf, kf, gf, bf, A, Qg, Kx, i32(C), i32(dk)), shared_mem=smem)
    return (xp.reshape(A, lead + (C, C)), xp.reshape(Qg, lead + (C, dk)), xp.reshape(Kx, lead + (C, dk)))
