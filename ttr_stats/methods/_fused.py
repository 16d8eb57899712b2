r"""A fused CUDA kernel for the sequential part of the chunked linear-memory methods (CuPy only).

The chunked forms of the identity family (``methods/identity/chunked.py``) and of the delta rule
(``methods/delta/chunked.py``) split into work that is parallel over chunks (the intra-chunk products,
the UT transform: batched matmuls a GPU runs well as array operations) and one recurrence over the
chunks, which as array operations is either a loop of ``N`` tiny launches or a scan that does
``O(N log N d^3)`` work. This module runs that recurrence as one kernel: a thread block per (sequence,
block of value columns) walks the chunks in order with its slice of the state in shared memory.

Per chunk ``n``, with the state carried transposed, :math:`S^\top` of shape (d_k, d_v):

.. math:: \Delta = U - W S^\top \quad(\text{or } \Delta = U \text{ without } W),\qquad
          Y = Q_g S^\top + A\,\Delta \quad(\text{or } Y = Q_g S^\top),\qquad
          S^\top \leftarrow \operatorname{diag}(a)\,S^\top + K_x^\top \Delta

* identity family: ``Q_g = q e^{G}``, ``K_x = k b e^{G_L - G}``, ``U = v``, no ``W`` and no ``A`` (the
  intra-chunk term is added by the caller), ``a`` the chunk's scalar or per-dimension decay;
* delta rule: ``Q_g = diag(gamma_r) Q``, ``A = P`` (the masked intra-chunk reads), ``U, W`` the UT
  transform, ``K_x = D K`` and ``a = gamma_C``.

Every operand is formed by the array code in the working dtype; the kernel only multiplies and adds, in
that dtype (float32 or float64), so it agrees with the array form to rounding (tests/test_fused.py runs
both on the GPU). The array form stays the portable path (NumPy, torch) and the reference.

Two kernels compute it (:data:`KERNEL`). ``state_pass``, the default, gives each thread one value column
and :data:`ROW_BLOCK` rows of Delta and of the state update a pass, so that one shared-memory load of
the shared operand feeds ROW_BLOCK multiply-adds. ``state_pass_tiled`` gives each thread 4 adjacent value
columns of up to :data:`TILE_ROWS` rows of every product, held in registers. It was slower on an H200
(B = 8, H = 16, T = 4096, d = 64, float32: a 3.64 ms state pass against 1.54 ms) and stays selectable
for the profile's sweeps.

:func:`chunk_states` runs the simple kernel without reads (R = 0) and stores every chunk's Delta and
starting state. The delta rule's device path then forms its reads as batched products, parallel over
chunks (``delta/chunked.SPLIT_READS``).

The kernel is compiled by NVRTC at first use (``cupy.RawModule``). :func:`state_pass` returns ``None``
where it does not apply (not CuPy, a dtype other than float32/float64, operands too big for shared
memory), and the caller then runs the array form. :data:`ENABLED` switches it off globally.
"""

from __future__ import annotations

import math

import array_api_compat

from .._array import dtype_str

__all__ = ["ENABLED", "KERNEL", "state_pass", "chunk_states", "applies", "layout", "THREADS"]

#: set False to run the array form on CuPy as well (the tests compare the two)
ENABLED = True

#: threads a block of the simple kernel
THREADS = 256

#: most rows (reads or state rows) one thread keeps in registers; bounds R and d_k by ``MAX_ROWS * rows``
MAX_ROWS = 32

#: rows of ``Delta = U - W S^T`` and of the state update a thread of the simple kernel forms in one pass
#: (one shared load of the shared operand feeds ROW_BLOCK multiply-adds instead of one; every sum keeps
#: its order, so the results are bit-for-bit those of one row a pass). Gated DeltaNet chunked (B = 8,
#: H = 16, T = 4096, d = 64, H200, benchmarks/gpu_fast.py): 5.31 ms before, 4.28 ms after (two runs)
ROW_BLOCK = 4

