r"""The per-chunk terms of the chunked delta rule in one fused CUDA kernel (CuPy only).

:func:`~ttr_stats.methods.delta._wy.chunk_terms` forms, for every chunk independently, the decays, the
strictly lower system :math:`N = -\operatorname{diag}(\eta)(R_d \circ K K^\top)`, its unit lower
triangular solve against :math:`[\operatorname{diag}(\eta) V,\ \operatorname{diag}(\eta\rho) K]` (the UT
transform: U and W) and the masked reads :math:`P = \Gamma_{\text{reads},:} \circ Q K^\top`, as some
thirty array operations (the recursive 2 x 2 blocked solve alone is ``log2 C`` levels of batched matmuls
and concatenations: 2.2 of 8.8 ms for Gated DeltaNet at B = 8, H = 16, T = 4096, d = 64 on an H200). Here
one thread block per (sequence, chunk) does all of it in shared memory, in this order (fla's
``chunk_scaled_dot_kkt`` + ``solve_tril`` + ``recompute_w_u``, with the solve done on the right-hand
sides directly, by forward substitution, instead of forming the inverse):

1. per write i (one thread a row): ``gam_i = exp(sum_{m<=i} gs_m)``; the row
   :math:`\Gamma_{ij} = \exp(\sum_{m=j+1}^{i} gs_m)`, ``j <= i``, by a running sum from the diagonal
   leftwards (every entry a sum over its own segment, never a difference of prefix sums, so log-decays
   of -50 a step and hard resets (-inf: exp gives exactly 0) are exact); with a leak also
   :math:`\rho_i = \exp(\sum_{m<i} gs_m + gr_i)` and
   :math:`R_{d,ij} = \exp(gr_i + \sum_{m=j+1}^{i-1} gs_m)` (without: :math:`\rho = \gamma`,
   :math:`R_d = \Gamma`);
2. per entry (i, j), ``j < i``: :math:`N_{ij} = (-\eta_i R_{d,ij})\,k_i^\top k_j`; per read r (token r's
   query, after its last write ``i = r n + n - 1``) and write j: :math:`P_{rj} = \Gamma_{ij}\,q_r^\top k_j`
   for ``j <= i``, else 0; :math:`DK_j = \Gamma_{C-1,j} k_j`;
3. the right-hand sides :math:`X_i = [\eta_i v_i,\ (\eta_i\rho_i) k_i]`;
4. forward substitution, row by row: :math:`X_i \leftarrow X_i + \sum_{l<i} N_{il} X_l` (threads over the
   columns, a barrier per row): row i reads rows ``<= i`` only, so the solve is exactly causal;
5. ``U = X[:, :d_v]``, ``W = X[:, d_v:]``; and the decayed queries of the reads
   :math:`\gamma_r q_r` (``Qg``), which the outputs' product reads (no pass of their own).

:func:`wy_terms_reference` is the same sequence of steps in array operations (NumPy or any namespace); it
is checked against :func:`~ttr_stats.methods.delta._wy.chunk_terms` (the array form, itself checked
against the recurrent loop) on the host, and the kernel is checked against it on a GPU and, through
``tests/cuda_on_host.py``, on the host (tests/test_fused_wy.py). :func:`chunk_terms` returns ``None``
where the kernel does not apply (not CuPy, not float32/float64, too big for shared memory), and the
caller runs the array form. :data:`ENABLED` switches it off globally.
"""

from __future__ import annotations

import math

import array_api_compat

from ..._array import dtype_str
from ._wy import ChunkTerms

__all__ = ["ENABLED", "THREADS", "applies", "chunk_terms", "wy_terms_reference", "shared_bytes"]

#: set False to run the array form of the chunk terms on CuPy as well
ENABLED = True

#: threads a block
THREADS = 256

