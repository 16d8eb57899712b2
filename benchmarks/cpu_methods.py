r"""CPU timings: each layer's methods against each other, and ttr_stats against scikit-learn / statsmodels.

Run from the repository root::

    .venv/bin/python -m benchmarks.cpu_methods            # full run (a few minutes on 2 cores)
    .venv/bin/python -m benchmarks.cpu_methods --quick    # smoke run (< 20 s)
    python benchmarks/cpu_methods.py                      # same, as a script

What is measured (float64 throughout; every contender of a row group gets the very same input arrays):

1. **Methods of each family** at B = 4 sequences x T in {256, 1024} x d_k = d_v = 32: linear attention
   (parallel / direct / recurrent), Mamba-2 with random gates alpha ~ U(0.9, 1), least squares with
   ridge 1e-3 (direct / recurrent), RLS with ridge 1e-6 (recurrent / direct), DeltaNet (recurrent).
   Peer = the same layer's ``recurrent`` method; ratio = time(method) / time(recurrent).
2. **Against reference implementations**, one sequence (B = 1), d = 32, T in {256, 1024}:
   every-prefix ridge vs a loop of scikit-learn ``Ridge`` refits, RLS vs statsmodels ``RecursiveLS``,
   the delta rule vs ``SGDRegressor.partial_fit`` one row at a time, linear attention vs a naive NumPy loop.
   Peer = the reference; ratio = time(ttr_stats) / time(reference), so < 1 means ttr_stats is faster.

Timing: one warm-up call (its output is the one checked for agreement), then ``runs`` timed calls with
``time.perf_counter`` and the garbage collector off (as ``timeit`` does); ``runs`` is chosen so each
contender gets about ``--budget`` seconds, at least 5 (3 for calls over 2 s; 3 in ``--quick``). Tables give
the best and the median time; ratios are of the **best** times (noise on a shared machine only ever adds
time). A reference whose single call is estimated (from a smaller T, scaled by its complexity) or measured
to take more than ``--max-peer-seconds`` (60) is skipped, and the table says so.

Agreement: ``max rel diff`` = max |Y - Y_peer| / max |Y_peer| over all outputs, checked against a stated
tolerance (column ``tol``); ``MISMATCH`` marks a failure. The sklearn/statsmodels oracles are the same
ones ``tests/test_baselines.py`` uses, with the same conventions (see there for the traps).

Keys and queries are L2-normalised rows (as DeltaNet-style layers do): the delta rule with beta = 0.1 is
then contractive (beta ||k||^2 < 2), and every layer sees the same inputs.

By default the whole benchmark runs twice: with the BLAS libraries' default thread count and with one
thread (``threadpoolctl.threadpool_limits(1)``); ``--blas-threads default`` runs only the first.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import sklearn
import statsmodels
import statsmodels.api as sm
import threadpoolctl
from sklearn.linear_model import Ridge, SGDRegressor

try:
    import ttr_stats as tt
except ImportError:  # a checkout that is not installed: python benchmarks/cpu_methods.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import ttr_stats as tt

EPS = float(np.finfo(np.float64).eps)
EXACT_TOL = 1e-10  # exact / same-arithmetic pairs (as in tests/test_baselines.py)
METHOD_TOL = 1e-8  # methods of one layer against its recurrent loop (RLS ridge 1e-6: eps/rho ~ 2e-10)

SETTINGS = {
    "full": dict(B=4, d=32, T_family=(256, 1024), T_ref=(256, 1024), probe_T=64, min_runs=5, max_runs=50,
                 budget=1.5),
    "quick": dict(B=4, d=32, T_family=(128,), T_ref=(128,), probe_T=64, min_runs=3, max_runs=10,
                  budget=0.1),
}  # fmt: skip


# -------------------------------------------------------------------------------------------------------
# timing and agreement
# -------------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    first: float  # the warm-up call
    best: float
    median: float
    runs: int


def measure(fn, args=(), kwargs=None, *, budget, min_runs, max_runs):
    """Warm up ``fn(*args, **kwargs)`` once (returning that output), then time ``runs`` calls, GC off."""
    kwargs = kwargs or {}
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    first = time.perf_counter() - t0
    lo = min_runs if first <= 2.0 else min(3, min_runs)
    runs = int(min(max_runs, max(lo, math.ceil(budget / max(first, 1e-9)))))
    times = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(runs):
            t0 = time.perf_counter()
            fn(*args, **kwargs)
            times.append(time.perf_counter() - t0)
    finally:
        if was_enabled:
            gc.enable()
    return out, Timing(first, min(times), statistics.median(times), runs)


def rel_diff(a, b):
    """max |a - b| / max |b| over all entries (the absolute difference if b vanishes)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    den = float(np.max(np.abs(b))) if b.size else 0.0
    num = float(np.max(np.abs(a - b))) if a.size else 0.0
    return num / den if den > 0 else num


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ms(seconds):
    return f"{seconds * 1e3:.4g}"


