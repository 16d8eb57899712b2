"""Run a CUDA C++ kernel source on the CPU: every thread of a block is a coroutine, ``__syncthreads`` a
switch back to a scheduler that resumes the block's threads once all of them have reached the barrier.

This executes the very source that NVRTC compiles on a GPU (the ``_SOURCE`` strings of
``ttr_stats/methods/_fused.py`` and ``methods/delta/_fused_wy.py``) with g++, so that the kernels' index
arithmetic, tiling, bounds and barriers are checked against their NumPy references on a machine without a
GPU. It finds what a GPU run would: a wrong index, a missing bound, an out-of-range shared-memory access
(the shared buffer is poisoned with NaN before every block, so a read of what no thread wrote shows), and a barrier not reached by every thread of
a block (an error here, a hang or undefined behaviour on a card). It cannot find a data race between
threads of a block (the coroutines run one at a time between barriers) or a performance problem.

Supported: ``__global__``/``__device__`` functions, ``extern __shared__ unsigned char smem_raw[]`` (the
name the kernels use) and static ``__shared__`` arrays, ``threadIdx``/``blockIdx``/``blockDim``/
``gridDim``, ``__syncthreads``, ``__syncthreads_or``, ``#pragma unroll``, the math functions of <cmath>.
Not supported: warp shuffles and votes (the kernels do not use them).

Use: ``k = compile_kernel(source, "state_pass<float>", ["const float*", ..., "int"])``, then
``k(grid, block, shared_bytes, *args)`` with NumPy arrays for pointers (C-contiguous, the right dtype) and
Python numbers for scalars. ``available()`` says whether g++ is there (tests skip without it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile

import numpy as np

_SHIM = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>
#include <ucontext.h>
#include <algorithm>
using std::isfinite; using std::exp; using std::log; using std::sqrt; using std::fabs; using std::fma;

template <typename A, typename B> static inline auto min(A a, B b) { return a < b ? a : b; }
template <typename A, typename B> static inline auto max(A a, B b) { return a > b ? a : b; }
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) double2 { double x, y; };
struct dim3 { unsigned x, y, z; dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {} };
static dim3 threadIdx, blockIdx, blockDim, gridDim;
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
alignas(64) unsigned char smem_raw_storage[1 << 20];
#define smem_raw smem_raw_storage
static size_t smem_limit = 0;

static ucontext_t sched_ctx;
static std::vector<ucontext_t> thr_ctx;
static std::vector<int> thr_state;  // 0 running, 1 at barrier, 2 done
static std::vector<std::vector<char>> stacks;
static int cur = 0;
static int or_acc = 0, or_result = 0;
static std::function<void()>* body_fn = nullptr;
static int failed = 0;

static void __syncthreads() { thr_state[cur] = 1; swapcontext(&thr_ctx[cur], &sched_ctx); }
static int __syncthreads_or(int p) { or_acc |= (p != 0); __syncthreads(); return or_result; }
static void trampoline() { (*body_fn)(); thr_state[cur] = 2; }

extern "C" int emulate_launch(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              size_t smem, std::function<void()>* body) {
    body_fn = body;
    gridDim = dim3(gx, gy, gz); blockDim = dim3(bx, by, bz);
    const int n = bx * by * bz;
    thr_ctx.resize(n); thr_state.resize(n); stacks.resize(n);
    for (auto& s : stacks) s.resize(1 << 17);
    for (unsigned z = 0; z < gz; ++z) for (unsigned y = 0; y < gy; ++y) for (unsigned x = 0; x < gx; ++x) {
        blockIdx = dim3(x, y, z);
        // poison the dynamic shared memory: a read before a write shows up as NaN in the results
        for (size_t i = 0; i + 4 <= sizeof(smem_raw_storage); i += 4) { uint32_t v = 0x7fc00001u; memcpy(smem_raw_storage + i, &v, 4); }
        for (int t = 0; t < n; ++t) {
            getcontext(&thr_ctx[t]);
            thr_ctx[t].uc_stack.ss_sp = stacks[t].data(); thr_ctx[t].uc_stack.ss_size = stacks[t].size();
            thr_ctx[t].uc_link = &sched_ctx;
            makecontext(&thr_ctx[t], trampoline, 0);
            thr_state[t] = 0;
        }
        for (;;) {
            for (int t = 0; t < n; ++t) {
                if (thr_state[t] == 2) continue;
                thr_state[t] = 0; cur = t;
                threadIdx = dim3(t % bx, (t / bx) % by, t / (bx * by));
                swapcontext(&sched_ctx, &thr_ctx[t]);
            }
            int done = 0, wait = 0;
            for (int t = 0; t < n; ++t) { done += thr_state[t] == 2; wait += thr_state[t] == 1; }
            if (done == n) break;
            if (done) { fprintf(stderr, "barrier reached by %d of %d threads of block (%u,%u,%u)\n", wait, n, x, y, z); return 1; }
            or_result = or_acc; or_acc = 0;
        }
    }
    return 0;
}
"""