_SOURCE = r"""
// e -> (i, j) with 0 <= j <= i, row-major over a lower triangle (incl. the diagonal): threads walk only
// the entries that are computed, so no warp idles on the upper half
__device__ __forceinline__ void tri_index(const int e, int& i, int& j) {
    int r = (int)((sqrtf(8.0f * (float)e + 1.0f) - 1.0f) * 0.5f);
    while (r * (r + 1) / 2 > e) --r;
    while ((r + 1) * (r + 2) / 2 <= e) ++r;
    i = r;
    j = e - r * (r + 1) / 2;
}

template <typename T>
__global__ void wy_terms(
    const T* __restrict__ K, const T* __restrict__ V, const T* __restrict__ Q,
    const T* __restrict__ eta, const T* __restrict__ gs, const T* __restrict__ gr,
    T* __restrict__ U, T* __restrict__ W, T* __restrict__ DK, T* __restrict__ P,
    T* __restrict__ gam_r, T* __restrict__ gamC, T* __restrict__ Qg,
    const int C, const int c, const int n, const int dk, const int dv, const int has_gr)
{
    // row strides made odd so that threads walking a column of sK / sG / sN hit distinct banks
    const int ldk = dk | 1, ldc = C | 1, ncol = dv + dk;
    extern __shared__ unsigned char smem_raw[];
    T* sK = reinterpret_cast<T*>(smem_raw);  // (C, ldk)
    T* sX = sK + C * ldk;                    // (C, ncol): the right-hand sides, solved in place;
                                             // first (c, ldk): the queries, until step 3
    T* sG = sX + C * ncol;                   // (C, ldc): Gamma
    T* sN = sG + C * ldc;                    // (C, ldc): R_d (leak), then the system's strict lower part
    T* se = sN + C * ldc;                    // (C,): eta
    T* sg = se + C;                          // (C,): gs
    T* sr = sg + C;                          // (C,): gr
    T* sgam = sr + C;                        // (C,): gamma
    T* srho = sgam + C;                      // (C,): rho

    const size_t ch = blockIdx.x;            // one block per (sequence, chunk)
    const int tid = threadIdx.x, nt = blockDim.x;
    const T* Kc = K + ch * C * dk;
    const T* Vc = V + ch * C * dv;
    const T* Qc = Q + ch * c * dk;
    for (int e = tid; e < C * dk; e += nt) sK[(e / dk) * ldk + e % dk] = Kc[e];
    for (int e = tid; e < c * dk; e += nt) sX[(e / dk) * ldk + e % dk] = Qc[e];
    for (int i = tid; i < C; i += nt) {
        se[i] = eta[ch * C + i];
        sg[i] = gs[ch * C + i];
        sr[i] = has_gr ? gr[ch * C + i] : T(0);
    }
    __syncthreads();
    // 1. decays, one row a thread
    for (int i = tid; i < C; i += nt) {
        T s = T(0);
        for (int m = 0; m <= i; ++m) s += sg[m];
        sgam[i] = exp(s);
        T* row = sG + i * ldc;
        row[i] = T(1);
        T a = T(0);
        for (int j = i - 1; j >= 0; --j) { a += sg[j + 1]; row[j] = exp(a); }
        for (int j = i + 1; j < C; ++j) row[j] = T(0);
        if (has_gr) {
            T e = T(0);
            for (int m = 0; m < i; ++m) e += sg[m];
            srho[i] = exp(e + sr[i]);
            T b = sr[i];
            for (int j = i - 1; j >= 0; --j) { sN[i * ldc + j] = exp(b); b += sg[j]; }
        } else {
            srho[i] = sgam[i];
        }
    }
    __syncthreads();
    // 2. the system's strictly lower part, the masked reads P and the decayed keys
    for (int e = tid; e < C * (C - 1) / 2; e += nt) {  // the strictly lower entries (i, j), j < i
        int i, j;
        tri_index(e, i, j);
        i += 1;
        T d = T(0);
        const T* ki = sK + i * ldk;
        const T* kj = sK + j * ldk;
#pragma unroll 8
        for (int k = 0; k < dk; ++k) d += ki[k] * kj[k];
        const T dec = has_gr ? sN[i * ldc + j] : sG[i * ldc + j];
        sN[i * ldc + j] = (-se[i] * dec) * d;
    }
    T* Pc = P + ch * c * C;
    if (n == 1) {  // one read a write: P is lower triangular (diagonal included), zeros above
        for (int e = tid; e < C * (C + 1) / 2; e += nt) {
            int r, j;
            tri_index(e, r, j);
            T d = T(0);
            const T* qr = sX + r * ldk;
            const T* kj = sK + j * ldk;
#pragma unroll 8
            for (int k = 0; k < dk; ++k) d += qr[k] * kj[k];
            Pc[r * C + j] = sG[r * ldc + j] * d;
        }
        for (int e = tid; e < C * C; e += nt)
            if (e % C > e / C) Pc[e] = T(0);
    } else {
        for (int e = tid; e < c * C; e += nt) {
            const int r = e / C, j = e % C, i = r * n + n - 1;
            T val = T(0);
            if (j <= i) {
                T d = T(0);
                const T* qr = sX + r * ldk;
                const T* kj = sK + j * ldk;
#pragma unroll 8
                for (int k = 0; k < dk; ++k) d += qr[k] * kj[k];
                val = sG[i * ldc + j] * d;
            }
            Pc[e] = val;
        }
    }
    T* DKc = DK + ch * C * dk;
    for (int e = tid; e < C * dk; e += nt) {
        const int j = e / dk;
        DKc[e] = sG[(C - 1) * ldc + j] * sK[j * ldk + e % dk];
    }
    for (int r = tid; r < c; r += nt) gam_r[ch * c + r] = sgam[r * n + n - 1];
    if (tid == 0) gamC[ch] = sgam[C - 1];
    T* Qgc = Qg + ch * c * dk;  // the decayed queries gam_r q_r of the reads (no separate pass over Q)
    for (int e = tid; e < c * dk; e += nt) {
        const int r = e / dk;
        Qgc[e] = sgam[r * n + n - 1] * sX[r * ldk + e % dk];
    }
    __syncthreads();  // the queries in sX are read: the right-hand sides may overwrite them
    // 3. right-hand sides
    for (int e = tid; e < C * ncol; e += nt) {
        const int i = e / ncol, col = e % ncol;
        sX[e] = col < dv ? se[i] * Vc[i * dv + col] : (se[i] * srho[i]) * sK[i * ldk + col - dv];
    }
    __syncthreads();
    // 4. forward substitution (row 0 is its own right-hand side)
    for (int i = 1; i < C; ++i) {
        const T* ni = sN + i * ldc;
        for (int col = tid; col < ncol; col += nt) {
            T acc = sX[i * ncol + col];
            for (int l = 0; l < i; ++l) acc += ni[l] * sX[l * ncol + col];
            sX[i * ncol + col] = acc;
        }
        __syncthreads();
    }
    // 5. U and W
    T* Uc = U + ch * C * dv;
    T* Wc = W + ch * C * dk;
    for (int e = tid; e < C * ncol; e += nt) {
        const int i = e / ncol, col = e % ncol;
        if (col < dv) Uc[i * dv + col] = sX[e];
        else Wc[i * dk + col - dv] = sX[e];
    }
}
"""

