r"""Gating = weighted least squares (paper §2): gates define weights γ_i^(t); exact WLS vs gated LA / delta.

A gate sequence :math:`\alpha_t` gives the weights :math:`\gamma_i^{(t)} = \prod_{j=i+1}^{t}\alpha_j`
(``tt.weights.Gated().matrix``). On piecewise-stationary data (unit keys, d = 16, values
:math:`v_t = W_{s(t)} k_t + 0.05\varepsilon`, a new W every ``seg`` steps) the gate is
:math:`\alpha_t = 0.99` inside a segment and 0.01 at a segment's first step (an oracle change detector), and

- ``mesa(ridge=1e-3)``: exact weighted ridge least squares with these weights (ClosedForm + Gated);
- ``mamba2()`` with the same gates and write strength :math:`\beta = d(1 - 0.99)`: the gated linear-attention
  approximation :math:`K^\top\Gamma K \approx I` (β makes the steady-state :math:`E[K^\top\Gamma K] = I`);
- ``gated_deltanet()`` (β = 1): one online gradient step per pair on the same weighted objective;
- ``rls(1e-3)`` without gates (uniform weights): what ignoring the change points costs.

Error: :math:`\|y_t - W_{s(t)} q_t\|^2 / \|W_{s(t)} q_t\|^2` on fresh unit queries, mean over sequences.
Writes ``gating_wls.csv`` (method, t, error, se), ``gating_wls_summary.csv`` (method, late_error: mean error
over the second half of every segment after the first) and ``gating_wls.png`` (heatmap of γ and the curves).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

SEED = 20250303
ALPHA_IN, ALPHA_RESET = 0.99, 0.01
FULL = {"d": 16, "seg": 128, "n_seg": 4, "batch": 16}
QUICK = {"d": 8, "seg": 48, "n_seg": 3, "batch": 4}


def gates(cfg):
    T = cfg["seg"] * cfg["n_seg"]
    alpha = np.full(T, ALPHA_IN)
    alpha[cfg["seg"] :: cfg["seg"]] = ALPHA_RESET
    return alpha


def data(cfg, seed=SEED):
    rng = np.random.default_rng(seed)
    d, seg, n_seg, B = cfg["d"], cfg["seg"], cfg["n_seg"], cfg["batch"]
    T = seg * n_seg

    def unit(shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    W = rng.standard_normal((B, n_seg, d, d)) / np.sqrt(d)
    Wt = np.repeat(W, seg, axis=1)  # (B, T, d, d): the map in force at t
    K, Q = unit((B, T, d)), unit((B, T, d))
    V = np.einsum("btij,btj->bti", Wt, K) + 0.05 * rng.standard_normal((B, T, d))
    target = np.einsum("btij,btj->bti", Wt, Q)
    return Q, K, V, target


def layers(cfg):
    d = cfg["d"]
    return {
        "weighted_ls": (tt.recipes.mesa(ridge=1e-3), True, None),
        "mamba2": (tt.recipes.mamba2(), True, d * (1 - ALPHA_IN)),
        "gated_deltanet": (tt.recipes.gated_deltanet(), True, None),
        "rls_uniform": (tt.recipes.rls(1e-3), False, None),
    }


LABEL = {
    "weighted_ls": "exact weighted LS (mesa, gated)",
    "mamba2": "gated LA (mamba2, β = d(1−α))",
    "gated_deltanet": "Gated DeltaNet (β = 1)",
    "rls_uniform": "RLS without gates (uniform)",
}


def compute(cfg, seed=SEED):
    Q, K, V, target = data(cfg, seed)
    alpha = np.broadcast_to(gates(cfg), Q.shape[:2])
    seg, T = cfg["seg"], Q.shape[1]
    late = np.zeros(T, bool)
    for s in range(1, cfg["n_seg"]):
        late[s * seg + seg // 2 : (s + 1) * seg] = True
    rows, summary = [], []
    for name, (layer, gated, beta) in layers(cfg).items():
        kw = {"alpha": alpha} if gated else {}
        if beta is not None:
            kw["beta"] = np.full(Q.shape[:2], beta)
        Y = layer(Q, K, V, **kw)
        err = np.sum((Y - target) ** 2, -1) / np.sum(target**2, -1)  # (B, T)
        mean, se = err.mean(0), err.std(0, ddof=1) / np.sqrt(err.shape[0])
        rows += [(name, t + 1, float(mean[t]), float(se[t])) for t in range(T)]
        summary.append((name, float(err[:, late].mean())))
    return rows, summary


def plot(rows, summary, cfg):
    fig = Figure(figsize=(14, 5), layout="constrained")
    ax_h, ax_e = fig.subplots(1, 2, width_ratios=[1, 1.6])
    T = cfg["seg"] * cfg["n_seg"]
    G = np.asarray(tt.weights.Gated().matrix(T, alpha=gates(cfg)))
    G = np.where(G > 0, G, np.nan)
    im = ax_h.imshow(G, norm=LogNorm(vmin=1e-6, vmax=1), cmap="viridis", origin="upper")
    fig.colorbar(im, ax=ax_h, label="γ_i^(t)")
    ax_h.set_xlabel("i (pair)")
    ax_h.set_ylabel("t (prefix)")
    ax_h.set_title(f"(a) weights γ_i^(t) = Π α: α = {ALPHA_IN} inside, {ALPHA_RESET} at a change")
    late = dict(summary)
    for j, name in enumerate(LABEL):
        pts = [r for r in rows if r[0] == name]
        t = np.array([r[1] for r in pts])
        y = np.array([r[2] for r in pts])
        ax_e.plot(t, y, color=f"C{j}", lw=1, label=f"{LABEL[name]}: late {late[name]:.3g}")
    for s in range(1, cfg["n_seg"]):
        ax_e.axvline(s * cfg["seg"] + 0.5, color="gray", lw=0.6, ls=":")
    ax_e.set_yscale("log")
    ax_e.set_xlabel("t")
    ax_e.set_ylabel("‖y_t − W_s q_t‖² / ‖W_s q_t‖²")
    ax_e.set_title(f"(b) tracking error, unit keys d = {cfg['d']}, new W every {cfg['seg']} steps")
    ax_e.legend(fontsize=7)
    ax_e.grid(True, which="both", alpha=0.25)
    return fig


def main(out_dir, quick=False):
    """Write ``gating_wls.csv``, ``gating_wls_summary.csv`` and ``gating_wls.png``; return (rows, summary)."""
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows, summary = compute(cfg)
    write_csv(out_dir / "gating_wls.csv", ["method", "t", "error", "se"], rows)
    write_csv(out_dir / "gating_wls_summary.csv", ["method", "late_error"], summary)
    save_figure(plot(rows, summary, cfg), out_dir, "gating_wls.png")
    return rows, summary


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick)[1]:
        print(*r)