def fmt_ratio(r):
    return "1 (peer)" if r == 1.0 else f"{r:.3g}"


class CpuMonitor:
    """CPU time used by *other* processes (and stolen by the hypervisor) while a table is measured.

    System-wide busy time from /proc/stat minus this process's own CPU time (all its threads): a
    non-negligible value means the timings of that table may be inflated. Linux only; elsewhere n/a.
    """

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (f[0] + f[1] + f[2] + f[5] + f[6]) / hz  # user nice system irq softirq
        steal = f[7] / hz if len(f) > 7 else 0.0
        own = sum(os.times()[:2])
        return time.perf_counter(), busy, steal, own

    def report(self):
        end = self._sample()
        if self.start is None or end is None:
            return "CPU used by other processes: n/a"
        wall = end[0] - self.start[0]
        other = max(0.0, (end[1] - self.start[1]) - (end[3] - self.start[3]))
        steal = end[2] - self.start[2]
        cores = os.cpu_count() or 1
        return (
            f"CPU used by other processes while this table ran: {other:.1f} core-s over {wall:.0f} s "
            f"({100 * other / (wall * cores):.0f}% of {cores} cores); stolen by the hypervisor: {steal:.1f} s"
        )


class Table:
    """A Markdown table, printed as a whole."""

    def __init__(self, title, columns):
        self.title, self.columns, self.rows = title, columns, []

    def add(self, *cells):
        self.rows.append([str(c) for c in cells])

    def print(self):
        print(f"\n{self.title}\n")
        w = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c) for i, c in
             enumerate(self.columns)]  # fmt: skip
        print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(self.columns)) + " |")
        print("|" + "|".join("-" * (x + 2) for x in w) + "|")
        for r in self.rows:
            print("| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |")
        sys.stdout.flush()


def check_cell(diff, tol):
    return "ok" if diff <= tol else "MISMATCH"


# -------------------------------------------------------------------------------------------------------
# the machine
# -------------------------------------------------------------------------------------------------------
def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def git_revision():
    """The checkout's commit and whether ttr_stats/ has uncommitted changes (what was measured)."""
    root = Path(tt.__file__).resolve().parents[1]

    def git(*args):
        cmd = ["git", "-C", str(root), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=10).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "ttr_stats")
    except (OSError, subprocess.SubprocessError):
        return f"{root} (not a git checkout)"
    return f"git {head}" + (" with uncommitted changes in ttr_stats/" if dirty else " (ttr_stats/ clean)")


def print_machine():
    print("## Machine\n")
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "n/a"
    lines = [
        f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"ttr_stats source: {git_revision()}",
        f"platform.processor(): {platform.processor()!r}; platform.machine(): {platform.machine()!r}; "
        f"/proc/cpuinfo model name: {cpu_model()!r}",
        f"os.cpu_count(): {os.cpu_count()}; usable by this process: {affinity}",
        f"platform: {platform.platform()}; Python {platform.python_version()}",
        f"numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}, "
        f"statsmodels {statsmodels.__version__}, threadpoolctl {threadpoolctl.__version__}, "
        f"ttr_stats {getattr(tt, '__version__', 'n/a')}",
    ]
    for lib in threadpoolctl.threadpool_info():
        lines.append(
            f"threadpool: {lib.get('user_api')}/{lib.get('internal_api')} {lib.get('version')}, "
            f"num_threads={lib.get('num_threads')}, architecture={lib.get('architecture', 'n/a')}, "
            f"threading_layer={lib.get('threading_layer', 'n/a')}, {Path(lib.get('filepath', '')).name}"
        )
    env = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_", "GOTO"))}
    lines.append("environment: " + (", ".join(f"{k}={v}" for k, v in sorted(env.items())) or "none set"))
    core = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        lines.append(
            f"note: OPENBLAS_CORETYPE={core} is set on this machine: OpenBLAS uses its {core} kernels "
            "whatever CPU it detects, so BLAS-bound timings reflect those kernels"
        )
    else:
        lines.append("note: OPENBLAS_CORETYPE is not set (OpenBLAS picks its kernels from the detected CPU)")
    openblas = [x for x in threadpoolctl.threadpool_info() if x.get("internal_api") == "openblas"]
    if len(openblas) > 1:
        lines.append(
            f"note: {len(openblas)} OpenBLAS libraries are loaded (numpy's and scipy's wheels each bundle "
            "one), each with its own thread pool; code that alternates between them (e.g. numpy matmul then "
            "scipy.linalg.solve) can oversubscribe the cores while idle OpenBLAS threads busy-wait. The "
            "1-thread tables below are free of that effect"
        )
    lines.append(f"load average (1, 5, 15 min) at start: {load_average()}")
    if hasattr(os, "getloadavg") and os.getloadavg()[0] > 0.5:
        lines.append(
            "the 1-minute load average is above 0.5: other processes ran recently; the line under each "
            "table says how much CPU they used while it was measured"
        )
    for line in lines:
        print(f"- {line}")
    sys.stdout.flush()


