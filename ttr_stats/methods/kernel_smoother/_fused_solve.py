r"""A fused CUDA kernel from tiled local linear attention's moments to its outputs (CuPy only).

:func:`._tiled_moments.solve` turns every query's moment row
:math:`S = [s_0, S_e, S_u, \mathrm{triu}\,S_{ee}, S_{eu}, S_{uu}]` into its output,

.. math::

    \mu = S_e / s_0,\ \bar u = S_u / s_0,\ C = S_{ee}/s_0 - \mu\mu^\top,\
    C_{zv} = S_{eu}/s_0 - \mu\bar u^\top,\ B = (C + \lambda I)^{-1} C_{zv},\
    m(q) = v_c + \bar u - (c + \mu - q)^\top B,

over hundreds of thousands of queries a call (B = 8, H = 16, T = 4096: 524288 systems of 64 x 64 with 64
right-hand sides). The array route stacks the moment rows, forms mu, C's triangle, C, C_zv and the check's
diagonals as whole-batch arrays (about a dozen passes over (queries, d^2) float64 arrays: some 45 GB of
memory traffic a solve group at that size) and runs a batched LU with partial pivoting (cuBLAS's batched
LU is slow at 64 x 64: ~0.28 s of a 1.2-1.3 s call on an H200, ``docs/benchmarks.md``). Here one block of
256 threads (16 x 16) takes one query: it reads its moment row once, forms ``[C + lambda I | C_zv]`` in
registers (thread ``(ty, tx)`` owns the rows ``ty + 16 r``, r < RR, and the augmented columns
``tx + 16 s``, s < CC), solves it by Gauss-Jordan elimination (at step j the owners of row j and of column j
publish them to shared memory, double buffered: one barrier a step; every other row subtracts its multiple
of row j on the columns past j; after the d steps :math:`B_{i\cdot} = \text{row}_i / a_{ii}`, the pivot of
step i, which later steps do not change), and writes the query's output and one flag.

No pivoting: A is symmetric positive definite for lambda > 0 (C is a weighted covariance), so every pivot
is a Schur complement's diagonal entry, at least :math:`\lambda_\min(A) \ge \lambda`. Rounding can still make
a computed pivot non-positive where C is far larger than lambda and nearly singular; then (or for a pivot
that is not finite), and where the cancellation check of :mod:`._tiled_moments` fails (the same factors
from the same moments), the query's flag is set and the caller sends it to the exact path (the three
passes of :mod:`._tiled_poly` with the library solve), so no wrong finite value is returned.

Register indices are compile-time constants (``RR``, ``CC`` template parameters; the runtime ``j`` only
selects among unrolled branches). :func:`output` returns ``None`` wherever the kernel does not apply (not
CuPy, moments other than float64, ``d > 64`` or ``d + m > 128``, lambda <= 0), and the caller runs
the array route. Trust: ``tests/test_fused_solve.py`` runs this very source on the host
(``tests/cuda_on_host.py``) against the array route of ``solve`` on NumPy, and on a GPU compares the layer
with the kernel on and off; timings are in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math

import array_api_compat

from ... import _array

__all__ = ["ENABLED", "applies", "output", "shape", "shared_bytes"]

#: set False to run the library solve on CuPy as well
ENABLED = True

#: threads per side of a block (16 x 16 threads); rows a thread: ceil(d / NT); augmented columns a thread:
#: ceil((d + m) / NT)
NT = 16
MAX_RR = 4
MAX_CC = 8

_SOURCE = r"""
#define NT 16

