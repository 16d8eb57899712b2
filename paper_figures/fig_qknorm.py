r"""QKNorm: raw softmax attention carries a per-key non-local factor; QKNorm makes it a kernel smoother.

Keys :math:`k_j = r_j u_j` with directions :math:`u_j` uniform on :math:`S^{d-1}` (d = 8, n = 512) and
lognormal norms :math:`r_j = e^{\sigma z_j}` (median 1); unit queries; logit scale :math:`\tau = 8`
(bandwidth :math:`h = \tau^{-1/2} = 0.35`, sphere closed form :math:`n_{eff} = 32` at :math:`\sigma = 0`).
Values :math:`v_j = m(u_j) + 0.1\,\varepsilon_j` with the smooth map :math:`m(u) = \sin(2 a^\top u)`
(unit a) of the direction only, so the norms are pure nuisance. Both variants use
:func:`ttr_stats.diagnostics.conditioning.qknorm_report`.

(a) softmax weight against distance :math:`\|q - k\|` for one query, raw vs QK-normalised keys, at
    :math:`\sigma \in \{0, 0.5, 1\}`: with QKNorm the weight is a decreasing function of distance (a Gaussian
    kernel), raw weights scatter by :math:`e^{\tau\|k\|^2/2}`.
(b) effective sample size :math:`1/\sum s^2` and Nadaraya-Watson squared error of :math:`m` at the queries
    against :math:`\sigma` (mean over replicates, error bars 2 SE). The data are paired across
    :math:`\sigma` and variants (same directions, same :math:`z_j`, same noise).

Writes ``qknorm_weights.csv`` (panel a), ``qknorm_sweep.csv`` (panel b) and ``qknorm.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from paper_figures._common import parse_args, save_figure, write_csv
from ttr_stats.diagnostics.conditioning import qknorm_report

D, N_KEYS, N_QUERIES, SCALE, NOISE = 8, 512, 64, 8.0, 0.1
SEED = 20250121
SIGMAS_A = (0.0, 0.5, 1.0)
SIGMAS_FULL = tuple(np.round(np.arange(0.0, 1.51, 0.125), 3))
SIGMAS_QUICK = (0.0, 0.5, 1.0)
REPS_FULL, REPS_QUICK = 40, 6


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_data(reps, seed=SEED):
    """Directions, log-norm draws, queries, values and targets for ``reps`` replicates (batch dimension)."""
    rng = np.random.default_rng(seed)
    a = _unit(rng.standard_normal(D))  # unit: m varies on the scale of the sphere, smooth at h = 0.35
    U = _unit(rng.standard_normal((reps, N_KEYS, D)))
    z = rng.standard_normal((reps, N_KEYS, 1))
    Q = _unit(rng.standard_normal((reps, N_QUERIES, D)))

    def m(u):
        return np.sin(2.0 * u @ a)[..., None]

    V = m(U) + NOISE * rng.standard_normal((reps, N_KEYS, 1))
    return U, z, Q, V, m(Q)


def compute(sigmas, reps):
    """Panel (a) rows and panel (b) rows (lists of tuples, see the CSV headers in :func:`main`)."""
    U, z, Q, V, target = make_data(reps)
    weight_rows, sweep_rows = [], []
    for sigma in sorted(set(sigmas) | set(SIGMAS_A)):
        K = U * np.exp(sigma * z)
        rep = qknorm_report(Q, K, V, scale=SCALE, target=target)
        if sigma in SIGMAS_A:
            for name, v in rep.variants.items():
                for j in range(N_KEYS):
                    weight_rows.append(
                        (sigma, name, j, float(v.distances[0, 0, j]), float(v.weights[0, 0, j]))
                    )
        if sigma not in sigmas:
            continue
        mse = {name: v.squared_error.mean(axis=-1) for name, v in rep.variants.items()}  # per replicate
        diff_se = (
            float(np.std(mse["raw"] - mse["qknorm"], ddof=1) / np.sqrt(reps)) if reps > 1 else float("nan")
        )
        for name, v in rep.variants.items():
            ne = v.n_eff.mean(axis=-1)
            se = lambda x: float(np.std(x, ddof=1) / np.sqrt(reps)) if reps > 1 else float("nan")  # noqa: E731
            sweep_rows.append(
                (
                    float(sigma),
                    name,
                    float(ne.mean()),
                    se(ne),
                    float(mse[name].mean()),
                    se(mse[name]),
                    diff_se,
                    float(v.rank_correlation.mean()),
                    float(v.entropy.mean()),
                )
            )
    return weight_rows, sweep_rows


def plot(weight_rows, sweep_rows):
    fig = Figure(figsize=(12, 7), layout="constrained")
    top, bottom = fig.subfigures(2, 1)
    axes_a = top.subplots(1, len(SIGMAS_A), sharey=True)
    w = np.array([(r[0], r[1] == "raw", r[3], r[4]) for r in weight_rows], dtype=float)
    for ax, sigma in zip(axes_a, SIGMAS_A, strict=True):
        for is_raw, label, marker in ((1.0, "raw keys", "o"), (0.0, "QKNorm", ".")):
            sel = (w[:, 0] == sigma) & (w[:, 1] == is_raw)
            ax.scatter(w[sel, 2], np.maximum(w[sel, 3], 1e-300), s=7, alpha=0.5, marker=marker, label=label)
        ax.set_yscale("log")
        ax.set_ylim(1e-12, 1)
        ax.set_xlabel("‖q − k‖")
        ax.set_title(f"(a) σ = {sigma:g}", fontsize=10)
    axes_a[0].set_ylabel("softmax weight (one query)")
    axes_a[0].legend(fontsize=8)
    axes_b = bottom.subplots(1, 2)
    s = np.array([(r[0], r[1] == "raw", r[2], r[3], r[4], r[5]) for r in sweep_rows], dtype=float)
    for is_raw, label in ((1.0, "raw keys"), (0.0, "QKNorm")):
        sel = s[:, 1] == is_raw
        axes_b[0].errorbar(s[sel, 0], s[sel, 2], yerr=2 * s[sel, 3], marker="o", ms=3, capsize=2, label=label)
        axes_b[1].errorbar(s[sel, 0], s[sel, 4], yerr=2 * s[sel, 5], marker="o", ms=3, capsize=2, label=label)
    axes_b[0].set_ylabel("n_eff = 1/Σ s²")
    axes_b[1].set_ylabel("NW squared error at the queries")
    axes_b[1].set_yscale("log")
    for ax, title in zip(axes_b, ("(b) effective sample size", "(b) regression error"), strict=True):
        ax.set_xlabel("σ (log key-norm standard deviation)")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"Raw vs QK-normalised softmax attention (d = {D}, n = {N_KEYS}, τ = {SCALE:g})")
    return fig


def main(out_dir, quick=False):
    """Compute both panels; write ``qknorm_weights.csv``, ``qknorm_sweep.csv``, ``qknorm.png`` in ``out_dir``.

    Returns
    -------
    dict
        ``png`` and ``csv`` paths, and the sweep rows.
    """
    out_dir = Path(out_dir)
    sigmas = SIGMAS_QUICK if quick else SIGMAS_FULL
    reps = REPS_QUICK if quick else REPS_FULL
    weight_rows, sweep_rows = compute(sigmas, reps)
    csv_a = write_csv(
        out_dir / "qknorm_weights.csv", ["sigma", "variant", "key", "distance", "weight"], weight_rows
    )
    csv_b = write_csv(
        out_dir / "qknorm_sweep.csv",
        [
            "sigma",
            "variant",
            "n_eff",
            "n_eff_se",
            "nw_mse",
            "nw_mse_se",
            "mse_diff_se",
            "rank_correlation",
            "entropy",
        ],
        sweep_rows,
    )
    png = save_figure(plot(weight_rows, sweep_rows), out_dir, "qknorm.png")
    return {"png": png, "csv": [csv_a, csv_b], "sweep": sweep_rows}


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for row in main(args.out, quick=args.quick)["sweep"]:
        print(
            f"sigma {row[0]:5.3f} {row[1]:7s} n_eff {row[2]:8.2f}  nw_mse {row[4]:.4g}  spearman {row[7]:.3f}"
        )