_SOURCE = r"""
#define MAX_ROWS %(max_rows)d
#define RB %(row_block)d

template <typename T>
__global__ void state_pass(
    const T* __restrict__ Qg, const T* __restrict__ A, const T* __restrict__ W,
    const T* __restrict__ U, const T* __restrict__ Kx, const T* __restrict__ a,
    const T* __restrict__ S0, T* __restrict__ Y, T* __restrict__ Sout,
    const int N, const int R, const int C, const int dk, const int dv, const int da,
    const int BV, const int has_A, const int has_W,
    T* __restrict__ Dout, T* __restrict__ Sn, const int keep)
{
    // keep: also store every chunk's Delta (Dout, (N, C, dv)) and the state before it (Sn, (N, dk, dv)),
    // so that a caller can form the reads as batched products (R = 0 then: no reads here)
    extern __shared__ unsigned char smem_raw[];
    T* St = reinterpret_cast<T*>(smem_raw);   // (dk, BV): this block's columns of S^T
    T* Vn = St + dk * BV;                     // (C, BV): Delta
    T* sQ = Vn + C * BV;                      // (R, dk)
    T* sK = sQ + R * dk;                      // (C, dk)
    T* sW = sK + C * dk;                      // (C, dk) when has_W
    T* sA = sW + (has_W ? C * dk : 0);        // (R, C) when has_A
    T* sa = sA + (has_A ? R * C : 0);         // (dk,)

    const int bh = blockIdx.x;   // sequences on x (up to 2^31 - 1 of them), value blocks on y
    const int v0 = blockIdx.y * BV;
    const int tid = threadIdx.x;
    const int nthreads = blockDim.x;
    const int col = tid %% BV;
    const int rg = tid / BV;
    const int nrg = nthreads / BV;
    const int vcol = v0 + col;

    const T* S0b = S0 + (size_t)bh * dk * dv;
    for (int i = tid; i < dk * BV; i += nthreads) {
        const int k = i / BV, c = i %% BV;
        St[i] = (v0 + c < dv) ? S0b[(size_t)k * dv + v0 + c] : T(0);
    }
    T yreg[MAX_ROWS];
    for (int n = 0; n < N; ++n) {
        const size_t chunk = (size_t)bh * N + n;
        const T* Qn = Qg + chunk * R * dk;
        const T* Kn = Kx + chunk * C * dk;
        const T* Un = U + chunk * C * dv;
        for (int i = tid; i < R * dk; i += nthreads) sQ[i] = Qn[i];
        for (int i = tid; i < C * dk; i += nthreads) sK[i] = Kn[i];
        if (has_W) {
            const T* Wn = W + chunk * C * dk;
            for (int i = tid; i < C * dk; i += nthreads) sW[i] = Wn[i];
        }
        if (has_A) {
            const T* An = A + chunk * R * C;
            for (int i = tid; i < R * C; i += nthreads) sA[i] = An[i];
        }
        const T* an = a + chunk * da;
        for (int i = tid; i < dk; i += nthreads) sa[i] = an[da == 1 ? 0 : i];
        for (int i = tid; i < C * BV; i += nthreads) {
            const int r = i / BV, c = i %% BV;
            Vn[i] = (v0 + c < dv) ? Un[(size_t)r * dv + v0 + c] : T(0);
        }
        __syncthreads();
        // phase 1: Delta = U - W S^T and the inter-chunk reads Q_g S^T (S^T is only read)
        if (has_W) {  // RB rows a pass: one load of S^T feeds RB multiply-adds (sums in k's order)
            for (int r0 = rg; r0 < C; r0 += RB * nrg) {
                T acc[RB];
#pragma unroll
                for (int i = 0; i < RB; ++i) acc[i] = T(0);
                for (int k = 0; k < dk; ++k) {
                    const T sv = St[k * BV + col];
#pragma unroll
                    for (int i = 0; i < RB; ++i) {
                        const int r = r0 + i * nrg;
                        if (r < C) acc[i] += sW[r * dk + k] * sv;
                    }
                }
#pragma unroll
                for (int i = 0; i < RB; ++i) {
                    const int r = r0 + i * nrg;
                    if (r < C) Vn[r * BV + col] -= acc[i];
                }
            }
        }
        int ir = 0;
        for (int r = rg; r < R; r += nrg, ++ir) {
            T acc = T(0);
            const T* qr = sQ + r * dk;
#pragma unroll 8
            for (int k = 0; k < dk; ++k) acc += qr[k] * St[k * BV + col];
            yreg[ir] = acc;
        }
        __syncthreads();
        // phase 2: the intra-chunk reads A Delta, the outputs, and S^T <- diag(a) S^T + K_x^T Delta
        if (keep && vcol < dv)
            for (int r = rg; r < C; r += nrg) Dout[(chunk * C + r) * dv + vcol] = Vn[r * BV + col];
        T* Yn = Y + chunk * R * dv;
        ir = 0;
        for (int r = rg; r < R; r += nrg, ++ir) {
            T acc = yreg[ir];
            if (has_A) {
                const T* ar = sA + r * C;
#pragma unroll 8
                for (int j = 0; j < C; ++j) acc += ar[j] * Vn[j * BV + col];
            }
            if (vcol < dv) Yn[(size_t)r * dv + vcol] = acc;
        }
        for (int k0 = rg; k0 < dk; k0 += RB * nrg) {  // RB state rows a pass, as above
            T acc[RB];
#pragma unroll
            for (int i = 0; i < RB; ++i) {
                const int k = k0 + i * nrg;
                acc[i] = T(0);
                if (k < dk) {
                    if (keep && vcol < dv) Sn[(chunk * dk + k) * dv + vcol] = St[k * BV + col];
                    acc[i] = sa[k] * St[k * BV + col];
                }
            }
            for (int j = 0; j < C; ++j) {
                const T d = Vn[j * BV + col];
#pragma unroll
                for (int i = 0; i < RB; ++i) {
                    const int k = k0 + i * nrg;
                    if (k < dk) acc[i] += sK[j * dk + k] * d;
                }
            }
#pragma unroll
            for (int i = 0; i < RB; ++i) {
                const int k = k0 + i * nrg;
                if (k < dk) St[k * BV + col] = acc[i];
            }
        }
        __syncthreads();
    }
    T* Sb = Sout + (size_t)bh * dk * dv;
    for (int i = tid; i < dk * BV; i += nthreads) {
        const int k = i / BV, c = i %% BV;
        if (v0 + c < dv) Sb[(size_t)k * dv + v0 + c] = St[i];
    }
}
""" % {"max_rows": MAX_ROWS, "row_block": ROW_BLOCK}  # noqa: UP031 - the CUDA source is full of braces; %% is its modulo

