"""Causal softmax ``tiled`` at B = 8, H = 16, T = 1024 (or ``argv[1]``), d = 64, float32 on CuPy: where
the host's time before the fused kernel's launch goes. The kernel's launch is wrapped to stamp the time;
printed are the median pre-launch time and whole call over 60 synchronised calls, the kernel alone, and a
cProfile of 200 calls enabled at the call and disabled at the launch (own / cumulative us a call). CuPy's
Cython (the launch's argument packing, shape and dtype reads) is invisible to the profiler: its time shows
as the own time of the Python function that calls it.

Run on a GPU machine: ``python -m benchmarks.gpu_prelaunch_trace [T]``. Prints; writes nothing.
"""

import cProfile
import pstats
import statistics
import sys
import time

import cupy as cp
import numpy as np

import ttr_stats as tt
from ttr_stats.methods.kernel_smoother import _fused_nw as nw

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
sync = cp.cuda.Device().synchronize
L = tt.recipes.softmax_attention()
rng = np.random.default_rng(0)
Q, K, V = (cp.asarray(rng.standard_normal((8, 16, T, 64)) / 64**0.25, dtype=cp.float32) for _ in range(3))
for _ in range(5):
    L(Q, K, V, method="tiled")
real = nw._kernel2
state = {"prof": None, "stamp": None}


class Timed:
    def __init__(self, k):
        object.__setattr__(self, "k", k)

    def __setattr__(self, n, v):
        setattr(self.k, n, v)

    def __call__(self, *a, **kw):
        state["stamp"] = time.perf_counter()
        if state["prof"] is not None:
            state["prof"].disable()
        return self.k(*a, **kw)


nw._kernel2 = lambda *a: Timed(real(*a))
pre, tot = [], []
for _ in range(60):
    sync()
    t0 = time.perf_counter()
    L(Q, K, V, method="tiled")
    sync()
    t2 = time.perf_counter()
    pre.append(state["stamp"] - t0)
    tot.append(t2 - t0)
print(
    f"T={T}: pre-launch host {1e6 * statistics.median(pre):.0f} us, "
    f"call {1e6 * statistics.median(tot):.0f} us (median of 60)"
)
ts = []
ops = nw.operands(cp, L, L._prepare(Q, K, V, None, None, None, None))
nw._kernel2 = real
for _ in range(60):
    sync()
    t0 = time.perf_counter()
    nw.forward(cp, **ops)
    sync()
    ts.append(time.perf_counter() - t0)
print(f"forward alone (synchronised): {1e6 * statistics.median(ts):.0f} us")
nw._kernel2 = lambda *a: Timed(real(*a))
prof = cProfile.Profile()
N = 200
for _ in range(N):
    sync()
    state["prof"] = prof
    prof.enable()
    L(Q, K, V, method="tiled")
    state["prof"] = None
sync()
st = pstats.Stats(prof)
print(f"pre-launch, profiled: {st.total_tt / N * 1e6:.0f} us a call; own / cumulative us a call, calls:")
rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:45]
for (file, line, func), (_cc, nc, tt_, ct, _callers) in rows:
    where = f"{file.split('site-packages/')[-1].split('ttr_stats/')[-1]}:{line}({func})"
    print(f"  {tt_ / N * 1e6:7.1f} {ct / N * 1e6:7.1f} {nc // N:4d}x  {where}")
