"""The Python a small causal-softmax layer call runs before its fused kernel's launch, measured on NumPy.

Issue 10's causal softmax at T = 1024 costs the host's time *before* the launch plus the kernel: whatever
the host does after the launch runs while the kernel does. This proxy measures the first part without a
GPU. The deferred checks are simulated as on CuPy (``Deferred`` lazy, no finiteness pass), the fused path
is forced (``_fused_nw._on_device``), and the kernel is replaced by a stub that stamps the time of its
launch. What it measures is ttr_stats' own Python from the call to the launch; CuPy's per-operation costs
(a few microseconds for each reshape, allocation and launch) come on top on a card.

Run: ``python -m benchmarks.cpu_prelaunch_proxy [--runs N] [--profile]``. Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import numpy as np

import ttr_stats as tt
from ttr_stats import _validation as v
from ttr_stats.methods.kernel_smoother import _fused_nw as nw


def _simulate_device(stamp):
    """Patch the deferred checks and the fused path as a CuPy call would take them; returns an undo."""
    saved = (v.Deferred.bind, v._fusable, v._launch_finite, nw._on_device, nw.forward)

    def bind(self, xp, lazy=True):
        self.xp, self.lazy = xp, lazy

    def forward(xp, Q, K, V, g, logb, tau, causal, window, gated=True, sinks=0, **kw):
        stamp.append(time.perf_counter())
        return np.zeros(Q.shape[:-1] + (V.shape[-1],), Q.dtype)

    v.Deferred.bind = bind
    v._fusable = lambda x: True
    v._launch_finite = lambda arrays: np.zeros(len(arrays), np.int32)
    nw._on_device = lambda xp: True
    nw.forward = forward

    def undo():
        v.Deferred.bind, v._fusable, v._launch_finite, nw._on_device, nw.forward = saved

    return undo


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3000)
    ap.add_argument("--profile", action="store_true", help="also print cProfile's top functions")
    a = ap.parse_args(argv)
    stamp = []
    undo = _simulate_device(stamp)
    try:
        layer = tt.recipes.softmax_attention()
        rng = np.random.default_rng(0)
        Q, K, V = (rng.standard_normal((8, 16, 4, 64)).astype(np.float32) for _ in range(3))
        warm = max(1, a.runs // 6)
        pre = []
        for i in range(a.runs + warm):
            stamp.clear()
            t0 = time.perf_counter()
            layer(Q, K, V, method="tiled")
            if i >= warm:
                pre.append(stamp[0] - t0)
        print(
            f"Python before the launch (NumPy proxy, deferred checks as on CuPy): median "
            f"{1e6 * statistics.median(pre):.1f} us, min {1e6 * min(pre):.1f} us over {a.runs} calls"
        )
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(a.runs):
                layer(Q, K, V, method="tiled")
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    finally:
        undo()


if __name__ == "__main__":
    main()