#: the register-tiled kernel: each thread owns ``TILE_COLUMNS`` = 4 adjacent value columns of up to
#: ``TILE_ROWS`` rows (rows ``rt + i * nrg``) of each product, so one vector load of 4 state (or Delta)
#: entries and one scalar load of the row operand feed 4 FMAs a row: 4 TR FMAs per TR + 1 shared loads,
#: against 1 FMA per 2 loads in ``state_pass`` above. Row operands read by several row groups of a warp
#: (Q, W, A) are stored with odd row strides (no bank conflicts); the state slice and Delta have BV
#: columns, a multiple of 4, and start 16-byte aligned (vector loads).
TILE_ROWS = 8

#: most threads a block of the tiled kernel (its launch bound: at ~130 registers a thread in float32 and
#: ~210 in float64 (ptxas, sm_90), 256 threads fit an SM's 64 K registers in both)
TILED_MAX_THREADS = 256

_TILED_SOURCE = r"""
#define TRMAX %(tile_rows)d
#define TILED_MAX_THREADS %(max_threads)d

__device__ __forceinline__ void ld4(const float* p, float (&r)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p);
    r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
}
__device__ __forceinline__ void ld4(const double* p, double (&r)[4]) {
    const double2 a = *reinterpret_cast<const double2*>(p);
    const double2 b = *reinterpret_cast<const double2*>(p + 2);
    r[0] = a.x; r[1] = a.y; r[2] = b.x; r[3] = b.y;
}

template <typename T>
__global__ void __launch_bounds__(TILED_MAX_THREADS) state_pass_tiled(
    const T* __restrict__ Qg, const T* __restrict__ A, const T* __restrict__ W,
    const T* __restrict__ U, const T* __restrict__ Kx, const T* __restrict__ a,
    const T* __restrict__ S0, T* __restrict__ Y, T* __restrict__ Sout,
    const int N, const int R, const int C, const int dk, const int dv, const int da,
    const int BV, const int has_A, const int has_W,
    T* __restrict__ Dout, T* __restrict__ Sn, const int keep)
{
    // keep: also store every chunk's Delta (Dout, (N, C, dv)) and the state before it (Sn, (N, dk, dv)),
    // each thread the entries it owns (R = 0 then: no reads here), as the simple kernel's keep mode
    const int ldq = dk | 1, ldc = C | 1;
    extern __shared__ unsigned char smem_raw[];
    T* St = reinterpret_cast<T*>(smem_raw);   // (dk, BV): this block's columns of S^T
    T* Vn = St + dk * BV;                     // (C, BV): Delta
    T* sK = Vn + C * BV;                      // (C, dk): read along k, so no padding
    T* sQ = sK + C * dk;                      // (R, ldq)
    T* sW = sQ + R * ldq;                     // (C, ldq) when has_W
    T* sA = sW + (has_W ? C * ldq : 0);       // (R, ldc) when has_A
    T* sa = sA + (has_A ? R * ldc : 0);       // (dk,)

    const int bh = blockIdx.x;
    const int v0 = blockIdx.y * BV;
    const int tid = threadIdx.x, nthreads = blockDim.x;
    const int ncg = BV / 4;
    const int c0 = (tid %% ncg) * 4;          // the thread's first column in the block
    const int rt = tid / ncg, nrg = nthreads / ncg;

    const T* S0b = S0 + (size_t)bh * dk * dv;
    for (int i = tid; i < dk * BV; i += nthreads) {
        const int k = i / BV, c = i %% BV;
        St[i] = (v0 + c < dv) ? S0b[(size_t)k * dv + v0 + c] : T(0);
    }
    T yreg[TRMAX][4];
    T acc[TRMAX][4];
    for (int n = 0; n < N; ++n) {
        const size_t chunk = (size_t)bh * N + n;
        const T* Qn = Qg + chunk * R * dk;
        const T* Kn = Kx + chunk * C * dk;
        const T* Un = U + chunk * C * dv;
        for (int i = tid; i < R * dk; i += nthreads) sQ[(i / dk) * ldq + i %% dk] = Qn[i];
        for (int i = tid; i < C * dk; i += nthreads) sK[i] = Kn[i];
        if (has_W) {
            const T* Wn = W + chunk * C * dk;
            for (int i = tid; i < C * dk; i += nthreads) sW[(i / dk) * ldq + i %% dk] = Wn[i];
        }
        if (has_A) {
            const T* An = A + chunk * R * C;
            for (int i = tid; i < R * C; i += nthreads) sA[(i / C) * ldc + i %% C] = An[i];
        }
        const T* an = a + chunk * da;
        for (int i = tid; i < dk; i += nthreads) sa[i] = an[da == 1 ? 0 : i];
        for (int i = tid; i < C * BV; i += nthreads) {
            const int r = i / BV, c = i %% BV;
            Vn[i] = (v0 + c < dv) ? Un[(size_t)r * dv + v0 + c] : T(0);
        }
        __syncthreads();
        // phase 1: Delta = U - W S^T (rows of Delta) and the reads Q_g S^T (into yreg); S^T only read
        if (has_W) {
#pragma unroll
            for (int i = 0; i < TRMAX; ++i)
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[i][c] = T(0);
            for (int k = 0; k < dk; ++k) {
                T s[4];
                ld4(St + k * BV + c0, s);
#pragma unroll
                for (int i = 0; i < TRMAX; ++i) {
                    const int r = rt + i * nrg;
                    if (r < C) {
                        const T w = sW[r * ldq + k];
#pragma unroll
                        for (int c = 0; c < 4; ++c) acc[i][c] += w * s[c];
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < TRMAX; ++i) {
                const int r = rt + i * nrg;
                if (r < C) {
#pragma unroll
                    for (int c = 0; c < 4; ++c) Vn[r * BV + c0 + c] -= acc[i][c];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < TRMAX; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c) yreg[i][c] = T(0);
        for (int k = 0; k < dk; ++k) {
            T s[4];
            ld4(St + k * BV + c0, s);
#pragma unroll
            for (int i = 0; i < TRMAX; ++i) {
                const int r = rt + i * nrg;
                if (r < R) {
                    const T q = sQ[r * ldq + k];
#pragma unroll
                    for (int c = 0; c < 4; ++c) yreg[i][c] += q * s[c];
                }
            }
        }
        __syncthreads();
        // phase 2: Y = yreg + A Delta, then S^T <- diag(a) S^T + K_x^T Delta (own rows and columns only)
        if (keep) {
#pragma unroll
            for (int i = 0; i < TRMAX; ++i) {
                const int r = rt + i * nrg;
                if (r < C) {
#pragma unroll
                    for (int c = 0; c < 4; ++c)
                        if (v0 + c0 + c < dv) Dout[(chunk * C + r) * dv + v0 + c0 + c] = Vn[r * BV + c0 + c];
                }
            }
        }
        if (has_A) {
            for (int j = 0; j < C; ++j) {
                T d[4];
                ld4(Vn + j * BV + c0, d);
#pragma unroll
                for (int i = 0; i < TRMAX; ++i) {
                    const int r = rt + i * nrg;
                    if (r < R) {
                        const T av = sA[r * ldc + j];
#pragma unroll
                        for (int c = 0; c < 4; ++c) yreg[i][c] += av * d[c];
                    }
                }
            }
        }
        T* Yn = Y + chunk * R * dv;
#pragma unroll
        for (int i = 0; i < TRMAX; ++i) {
            const int r = rt + i * nrg;
            if (r < R) {
#pragma unroll
                for (int c = 0; c < 4; ++c)
                    if (v0 + c0 + c < dv) Yn[(size_t)r * dv + v0 + c0 + c] = yreg[i][c];
            }
        }
#pragma unroll
        for (int i = 0; i < TRMAX; ++i) {
            const int k = rt + i * nrg;
            if (k < dk) {
                T s[4];
                ld4(St + k * BV + c0, s);
#pragma unroll
                for (int c = 0; c < 4; ++c) acc[i][c] = sa[k] * s[c];
                if (keep) {
#pragma unroll
                    for (int c = 0; c < 4; ++c)
                        if (v0 + c0 + c < dv) Sn[(chunk * dk + k) * dv + v0 + c0 + c] = s[c];
                }
            }
        }
        for (int j = 0; j < C; ++j) {
            T d[4];
            ld4(Vn + j * BV + c0, d);
#pragma unroll
            for (int i = 0; i < TRMAX; ++i) {
                const int k = rt + i * nrg;
                if (k < dk) {
                    const T kv = sK[j * dk + k];
#pragma unroll
                    for (int c = 0; c < 4; ++c) acc[i][c] += kv * d[c];
                }
            }
        }
#pragma unroll
        for (int i = 0; i < TRMAX; ++i) {
            const int k = rt + i * nrg;
            if (k < dk) {
#pragma unroll
                for (int c = 0; c < 4; ++c) St[k * BV + c0 + c] = acc[i][c];
            }
        }
        __syncthreads();
    }
    T* Sb = Sout + (size_t)bh * dk * dv;
    for (int i = tid; i < dk * BV; i += nthreads) {
        const int k = i / BV, c = i %% BV;
        if (v0 + c < dv) Sb[(size_t)k * dv + v0 + c] = St[i];
    }
}
""" % {"tile_rows": TILE_ROWS, "max_threads": TILED_MAX_THREADS}  # noqa: UP031

