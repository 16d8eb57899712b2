"""Batched layers on the GPU (CuPy) against the same call on NumPy on the same machine's CPU.

For each family at B = 8, H = 16 (128 independent heads), T in {1024, 4096}, d = 64, float32 and float64:

* GPU time of ``layer(Q, K, V, method=...)`` on CuPy arrays of shape (B, H, T, d) (median of repeats after a
  warm-up, synchronised);
* CPU time of the same call on NumPy, measured on ``--cpu-heads`` heads and scaled linearly to 128 heads
  (every head is independent work, so time is linear in the head count; the column says so);
* the ratio CPU / GPU;
* peak device memory (bytes held by CuPy's pool after the call, the pool emptied before it);
* the largest relative difference of the GPU result against NumPy on the heads measured on both.

No fast chunked algorithms here (another issue): this measures the batched generic paths as they are.
Run: ``python -m benchmarks.gpu_batched [--quick] [--families a,b] [--T 1024,4096]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np

import ttr_stats as tt


def families():
    """name -> (factory, method, needs_alpha, T values it is run at)."""
    return {
        "linear_attention": (tt.recipes.linear_attention, "parallel", None, (1024, 4096)),
        "mamba2": (tt.recipes.mamba2, "parallel", "scalar", (1024, 4096)),
        "gla": (tt.recipes.gla, "recurrent", "vector", (1024, 4096)),
        "mesa": (lambda: tt.recipes.mesa(ridge=1.0), "recurrent", "scalar", (1024, 4096)),
        "rls": (lambda: tt.recipes.rls(ridge=1e-2), "recurrent", None, (1024, 4096)),
        "least_squares": (lambda: tt.recipes.least_squares(ridge=1e-3), "direct", None, (1024,)),
        "deltanet": (lambda: tt.recipes.deltanet(beta=0.5), "recurrent", None, (1024, 4096)),
        "softmax_attention": (tt.recipes.softmax_attention, "parallel", None, (1024, 4096)),
        "local_linear_attention": (
            lambda: tt.recipes.local_linear_attention(ridge=0.1),
            "parallel",
            None,
            (1024,),
        ),
        "kernel_regression": (lambda: tt.recipes.kernel_regression(ridge=1e-1), "parallel", None, (1024,)),
    }


def make_inputs(B, H, T, d, gate, dtype, seed=0):
    rng = np.random.default_rng(seed)
    Q, K, V = (rng.standard_normal((B, H, T, d)) / np.sqrt(d) for _ in range(3))
    K = K / np.linalg.norm(K, axis=-1, keepdims=True)  # unit keys: the delta rule with beta < 2 is stable
    gates = {}
    if gate == "scalar":
        gates["alpha"] = rng.uniform(0.95, 1.0, (B, H, T))
    elif gate == "vector":
        gates["alpha"] = rng.uniform(0.95, 1.0, (B, H, T, d))
    return [a.astype(dtype) for a in (Q, K, V)], {k: v.astype(dtype) for k, v in gates.items()}


def timed(fn, repeats, sync=lambda: None):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def measure(cp, layer, method, arrays, gates, repeats, cpu_heads, n_heads):
    """(GPU seconds, CPU seconds scaled to n_heads, peak GiB, relative difference) for one case."""
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    gQ, gK, gV = (cp.asarray(a) for a in arrays)
    gg = {k: cp.asarray(v) for k, v in gates.items()}
    base = pool.total_bytes()
    t_gpu, out = timed(lambda: layer(gQ, gK, gV, method=method, **gg), repeats, cp.cuda.Device().synchronize)
    peak = (pool.total_bytes() - base) / 2**30
    H = arrays[0].shape[1]
    h = max(1, min(cpu_heads, H))
    cpu_in = [a[:1, :h] for a in arrays]
    cpu_g = {k: v[:1, :h] for k, v in gates.items()}
    t_cpu, ref = timed(lambda: layer(*cpu_in, method=method, **cpu_g), 1)
    diff = rel(cp.asnumpy(out[:1, :h]), ref)
    return t_gpu, t_cpu * n_heads / h, peak, diff  # device arrays are freed when this frame ends


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="B=2, H=2, T=256: a smoke run")
    p.add_argument("--families", default="", help="comma-separated subset")
    p.add_argument("--T", default="", help="comma-separated sequence lengths (default per family)")
    p.add_argument("--cpu-heads", type=int, default=2, help="heads measured on the CPU (scaled to B*H)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(
        f"# device: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB; CuPy {cp.__version__}; "
        f"NumPy {np.__version__}; CPU: {platform.processor() or platform.machine()}"
    )
    B, H, d = (2, 2, 64) if args.quick else (8, 16, 64)
    fams = families()
    if args.families:
        fams = {k: fams[k] for k in args.families.split(",")}
    Ts_override = [int(t) for t in args.T.split(",")] if args.T else None
    print(
        f"# B = {B}, H = {H} ({B * H} heads), d = {d}; CPU time measured on {args.cpu_heads} heads and "
        f"scaled x{B * H / args.cpu_heads:g}"
    )
    print("| family | method | T | dtype | GPU s | CPU s (scaled) | CPU/GPU | peak GiB | max rel diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fam, (factory, method, gate, Ts) in fams.items():
        for T in [256] if args.quick else (Ts_override or Ts):
            for dtype in (np.float32, np.float64):
                layer = factory()
                (Q, K, V), gates = make_inputs(B, H, T, d, gate, dtype)
                row = f"| {fam} | {method} | {T} | {np.dtype(dtype).name} |"
                try:
                    t_gpu, t_cpu, peak, diff = measure(
                        cp, layer, method, (Q, K, V), gates, args.repeats, args.cpu_heads, B * H
                    )
                    print(
                        f"{row} {t_gpu:.4f} | {t_cpu:.2f} | {t_cpu / t_gpu:.1f} | {peak:.2f} | {diff:.1e} |",
                        flush=True,
                    )
                except MemoryError as exc:
                    print(f"{row} MemoryError: {str(exc)[:120]} | | | | |", flush=True)
                except Exception as exc:  # noqa: BLE001 - report the failure in the table, go on
                    print(f"{row} {type(exc).__name__}: {str(exc)[:120]} | | | | |", flush=True)
                cp.get_default_memory_pool().free_all_blocks()
    return 0


if __name__ == "__main__":
    sys.exit(main())