// Gauss-Jordan elimination of the augmented matrix a = [A | R] (rows ty + NT r, columns tx + NT s of
// thread (ty, tx)), A symmetric positive definite, no pivoting. On return row i of a holds piv[i] times
// row i of [I | A^{-1} R] (pivots of later steps do not change piv[i]); true where a pivot was not positive
// and finite. prow0 (2, NT CC), pcol0 (2, NT RR): double-buffered pivot row and column (one barrier a step).
template <typename T, int RR, int CC>
__device__ __forceinline__ bool gj_eliminate(T (&a)[RR][CC], T* prow0, T* pcol0, T* piv, const int d,
                                             const int tid, const int tx, const int ty)
{
    bool bad = false;
    for (int j = 0; j < d; ++j) {
        T* prow = prow0 + (j & 1) * (NT * CC);
        T* pcol = pcol0 + (j & 1) * (NT * RR);
        const int jr = j / NT;  // selects, not an index: a dynamic a[jr] would put a in local memory
        if (ty == j % NT) {
#pragma unroll
            for (int s = 0; s < CC; ++s) {
                T v = a[0][s];
#pragma unroll
                for (int r = 1; r < RR; ++r) v = r == jr ? a[r][s] : v;
                prow[tx + NT * s] = v;
            }
        }
        if (tx == j % NT) {
#pragma unroll
            for (int r = 0; r < RR; ++r) {
                T v = a[r][0];
#pragma unroll
                for (int s = 1; s < CC; ++s) v = s == jr ? a[r][s] : v;
                pcol[ty + NT * r] = v;
            }
        }
        __syncthreads();  // (the other buffer is rewritten only after the next step's barrier)
        const T p = prow[j];
        const bool ok = p > T(0) && isfinite(p);  // positive and finite (NaN fails both)
        bad = bad || !ok;
        const T inv = ok ? T(1) / p : T(0);
        if (tid == 0) piv[j] = p;
#pragma unroll
        for (int r = 0; r < RR; ++r) {
            const int i = ty + NT * r;
            if (i == j) continue;
            const T f = pcol[ty + NT * r] * inv;
#pragma unroll
            for (int s = 0; s < CC; ++s) {
                const int c = tx + NT * s;
                if (c > j) a[r][s] -= f * prow[c];
            }
        }
    }
    return bad;
}

