r"""Optimizer interpolation (paper §3): batch GD, diagonally preconditioned GD and Newton on one prefix.

Linear attention is one unpreconditioned gradient step on :math:`\tfrac12\sum_i\|v_i - M k_i\|^2`, least
squares is one Newton step (preconditioner :math:`R^{-1}`, :math:`R = K^\top K`); preconditioners in between
interpolate. Keys :math:`k = s \odot (\sqrt{1-\rho}\,z + \sqrt\rho\,z_0\mathbf 1)` with per-feature scales
:math:`s_j` log-spaced in [1, 10] (so the diagonal of R is uneven) and equicorrelation ρ ∈ {0, 0.9};
values :math:`v = W k` (noiseless, so the least-squares fit is exact), n = 8d pairs, d = 32.

Recall error :math:`\|M K^\top - V^\top\|_F / \|V\|_F` on the n stored pairs after k iterations from M = 0 of

- batch GD, step :math:`1/\lambda_{\max}(R)`: ``tt.recipes.batch_gd(steps=k, lr=...)``, its memory read from
  the statistics of the layer's final state (:meth:`BatchGradientDescent.memory`);
- Jacobi-preconditioned GD, :math:`M \leftarrow M - \eta (M R - S) D^{-1}`, D = diag(R),
  :math:`\eta = 1/\lambda_{\max}(D^{-1/2} R D^{-1/2})`: removes the scale spread, not the correlation;
- Newton: one step :math:`M = S R^{-1}` (= ``least_squares()``).

Mean ± s.e. over seeds. Writes ``optimizer_interpolation.csv`` (rho, method, iterations, recall_error, se),
``optimizer_interpolation_summary.csv`` (rho, method, kappa, iterations_to_1e-3) and the PNG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

SEED = 20250302
TOL = 1e-3
RHOS = (0.0, 0.9)
FULL = {"d": 32, "n_over_d": 8, "seeds": 8, "iters": tuple(2**j for j in range(0, 13))}
QUICK = {"d": 8, "n_over_d": 8, "seeds": 3, "iters": tuple(2**j for j in range(0, 9))}


def keys(rng, n, d, rho):
    s = np.geomspace(1.0, 10.0, d)
    z = np.sqrt(1 - rho) * rng.standard_normal((n, d)) + np.sqrt(rho) * rng.standard_normal((n, 1))
    return z * s


def problem(cfg, rho, seed):
    rng = np.random.default_rng(seed)
    d = cfg["d"]
    n = cfg["n_over_d"] * d
    K = keys(rng, n, d, rho)
    W = rng.standard_normal((d, d)) / np.sqrt(d)
    return K, K @ W.T


def recall_error(M, K, V):
    return float(np.linalg.norm(K @ M.T - V) / np.linalg.norm(V))


def gd_state(K, V):
    """The prefix statistics (R, S) as the batch-GD layer accumulates them (its final state)."""
    _, state = tt.recipes.batch_gd()(K, K, V, return_state=True)
    return state


def gd_memory(state, steps, lr):
    """The library's batch-GD memory after ``steps`` iterations (:meth:`BatchGradientDescent.memory`)."""
    return np.asarray(tt.optimizers.BatchGradientDescent(steps=steps, lr=lr).memory(state))


def jacobi_memory(R, S, steps):
    dinv = 1.0 / np.diag(R)
    Rn = np.sqrt(dinv)[:, None] * R * np.sqrt(dinv)[None, :]
    eta = 1.0 / np.linalg.eigvalsh(Rn)[-1]
    M = np.zeros_like(S)
    for _ in range(steps):
        M = M - eta * (M @ R - S) * dinv[None, :]
    return M


def compute(cfg, seed=SEED):
    rows, summary = [], []
    for rho in RHOS:
        errs = {"gd": [], "jacobi": [], "newton": []}
        kappas = {"gd": [], "jacobi": []}
        for s in range(cfg["seeds"]):
            K, V = problem(cfg, rho, seed + 1000 * int(rho * 10) + s)
            R, S = K.T @ K, V.T @ K
            ev = np.linalg.eigvalsh(R)
            dh = 1.0 / np.sqrt(np.diag(R))
            evj = np.linalg.eigvalsh(dh[:, None] * R * dh[None, :])
            kappas["gd"].append(ev[-1] / ev[0])
            kappas["jacobi"].append(evj[-1] / evj[0])
            lr, state = 1.0 / ev[-1], gd_state(K, V)
            errs["gd"].append([recall_error(gd_memory(state, k, lr), K, V) for k in cfg["iters"]])
            errs["jacobi"].append([recall_error(jacobi_memory(R, S, k), K, V) for k in cfg["iters"]])
            errs["newton"].append([recall_error(np.linalg.solve(R, S.T).T, K, V)] * len(cfg["iters"]))
        for method, e in errs.items():
            e = np.array(e)
            mean, se = e.mean(axis=0), e.std(axis=0, ddof=1) / np.sqrt(e.shape[0])
            for k, m, s_ in zip(cfg["iters"], mean, se, strict=True):
                rows.append((rho, method, int(k), float(m), float(s_)))
            below = np.nonzero(mean < TOL)[0]
            its = 1 if method == "newton" else (int(cfg["iters"][below[0]]) if below.size else -1)
            kap = float(np.mean(kappas[method])) if method in kappas else 1.0
            summary.append((rho, method, kap, its))
    return rows, summary


LABEL = {
    "gd": "batch GD, step 1/λ_max",
    "jacobi": "Jacobi-preconditioned GD",
    "newton": "Newton (1 step = LS)",
}


def plot(rows, summary, cfg):
    fig = Figure(figsize=(12, 4.8), layout="constrained")
    axes = fig.subplots(1, len(RHOS), sharey=True)
    for ax, rho in zip(axes, RHOS, strict=True):
        for j, method in enumerate(LABEL):
            pts = [r for r in rows if r[0] == rho and r[1] == method]
            k = np.array([r[2] for r in pts])
            y = np.maximum(np.array([r[3] for r in pts]), 1e-16)
            kap = next(s[2] for s in summary if s[0] == rho and s[1] == method)
            lab = LABEL[method] + (f", κ = {kap:.3g}" if method != "newton" else "")
            ax.plot(k, y, marker="o", ms=3, color=f"C{j}", ls="-" if method != "newton" else "--", label=lab)
        ax.axhline(TOL, color="gray", lw=0.6, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("iterations k")
        ax.set_title(f"ρ = {rho:g}")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("recall error ‖MKᵀ − Vᵀ‖ / ‖V‖")
    fig.suptitle(
        f"Optimizer interpolation on one prefix (d = {cfg['d']}, n = {cfg['n_over_d']}d, "
        "feature scales 1–10): GD → diagonal preconditioning → Newton"
    )
    return fig


def main(out_dir, quick=False):
    """Write the CSVs and ``optimizer_interpolation.png``; return (rows, summary)."""
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows, summary = compute(cfg)
    write_csv(
        out_dir / "optimizer_interpolation.csv", ["rho", "method", "iterations", "recall_error", "se"], rows
    )
    write_csv(
        out_dir / "optimizer_interpolation_summary.csv",
        ["rho", "method", "kappa", "iterations_to_1e-3"],
        summary,
    )
    save_figure(plot(rows, summary, cfg), out_dir, "optimizer_interpolation.png")
    return rows, summary


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick)[1]:
        print(*r)
