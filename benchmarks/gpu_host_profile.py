"""Where the host time of one short layer call goes (issue 10: causal softmax at T = 1024 is bound by the
host, not its kernel), on one GPU with CuPy, beside torch SDPA.

Per case (causal softmax and forgetting attention ``tiled``, each also with the kernel's finiteness flag
off (``_fused_nw.VOUCH``: Q, K, V and the output then have passes of their own), linear attention and
Mamba-2 ``chunked``; B = 8, H = 16, d = 64,
float32, ``--T`` 1024): the call's median wall time over ``--runs`` synchronised calls after warm-ups, the
same for torch SDPA (``is_causal=True``, zero-copy DLPack views of the same numbers), then cProfile over
``--runs`` calls: the functions with the most own time, so that the host's part (validation, layout,
launches, the one read-back) is named, not guessed. The read-back's wait on the kernel shows up as the own
time of the function that reads (CuPy's ``get``), which is the kernel's time, not the host's.

Run: ``python -m benchmarks.gpu_host_profile`` on a GPU machine; ``--device cpu`` runs the same code on
NumPy (no peer; checks the script). Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

import numpy as np

import ttr_stats as tt
from ttr_stats import _plans
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot


def cases():
    nw = LocalPolynomial(0, ExpDot(), 0.0)
    softmax = tt.TestTimeRegression(weights=tt.weights.Uniform(), regressor=nw)
    forgetting = tt.TestTimeRegression(weights=tt.weights.Gated(), regressor=nw)
    # name, layer, method, gated, the softmax kernel's flag vouches (_fused_nw.VOUCH; None: it does, and
    # call plans are off: ttr_stats._plans)
    return [
        ("causal softmax", softmax, "tiled", False, True),
        ("causal softmax, no call plan (the full path each call)", softmax, "tiled", False, None),
        ("causal softmax, Q, K, V and Y tested by passes", softmax, "tiled", False, False),
        ("forgetting attention", forgetting, "tiled", True, True),
        ("forgetting attention, tested by passes", forgetting, "tiled", True, False),
        ("linear attention", tt.recipes.linear_attention(), "chunked", False, True),
        ("mamba2", tt.recipes.mamba2(), "chunked", True, True),
    ]


def median_ms(fn, sync, runs):
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def paired_ratios(fn, peer, sync, runs):
    """Ours over the peer, call by call: each of ``runs`` pairs times one synchronised call of each, the
    order alternating, so that the host's drift over the run (other processes, clocks) meets both sides
    alike. Returns the sorted ratios."""
    ratios = []
    for i in range(runs):
        pair = {}
        for name in ("ours", "peer") if i % 2 == 0 else ("peer", "ours"):
            f = fn if name == "ours" else peer
            sync()
            t0 = time.perf_counter()
            f()
            sync()
            pair[name] = time.perf_counter() - t0
        ratios.append(pair["ours"] / pair["peer"])
    return sorted(ratios)


def quartiles(xs):
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], statistics.median(xs), q[2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--top", type=int, default=14, help="functions listed per case")
    ap.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    a = ap.parse_args(argv)
    if a.device == "gpu":
        import cupy as xp

        def sync():
            xp.cuda.Device().synchronize()

        print(f"device: {xp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {xp.__version__}")
    else:
        xp = np

        def sync():
            return None

        print("device: cpu (NumPy; no peer)")
    rng = np.random.default_rng(0)
    shape = (a.B, a.H, a.T, a.d)
    Q, K, V = (xp.asarray(rng.standard_normal(shape).astype(np.float32) / a.d**0.25) for _ in range(3))
    log_alpha = xp.asarray(-rng.uniform(0.01, 0.5, (a.B, a.H, a.T)).astype(np.float32))
    if a.device == "gpu":
        try:
            import torch
            import torch.nn.functional as F

            q, k, v = (torch.from_dlpack(x) for x in (Q, K, V))
            F.scaled_dot_product_attention(q, k, v, is_causal=True)

            def peer():
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)

            sdpa = median_ms(peer, sync, a.runs)
            print(f"torch SDPA causal: {sdpa:.3f} ms")
        except Exception as exc:  # the profile is still worth printing
            sdpa = peer = None
            print(f"torch SDPA: not run ({type(exc).__name__}: {exc})")
    else:
        sdpa = None
    if sdpa is None:
        peer = None
    from ttr_stats.methods.kernel_smoother import _fused_nw

    for name, layer, method, gated, vouch in cases():
        kw = {"log_alpha": log_alpha} if gated else {}

        def call(layer=layer, method=method, kw=kw, vouch=vouch):
            _fused_nw.VOUCH = vouch is not False
            _plans.ENABLED = vouch is not None  # None: the flag on, the call plans off
            try:
                return layer(Q, K, V, method=method, **kw)
            finally:
                _fused_nw.VOUCH = True
                _plans.ENABLED = True

        for _ in range(3):
            call()
        ms = median_ms(call, sync, a.runs)
        ratio = f", {ms / sdpa:.2f}x SDPA" if sdpa else ""
        print(f"\n== {name} ({method}): {ms:.3f} ms a call{ratio}")
        if peer is not None:
            q1, med, q3 = quartiles(paired_ratios(call, peer, sync, a.runs))
            print(
                f"   paired with SDPA call by call ({a.runs} pairs): ratio median {med:.3f}x, "
                f"quartiles {q1:.3f}-{q3:.3f}"
            )
        prof = cProfile.Profile()
        sync()
        prof.enable()
        for _ in range(a.runs):
            call()
        sync()
        prof.disable()
        st = pstats.Stats(prof)
        total = st.total_tt / a.runs * 1e6
        print(f"profiled: {total:.0f} us a call (profiler overhead included); own and cumulative us a call:")
        rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[: a.top]
        for (file, line, func), (_cc, nc, tt_, ct, _callers) in rows:
            where = f"{file.split('site-packages/')[-1].split('ttr_stats/')[-1]}:{line}({func})"
            print(f"  {tt_ / a.runs * 1e6:8.1f} {ct / a.runs * 1e6:8.1f} {nc // a.runs:4d}x  {where}")


if __name__ == "__main__":
    main()
