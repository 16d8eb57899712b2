r"""Neural memories (issue #6): recall error against the load n/d, linear memories vs MLP memories.

Relative recall error :math:`\sum_i\|m(k_i) - v_i\|^2/\sum_i\|v_i\|^2` of the memory after writing n pairs
(unit keys uniform on the sphere, standard normal values, d = d_v = 32; quick: 8), read at every stored key,
mean ± s.e. over replications, for

* linear memories: linear attention (theory (n − 1)/d), least squares (ridge 0; the best any linear memory
  can do: 0 up to n = d, then 1 − d/n), TTT-Linear (mini-batch 16, no layer norm, lr 0.2);
* MLP memories (two-layer GELU, hidden 4d, 8 d² parameters against the linear d²): TTT-MLP (mini-batch 1,
  lr 0.1: with mini-batch 16 the summed step at lr 0.1 diverges on repeated passes) and Titans (momentum
  0.9, no decay, lr 0.02).

(a) the natural single pass over the pairs; (b) the same pairs written ``passes`` times (16; quick: 8),
i.e. more test-time gradient steps on the same regression. Step sizes were picked once on a small grid
(0.02 .. 0.5, d = 16) as the most stable good value per model, not tuned per load. The exact and outer-
product memories do not depend on the number of passes (least squares solves the regression; linear
attention just adds the pairs again, which scales its memory), so they are computed once.

Writes ``neural_memory.csv`` (series, passes, n, d, ratio, recall_error, se) and ``neural_memory.png``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv
from ttr_stats.datasets import random_pairs

SEED = 20250121
FULL = {"d": 32, "n_batch": 6, "ratios": (0.25, 0.5, 1.0, 2.0, 4.0, 8.0), "passes": 16}
QUICK = {"d": 8, "n_batch": 4, "ratios": (0.5, 1.0, 2.0, 4.0), "passes": 8}

SERIES = (
    ("linear_attention", "linear attention", lambda: tt.recipes.linear_attention(), "C0", "o", "-", False),
    ("least_squares", "least squares (ridge 0)", lambda: tt.recipes.least_squares(0.0), "C2", "^", "-",
     False),
    (
        "ttt_linear",
        "TTT-Linear (mb 16, lr 0.2)",
        lambda: tt.recipes.ttt_linear(lr=0.2, batch_size=16, layer_norm=False),
        "C1",
        "v",
        "-",
        True,
    ),
    ("ttt_mlp", "TTT-MLP (mb 1, lr 0.1)", lambda: tt.recipes.ttt_mlp(lr=0.1, batch_size=1), "C3", "s", "--",
     True),
    (
        "titans",
        "Titans (momentum 0.9, lr 0.02)",
        lambda: tt.recipes.titans(lr=0.02, momentum=0.9, weight_decay=0.0),
        "C4",
        "D",
        "--",
        True,
    ),
)


def recall(layer, K, V, passes):
    """Per-replication relative recall error after writing (K, V) ``passes`` times (inf if it diverged)."""
    Kp, Vp = np.concatenate([K] * passes, axis=-2), np.concatenate([V] * passes, axis=-2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            Y = layer.read(layer.memorize(Kp, Vp), K)
    except FloatingPointError:
        return np.full(K.shape[0], np.inf)
    return np.sum((Y - V) ** 2, axis=(-2, -1)) / np.sum(V**2, axis=(-2, -1))


def compute(cfg, seed=SEED):
    """Rows (series, passes, n, d, ratio, recall_error, se)."""
    d, B = cfg["d"], cfg["n_batch"]
    rows = []
    for j, ratio in enumerate(cfg["ratios"]):
        n = max(1, int(round(ratio * d)))
        K, V = random_pairs(n, d, n_batch=B, seed=seed + j)  # common random numbers across series
        for name, _, make, *_, iterative in SERIES:
            for passes in (1, cfg["passes"]) if iterative else (1,):
                e = recall(make(), K, V, passes)
                se = float(np.std(e, ddof=1) / np.sqrt(B)) if np.all(np.isfinite(e)) else float("nan")
                rows.append((name, passes, n, d, n / d, float(np.mean(e)), se))
    return rows


def plot(rows, cfg):
    d, P = cfg["d"], cfg["passes"]
    fig = Figure(figsize=(12, 5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    floor = 1e-4
    for ax, passes, title in ((axes[0], 1, "(a) one pass"), (axes[1], P, f"(b) {P} passes over the pairs")):
        for name, label, _, color, marker, ls, iterative in SERIES:
            want = passes if iterative else 1
            pts = sorted((r[4], r[5], r[6]) for r in rows if r[0] == name and r[1] == want)
            x, y, se = (np.array(c, dtype=float) for c in zip(*pts, strict=True))
            y = np.where(np.isfinite(y), y, np.nan)  # a diverged run is left out, not drawn
            ax.errorbar(x, np.maximum(y, floor), yerr=se, color=color, marker=marker, ls=ls, ms=4, lw=1.2,
                        label=label)
        xs = np.geomspace(min(cfg["ratios"]), max(cfg["ratios"]), 200)
        ax.plot(xs, np.where(xs > 1, 1 - 1 / np.maximum(xs, 1), floor), "k:", lw=1.2,
                label="best linear memory: 1 − d/n")
        ax.axvline(1.0, color="gray", lw=0.6, ls=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_ylim(floor / 2, 3)
        ax.set_xlabel("n / d  (stored pairs / key dimension)")
        ax.set_title(f"{title}, d = {d}")
        ax.grid(True, alpha=0.25)
    axes[0].set_ylabel(f"relative recall error (< {floor:g} drawn at it)")
    axes[1].legend(fontsize=7)
    fig.suptitle("Linear vs MLP test-time memories: an MLP stores more than d pairs only with more steps")
    return fig


def main(out_dir, quick=False):
    """Compute both panels, write ``neural_memory.csv`` and ``neural_memory.png``; return the CSV rows."""
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows = compute(cfg)
    write_csv(
        out_dir / "neural_memory.csv", ["series", "passes", "n", "d", "ratio", "recall_error", "se"], rows
    )
    save_figure(plot(rows, cfg), out_dir, "neural_memory.png")
    return rows


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick):
        print(*r)
