r"""Cost scaling: time and peak memory vs sequence length T per family and method (measured here).

One sequence (B = 1), unit keys, d_k = d_v = 16, float64, T = 256 … 32768. For each (recipe, method): the
best of a few calls (``time.perf_counter``; at least one, more while they take under 0.3 s in all) and the
peak of the bytes allocated during one more call (:mod:`tracemalloc`, which numpy reports to; on a GPU the
bytes CuPy's pool holds after the call, the pool emptied before it). A larger T is skipped, with the reason in
the CSV, once the last one took more than ``TIME_CAP`` seconds / 4 or allocated more than ``MEM_CAP`` / 4
(the next doubling of T costs up to 4× for a T × T form), so the figure stays within its time budget.

What it shows: the sequential loops (``recurrent``) and the chunked forms grow linearly in T in time and in
memory (the peak includes the T × d outputs; their state is independent of T, chunked adds one chunk's
block), the dense forms (``parallel``: T × T) quadratically in both; the tiled softmax avoids the
T × T block (memory linear in T) at the same quadratic time.

Writes ``cost_scaling.csv`` (recipe, method, T, seconds, peak_mib, status, device) and ``cost_scaling.png``.
The numbers are this machine's (2-core CPU for the committed run); ``docs/benchmarks.md`` has the careful
benchmarks with their peers.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

SEED = 20250304
D = 16
MEM_CAP = 1024 * 2**20  # bytes
CONTENDERS = (
    ("linear_attention", ("recurrent", "chunked", "parallel")),
    ("mamba2", ("recurrent", "chunked")),
    ("least_squares", ("recurrent", "chunked")),
    ("rls", ("recurrent", "chunked")),
    ("deltanet", ("recurrent", "chunked")),
    ("softmax_attention", ("tiled", "parallel")),
)
FULL = {"Ts": tuple(2**j for j in range(8, 16)), "time_cap": 6.0, "contenders": CONTENDERS}
QUICK = {
    "Ts": (256, 1024),
    "time_cap": 2.0,
    "contenders": (
        ("linear_attention", ("recurrent", "chunked", "parallel")),
        ("rls", ("recurrent", "chunked")),
    ),
}
GATED = {"mamba2"}


def _inputs(xp, T, seed):
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((1, T, D))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    Q = rng.standard_normal((1, T, D))
    Q /= np.linalg.norm(Q, axis=-1, keepdims=True)
    V = rng.standard_normal((1, T, D))
    alpha = rng.uniform(0.9, 1.0, (1, T))
    return tuple(xp.asarray(a) for a in (Q, K, V, alpha))


def _backend(device):
    if device == "gpu":
        import cupy

        def sync():
            cupy.cuda.Device().synchronize()

        def peak(call):
            pool = cupy.get_default_memory_pool()
            pool.free_all_blocks()
            call()
            sync()
            return pool.total_bytes()

        return cupy, sync, peak

    def peak(call):
        tracemalloc.start()
        try:
            call()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    return np, lambda: None, peak


def measure(recipe, method, T, device="cpu", seed=SEED):
    """(best seconds, peak bytes) of one call of ``recipe()`` with ``method`` at length T."""
    xp, sync, peak = _backend(device)
    Q, K, V, alpha = _inputs(xp, T, seed)
    layer = getattr(tt.recipes, recipe)()
    kw = {"alpha": alpha} if recipe in GATED else {}

    def call():
        layer(Q, K, V, method=method, **kw)

    best, spent = float("inf"), 0.0
    while spent < 0.3 or best == float("inf"):
        t0 = time.perf_counter()
        call()
        sync()
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
        if dt > 0.1:
            break
    return best, peak(call)


def compute(cfg, device="cpu", progress=None):
    rows = []
    for recipe, methods in cfg["contenders"]:
        for method in methods:
            skip = None
            for T in cfg["Ts"]:
                if skip is None:
                    sec, peak = measure(recipe, method, T, device)
                    rows.append((recipe, method, T, sec, peak / 2**20, "ok", device))
                    if sec * 4 > cfg["time_cap"]:
                        skip = f"skipped: T = {T} took {sec:.2g} s (cap {cfg['time_cap']:g} s / 4)"
                    elif peak * 4 > MEM_CAP:
                        mib, cap = peak / 2**20, MEM_CAP / 2**20
                        skip = f"skipped: T = {T} allocated {mib:.0f} MiB (cap {cap:.0f} MiB / 4)"
                else:
                    rows.append((recipe, method, T, float("nan"), float("nan"), skip, device))
                if progress is not None:
                    progress()
    return rows


STYLE = {"recurrent": "-", "chunked": "--", "parallel": ":", "tiled": "-."}


def plot(rows, cfg):
    fig = Figure(figsize=(14, 5.2), layout="constrained")
    ax_t, ax_m = fig.subplots(1, 2)
    recipes = list(dict.fromkeys(r[0] for r in rows))
    for j, recipe in enumerate(recipes):
        for method in dict.fromkeys(r[1] for r in rows if r[0] == recipe):
            pts = [r for r in rows if r[0] == recipe and r[1] == method and r[5] == "ok"]
            T = np.array([r[2] for r in pts])
            for ax, col in ((ax_t, 3), (ax_m, 4)):
                y = np.array([r[col] for r in pts])
                ax.plot(
                    T,
                    y,
                    color=f"C{j}",
                    ls=STYLE.get(method, "-"),
                    marker="o",
                    ms=3,
                    label=f"{recipe} {method}",
                )
    Tf = np.array([cfg["Ts"][0], cfg["Ts"][-1]], float)
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("T")
        ax.grid(True, which="both", alpha=0.25)
    ax_t.plot(Tf, 1e-3 * Tf / Tf[0], color="gray", lw=0.8, label="∝ T")
    ax_t.plot(Tf, 1e-3 * (Tf / Tf[0]) ** 2, color="k", lw=0.8, label="∝ T²")
    ax_t.set_ylabel("seconds (best call)")
    ax_t.set_title(f"(a) time, B = 1, d = {D}, float64 ({rows[0][6]})")
    ax_m.set_ylabel("peak MiB allocated during the call")
    ax_m.set_title("(b) peak memory (skipped points: over the time or memory cap)")
    ax_t.legend(fontsize=6, ncol=2)
    return fig


def main(out_dir, quick=False, device="cpu", progress=None):
    """Measure, write ``cost_scaling.csv`` and ``cost_scaling.png``; return the rows.

    ``progress`` (optional): called with no argument after each (recipe, method, T) point.
    """
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows = compute(cfg, device=device, progress=progress)
    header = ["recipe", "method", "T", "seconds", "peak_mib", "status", "device"]
    write_csv(out_dir / "cost_scaling.csv", header, rows)
    save_figure(plot(rows, cfg), out_dir, "cost_scaling.png")
    return rows


def n_steps(quick=False):
    """How many points :func:`main` measures (for a progress bar)."""
    cfg = QUICK if quick else FULL
    return sum(len(m) for _, m in cfg["contenders"]) * len(cfg["Ts"])


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick):
        print(*r)