def load_average():
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# -------------------------------------------------------------------------------------------------------
# 1. methods of each family against the recurrent loop
# -------------------------------------------------------------------------------------------------------
def family_cases(rng, B, T):
    return [
        ("linear_attention()", tt.recipes.linear_attention(), {}),
        ("mamba2(), alpha~U(0.9,1)", tt.recipes.mamba2(), {"alpha": rng.uniform(0.9, 1.0, (B, T))}),
        ("least_squares(ridge=1e-3)", tt.recipes.least_squares(ridge=1e-3), {}),
        ("rls(ridge=1e-6)", tt.recipes.rls(ridge=1e-6), {}),
        ("deltanet(beta=0.1)", tt.recipes.deltanet(beta=0.1), {}),
    ]


def run_families(cfg, threads_label, seed):
    B, d = cfg["B"], cfg["d"]
    table = Table(
        f"### Methods against the recurrent loop — B = {B}, d_k = d_v = {d}, float64, {threads_label}",
        ["layer", "T", "method", "best ms", "median ms", "runs", "ratio vs recurrent", "max rel diff",
         "tol", "check"],
    )  # fmt: skip
    timing = dict(budget=cfg["budget"], min_runs=cfg["min_runs"], max_runs=cfg["max_runs"])
    monitor = CpuMonitor()
    for T in cfg["T_family"]:
        rng = np.random.default_rng(seed + T)
        Q = unit_rows(rng.standard_normal((B, T, d)))
        K = unit_rows(rng.standard_normal((B, T, d)))
        V = rng.standard_normal((B, T, d))
        for name, layer, gates in family_cases(rng, B, T):
            saved = [x.copy() for x in (Q, K, V, *gates.values())]
            auto = layer(Q, K, V, **gates)  # untimed: which method "auto" picks here
            auto_choice = layer.method_
            methods = ["recurrent"] + [m for m in layer.supported_methods if m != "recurrent"]
            results = {}
            for m in methods:
                out, t = measure(layer, (Q, K, V), dict(method=m, **gates), **timing)
                assert out.dtype == np.float64
                results[m] = (out, t)
            Y_ref, t_ref = results["recurrent"]
            for m in methods:
                out, t = results[m]
                diff = rel_diff(out, Y_ref)
                label = m + (" (auto)" if m == auto_choice else "")
                table.add(name, T, label, ms(t.best), ms(t.median), t.runs, fmt_ratio(t.best / t_ref.best),
                          f"{diff:.1e}", "—" if m == "recurrent" else f"{METHOD_TOL:.0e}",
                          "—" if m == "recurrent" else check_cell(diff, METHOD_TOL))  # fmt: skip
            assert rel_diff(auto, results[auto_choice][0]) == 0.0
            for a, b in zip(saved, (Q, K, V, *gates.values()), strict=True):
                assert np.array_equal(a, b), "a contender modified its inputs"
    table.print()
    print(f"\n- {monitor.report()}")


# -------------------------------------------------------------------------------------------------------
# 2. against scikit-learn / statsmodels / NumPy references
# -------------------------------------------------------------------------------------------------------
def sklearn_ridge_every_prefix(Q, K, V, ridge):
    """All T outputs with scikit-learn: refit Ridge on each prefix, predict at q_t."""
    T = K.shape[0]
    Y = np.empty((T, V.shape[1]))
    for t in range(T):
        est = Ridge(alpha=ridge, fit_intercept=False).fit(K[: t + 1], V[: t + 1])
        Y[t] = est.predict(Q[t : t + 1])[0]
    return Y