_MODULE = None
_DTYPES = {"float32": "float", "float64": "double"}


def _module():
    global _MODULE
    if _MODULE is None:
        import cupy

        _MODULE = cupy.RawModule(
            code=_SOURCE,
            options=("-std=c++17",),
            name_expressions=[f"wy_terms<{t}>" for t in _DTYPES.values()],
        )
    return _MODULE


def shared_bytes(C, dk, dv, itemsize):
    """Dynamic shared memory of one block (the layout at the top of the kernel)."""
    return (C * (dk | 1) + C * (dv + dk) + 2 * C * (C | 1) + 5 * C) * itemsize


def _shared_limit():
    from .. import _fused

    return _fused.device_attribute("MaxSharedMemoryPerBlockOptin", 48 * 1024)


def applies(xp, dtype, C, dk, dv) -> bool:
    """Whether :func:`chunk_terms` runs for these sizes (CuPy, float32/float64, fits shared memory)."""
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp):
        return False
    name = dtype_str(dtype)
    if name not in _DTYPES:
        return False
    return shared_bytes(C, dk, dv, 4 if name == "float32" else 8) <= _shared_limit()


def chunk_terms(xp, K, V, Q, eta, gs, gr, n, device=None):
    """:func:`~ttr_stats.methods.delta._wy.chunk_terms` by the kernel, or ``None`` where it does not apply.

    Same arguments and result (a :class:`~ttr_stats.methods.delta._wy.ChunkTerms` whose ``Q`` is the
    ``Q`` given); K (..., N, C, d_k), V (..., N, C, d_v), Q (..., N, c, d_k), eta, gs, gr (..., N, C).
    """
    lead = K.shape[:-3]
    N, C, dk = K.shape[-3:]
    dv, c = V.shape[-1], Q.shape[-2]
    dt = K.dtype
    if N == 0 or c * n != C or not applies(xp, dt, C, dk, dv):
        return None
    import cupy

    BN = math.prod(lead) * N

    def flat(x, tail):
        x = xp.reshape(xp.broadcast_to(x, lead + (N,) + tail), (BN,) + tail)
        return cupy.ascontiguousarray(x, dtype=dt)

    Kf, Vf, Qf = flat(K, (C, dk)), flat(V, (C, dv)), flat(Q, (c, dk))
    ef, gf = flat(eta, (C,)), flat(gs, (C,))
    rf = flat(gr, (C,)) if gr is not None else gf
    U = cupy.empty((BN, C, dv), dtype=dt)
    W = cupy.empty((BN, C, dk), dtype=dt)
    DK = cupy.empty((BN, C, dk), dtype=dt)
    P = cupy.empty((BN, c, C), dtype=dt)
    gam_r = cupy.empty((BN, c), dtype=dt)
    gamC = cupy.empty((BN,), dtype=dt)
    Qg = cupy.empty((BN, c, dk), dtype=dt)
    smem = shared_bytes(C, dk, dv, dt.itemsize)
    kern = _module().get_function(f"wy_terms<{_DTYPES[dtype_str(dt)]}>")
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    i32 = cupy.int32
    sizes = (C, c, n, dk, dv, int(gr is not None))
    args = (Kf, Vf, Qf, ef, gf, rf, U, W, DK, P, gam_r, gamC, Qg) + tuple(i32(s) for s in sizes)
    kern((BN,), (THREADS,), args, shared_mem=smem)
    r = lambda x, tail: xp.reshape(x, lead + (N,) + tail)  # noqa: E731
    return ChunkTerms(
        U=r(U, (C, dv)), W=r(W, (C, dk)), DK=r(DK, (C, dk)), gamC=r(gamC, ()), gam_r=r(gam_r, (c,)),
        P=r(P, (c, C)), Q=Q, Qg=r(Qg, (c, dk)),
    )  # fmt: skip


