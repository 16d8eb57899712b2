r"""Online solvers as adaptive filters (theory §4): the delta rule is LMS, the Mesa recursion is RLS.

Data :math:`v_t = W k_t + \sigma\varepsilon_t` with unit keys uniform on the sphere, rows of W ~ N(0, I/d),
replications as the batch dimension (:func:`ttr_stats.diagnostics.memory.simulate_online_regression`),
mean ± s.e. over replications:

(a) LMS learning curves (``deltanet(beta)``, noiseless, d = 32): :math:`\|M_t - W\|^2/\|W\|^2` against t with
    the exact theory :math:`(1 - \beta(2-\beta)/d)^t`, beta ∈ {0.2, 0.5, 1}.
(b) LMS steady-state excess MSE :math:`E(v - M k)^2 - \sigma^2` on a fresh key (σ² = 1, d = 8, averaged over
    the second half of the run) against beta, with the misadjustment :math:`\beta\sigma^2/(2-\beta)`.
(c) RLS with forgetting γ (``rls(1e-6, forgetting=γ)``, σ² = 1, d = 16): steady-state excess MSE against
    1 − γ with the first-order theory :math:`\sigma^2 d(1-\gamma)/(1+\gamma)`.

Writes ``memory.csv`` (long format: panel, series, x, value, se, theory) and ``memory.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv
from ttr_stats.diagnostics import memory as mem

SEED = 20250121
CURVE_BETAS = (0.2, 0.5, 1.0)
FULL = {
    "curve_d": 32,
    "curve_T": 400,
    "curve_batch": 200,
    "mis_betas": (0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.25, 1.5),
    "mis_d": 8,
    "mis_T": 1200,
    "mis_batch": 200,
    "rls_d": 16,
    "rls_gammas": (0.9, 0.95, 0.98, 0.99, 0.995),
    "rls_windows": 12,
    "rls_batch": 100,
}
QUICK = {
    "curve_d": 16,
    "curve_T": 150,
    "curve_batch": 40,
    "mis_betas": (0.2, 0.5, 1.0),
    "mis_d": 8,
    "mis_T": 600,
    "mis_batch": 40,
    "rls_d": 8,
    "rls_gammas": (0.9, 0.98),
    "rls_windows": 8,
    "rls_batch": 20,
}


def _mean_se(x):
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x)), float(np.std(x, ddof=1) / np.sqrt(x.size))


def compute(cfg, seed=SEED):
    """Rows (panel, series, x, value, se, theory)."""
    rows = []
    d, T = cfg["curve_d"], cfg["curve_T"]
    rec = np.unique(np.round(np.linspace(1, T, 40)).astype(int))
    for j, beta in enumerate(CURVE_BETAS):
        sim = mem.simulate_online_regression(
            tt.recipes.deltanet(beta), d, T, d_v=d, n_batch=cfg["curve_batch"], seed=seed + j, record=rec
        )
        rel = sim.sq_error / sim.w_norm2[:, None]
        theory = mem.lms_learning_curve(d, beta, sim.t)
        rows.append(("lms_curve", f"beta={beta:g}", 0, 1.0, 0.0, 1.0))
        for i, t in enumerate(sim.t):
            rows.append(("lms_curve", f"beta={beta:g}", int(t), *_mean_se(rel[:, i]), float(theory[i])))

    d, T = cfg["mis_d"], cfg["mis_T"]
    rec = np.arange(T // 2, T + 1, 10)  # second half: c^(T/2) ~ 1e-5 of the start even for beta = 0.1
    for j, beta in enumerate(cfg["mis_betas"]):
        sim = mem.simulate_online_regression(
            tt.recipes.deltanet(beta),
            d,
            T,
            sigma=1.0,
            d_v=d,
            n_batch=cfg["mis_batch"],
            seed=seed + 100 + j,
            record=rec,
        )
        per_rep = np.mean(sim.excess_mse, axis=1)  # time average within a replication, s.e. across them
        rows.append(
            ("lms_misadjustment", "deltanet", beta, *_mean_se(per_rep), mem.lms_misadjustment(beta, 1.0))
        )

    d = cfg["rls_d"]
    for j, gamma in enumerate(cfg["rls_gammas"]):
        window = 1.0 / (1.0 - gamma)
        T = int(round(cfg["rls_windows"] * window))
        rec = np.arange(int(4 * window), T + 1, max(1, int(window / 2)))  # after 4 windows: prior gone
        sim = mem.simulate_online_regression(
            tt.recipes.rls(1e-6, forgetting=gamma),
            d,
            T,
            sigma=1.0,
            d_v=4,
            n_batch=cfg["rls_batch"],
            seed=seed + 200 + j,
            record=rec,
        )
        per_rep = np.mean(sim.excess_mse, axis=1)
        rows.append(("rls_excess", "rls", gamma, *_mean_se(per_rep), mem.rls_excess_error(d, gamma, 1.0)))
    return rows


def plot(rows, cfg):
    fig = Figure(figsize=(17, 5.2), layout="constrained")
    ax_c, ax_m, ax_r = fig.subplots(1, 3)
    for j, beta in enumerate(CURVE_BETAS):
        pts = sorted(
            (r[2], r[3], r[4], r[5]) for r in rows if r[0] == "lms_curve" and r[1] == f"beta={beta:g}"
        )
        t, y, se, th = (np.array(c) for c in zip(*pts, strict=True))
        ax_c.errorbar(t, y, yerr=se, color=f"C{j}", marker="o", ms=3, ls="none", label=f"MC, β = {beta:g}")
        tf = np.arange(0, t[-1] + 1)
        ax_c.plot(tf, mem.lms_learning_curve(cfg["curve_d"], beta, tf), color=f"C{j}", lw=1)
    ax_c.plot([], [], "k-", lw=1, label="theory (1 − β(2−β)/d)^t")
    ax_c.set_yscale("log")
    ax_c.set_xlabel("t (steps)")
    ax_c.set_ylabel("‖M_t − W‖² / ‖W‖²")
    ax_c.set_title(f"(a) LMS learning curves, noiseless, unit keys, d = {cfg['curve_d']}")
    ax_c.legend(fontsize=7)
    ax_c.grid(True, alpha=0.25)

    pts = sorted((r[2], r[3], r[4]) for r in rows if r[0] == "lms_misadjustment")
    b, y, se = (np.array(c) for c in zip(*pts, strict=True))
    ax_m.errorbar(b, y, yerr=se, color="C3", marker="s", ms=4, ls="none", label="MC (mean ± s.e.)")
    bf = np.linspace(0.05, max(1.6, b[-1] * 1.05), 200)
    ax_m.plot(bf, bf / (2 - bf), "k-", lw=1, label="theory βσ²/(2 − β)")
    for beta in CURVE_BETAS:
        ax_m.axvline(beta, color="gray", lw=0.5, ls=":")
    ax_m.set_yscale("log")
    ax_m.set_xlabel("step size β")
    ax_m.set_ylabel("steady-state excess MSE  E(v − Mk)² − σ²")
    ax_m.set_title(f"(b) LMS misadjustment, σ² = 1, d = {cfg['mis_d']}")
    ax_m.legend(fontsize=7)
    ax_m.grid(True, alpha=0.25)

    pts = sorted((r[2], r[3], r[4]) for r in rows if r[0] == "rls_excess")
    g, y, se = (np.array(c) for c in zip(*pts, strict=True))
    ax_r.errorbar(1 - g, y, yerr=se, color="C4", marker="D", ms=4, ls="none", label="MC (mean ± s.e.)")
    gf = 1 - np.geomspace((1 - g).min() / 1.3, (1 - g).max() * 1.3, 200)
    d = cfg["rls_d"]
    ax_r.plot(1 - gf, d * (1 - gf) / (1 + gf), "k-", lw=1, label="theory σ² d (1−γ)/(1+γ)")
    ax_r.set_xscale("log")
    ax_r.set_yscale("log")
    ax_r.set_xlabel("1 − γ  (forgetting rate; memory 1/(1 − γ) steps)")
    ax_r.set_ylabel("steady-state excess MSE")
    ax_r.set_title(f"(c) RLS with forgetting, σ² = 1, d = {d}")
    ax_r.legend(fontsize=7)
    ax_r.grid(True, alpha=0.25, which="both")
    fig.suptitle(
        "Delta rule = LMS, RLS with forgetting: Monte Carlo against adaptive-filter theory (theory §4)"
    )
    return fig


def main(out_dir, quick=False):
    """Compute the three panels, write ``memory.csv`` and ``memory.png``.

    Returns
    -------
    list of tuple
        The CSV rows (panel, series, x, value, se, theory).
    """
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows = compute(cfg)
    write_csv(out_dir / "memory.csv", ["panel", "series", "x", "value", "se", "theory"], rows)
    save_figure(plot(rows, cfg), out_dir, "memory.png")
    return rows


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick):
        if r[0] != "lms_curve":
            print(*r)