_MODULE = None
_DTYPES = {"float32": "float", "float64": "double"}

#: which kernel runs: ``"simple"`` (one output a thread, the default) or ``"tiled"`` (register-tiled).
#: Measured on one H200 (B = 8, H = 16, T = 4096, d = 64, float32, benchmarks/gpu_chunked_profile.py): the
#: state pass took 3.64 ms tiled against 1.54 ms simple, so linear attention ran 4.95 ms tiled against
#: 3.15 ms simple (Mamba-2 5.84 against 3.56); the tiled kernel stays selectable for the profile's sweeps
KERNEL = "simple"

#: value columns a block and threads a block of the tiled kernel (the defaults are a guess until
#: benchmarks/gpu_chunked_profile.py, which times the alternatives on a card, says otherwise)
TILED_COLUMNS = 32
TILED_THREADS = 128


def _module():
    global _MODULE
    if _MODULE is None:
        import cupy

        names = [f"{k}<{t}>" for k in ("state_pass", "state_pass_tiled") for t in _DTYPES.values()]
        _MODULE = cupy.RawModule(
            code=_SOURCE + _TILED_SOURCE, options=("-std=c++17",), name_expressions=names
        )
    return _MODULE


def _columns(dv):
    """Value columns a block: a power of two up to 32 (one warp reads a row of the state slice)."""
    return min(32, 1 << max(0, (dv - 1).bit_length()))