def wy_terms_reference(xp, K, V, Q, eta, gs, gr, n):
    """The kernel's steps (module docstring) in array operations, loops where the kernel loops.

    Same arguments and result as :func:`chunk_terms`, for any array namespace; the chunks and batch
    axes are vectorised, the loops over positions are the kernel's loops (the sums in its order)."""
    C, dv = K.shape[-2], V.shape[-1]
    lead = K.shape[:-2]
    dt = K.dtype
    zero = xp.zeros(lead, dtype=dt)
    # 1. decays: gam, rho and the rows of Gamma (and R_d) by running sums, as the kernel's threads do
    gam, rho, Gam, Rd = [], [], [], []
    for i in range(C):
        s = zero
        for m in range(i + 1):
            s = s + gs[..., m]
        gam.append(xp.exp(s))
        row = [None] * C
        row[i] = xp.ones(lead, dtype=dt)
        a = zero
        for j in range(i - 1, -1, -1):
            a = a + gs[..., j + 1]
            row[j] = xp.exp(a)
        for j in range(i + 1, C):
            row[j] = zero
        Gam.append(xp.stack(row, axis=-1))
        if gr is not None:
            e = zero
            for m in range(i):
                e = e + gs[..., m]
            rho.append(xp.exp(e + gr[..., i]))
            rrow = [zero] * C
            b = gr[..., i]
            for j in range(i - 1, -1, -1):
                rrow[j] = xp.exp(b)
                b = b + gs[..., j]
            Rd.append(xp.stack(rrow, axis=-1))
        else:
            rho.append(gam[i])
    gam, rho, Gam = xp.stack(gam, axis=-1), xp.stack(rho, axis=-1), xp.stack(Gam, axis=-2)
    Rd = Gam if gr is None else xp.stack(Rd, axis=-2)
    # 2. the strictly lower system, the masked reads, the decayed keys
    idx = xp.arange(C)
    KK = xp.matmul(K, xp.matrix_transpose(K))
    Nm = xp.where(idx[:, None] > idx[None, :], (-eta[..., :, None] * Rd) * KK, xp.zeros((), dtype=dt))
    reads = idx[n - 1 :: n]
    QK = xp.matmul(Q, xp.matrix_transpose(K))
    Gr = xp.take(Gam, reads, axis=-2)
    P = xp.where(reads[:, None] >= idx[None, :], Gr * QK, xp.zeros((), dtype=dt))
    DK = Gam[..., C - 1, :][..., None] * K
    # 3. the right-hand sides, 4. forward substitution row by row
    X = [xp.concat([eta[..., i, None] * V[..., i, :], (eta[..., i] * rho[..., i])[..., None] * K[..., i, :]],
                   axis=-1) for i in range(C)]  # fmt: skip
    for i in range(1, C):
        acc = X[i]
        for l in range(i):
            acc = acc + Nm[..., i, l, None] * X[l]
        X[i] = acc
    X = xp.stack(X, axis=-2)
    gam_r = xp.take(gam, reads, axis=-1)
    return ChunkTerms(
        U=X[..., :dv], W=X[..., dv:], DK=DK, gamC=gam[..., C - 1], gam_r=gam_r, P=P, Q=Q,
        Qg=gam_r[..., None] * Q,
    )  # fmt: skip
