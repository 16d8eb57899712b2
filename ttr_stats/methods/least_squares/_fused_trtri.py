r"""The inverse of a stack of lower-triangular matrices in one CUDA kernel (CuPy, float32 and float64).

:func:`~ttr_stats.methods.least_squares._prefix.tril_inverse` builds the inverse on an array library by
recursive 2 x 2 blocking: log2 n levels of batched matmuls and concatenations, some 40 launches a call.
The exact chunked methods call it twice a chunk (the chunk's C x C Woodbury factor and the d x d
precision), so on a GPU chunked RLS at B = 8, H = 16, T = 4096, d = 64 was 0.38 of its 0.57 s in these
launches (cProfile on an H200: 2319 matmuls and 3231 concatenations a call). Here one thread block per
matrix holds it in shared memory and thread j computes column j of :math:`X = L^{-1}` by forward
substitution,

.. math:: X_{ij} = \Big(\delta_{ij} - \sum_{l < i} L_{il} X_{lj}\Big) / L_{ii},\qquad i = 0, 1, \dots

with every thread walking the same rows i and columns l of L (one shared-memory broadcast feeds the
block) and :math:`X_{lj} = 0` for ``l < j`` (exact zeros: the extra terms add nothing). Row i of X reads
rows ``<= i`` of L only, so the inverse is exactly as causal as the blocked form and LAPACK's ``trtri``.
A zero or non-finite pivot gives infinities or NaN, as the blocked form's ``1 / D`` does; callers judge
the result by its condition (``too_ill``).

:func:`tril_inverse` returns ``None`` where the kernel does not apply (not CuPy, not float32/float64,
``2 n^2`` words beyond the device's shared memory a block: n > 90 in float64 on an H200), and the caller
runs the blocked form. The kernel's source also runs on the host (``tests/cuda_on_host.py``,
``tests/test_fused_trtri.py``).
"""

from __future__ import annotations

import math

import array_api_compat

from ..._array import dtype_str

__all__ = ["ENABLED", "applies", "tril_inverse", "shared_bytes"]

#: set False to run the blocked array form on CuPy as well
ENABLED = True

_SOURCE = r"""
template <typename T>
__global__ void tril_inv(const T* __restrict__ L, T* __restrict__ X, const int n)
{
    extern __shared__ unsigned char smem_raw[];
    T* sL = reinterpret_cast<T*>(smem_raw);  // (n, n): this block's matrix (its lower triangle is read)
    T* sX = sL + n * n;                      // (n, n): its inverse, column j written by thread j only
    const size_t m = blockIdx.x;
    const int tid = threadIdx.x, nt = blockDim.x;
    const T* Lm = L + m * (size_t)n * n;
    for (int e = tid; e < n * n; e += nt) sL[e] = Lm[e];
    __syncthreads();
    for (int j = tid; j < n; j += nt) {
        for (int i = 0; i < n; ++i) {
            if (i < j) { sX[i * n + j] = T(0); continue; }
            T acc = (i == j) ? T(1) : T(0);
            for (int l = 0; l < i; ++l) acc -= sL[i * n + l] * sX[l * n + j];  // X[l][j] = 0 for l < j
            sX[i * n + j] = acc / sL[i * n + i];
        }
    }
    __syncthreads();
    T* Xm = X + m * (size_t)n * n;
    for (int e = tid; e < n * n; e += nt) Xm[e] = sX[e];
}
"""

_DTYPES = {"float32": "float", "float64": "double"}
_FUNCTIONS = {}


def shared_bytes(n, itemsize):
    """Dynamic shared memory of a block: the matrix and its inverse."""
    return 2 * n * n * itemsize


def threads(n):
    """Threads a block: one a column, a whole number of warps, at most 1024."""
    return min(1024, 32 * -(-max(n, 1) // 32))


def _shared_limit():
    from .. import _fused

    return _fused.device_attribute("MaxSharedMemoryPerBlockOptin", 48 * 1024)


def applies(xp, dtype, n) -> bool:
    """Whether :func:`tril_inverse` runs: CuPy, float32/float64, the block within shared memory."""
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp) or dtype_str(dtype) not in _DTYPES:
        return False
    return 1 <= n and shared_bytes(n, 4 if dtype_str(dtype) == "float32" else 8) <= _shared_limit()


def _function(dt):
    name = f"tril_inv<{_DTYPES[dtype_str(dt)]}>"
    if name not in _FUNCTIONS:
        import cupy

        mod = cupy.RawModule(code=_SOURCE, options=("-std=c++17",), name_expressions=[name])
        _FUNCTIONS[name] = mod.get_function(name)
    return _FUNCTIONS[name]


def tril_inverse(xp, L):
    """The inverse of every lower-triangular matrix of L (..., n, n) (its strict upper triangle is never
    read), as a new array; ``None`` where the kernel does not apply (:func:`applies`)."""
    n, dt = L.shape[-1], L.dtype
    if L.shape[-2] != n or not applies(xp, dt, n):
        return None
    import cupy

    batch = L.shape[:-2]
    m = math.prod(batch)
    X = cupy.empty(batch + (n, n), dtype=dt)
    if m == 0:
        return X
    Lf = cupy.ascontiguousarray(L)
    fn = _function(dt)
    smem = shared_bytes(n, dt.itemsize)
    if smem > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = smem
    fn((m,), (threads(n),), (Lf, X, cupy.int32(n)), shared_mem=smem)
    return X