def statsmodels_recursive_ls(Q, K, V):
    """statsmodels RecursiveLS (exact diffuse Kalman filter = recursive OLS) for one output column."""
    res = sm.RecursiveLS(V[:, 0], K).fit()
    F = np.asarray(res.recursive_coefficients.filtered)  # (d, T): the coefficients after row t
    return np.einsum("kt,tk->t", F, Q)[:, None]


def sklearn_sgd_per_row(Q, K, V, eta0):
    """LMS with scikit-learn: SGDRegressor fed one row per partial_fit, predicting at q_t after each."""
    est = SGDRegressor(learning_rate="constant", eta0=eta0, penalty=None, fit_intercept=False, shuffle=False)
    T = K.shape[0]
    y = np.empty(T)
    v = V[:, 0]
    for t in range(T):
        est.partial_fit(K[t : t + 1], v[t : t + 1])
        y[t] = est.predict(Q[t : t + 1])[0]
    return y[:, None]


def ttr_estimator_per_row(Q, K, V, layer):
    """The same per-row protocol through ttr_stats' scikit-learn facade (TestTimeRegressor.partial_fit)."""
    est = tt.TestTimeRegressor(layer)
    T = K.shape[0]
    y = np.empty(T)
    v = V[:, 0]
    for t in range(T):
        est.partial_fit(K[t : t + 1], v[t : t + 1])
        y[t] = est.predict(Q[t : t + 1])[0]
    return y[:, None]


def numpy_linear_attention(Q, K, V):
    """Naive per-step loop: M += v k^T; y = M q."""
    M = np.zeros((V.shape[1], K.shape[1]))
    Y = np.empty((K.shape[0], V.shape[1]))
    for t in range(K.shape[0]):
        M += np.outer(V[t], K[t])
        Y[t] = M @ Q[t]
    return Y


def rls_tolerance(Q, K, V, Y_ref, rho, first):
    r"""Bound on max|dy| / max|y| for RLS(ridge=rho) vs exact recursive OLS, over rows t >= ``first``.

    RLS solves ridge, not OLS: ||m_rho - m_ols|| <= rho / (lambda_min(R_t) + rho) ||m_ols|| (R_t = sum k k^T);
    the recursion adds rounding ~ eps max||k||^2 / rho and both solvers ~ 10 cond(R_t) eps (the terms of
    ``rls_tolerance`` in tests/test_baselines.py). Each output error is at most ||dm_t|| ||q_t||, with the
    exact OLS coefficients m_t computed here from the cumulative statistics.
    """
    R = np.cumsum(K[:, :, None] * K[:, None, :], axis=0)[first:]
    S = np.cumsum(K * V[:, :1], axis=0)[first:]
    m = np.linalg.solve(R, S[..., None])[..., 0]
    lam = np.linalg.eigvalsh(R)
    rel = rho / (lam[:, 0] + rho) + EPS * float(np.max(np.sum(K**2, axis=1))) / rho
    rel = rel + 10 * lam[:, -1] / lam[:, 0] * EPS
    bound = rel * np.linalg.norm(m, axis=1) * np.linalg.norm(Q[first:], axis=1)
    return float(np.max(bound) / np.max(np.abs(Y_ref[first:])))


def statsmodels_ridge_corrected(Q, K, V, rho, first):
    """Outputs of statsmodels' recursive OLS coefficients m_t mapped to ridge: (R_t + rho I)^-1 R_t m_t.

    Not timed: it separates the (expected) ridge bias from any error of the recursion.
    """
    F = np.asarray(sm.RecursiveLS(V[:, 0], K).fit().recursive_coefficients.filtered).T[first:]  # (T', d)
    R = np.cumsum(K[:, :, None] * K[:, None, :], axis=0)[first:]
    eye = np.eye(K.shape[1])
    m = np.linalg.solve(R + rho * eye, (R @ F[..., None]))[..., 0]
    return np.sum(m * Q[first:], axis=1)[:, None]


@dataclass
class RefPair:
    name: str
    ref_label: str
    ref: object  # fn(Q, K, V) -> Y
    exponent: int  # the reference's cost grows like T**exponent (used to predict whether it fits the limit)
    layer: object
    d_v: int
    extra: tuple = ()  # more (label, fn(Q, K, V)) ttr_stats contenders