_CACHE = os.path.join(tempfile.gettempdir(), "ttr_cuda_on_host")


def available() -> bool:
    return shutil.which("g++") is not None


def compile_kernel(source: str, name: str, types: list[str], defines: str = ""):
    """Compile ``source`` with the shim and return a callable running kernel ``name`` (a template
    instantiation such as ``"state_pass<float>"``) whose parameters have the C ``types`` given."""
    params = ", ".join(f"void* a{i}" for i in range(len(types)))
    call = ", ".join(f"({t})a{i}" if t.endswith("*") else f"*({t}*)a{i}" for i, t in enumerate(types))
    wrapper = f"""
extern "C" int run(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                   size_t smem, {params}) {{
    if (smem > sizeof(smem_raw_storage)) return 2;
    std::function<void()> body = [&]() {{ {name}({call}); }};
    return emulate_launch(gx, gy, gz, bx, by, bz, smem, &body);
}}
"""
    # dynamic shared memory is the shim's one buffer; static __shared__ arrays become function statics
    code = _SHIM + defines + source.replace("extern __shared__", "extern") + wrapper
    key = hashlib.sha256(code.encode()).hexdigest()[:20]
    os.makedirs(_CACHE, exist_ok=True)
    lib = os.path.join(_CACHE, f"k{key}.so")
    if not os.path.exists(lib):
        src = os.path.join(_CACHE, f"k{key}.{os.getpid()}.cpp")  # per process: concurrent runs
        with open(src, "w") as f:
            f.write(code)
        tmp = lib + f".{os.getpid()}"
        res = subprocess.run(
            ["g++", "-O1", "-g", "-std=c++17", "-shared", "-fPIC", "-Wno-unknown-pragmas", "-o", tmp, src],
            capture_output=True,
            text=True,
        )
        if res.returncode:
            raise RuntimeError(f"g++ failed on {src}:\n{res.stderr[-4000:]}")
        os.replace(tmp, lib)
    fn = ctypes.CDLL(lib).run
    fn.restype = ctypes.c_int
    ctypes_of = {
        "int": ctypes.c_int,
        "long long": ctypes.c_longlong,
        "float": ctypes.c_float,
        "double": ctypes.c_double,
    }

    def launch(grid, block, shared_bytes, *args):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        keep, ptrs = [], []
        for t, a in zip(types, args, strict=True):
            if t.endswith("*"):
                assert isinstance(a, np.ndarray) and a.flags.c_contiguous, t
                ptrs.append(ctypes.c_void_p(a.ctypes.data))
            else:
                c = ctypes_of[t](a)
                keep.append(c)
                ptrs.append(ctypes.cast(ctypes.pointer(c), ctypes.c_void_p))
        rc = fn(*(ctypes.c_uint(g) for g in grid), *(ctypes.c_uint(b) for b in block),
                ctypes.c_size_t(shared_bytes), *ptrs)  # fmt: skip
        if rc == 2:
            raise ValueError(f"{shared_bytes} bytes of shared memory: more than the emulator's 1 MiB")
        if rc:
            raise RuntimeError(f"{name}: a barrier was not reached by every thread of a block")

    return launch
