r"""Output-norm growth (paper §3, stability): linear attention's output grows with t, least squares' does not.

Data: keys and queries :math:`\mathcal N(0, I_d)` (d = 16), values :math:`v = W k + 0.1\varepsilon` with
rows of W ~ N(0, I/d), a batch of independent sequences. Series (mean ± s.e. of :math:`\|y_t\|` over the
batch):

- ``linear_attention()``: :math:`y_t = \sum_{i\le t} v_i k_i^\top q_t \approx t\,W q_t`, grows linearly in t;
- ``linear_attention(normalize="sum", feature_map="elu_plus_one")``: a convex combination of the values
  (positive features), bounded by :math:`\max_i \|v_i\|`;
- ``least_squares(ridge=1e-8)``: :math:`y_t = V_t^\top K_t (K_t^\top K_t)^{-1} q_t \to W q_t`, inside the
  paper's stability bound :math:`\|y_t\| \le \|q_t\| \sum_i \|v_i\|\|k_i\| / \lambda_{\min}(K_t^\top K_t)`
  (drawn for t ≥ 2d, where :math:`\lambda_{\min} > 0`).

Writes ``output_norm.csv`` (series, t, mean_norm, se, bound, max_ratio_to_bound) and ``output_norm.png``.
``max_ratio_to_bound`` is the largest :math:`\|y_t\| / \mathrm{bound}_t` over the batch (≤ 1 means the bound
holds on every sequence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

SEED = 20250301
FULL = {"d": 16, "T": 2048, "batch": 32}
QUICK = {"d": 8, "T": 256, "batch": 8}
SERIES = {
    "linear_attention": lambda: tt.recipes.linear_attention(),
    "normalized_la": lambda: tt.recipes.linear_attention(normalize="sum", feature_map="elu_plus_one"),
    "least_squares": lambda: tt.recipes.least_squares(ridge=1e-8),
}
LABELS = {
    "linear_attention": "linear attention (grows ∝ t)",
    "normalized_la": "normalised LA, elu+1 features (≤ max‖v‖)",
    "least_squares": "least squares (ridge 1e-8)",
}


def data(cfg, seed=SEED):
    rng = np.random.default_rng(seed)
    d, T, B = cfg["d"], cfg["T"], cfg["batch"]
    W = rng.standard_normal((B, d, d)) / np.sqrt(d)
    K = rng.standard_normal((B, T, d))
    Q = rng.standard_normal((B, T, d))
    V = np.einsum("bij,btj->bti", W, K) + 0.1 * rng.standard_normal((B, T, d))
    return Q, K, V


def bounds(Q, K, V):
    """The stability bound of least squares per (sequence, t), inf where λ_min(K_tᵀK_t) is not positive,
    and the running max ‖v_i‖ (the bound of the normalised form)."""
    B, T, d = K.shape
    R = np.cumsum(np.einsum("bti,btj->btij", K, K), axis=1)
    lam_min = np.linalg.eigvalsh(R)[..., 0]
    s = np.cumsum(np.linalg.norm(V, axis=-1) * np.linalg.norm(K, axis=-1), axis=1)
    t = np.arange(1, T + 1)
    ls = np.where(
        (t >= 2 * d) & (lam_min > 0),
        np.linalg.norm(Q, axis=-1) * s / np.where(lam_min > 0, lam_min, 1),
        np.inf,
    )
    vmax = np.maximum.accumulate(np.linalg.norm(V, axis=-1), axis=1)
    return ls, vmax


def compute(cfg, seed=SEED):
    """Rows (series, t, mean_norm, se, bound, max_ratio_to_bound) at log-spaced t."""
    Q, K, V = data(cfg, seed)
    ls_bound, vmax = bounds(Q, K, V)
    T = cfg["T"]
    ts = np.unique(np.round(np.geomspace(1, T, 40)).astype(int))
    rows = []
    for name, make in SERIES.items():
        norm = np.linalg.norm(make()(Q, K, V), axis=-1)  # (B, T)
        bound = {"least_squares": ls_bound, "normalized_la": vmax}.get(name)
        for t in ts:
            x = norm[:, t - 1]
            se = float(np.std(x, ddof=1) / np.sqrt(x.size))
            if bound is None or not np.all(np.isfinite(bound[:, t - 1])):
                b, ratio = float("nan"), float("nan")
            else:
                b, ratio = float(np.mean(bound[:, t - 1])), float(np.max(x / bound[:, t - 1]))
            rows.append((name, int(t), float(np.mean(x)), se, b, ratio))
    return rows


def plot(rows, cfg):
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.subplots()
    for j, name in enumerate(SERIES):
        pts = [r for r in rows if r[0] == name]
        t = np.array([r[1] for r in pts])
        y = np.array([r[2] for r in pts])
        se = np.array([r[3] for r in pts])
        ax.plot(t, y, color=f"C{j}", marker="o", ms=3, label=LABELS[name])
        ax.fill_between(t, y - 2 * se, y + 2 * se, color=f"C{j}", alpha=0.2)
        b = np.array([r[4] for r in pts])
        if np.isfinite(b).any():
            ax.plot(t, b, color=f"C{j}", ls="--", lw=1, label=f"bound of {name.replace('_', ' ')} (mean)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("‖y_t‖ (mean ± 2 s.e.)")
    ax.set_title(
        f"Output norm vs t, Gaussian keys d = {cfg['d']}, v = Wk + noise, {cfg['batch']} sequences\n"
        "bound ‖q‖ Σ‖v_i‖‖k_i‖ / λ_min(KᵀK) for least squares (t ≥ 2d), max‖v_i‖ for normalised LA"
    )
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.25)
    return fig


def main(out_dir, quick=False):
    """Write ``output_norm.csv`` and ``output_norm.png``; return the rows."""
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows = compute(cfg)
    header = ["series", "t", "mean_norm", "se", "bound", "max_ratio_to_bound"]
    write_csv(out_dir / "output_norm.csv", header, rows)
    save_figure(plot(rows, cfg), out_dir, "output_norm.png")
    return rows


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick):
        if r[1] == (QUICK if args.quick else FULL)["T"]:
            print(*r)