def ref_pairs():
    la = tt.recipes.linear_attention()
    dn = tt.recipes.deltanet(beta=0.1)
    return [
        RefPair("every-prefix ridge 1e-3", "sklearn Ridge refit per prefix",
                lambda Q, K, V: sklearn_ridge_every_prefix(Q, K, V, 1e-3), 2,
                tt.recipes.least_squares(ridge=1e-3), 32),
        RefPair("RLS ridge 1e-8 (d_v = 1)", "statsmodels RecursiveLS().fit()", statsmodels_recursive_ls, 1,
                tt.recipes.rls(ridge=1e-8), 1),
        RefPair("delta rule beta 0.1 (d_v = 1)", "sklearn SGDRegressor.partial_fit per row",
                lambda Q, K, V: sklearn_sgd_per_row(Q, K, V, 0.1), 1, dn, 1,
                (("ttr TestTimeRegressor.partial_fit per row",
                  lambda Q, K, V: ttr_estimator_per_row(Q, K, V, dn)),)),
        RefPair("linear attention", "naive NumPy loop", numpy_linear_attention, 1, la, 32),
    ]  # fmt: skip


def run_references(cfg, threads_label, seed, limit_s):
    d = cfg["d"]
    table = Table(
        f"### ttr_stats against reference implementations — B = 1, d = {d}, float64, {threads_label}",
        ["comparison", "T", "contender", "best ms", "median ms", "runs", "ratio vs peer", "max rel diff",
         "tol", "check"],
    )  # fmt: skip
    agreement, notes = {}, []
    timing = dict(budget=cfg["budget"], min_runs=cfg["min_runs"], max_runs=cfg["max_runs"])
    monitor = CpuMonitor()
    pairs = ref_pairs()
    last = {}  # pair name -> (T, seconds of one reference call): predicts the next T
    data = {}
    for T in (cfg["probe_T"], *cfg["T_ref"]):
        rng = np.random.default_rng(seed + 7 * T)
        Q = unit_rows(rng.standard_normal((T, d)))
        K = unit_rows(rng.standard_normal((T, d)))
        noise = 0.1 * rng.standard_normal((T, d))
        V = K @ rng.standard_normal((d, d)) + noise  # a learnable linear map plus noise
        data[T] = (Q, K, V)
    for p in pairs:  # probe each reference at a small T to predict its cost
        Q, K, V = data[cfg["probe_T"]]
        t0 = time.perf_counter()
        p.ref(Q, K, V[:, : p.d_v])
        last[p.name] = (cfg["probe_T"], time.perf_counter() - t0)
    for T in cfg["T_ref"]:
        Q, K, V_full = data[T]
        for p in pairs:
            V = np.ascontiguousarray(V_full[:, : p.d_v])
            saved = [x.copy() for x in (Q, K, V)]
            T0, s0 = last[p.name]
            predicted = s0 * (T / T0) ** p.exponent
            ref_out, ref_t, skipped = None, None, None
            if predicted > limit_s:
                skipped = f"skipped: predicted {predicted:.3g} s per call > {limit_s:g} s limit"
            else:
                t0 = time.perf_counter()
                ref_out = p.ref(Q, K, V)
                first = time.perf_counter() - t0
                if first > limit_s:
                    skipped = f"skipped: one call took {first:.3g} s > {limit_s:g} s limit"
                    last[p.name] = (T, first)
                else:
                    ref_out, ref_t = measure(p.ref, (Q, K, V), **timing)
                    last[p.name] = (T, ref_t.best)
            # where the comparison is meaningful and what tolerance applies
            if isinstance(p.layer.optimizer, tt.optimizers.RecursiveLeastSquares):
                first_t = d  # t >= d: OLS is identified, statsmodels' exact diffuse phase is over
                rows = slice(first_t, None)
                rho = p.layer.optimizer.ridge
                tol = math.nan if ref_out is None else rls_tolerance(Q, K, V, ref_out, rho, first_t)
                what = f"rows t >= {first_t} (0-based; OLS identified), tol = ridge-bias bound"
            else:
                rows, tol, what = slice(None), EXACT_TOL, "all rows"
            if skipped:
                table.add(p.name, T, p.ref_label, skipped, "—", "—", "—", "—", "—", "—")
            else:
                table.add(p.name, T, p.ref_label, ms(ref_t.best), ms(ref_t.median), ref_t.runs, "1 (peer)",
                          "—", "—", "—")  # fmt: skip
            contenders = []
            p.layer(Q, K, V)  # untimed: which method "auto" picks here
            auto_choice = p.layer.method_
            methods = [auto_choice] + [m for m in p.layer.supported_methods if m != auto_choice]
            for m in methods:
                label = f"ttr {m}" + (" (auto)" if m == auto_choice else "")
                contenders.append((label, p.layer, {"method": m}))
            for label, fn in p.extra:
                contenders.append((label, fn, {}))
            outs = {}
            for label, fn, kw in contenders:
                out, t = measure(fn, (Q, K, V), kw, **timing)
                outs[label] = out
                assert out.dtype == np.float64 and out.shape == (T, p.d_v)
                if ref_out is None:
                    table.add(p.name, T, label, ms(t.best), ms(t.median), t.runs, "n/a (peer skipped)",
                              "n/a", "—", "—")  # fmt: skip
                    continue
                # a reference skipped after its one (too slow) call still gives the agreement check
                ratio = "n/a (peer skipped)" if ref_t is None else fmt_ratio(t.best / ref_t.best)
                diff = rel_diff(out[rows], ref_out[rows])
                table.add(p.name, T, label, ms(t.best), ms(t.median), t.runs, ratio, f"{diff:.1e}",
                          f"{tol:.1e}", check_cell(diff, tol))  # fmt: skip
            for a, b in zip(saved, (Q, K, V), strict=True):
                assert np.array_equal(a, b), "a contender modified its inputs"
            agreement[p.name] = what
            if isinstance(p.layer.optimizer, tt.optimizers.RecursiveLeastSquares) and ref_out is not None:
                y_ridge = statsmodels_ridge_corrected(Q, K, V, p.layer.optimizer.ridge, d)
                diffs = ", ".join(f"{lab}: {rel_diff(o[d:], y_ridge):.1e}" for lab, o in outs.items())
                notes.append(
                    f"{p.name}, T = {T}: against statsmodels' coefficients mapped through the exact ridge "
                    f"bias, (R_t + rho I)^-1 R_t m_t, the max rel diff over t >= {d} is {diffs}"
                )
    table.print()
    print(f"\n- {monitor.report()}")
    for name, what in agreement.items():
        print(f"- {name}: agreement over {what}")
    for n in notes:
        print(f"- {n}")
    sys.stdout.flush()