// One block per query n = (b, q) (b < n_batch, q < c): from its moment row S[b, q, :] =
// [s0, S_e (d), S_u (m), triu S_ee (d (d + 1) / 2, row-major), S_eu (d, m), S_uu (m)] (rows of a batch
// element contiguous, s_batch elements between batch elements), its block's centre Ck[b] (d), Cv[b] (m) and
// its query Qr[b, q] (q_batch elements between batch elements):
//   mu = S_e / s0, ubar = S_u / s0, C = S_ee / s0 - mu mu^T, C_zv = S_eu / s0 - mu ubar^T,
//   B = (C + lambda I)^{-1} C_zv,  Y[n] = (Cv + ubar) - ((Ck - q) + mu)^T B,
// and info[n] = 1 where a pivot was not positive and finite or the cancellation check failed (raw over
// centred second moments: f_k = max_l (S_ee)_ll / (s0 C_ll) <= max_c and f_k f_v <= max_c^2), else 0.
// s0 <= 0 (no pair of positive weight): Y = 0, info = 0.
template <typename T, int RR, int CC>
__global__ void __launch_bounds__(NT * NT) ll_output(
    const T* __restrict__ S, const long long s_batch, const T* __restrict__ Qr, const long long q_batch,
    const T* __restrict__ Ck, const T* __restrict__ Cv, T* __restrict__ Y, int* __restrict__ info,
    const int c, const int d, const int m, const T lambda, const T max_c)
{
    extern __shared__ unsigned char smem_raw[];  // (dynamic shared memory is 16-byte aligned)
    T* prow0 = reinterpret_cast<T*>(smem_raw);  // (2, NT CC)
    T* pcol0 = prow0 + 2 * NT * CC;             // (2, NT RR)
    T* piv = pcol0 + 2 * NT * RR;               // (NT RR)
    T* mu = piv + NT * RR;                      // (NT RR)
    T* zb = mu + NT * RR;                       // (NT RR): (Ck - q) + mu
    T* ub = zb + NT * RR;                       // (NT CC)
    T* red = ub + NT * CC;                      // (NT, NT CC): the factors, then the reads' partial sums
    T* okc = red + NT * NT * CC;                // (1): the cancellation check passed
    const size_t n = blockIdx.x;
    const size_t b = n / c, q = n % c;
    const int tid = threadIdx.x, tx = tid % NT, ty = tid / NT;
    const int ntri = d * (d + 1) / 2, w = d + m;
    const T* Sn = S + b * (size_t)s_batch + q * (size_t)(1 + 2 * m + d + ntri + d * m);
    const T* St = Sn + 1 + d + m;  // the triangle of S_ee
    const T* Su = St + ntri;       // S_eu
    const T* Suu = Su + d * m;
    T* Yn = Y + n * (size_t)m;
    const T s0 = Sn[0];
    if (!(s0 > T(0))) {  // (the same s0 for every thread of the block: no barrier is left half-reached)
        for (int l = tid; l < m; l += NT * NT) Yn[l] = T(0);
        if (tid == 0) info[n] = 0;
        return;
    }
    const T inv = T(1) / s0;
    for (int l = tid; l < d; l += NT * NT) mu[l] = Sn[1 + l] * inv;
    for (int l = tid; l < m; l += NT * NT) ub[l] = Sn[1 + d + l] * inv;
    __syncthreads();
    // the factors raw / centred: 1 for a zero raw moment, -1 (fails) for a centred one <= 0 under it
    for (int l = tid; l < d; l += NT * NT) {
        zb[l] = (Ck[b * d + l] - Qr[b * (size_t)q_batch + q * d + l]) + mu[l];
        const T raw = St[l * d - l * (l - 1) / 2] * inv, cen = raw - mu[l] * mu[l];
        red[l] = raw == T(0) ? T(1) : (cen > T(0) ? raw / cen : T(-1));
    }
    for (int l = tid; l < m; l += NT * NT) {
        const T raw = Suu[l] * inv, cen = raw - ub[l] * ub[l];
        red[d + l] = raw == T(0) ? T(1) : (cen > T(0) ? raw / cen : T(-1));
    }
    T a[RR][CC];
#pragma unroll
    for (int r = 0; r < RR; ++r) {
        const int i = ty + NT * r;
#pragma unroll
        for (int s = 0; s < CC; ++s) {
            const int col = tx + NT * s;
            T x = T(0);
            if (i < d && col < w) {
                if (col < d) {
                    const int lo = i < col ? i : col, hi = i < col ? col : i;
                    x = St[lo * d - lo * (lo - 1) / 2 + (hi - lo)] * inv - mu[lo] * mu[hi];
                    if (col == i) x += lambda;
                } else {
                    x = Su[i * m + (col - d)] * inv - mu[i] * ub[col - d];
                }
            }
            a[r][s] = x;
        }
    }
    __syncthreads();  // the factors complete
    if (tid == 0) {
        T fk = T(0), fv = T(0);
        bool fail = false;
        for (int l = 0; l < d + m; ++l) {  // (NaN fails the >= 0)
            const T f = red[l];
            fail = fail || !(f >= T(0));
            if (l < d) fk = f > fk ? f : fk;
            else fv = f > fv ? f : fv;
        }
        okc[0] = (!fail && fk <= max_c && fk * fv <= max_c * max_c) ? T(1) : T(0);
    }  // (red is rewritten only after the barriers of the elimination)
    const bool bad = gj_eliminate<T, RR, CC>(a, prow0, pcol0, piv, d, tid, tx, ty);
    __syncthreads();  // piv complete
#pragma unroll
    for (int s = 0; s < CC; ++s) {
        const int col = tx + NT * s;
        if (col < d || col >= w) continue;
        T part = T(0);
#pragma unroll
        for (int r = 0; r < RR; ++r) {
            const int i = ty + NT * r;
            if (i < d) part += zb[i] * (a[r][s] / piv[i]);
        }
        red[ty * (NT * CC) + col] = part;
    }
    __syncthreads();
    for (int col = d + tid; col < w; col += NT * NT) {
        T acc = T(0);
        for (int t = 0; t < NT; ++t) acc += red[t * (NT * CC) + col];
        Yn[col - d] = (Cv[b * m + (col - d)] + ub[col - d]) - acc;
    }
    if (tid == 0) info[n] = (bad || okc[0] == T(0)) ? 1 : 0;
}
"""

#: float64 only: the moments of a float32 call are float64 too (:mod:`._precision`), so a float instance
#: would never run (and on the H100's CuPy 14.2 NVRTC it kept a local array where NVRTC 12.9's did not)
_DTYPES = {"float64": "double"}


def shape(d, m):
    """``(RR, CC)``: rows and augmented columns a thread, or ``None`` where the registers would not hold
    them (``d > 64`` or ``d + m > 128``)."""
    if d < 1 or m < 1:
        return None
    rr, cc = -(-d // NT), -(-(d + m) // NT)
    if rr > MAX_RR or cc > MAX_CC:
        return None
    return rr, cc


def shared_bytes(rr, cc, itemsize):
    """Dynamic shared memory of a block: the pivot rows and columns (two each), the pivots, mu, the read's
    offset, ubar, the partial sums and the check's flag."""
    return (2 * NT * cc + 2 * NT * rr + 3 * NT * rr + NT * cc + NT * NT * cc + 1) * itemsize


