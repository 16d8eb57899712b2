"""Tiled local linear attention on one GPU (CuPy): the layer with its fused parts switched on and off, and
one solve group fused against the array route.

At B = 8, H = 16, d = 64, float32 inputs (float64 moments), ``--T`` 4096, ridge 1e-2: the wall time of
``layer(Q, K, V, method="tiled")`` (synchronised before and after) for each setting of
``_fused_solve.ENABLED`` (the moments-to-output kernel) and ``_tiled_moments.SCALED_ADD`` (the one-pass
online rescaling), twice each in turn, with the max relative difference of every output to the
all-off one. Then ``_tiled_moments.solve`` on the first solve group of the call (the moments captured as
the layer made them), best of 3, fused and not, with the outputs' difference and whether the flags agree,
and the kernel's registers and local memory (0 expected: the matrix stays in registers).

Run: ``python -m benchmarks.gpu_local_linear_split [--T 4096]`` on a GPU machine. Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttr_stats as tt
from ttr_stats.methods.kernel_smoother import _fused_solve as fs
from ttr_stats.methods.kernel_smoother import _tiled_moments as tm
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    a = ap.parse_args(argv)
    try:
        import cupy as cp

        cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001
        print(f"needs CuPy and a CUDA device ({exc})")
        return 1
    sync = cp.cuda.Device().synchronize

    def best(fn, n=3):
        out = fn()
        sync()
        times = []
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return out, 1e3 * min(times)

    L = tt.TestTimeRegression(weights=tt.weights.Uniform(), regressor=LocalPolynomial(1, ExpDot(), 1e-2))
    rng = np.random.default_rng(0)
    shape = (a.B, a.H, a.T, a.d)
    Q, K, V = (cp.asarray(rng.standard_normal(shape), dtype=cp.float32) for _ in range(3))
    captured = {}
    solve = tm.solve

    def grab(*args):
        captured.setdefault("args", args)
        return solve(*args)

    warm = min(a.T, 1024)  # compiles the kernels, grows the pool a first time
    L(Q[..., :warm, :], K[..., :warm, :], V[..., :warm, :], method="tiled")
    sync()
    tm.solve = grab  # the first full-size call's first solve group
    try:
        outs = {}
        settings = ((True, True), (True, False), (False, False))
        for fused, scaled in settings + settings:
            fs.ENABLED, tm.SCALED_ADD = fused, scaled
            sync()
            t0 = time.perf_counter()
            outs[fused, scaled] = L(Q, K, V, method="tiled")
            sync()
            pool = cp.get_default_memory_pool().total_bytes() / 2**30
            print(f"layer T={a.T} fused solve {fused}, one-pass rescaling {scaled}: "
                  f"{time.perf_counter() - t0:.3f} s (pool {pool:.1f} GiB)", flush=True)  # fmt: skip
    finally:
        tm.solve, fs.ENABLED, tm.SCALED_ADD = solve, True, True
    ref = outs[False, False]
    for key, y in outs.items():
        print(f"  {key} vs all off: max rel diff {float(cp.abs(y - ref).max() / cp.abs(ref).max()):.1e}")
    xp, reg, plan, S, cen, blocks, d_k, d_v = captured["args"]
    print(f"solve group {blocks}: moments {S[blocks[0]].shape} {S[blocks[0]].dtype}")
    res = {}
    for fused in (True, False):
        fs.ENABLED = fused
        res[fused], ms = best(lambda: tm.solve(xp, reg, plan, S, cen, blocks, d_k, d_v))
        print(f"  solve(), fused {fused}: {ms:.2f} ms", flush=True)
    fs.ENABLED = True
    (y1, ok1), (y0, ok0) = res[True], res[False]
    diff = float(cp.abs(y1 - y0).max() / cp.abs(y0).max())
    print(f"  rel diff {diff:.1e}; flags equal {bool((ok1 == ok0).all())}; flagged {int((~ok1).sum())} / "
          f"{int((~ok0).sum())}")  # fmt: skip
    fn = fs._function("double", *fs.shape(d_k, d_v))
    print(f"  kernel: {fn.num_regs} registers, {fn.local_size_bytes} bytes of local memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
