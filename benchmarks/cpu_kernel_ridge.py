r"""CPU: causal kernel ridge (every prefix's fit read at its query) by ``method="blocked"`` (the Cholesky
factor grown a block of keys at a time) against the row-by-row reference ``"recurrent"``, the
whole-factor ``"parallel"`` and scikit-learn ``KernelRidge`` refitted on every prefix, in one run.

Run from the repository root::

    .venv/bin/python -m benchmarks.cpu_kernel_ridge            # T in {250, 500, 1000, 2000}
    .venv/bin/python -m benchmarks.cpu_kernel_ridge --quick    # T in {250, 500}
    OPENBLAS_NUM_THREADS=1 .venv/bin/python -m benchmarks.cpu_kernel_ridge --cpu-time   # a loaded machine

rbf kernel (gamma = 1/d), ridge 1e-2, d = 8, d_v = 1, float64, one sequence. Printed per T: best-of-n
seconds of each, the ratios to blocked (> 1: blocked is faster) and max |method - blocked| / max |blocked|.
scikit-learn is timed up to T = 1000 (its T refits cost ~T^4 / 12 flops: ~10 s at T = 1000 here) and the
reference up to T = 1000.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import ttr_stats as tt

#: max |method - blocked| / max |blocked| allowed: the same prefix systems through Cholesky factors of the
#: same matrices, float64 (cond of the prefix Gram matrices at ridge 1e-2 ~1e3: measured 1e-14)
TOL = 1e-10
#: issue 10's target: blocked at least this many times faster than scikit-learn at T = 1000
TARGET = 100.0

#: what best() times: wall seconds, or with --cpu-time the process's CPU seconds (steadier on a loaded
#: machine; run with OPENBLAS_NUM_THREADS=1 so that the two agree on an idle one)
CLOCK = [time.perf_counter]


def best(fn, n):
    out, t = None, float("inf")
    clock = CLOCK[0]
    for _ in range(n):
        s = clock()
        out = fn()
        t = min(t, clock() - s)
    return out, t


def sklearn_prefixes(Q, K, V, ridge, gamma):
    from sklearn.kernel_ridge import KernelRidge

    return np.stack(
        [
            KernelRidge(alpha=ridge, kernel="rbf", gamma=gamma)
            .fit(K[: t + 1], V[: t + 1])
            .predict(Q[t : t + 1])[0]
            for t in range(K.shape[0])
        ]
    )


def case(T, rng, d=8, ridge=1e-2):
    Q, K = rng.standard_normal((2, T, d))
    V = np.sin(K).sum(-1, keepdims=True) + 0.1 * rng.standard_normal((T, 1))
    layer = tt.recipes.kernel_regression("rbf", ridge, gamma=1.0 / d)
    n = 3 if T <= 1000 else 2
    ours, t_blk = best(lambda: layer(Q, K, V, method="blocked"), n)
    row = [f"T={T:<5} blocked {t_blk:8.4f}s"]
    peers = [("parallel", lambda: layer(Q, K, V, method="parallel"), n)]
    if T <= 1000:
        peers.append(("recurrent", lambda: layer(Q, K, V, method="recurrent"), 1))
        peers.append(("sklearn", lambda: sklearn_prefixes(Q, K, V, ridge, 1.0 / d), 1))
    ok = True
    for name, fn, reps in peers:
        out, t = best(fn, reps)
        diff = np.abs(out - ours).max() / np.abs(ours).max()
        ok = ok and diff <= TOL and not (name == "sklearn" and T == 1000 and t / t_blk < TARGET)
        row.append(f"{name} {t:8.4f}s ({t / t_blk:6.1f}x, diff {diff:.1e})")
    print("  ".join(row) + f"  {'ok' if ok else 'MISSED'}", flush=True)
    return ok


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cpu-time", action="store_true", help="time CPU seconds of this process, not wall")
    args = ap.parse_args(argv)
    if args.cpu_time:
        CLOCK[0] = time.process_time
    from benchmarks.cpu_methods import print_machine

    print("# causal kernel ridge: blocked against parallel, the recurrent reference and scikit-learn\n")
    print_machine()
    print(f"\nok: every diff <= {TOL:.0e}, and sklearn / blocked >= {TARGET:g}x at T = 1000 (issue 10)\n")
    rng = np.random.default_rng(0)
    oks = [case(T, rng) for T in ((250, 500) if args.quick else (250, 500, 1000, 2000))]
    print(f"\n{sum(oks)} of {len(oks)} rows ok")


if __name__ == "__main__":
    main()
