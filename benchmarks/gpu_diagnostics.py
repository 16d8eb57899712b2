"""Batched diagnostics on the GPU (CuPy) against NumPy on the same machine's CPU.

* ``bias_variance.monte_carlo``: NW and local linear at one point, Beta(2,2) design, n = 20000, h = 0.03,
  replications as the batch dim (the theory §1 setting);
* ``smoother.smoother_matrix``: softmax attention, 16 sequences of T = 1024, d = 64;
* ``conditioning.gram_conditioning``: key Gram spectra over 64 sequences of T = 1024, d = 64, at 8 prefixes.

The CPU side runs a smaller batch and is scaled linearly (independent replications / sequences); each row
prints the ratio CPU / GPU and the largest relative difference of the results on the common part.
Run: ``python -m benchmarks.gpu_diagnostics``.
"""

from __future__ import annotations

import sys
import time

import numpy as np

import ttr_stats as tt
from ttr_stats import _array
from ttr_stats.diagnostics import bias_variance, conditioning, smoother


def clock(fn, sync):
    fn()
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def main():
    import cupy as cp

    sync = cp.cuda.Device().synchronize
    name = cp.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"# device: {name.decode() if isinstance(name, bytes) else name}; CuPy {cp.__version__}")
    print("| diagnostic | size (GPU) | GPU s | CPU s (scaled) | CPU/GPU | max rel diff |")
    print("|---|---|---|---|---|---|")

    # Monte Carlo: the same seed gives the same data on both sides, so the first replications agree
    args = ({"NW": 0, "LL": 1}, lambda x: x[..., 0] ** 2, "beta22", np.array([0.3]), [0.03], 20000, 0.5)
    reps_gpu, reps_cpu = 2000, 100
    t_gpu, df_gpu = clock(lambda: bias_variance.monte_carlo(*args, reps_gpu, 0, xp=cp), sync)
    t_cpu, df_cpu = clock(lambda: bias_variance.monte_carlo(*args, reps_cpu, 0), lambda: None)
    # different replication counts: compare the estimates within their standard errors instead
    z = np.max(np.abs(df_gpu["bias"].to_numpy() - df_cpu["bias"].to_numpy()) / df_cpu["bias_se"].to_numpy())
    print(
        f"| monte_carlo NW+LL, n = 20000 | {reps_gpu} reps | {t_gpu:.3f} | "
        f"{t_cpu * reps_gpu / reps_cpu:.2f} | {t_cpu * reps_gpu / reps_cpu / t_gpu:.1f} | "
        f"bias within {z:.2f} SE |",
        flush=True,
    )

    rng = np.random.default_rng(0)
    B_gpu, B_cpu, T, d = 16, 2, 1024, 64
    Q, K = rng.standard_normal((2, B_gpu, T, d)) / np.sqrt(d)
    layer = tt.recipes.softmax_attention()
    t_gpu, S_gpu = clock(lambda: smoother.smoother_matrix(layer, cp.asarray(Q), cp.asarray(K)), sync)
    t_cpu, S_cpu = clock(lambda: smoother.smoother_matrix(layer, Q[:B_cpu], K[:B_cpu]), lambda: None)
    print(
        f"| smoother_matrix softmax | B = {B_gpu}, T = {T} | {t_gpu:.3f} | {t_cpu * B_gpu / B_cpu:.2f} | "
        f"{t_cpu * B_gpu / B_cpu / t_gpu:.1f} | {rel(_array.to_numpy(S_gpu)[:B_cpu], S_cpu):.1e} |",
        flush=True,
    )

    B_gpu, B_cpu = 64, 4
    K = rng.standard_normal((B_gpu, T, d))
    ts = np.linspace(2 * d, T, 8).astype(int)
    t_gpu, g_gpu = clock(lambda: conditioning.gram_conditioning(cp.asarray(K), t=ts).kappa, sync)
    t_cpu, g_cpu = clock(lambda: conditioning.gram_conditioning(K[:B_cpu], t=ts).kappa, lambda: None)
    print(
        f"| gram_conditioning kappa | B = {B_gpu}, T = {T}, 8 prefixes | {t_gpu:.3f} | "
        f"{t_cpu * B_gpu / B_cpu:.2f} | {t_cpu * B_gpu / B_cpu / t_gpu:.1f} | "
        f"{rel(_array.to_numpy(g_gpu)[:B_cpu], _array.to_numpy(g_cpu)):.1e} |",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