# -------------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: one small T, few repeats (< 20 s)")
    ap.add_argument("--blas-threads", default=None,
                    help="comma-separated thread settings, 'default' and/or integers "
                         "(default: 'default,1'; 'default' with --quick)")  # fmt: skip
    ap.add_argument("--budget", type=float, default=None, help="seconds of timed calls per contender")
    ap.add_argument("--max-peer-seconds", type=float, default=60.0,
                    help="skip a reference whose single call would take longer (default 60)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = dict(SETTINGS["quick" if args.quick else "full"])
    if args.budget is not None:
        cfg["budget"] = args.budget
    spec = args.blas_threads or ("default" if args.quick else "default,1")
    settings = [None if s.strip() == "default" else int(s) for s in spec.split(",")]

    t_start = time.perf_counter()
    print(f"# ttr_stats CPU benchmark ({'quick' if args.quick else 'full'} run)\n")
    print_machine()
    print(
        "\nratio = best time of the contender / best time of its peer (< 1: the contender is faster); "
        "max rel diff = max|Y - Y_peer| / max|Y_peer|; (auto) marks what method='auto' picks"
    )
    blas = [x for x in threadpoolctl.threadpool_info() if x.get("user_api") == "blas"]
    default_threads = ", ".join(sorted({str(x.get("num_threads")) for x in blas})) or "?"
    for s in settings:
        if s is None:
            label = f"BLAS threads: default ({default_threads})"
            ctx = contextlib.nullcontext()
        else:
            label = f"BLAS/OpenMP threads: {s} (threadpoolctl)"
            ctx = threadpoolctl.threadpool_limits(limits=s)
        with ctx:
            print(f"\n## {label}")
            run_families(cfg, label, args.seed)
            run_references(cfg, label, args.seed, args.max_peer_seconds)
    print(f"\nload average (1, 5, 15 min) at end: {load_average()}")
    print(f"total wall time: {time.perf_counter() - t_start:.1f} s")


if __name__ == "__main__":
    main()