def applies(xp, dtype, d, m, ridge) -> bool:
    """Whether :func:`output` runs: CuPy, float64 moments, :func:`shape`, ``ridge > 0``."""
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp):
        return False
    return _array.dtype_str(dtype) in _DTYPES and shape(d, m) is not None and float(ridge) > 0


def _function(tname, rr, cc):
    from .._fused import compiled

    return compiled(_SOURCE, f"ll_output<{tname}, {rr}, {cc}>")


def _rows(cupy, x, batch, rows, cols, dt):
    """``x`` broadcast to ``batch + (rows, cols)`` as a (n_batch, rows, cols) array whose last two axes are
    C-contiguous, without a copy where the batch axes collapse (a view of the moments' step array), and
    the elements between batch elements."""
    x = cupy.broadcast_to(x, tuple(batch) + (rows, cols))
    nb = math.prod(batch)
    x = cupy.reshape(x, (nb, rows, cols))  # a view where the strides allow it
    item = dt.itemsize
    inner = x.strides[2] == item and (rows == 1 or x.strides[1] == cols * item)
    if x.dtype != dt or not inner or x.strides[0] < 0:
        x = cupy.ascontiguousarray(x, dtype=dt)
    return x, (x.strides[0] // item if nb > 1 else 0)


def output(xp, S, ck, cv, Qr, ridge, max_cancellation):
    """Local linear outputs of one query block from its moments, in one fused kernel.

    ``S`` (*batch, c, nf): the block's moment rows (:func:`._tiled_moments.n_features` columns), ``ck``
    (*batch, 1, d), ``cv`` (*batch, 1, m): its centre key and value, ``Qr`` (*batch, c, d): its queries.
    Returns ``(Y, ok)``: Y (*batch, c, m), and per query whether it is to be used (False: a failed pivot or
    the cancellation check of :data:`._tiled_moments.MAX_CANCELLATION`, the caller's exact path takes it; True
    for an empty memory, whose Y is 0), or ``None`` where the kernel does not apply (:func:`applies`)."""
    d, m = ck.shape[-1], cv.shape[-1]
    if not applies(xp, S.dtype, d, m, ridge):
        return None
    import cupy

    batch = tuple(S.shape[:-2])
    c = S.shape[-2]
    dt = S.dtype
    Y = cupy.empty(batch + (c, m), dtype=dt)
    info = cupy.empty(batch + (c,), dtype=cupy.int32)
    n = math.prod(batch) * c
    if n == 0:
        return Y, info == 0
    S3, s_batch = _rows(cupy, S, batch, c, S.shape[-1], dt)
    Q3, q_batch = _rows(cupy, Qr, batch, c, d, dt)
    K0 = cupy.ascontiguousarray(cupy.broadcast_to(ck, batch + (1, d)), dtype=dt)
    V0 = cupy.ascontiguousarray(cupy.broadcast_to(cv, batch + (1, m)), dtype=dt)
    rr, cc = shape(d, m)
    fn = _function(_DTYPES[_array.dtype_str(dt)], rr, cc)
    scal = cupy.float64
    i32 = cupy.int32
    i64 = cupy.int64
    args = (S3, i64(s_batch), Q3, i64(q_batch), K0, V0, Y, info, i32(c), i32(d), i32(m), scal(ridge))
    args += (scal(max_cancellation),)
    fn((n,), (NT * NT,), args, shared_mem=shared_bytes(rr, cc, dt.itemsize))
    return Y, info == 0