def _shared_bytes(R, C, dk, BV, has_A, has_W, itemsize):
    words = dk * BV + C * BV + R * dk + C * dk + (C * dk if has_W else 0) + (R * C if has_A else 0) + dk
    return words * itemsize


def _tiled_shared_bytes(R, C, dk, BV, has_A, has_W, itemsize):
    ldq, ldc = dk | 1, C | 1
    words = dk * BV + C * BV + C * dk + R * ldq + (C * ldq if has_W else 0) + (R * ldc if has_A else 0) + dk
    return words * itemsize


_ATTRIBUTES = {}


def device_attribute(name, default=None):
    """An attribute of the current CUDA device, cached per device (``Device.attributes`` queries every
    attribute of the device at each access: tens of microseconds a call)."""
    import cupy

    dev = cupy.cuda.Device()
    key = (dev.id, name)
    if key not in _ATTRIBUTES:
        _ATTRIBUTES[key] = int(dev.attributes.get(name, default))
    return _ATTRIBUTES[key]


_COMPILED = {}


def compiled(source, name, options=("-std=c++17",)):
    """The kernel ``name`` (a template instance such as ``"ll_output<double, 4, 8>"``) of the CUDA
    ``source``, compiled by NVRTC at first use on the current device and kept per device (a CuPy function
    is loaded into one device's context)."""
    import cupy

    key = (cupy.cuda.runtime.getDevice(), source, name, tuple(options))
    if key not in _COMPILED:
        mod = cupy.RawModule(code=source, options=tuple(options), name_expressions=[name])
        _COMPILED[key] = mod.get_function(name)
    return _COMPILED[key]


def _shared_limit():
    return device_attribute("MaxSharedMemoryPerBlockOptin", 48 * 1024)


# id of a function -> (the function, the dynamic shared bytes it may use); the entry holds the function, so
# its id is never another's (a dropped cache, as tests make, would otherwise hand its ids to new functions)
_SHARED_OPTED: dict = {}


