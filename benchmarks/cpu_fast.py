r"""CPU timings of the fast linear-memory methods against the recurrent loop and plain NumPy (``make bench``).

Run from the repository root::

    .venv/bin/python -m benchmarks.cpu_fast            # default run (< 3 min on 2 cores)
    .venv/bin/python -m benchmarks.cpu_fast --quick    # smoke run (< 30 s)

What is measured (float64; unit-norm queries and keys; every contender of a group gets the same arrays):

1. **Layers at B = 1, H = 16 heads, T = 4096, d_k = d_v = 64**: linear attention, gated DeltaNet
   (alpha ~ U(0.9, 1), beta ~ U(0.1, 0.9)) and RLS (ridge 1e-2). Contenders: ttr_stats ``chunked`` (or
   "not registered" while no such method exists), ttr_stats ``recurrent`` (the definition), a plain
   NumPy loop and a plain NumPy chunk-64 form (:mod:`benchmarks._naive`; RLS has the loop only). Ratios are
   of the best times, against ttr ``recurrent`` and against the plain loop (< 1: the contender is
   faster); ``max rel diff`` = max |Y - Y_loop| / max |Y_loop|, against the plain loop.
2. **What ``method="auto"`` picks** at T in {64, 256, 1024, 4096} (same heads), and whether it is the
   fastest method measured at that T ("yes" within 10 %: the noise of a shared 2-core machine). A method
   whose call is predicted (from the previous T, linear in T, quadratic for ``parallel``) to take more
   than ``--max-call-seconds`` is not measured, and the table says so.
3. **The scikit-learn facade**: ``TestTimeRegressor(rls(ridge=1e-6)).fit`` on n = 10000 rows, d = 16
   against ``Ridge(alpha=1e-6, fit_intercept=False).fit`` (the same estimator: RLS from P_0 = I/rho is
   ridge regression), and ``partial_fit`` one row per call against one plain NumPy RLS step per row.

Timing is that of :mod:`benchmarks.cpu_methods` (one warm-up call, whose output is the one checked, then
timed calls with the garbage collector off, about ``--budget`` seconds per contender, at least 3 calls).
The BLAS libraries keep their default thread count; the machine section reports it (threadpoolctl), and the
threads ttr_stats' host methods split the heads over (as many as the BLAS may use: ``OPENBLAS_NUM_THREADS=1``
gives one, a fair setting on a machine that other processes load).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import Ridge

if __package__ in (None, ""):  # run as a script: python benchmarks/cpu_fast.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttr_stats as tt
from benchmarks import _naive
from benchmarks.cpu_methods import (
    CpuMonitor,
    Table,
    check_cell,
    fmt_ratio,
    load_average,
    measure,
    ms,
    print_machine,
    rel_diff,
    unit_rows,
)

SETTINGS = {
    "full": dict(H=16, T=4096, d=64, auto_T=(64, 256, 1024, 4096), n_fit=10_000, d_fit=16,
                 n_partial=2000, budget=1.0, min_runs=3, max_runs=20, max_call=3.0),
    "quick": dict(H=16, T=512, d=64, auto_T=(64, 512), n_fit=2000, d_fit=16, n_partial=200,
                  budget=0.05, min_runs=2, max_runs=5, max_call=0.5),
}  # fmt: skip

EXACT_TOL = 1e-10  # linear attention / delta rule against the plain loop: same sums, reordered (float64)
RLS_TOL = 1e-8  # RLS ridge 1e-2: Sherman-Morrison rounding grows with cond(R_t + rho I) (~1e3 here)
FIT_TOL = 1e-8  # RLS vs sklearn Ridge, ridge 1e-6: both ~ cond(X^T X) eps, cond ~ 1 for Gaussian X


def layers():
    """name -> (layer, uses gates, plain loop, plain chunk-64 form or None, tolerance)."""
    return {
        "linear_attention()": (
            tt.recipes.linear_attention(),
            False,
            lambda Q, K, V, g, b: _naive.linear_attention_loop(Q, K, V),
            lambda Q, K, V, g, b: _naive.linear_attention_chunked(Q, K, V, 64),
            EXACT_TOL,
        ),
        "gated_deltanet()": (
            tt.recipes.gated_deltanet(),
            True,
            _naive.delta_loop,
            lambda Q, K, V, g, b: _naive.delta_chunked(Q, K, V, g, b, 64),
            EXACT_TOL,
        ),
        "rls(ridge=1e-2)": (
            tt.recipes.rls(ridge=1e-2),
            False,
            lambda Q, K, V, g, b: _naive.rls_loop(Q, K, V, 1e-2),
            None,
            RLS_TOL,
        ),
    }


def unavailable(layer, method):
    """``None`` if ``layer`` runs ``method``; else "not registered" or why the method does not run it."""
    registered = {m.name: m for m in tt.methods.methods_for(layer.family)}
    if method not in registered:
        return "not registered"
    why = registered[method].check(layer)
    return None if why is None else f"not supported: {why}"


def make_inputs(H, T, d, seed):
    rng = np.random.default_rng(seed)
    Q = unit_rows(rng.standard_normal((1, H, T, d)))
    K = unit_rows(rng.standard_normal((1, H, T, d)))
    V = rng.standard_normal((1, H, T, d))
    g = np.log(rng.uniform(0.9, 1.0, (1, H, T)))
    b = rng.uniform(0.1, 0.9, (1, H, T))
    return Q, K, V, g, b


def prefix(arrays, T):
    return tuple(np.ascontiguousarray(a[:, :, :T]) for a in arrays)


class Methods:
    """Timings of ttr_stats methods, cached by (layer, T, method) so that the tables share them."""

    def __init__(self, cfg):
        self.cfg, self.cache = cfg, {}
        self.timing = dict(budget=cfg["budget"], min_runs=cfg["min_runs"], max_runs=cfg["max_runs"])

    def call(self, name, layer, gated, arrays, method):
        Q, K, V, g, b = arrays
        gates = dict(log_alpha=g, beta=b) if gated else {}
        key = (name, Q.shape[-2], method)
        if key not in self.cache:
            self.cache[key] = measure(layer, (Q, K, V), dict(method=method, **gates), **self.timing)
        return self.cache[key]

    def predicted(self, name, method, T):
        """Seconds of one call at T, from the largest smaller T measured (None if none was)."""
        done = [
            (t, tm.best) for (n, t, m), (_, tm) in self.cache.items() if (n, m) == (name, method) and t < T
        ]
        if not done:
            return None
        t0, s0 = max(done)
        return s0 * (T / t0) ** (2 if method == "parallel" else 1)


# -------------------------------------------------------------------------------------------------------
# 1. layers: ttr chunked / recurrent against plain NumPy
# -------------------------------------------------------------------------------------------------------
def run_layers(cfg, runner, data):
    H, T, d = cfg["H"], cfg["T"], cfg["d"]
    table = Table(
        f"### Fast methods against the loop — B = 1, H = {H}, T = {T}, d_k = d_v = {d}, float64",
        ["layer", "contender", "best ms", "median ms", "runs", "ratio vs ttr recurrent",
         "ratio vs plain loop", "max rel diff vs plain loop", "tol", "check"],
    )  # fmt: skip
    monitor = CpuMonitor()
    arrays = prefix(data, T)
    Q, K, V, g, b = arrays
    for name, (layer, gated, loop, chunk, tol) in layers().items():
        saved = [x.copy() for x in arrays]
        y_loop, t_loop = measure(loop, arrays, **runner.timing)
        rows = []
        for method in ("chunked", "recurrent"):
            why = unavailable(layer, method)
            if why:
                rows.append((f"ttr {method}", None, why))
                continue
            rows.append((f"ttr {method}", *runner.call(name, layer, gated, arrays, method)))
        rows.append(("plain NumPy loop", y_loop, t_loop))
        if chunk is not None:
            rows.append(("plain NumPy chunk-64", *measure(chunk, arrays, **runner.timing)))
        else:
            rows.append(("plain NumPy chunk-64", None, "— (no plain chunked RLS)"))
        t_rec = next((t for lab, _, t in rows if lab == "ttr recurrent" and not isinstance(t, str)), None)
        for label, out, t in rows:
            if isinstance(t, str):
                table.add(name, label, t, "—", "—", "—", "—", "—", "—", "—")
                continue
            diff = rel_diff(out, y_loop)
            peer = "—" if label == "plain NumPy loop" else f"{tol:.0e}"
            table.add(name, label, ms(t.best), ms(t.median), t.runs,
                      "n/a" if t_rec is None else fmt_ratio(t.best / t_rec.best),
                      fmt_ratio(t.best / t_loop.best), f"{diff:.1e}", peer,
                      "—" if label == "plain NumPy loop" else check_cell(diff, tol))  # fmt: skip
        for a, s in zip(arrays, saved, strict=True):
            assert np.array_equal(a, s), "a contender modified its inputs"
    table.print()
    print(f"\n- {monitor.report()}")


# -------------------------------------------------------------------------------------------------------
# 2. what method="auto" picks, and whether it is the fastest
# -------------------------------------------------------------------------------------------------------
def run_auto(cfg, runner, data):
    H, d = cfg["H"], cfg["d"]
    table = Table(
        f"### What method=\"auto\" picks — B = 1, H = {H}, d = {d}, float64 (best ms of each method)",
        ["layer", "T", "auto picks", "methods measured (best ms)", "fastest", "auto / fastest",
         "auto fastest?"],
    )  # fmt: skip
    monitor = CpuMonitor()
    for name, (layer, gated, *_rest) in layers().items():
        for T in cfg["auto_T"]:
            arrays = prefix(data, T)
            Q, K, V, g, b = arrays
            layer(Q, K, V, **(dict(log_alpha=g, beta=b) if gated else {}))  # untimed: the choice
            choice = layer.method_
            cells, times = [], {}
            for m in layer.supported_methods:
                guess = runner.predicted(name, m, T)
                if m != choice and guess is not None and guess > cfg["max_call"]:
                    cells.append(f"{m}: not run (predicted {guess:.2g} s > {cfg['max_call']:g} s)")
                    continue
                _, t = runner.call(name, layer, gated, arrays, m)
                times[m] = t.best
                cells.append(f"{m}: {ms(t.best)}")
            fastest = min(times, key=times.get)
            r = times[choice] / times[fastest]
            verdict = "yes" if r <= 1.1 else f"no ({fastest} is {r:.2g}x faster)"
            table.add(name, T, choice, "; ".join(cells), fastest, f"{r:.3g}", verdict)
    table.print()
    print(f"\n- {monitor.report()}")


# -------------------------------------------------------------------------------------------------------
# 3. the scikit-learn facade
# -------------------------------------------------------------------------------------------------------
def partial_fit_rows(X, y, layer):
    est = tt.TestTimeRegressor(layer)
    for t in range(X.shape[0]):
        est.partial_fit(X[t : t + 1], y[t : t + 1])
    return est.coef_


def numpy_rls_rows(X, y, ridge):
    d = X.shape[1]
    M, P = np.zeros((1, d)), np.eye(d) / ridge
    for t in range(X.shape[0]):
        _naive.rls_step(M, P, X[t], y[t : t + 1])
    return M[0]


def run_facade(cfg, runner, seed):
    n, d, n_rows = cfg["n_fit"], cfg["d_fit"], cfg["n_partial"]
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = X @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    layer = tt.recipes.rls(ridge=1e-6)
    table = Table(
        f"### The scikit-learn facade — RLS ridge 1e-6, d = {d}, float64",
        ["call", "n rows", "contender", "best ms", "median ms", "runs", "per row µs", "ratio vs peer",
         "max rel diff of coef_", "tol", "check"],
    )  # fmt: skip
    monitor = CpuMonitor()
    fit = lambda: tt.TestTimeRegressor(layer).fit(X, y).coef_  # noqa: E731
    ridge = lambda: Ridge(alpha=1e-6, fit_intercept=False).fit(X, y).coef_  # noqa: E731
    Xr, yr = X[:n_rows], y[:n_rows]
    groups = [
        ("fit", n, ("sklearn Ridge(alpha=1e-6, fit_intercept=False).fit", ridge),
         ("TestTimeRegressor(rls(ridge=1e-6)).fit", fit)),
        ("one row per call", n_rows, ("plain NumPy RLS step per row", lambda: numpy_rls_rows(Xr, yr, 1e-6)),
         ("TestTimeRegressor.partial_fit per row", lambda: partial_fit_rows(Xr, yr, layer))),
    ]  # fmt: skip
    for call, rows, (peer_label, peer), (label, fn) in groups:
        c_peer, t_peer = measure(peer, **runner.timing)
        c, t = measure(fn, **runner.timing)
        table.add(call, rows, peer_label, ms(t_peer.best), ms(t_peer.median), t_peer.runs,
                  f"{t_peer.best / rows * 1e6:.3g}", "1 (peer)", "—", "—", "—")  # fmt: skip
        diff = rel_diff(c, c_peer)
        table.add(call, rows, label, ms(t.best), ms(t.median), t.runs, f"{t.best / rows * 1e6:.3g}",
                  fmt_ratio(t.best / t_peer.best), f"{diff:.1e}", f"{FIT_TOL:.0e}",
                  check_cell(diff, FIT_TOL))  # fmt: skip
    table.print()
    print(f"\n- {monitor.report()}")


# -------------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: T = 512, few repeats (< 30 s)")
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed calls per contender")
    ap.add_argument("--max-call-seconds", type=float, default=None,
                    help="auto table: do not run a method predicted to take longer per call")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = dict(SETTINGS["quick" if args.quick else "full"])
    if args.budget is not None:
        cfg["budget"] = args.budget
    if args.max_call_seconds is not None:
        cfg["max_call"] = args.max_call_seconds

    t_start = time.perf_counter()
    print(f"# ttr_stats CPU benchmark of the fast methods ({'quick' if args.quick else 'full'} run)\n")
    print_machine()
    from ttr_stats.methods import _host_threads

    print(
        f"- ttr_stats host threads (methods/_host_threads.py: heads split over threads, BLAS at 1 thread "
        f"meanwhile): {_host_threads.n_threads(cfg['H'])} for {cfg['H']} heads"
    )
    print(
        "\nratio = best time of the contender / best time of its peer (< 1: the contender is faster); "
        "max rel diff = max|Y - Y_peer| / max|Y_peer|"
    )
    runner = Methods(cfg)
    data = make_inputs(cfg["H"], max(cfg["T"], *cfg["auto_T"]), cfg["d"], args.seed)
    run_layers(cfg, runner, data)
    run_auto(cfg, runner, data)
    run_facade(cfg, runner, args.seed)
    print(f"\nload average (1, 5, 15 min) at end: {load_average()}")
    print(f"total wall time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