def allow_shared(fn, smem):
    """Let ``fn`` (a function of :func:`compiled`) launch with ``smem`` bytes of dynamic shared memory:
    above 48 KiB a function must opt in (a driver call); done once per function and size, not per launch."""
    if smem <= 48 * 1024:
        return
    got = _SHARED_OPTED.get(id(fn))
    if got is None or got[0] is not fn or got[1] < smem:
        fn.max_dynamic_shared_size_bytes = smem
        _SHARED_OPTED[id(fn)] = (fn, smem)


def layout(R, C, dk, dv, has_A, has_W, itemsize, kernel=None, columns=None, threads=None):
    """``(kernel name, value columns a block, threads a block, shared bytes)`` of a launch, from the
    module settings (or the arguments); ``None`` where no launch is possible (too many rows for the
    registers, too big for shared memory is checked by the caller)."""
    kernel = KERNEL if kernel is None else kernel
    if kernel == "simple":
        BV = _columns(dv)
        if math.ceil(R / (THREADS // BV)) > MAX_ROWS:
            return None
        return "state_pass", BV, THREADS, _shared_bytes(R, C, dk, BV, has_A, has_W, itemsize)
    cols = TILED_COLUMNS if columns is None else columns
    BV = min(cols, max(4, 1 << max(0, (dv - 1).bit_length())))
    ncg = BV // 4
    nrg = max(1, (TILED_THREADS if threads is None else threads) // ncg)
    nrg = max(nrg, -(-max(R, C, dk) // TILE_ROWS))  # every row of every product owned by a thread
    if nrg * ncg > TILED_MAX_THREADS:
        return None
    return "state_pass_tiled", BV, nrg * ncg, _tiled_shared_bytes(R, C, dk, BV, has_A, has_W, itemsize)


def applies(xp, dtype, R, C, dk, dv, has_A, has_W) -> bool:
    """Whether :func:`state_pass` runs for these sizes (CuPy, float32/float64, fits shared memory)."""
    if not ENABLED or not array_api_compat.is_cupy_namespace(xp):
        return False
    name = dtype_str(dtype)
    if name not in _DTYPES:
        return False
    lay = layout(R, C, dk, dv, has_A, has_W, 4 if name == "float32" else 8)
    return lay is not None and lay[3] <= _shared_limit()


def state_pass(xp, Qg, U, Kx, a, S0t, A=None, W=None):
    """Run the chunk recurrence (module docstring) in one kernel.

    Parameters
    ----------
    Qg : array (..., N, R, d_k)
    U : array (..., N, C, d_v)
    Kx : array (..., N, C, d_k)
    a : array (..., N, 1) or (..., N, d_k)
        The chunks' decays.
    S0t : array (..., d_k, d_v)
        The transposed state before chunk 0 (broadcast over the leading axes).
    A : array (..., N, R, C), optional
    W : array (..., N, C, d_k), optional

    Returns
    -------
    ``(Y, St)``: Y (..., N, R, d_v) and the transposed state after the last chunk (..., d_k, d_v); or
    ``None`` where the kernel does not apply (:func:`applies`).
    """
    lead = Qg.shape[:-3]
    N, R, dk = Qg.shape[-3:]
    C, dv = U.shape[-2], U.shape[-1]
    dt = Qg.dtype
    if N == 0 or not applies(xp, dt, R, C, dk, dv, A is not None, W is not None):
        return None
    import cupy

    BH = math.prod(lead)
    da = a.shape[-1]

    def flat(x, tail):
        return cupy.ascontiguousarray(xp.reshape(xp.broadcast_to(x, lead + tail), (BH,) + tail), dtype=dt)

    Qf, Uf, Kf = flat(Qg, (N, R, dk)), flat(U, (N, C, dv)), flat(Kx, (N, C, dk))
    af, Sf = flat(a, (N, da)), flat(S0t, (dk, dv))
    Af = flat(A, (N, R, C)) if A is not None else Uf
    Wf = flat(W, (N, C, dk)) if W is not None else Uf
    Y = cupy.empty((BH, N, R, dv), dtype=dt)
    St = cupy.empty((BH, dk, dv), dtype=dt)
    name, BV, threads, smem = layout(R, C, dk, dv, A is not None, W is not None, dt.itemsize)
    kern = _module().get_function(f"{name}<{_DTYPES[dtype_str(dt)]}>")
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    i32 = cupy.int32
    args = (Qf, Af, Wf, Uf, Kf, af, Sf, Y, St)
    sizes = (N, R, C, dk, dv, da, BV, int(A is not None), int(W is not None))
    kern((BH, (dv + BV - 1) // BV), (threads,), args + tuple(i32(s) for s in sizes) + (Y, St, i32(0)),
         shared_mem=smem)  # fmt: skip
    return xp.reshape(Y, lead + (N, R, dv)), xp.reshape(St, lead + (dk, dv))


#: the kernel of :func:`chunk_states` (the recurrence alone, no reads): ``"simple"`` or ``"tiled"`` (register
#: tiles of TILE_ROWS rows x 4 columns a thread: 4 TR multiply-adds per TR + 1 shared loads), with the
#: tiled kernel's value columns and threads a block; where the tiled layout does not fit, the simple one.
#: Gated DeltaNet's sizes on the H200 (B = 8, H = 16, d = 64, chunk 64, float32; same bits in every
#: layout): simple 1.66 / 5.87 ms at T = 4096 / 16384, tiled 3.01-3.47 / 11.6-13.4 ms for columns x
#: threads in {16, 32, 64} x {64, 128, 256} (6.3 / 25.5 ms at 8 x 64): the simple kernel stays
STATES_KERNEL = "simple"
STATES_COLUMNS = 32
STATES_THREADS = 128


def chunk_states(xp, U, Kx, a, S0t, W=None):
    r"""The recurrence alone (the simple kernel, no reads): every chunk's :math:`\Delta = U - W S^\top`
    and the transposed state before it, for the caller to form the reads as batched products
    (:math:`Y = Q_g S^\top + A \Delta`, parallel over chunks) instead of inside the sequential pass.

    U (..., N, C, d_v), Kx (..., N, C, d_k), a (..., N, 1) or (..., N, d_k), S0t (..., d_k, d_v), W
    (..., N, C, d_k) optional. Returns ``(S, Delta, St)``: the transposed states before every chunk
    (..., N, d_k, d_v), the Deltas (..., N, C, d_v) and the transposed final state (..., d_k, d_v); or
    ``None`` where the kernel does not apply.
    """
    lead = U.shape[:-3]
    N, C, dv = U.shape[-3:]
    dk = Kx.shape[-1]
    dt = U.dtype
    if N == 0 or not ENABLED or not array_api_compat.is_cupy_namespace(xp) or dtype_str(dt) not in _DTYPES:
        return None
    lay = layout(
        0, C, dk, dv, False, W is not None, dt.itemsize, STATES_KERNEL, STATES_COLUMNS, STATES_THREADS
    )
    if lay is None or lay[3] > _shared_limit():
        lay = layout(0, C, dk, dv, False, W is not None, dt.itemsize, kernel="simple")
    if lay is None or lay[3] > _shared_limit():
        return None
    import cupy

    BH = math.prod(lead)
    da = a.shape[-1]

    def flat(x, tail):
        return cupy.ascontiguousarray(xp.reshape(xp.broadcast_to(x, lead + tail), (BH,) + tail), dtype=dt)

    Uf, Kf, af, Sf = flat(U, (N, C, dv)), flat(Kx, (N, C, dk)), flat(a, (N, da)), flat(S0t, (dk, dv))
    Wf = flat(W, (N, C, dk)) if W is not None else Uf
    St = cupy.empty((BH, dk, dv), dtype=dt)
    S = cupy.empty((BH, N, dk, dv), dtype=dt)
    D = cupy.empty((BH, N, C, dv), dtype=dt)
    name, BV, threads, smem = lay
    kern = _module().get_function(f"{name}<{_DTYPES[dtype_str(dt)]}>")
    if smem > 48 * 1024:
        kern.max_dynamic_shared_size_bytes = smem
    i32 = cupy.int32
    args = (Uf, Uf, Wf, Uf, Kf, af, Sf, Uf, St)  # no queries, no A, no outputs (R = 0)
    sizes = (N, 0, C, dk, dv, da, BV, 0, int(W is not None))
    kern((BH, (dv + BV - 1) // BV), (threads,), args + tuple(i32(s) for s in sizes) + (D, S, i32(1)),
         shared_mem=smem)  # fmt: skip
    return (
        xp.reshape(S, lead + (N, dk, dv)),
        xp.reshape(D, lead + (N, C, dv)),
        xp.reshape(St, lead + (dk, dv)),
    )


def state_pass_reference(xp, Qg, U, Kx, a, S0t, A=None, W=None):
    """:func:`state_pass` as a plain loop over the chunks in array operations (any namespace): the
    reference the kernel is tested against, and what the call sites run under test on the host."""
    lead = Qg.shape[:-3]
    N = Qg.shape[-3]
    St = xp.broadcast_to(S0t, lead + S0t.shape[-2:])
    ys = []
    for n in range(N):
        D = U[..., n, :, :]
        if W is not None:
            D = D - W[..., n, :, :] @ St
        y = Qg[..., n, :, :] @ St
        if A is not None:
            y = y + A[..., n, :, :] @ D
        ys.append(y)
        St = a[..., n, :][..., :, None] * St + xp.matrix_transpose(Kx[..., n, :, :]) @ D
    return xp.stack(ys, axis=-3), St


#: set False to form :func:`matmul_sum` as two products and an add (its reference) on CuPy as well
GEMM_SUM = True
_GEMM_CHECKED: dict = {}  # device id -> whether the binding computed a known product right


def matmul_add(xp, A1, B1, A2, B2):
    """``A1 @ B1 + A2 @ B2``: :func:`matmul_sum` where it applies, else the two products and their sum
    (its reference)."""
    Y = matmul_sum(xp, A1, B1, A2, B2)
    return xp.matmul(A1, B1) + xp.matmul(A2, B2) if Y is None else Y


def matmul_sum(xp, A1, B1, A2, B2):
    """``A1 @ B1 + A2 @ B2`` as two strided-batched cuBLAS products into one output, the second one
    accumulating (``beta = 1``): no pass over memory to add them. ``None`` where it does not apply (not
    CuPy, not float32/float64, an operand not C-contiguous, batch shapes that differ, an empty inner
    dimension), and the caller forms the products and the sum itself.

    A1 (..., m, k1), B1 (..., k1, n), A2 (..., m, k2), B2 (..., k2, n); the result (..., m, n). The
    products run on CuPy's cuBLAS handle in its math mode (cuBLAS's default: full float32 / float64, no
    TF32; the GPU tests compare them with float64 at float32's tolerance). The binding is checked once
    per device on a small product with a known answer (the calling conventions of CuPy's low-level
    cuBLAS wrappers changed across releases); where it fails the check, this returns ``None`` from then
    on.
    """
    if not (ENABLED and GEMM_SUM) or not array_api_compat.is_cupy_namespace(xp):
        return None
    dt = A1.dtype
    ops = (A1, B1, A2, B2)
    if dtype_str(dt) not in _DTYPES or any(x.dtype != dt or x.ndim < 2 for x in ops):
        return None
    lead = A1.shape[:-2]
    (m, k1), (k2, n) = A1.shape[-2:], B2.shape[-2:]
    if (
        any(x.shape[:-2] != lead for x in ops)
        or B1.shape[-2:] != (k1, n)
        or A2.shape[-2:] != (m, k2)
        or min(m, n, k1, k2) < 1
        or not all(x.flags.c_contiguous for x in ops)
    ):
        return None
    if not _gemm_binding_ok():
        return None
    import cupy

    batch = math.prod(lead)
    Y = cupy.empty(lead + (m, n), dtype=dt)
    if batch:
        _gemm_acc(A1, B1, Y, batch, 0.0)
        _gemm_acc(A2, B2, Y, batch, 1.0)
    return Y


def _gemm_acc(A, B, Y, batch, beta):
    """``Y = A @ B + beta Y`` over ``batch`` C-contiguous row-major matrices: cuBLAS is column-major, so
    it computes ``Y^T = B^T A^T``, whose operands are the same buffers read with the other order."""
    import cupy
    import numpy as np
    from cupy_backends.cuda.libs import cublas

    m, k = A.shape[-2:]
    n = B.shape[-1]
    gemm = cublas.sgemmStridedBatched if A.dtype == np.float32 else cublas.dgemmStridedBatched
    one, b = np.ones((), A.dtype), np.full((), beta, A.dtype)  # host scalars (pointer mode host)
    handle = cupy.cuda.device.get_cublas_handle()
    N = cublas.CUBLAS_OP_N
    gemm(handle, N, N, n, m, k, one.ctypes.data, B.data.ptr, n, k * n, A.data.ptr, k, m * k,
         b.ctypes.data, Y.data.ptr, n, m * n, batch)  # fmt: skip


def _gemm_binding_ok():
    """Whether :func:`_gemm_acc` computes a known product right on this device (once a device)."""
    import cupy
    import numpy as np

    dev = cupy.cuda.runtime.getDevice()
    if dev not in _GEMM_CHECKED:
        ok = True
        try:
            rng = np.random.default_rng(0)
            for dt in (np.float32, np.float64):
                a, b, c, d = (
                    rng.integers(-3, 4, s).astype(dt) for s in ((2, 3, 4), (2, 4, 5), (2, 3, 2), (2, 2, 5))
                )
                Y = cupy.empty((2, 3, 5), dtype=dt)
                _gemm_acc(cupy.asarray(a), cupy.asarray(b), Y, 2, 0.0)
                _gemm_acc(cupy.asarray(c), cupy.asarray(d), Y, 2, 1.0)
                ok = ok and bool(np.array_equal(cupy.asnumpy(Y), a @ b + c @ d))  # small integers: exact
        except Exception:  # noqa: BLE001 - a binding that does not take these arguments: not used
            ok = False
        _GEMM_CHECKED[dev] = ok
    return _GEMM_CHECKED[dev]
