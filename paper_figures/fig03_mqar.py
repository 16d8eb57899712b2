r"""Figure 3 of the paper: multi-query associative recall (MQAR), untrained and trained (paper §6-7).

(a) **Untrained capacity construction** (:func:`ttr_stats.diagnostics.capacity.mqar_accuracy`, the
    construction of :func:`ttr_stats.datasets.mqar`): token embeddings :math:`x_t` (random unit rows,
    d = 64), keys :math:`k_t = x_{t-1}` (a length-2 short convolution), :math:`q_t = v_t = x_t`, decoded by
    the nearest embedding; accuracy vs the number of pairs P at T = 3P (no padding) and T = 512, 2048 (the
    query region padded with one token, as Zoology's MQAR without random fillers), for linear attention,
    RLS (ridge 1e-6) and DeltaNet (beta = 1: unit keys make it the exact delta rule). Measured (full run,
    8 sequences a point): at T = 3P linear attention decodes >= 0.95 up to P = 64 and 0.64 at P = 128, but
    the padding bigram :math:`x_{pad} \to x_{pad}`, written T - 3P times, swamps every read (0.23 at P = 8,
    T = 512; 0.04-0.11 at T = 2048); RLS is exact up to P = 48 at every T (a repeated pair costs least
    squares nothing), 0.97-0.98 at P = 64 and 0.71-0.80 at P = 128; DeltaNet is blind to T too but
    overwrites: 1.00 at P = 8, 0.3 at P = 64, 0.09 at P = 128. Capacity, not length, limits least squares.
(b) **Trained**: one test-time-regression layer plus a length-2 short convolution on keys, d_model =
    d_k = 64, no MLP, on Zoology's MQAR (:func:`ttr_stats.datasets.mqar_tokens`, vocab 8192), linear
    attention vs unweighted RLS, P in {64, 128}, T in {512, 1024, 2048, 4096}, several seeds
    (:mod:`ttr_stats.train`; the grid is ``benchmarks/gpu_mqar.py``, run on a GPU, its CSV committed as
    ``paper_figures/data/mqar_trained.csv``). Per cell the better of the learning rates (Zoology sweeps
    the rate and keeps the best), mean ± s.e. over its seeds; the paper's numbers (RLS ~1.00 everywhere;
    linear attention 1.00 at P = 64 and 0.934 / 0.930 / 0.921 / 0.915 at P = 128) beside them as crosses.
    Choices the paper does not state, and ours (:mod:`ttr_stats.train`): q and k L2-normalised after the
    convolution, RLS ridge 1 on those unit keys, fresh sequences every step, a wall-clock budget per cell
    (the steps are in the CSV), gradient clipping at norm 1. Without the committed CSV the panel says so.
    Committed so far (2026-12-04, one H200, ``gpu_mqar --P 64,128 --T 512`` and ``--T 1024``, seed 0,
    rates 1e-2 and 3e-2, four cells at once for ~430 s each: 7-13 thousand steps), the better rate:

    ======  =====  ========================  =============  =====================
    P       T      linear attention (paper)  RLS (paper)    steps (LA / RLS)
    ======  =====  ========================  =============  =====================
    64      512    0.951 (1.00)              0.996 (1.00)   12676 / 8480
    128     512    0.818 (0.934)             0.981 (1.00)   12687 / 8427
    64      1024   0.896 (1.00)              0.954 (1.00)   11461 / 7025
    128     1024   0.671 (0.930)             0.875 (1.00)   11447 / 7055
    ======  =====  ========================  =============  =====================

    RLS beats linear attention in every cell, and the gap grows with P, as in the paper. Every cell is
    below the paper's number, most likely from the short budget: the same linear-attention cell (P = 64,
    T = 512) trained for 112 s had 0.937, and 0.951 in 434 s. At rate 3e-2 RLS stayed on the loss plateau
    (ln 4096: chance) in three of the four cells, so per cell the figure keeps the better rate, as Zoology
    does. T = 2048 and 4096 are not in the grid yet: one try (2026-12-07, one H100, seeds 0 and 1, rate
    1e-2, all eight cells on the card at once for 297 s each: 3.2 thousand steps at T = 2048 and 1.0-2.5
    thousand at T = 4096) left every cell on the plateau (loss 8.32 = ln 4096, accuracy 0.000); its rows
    and loss curves are kept apart in ``paper_figures/data/mqar_partial_2026-12-07*.csv``. These lengths
    need ~10x the steps of that try (several GPUs or one cell a card).
(c) **Live**: the same model and training code, small enough for a CPU (P = 16, T = 128, vocab 256,
    lr 1e-2, at most 400 steps or 25 s per layer: the number of steps depends on the machine), so that the
    code path runs wherever the figures are drawn: training loss vs step and the held-out accuracy. Without
    PyTorch the panel says so (``pip install 'ttr_stats[train]'``).

Writes ``mqar_capacity.csv`` (layer, P, T, d, accuracy, se), ``mqar_trained.csv`` (a copy of the committed
GPU grid, when there is one), ``mqar_live.csv`` (recipe, seed, step, seconds, loss, final accuracy) and
``mqar.png``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, read_csv, save_figure, write_csv
from ttr_stats.diagnostics import capacity as cap

SEED = 20250303
#: the committed GPU grid of benchmarks/gpu_mqar.py
GPU_CSV = Path(__file__).resolve().parent / "data" / "mqar_trained.csv"

LAYERS = (
    ("linear_attention", "linear attention", lambda: tt.recipes.linear_attention(), "C0"),
    ("rls", "RLS (ridge 1e-6)", lambda: tt.recipes.rls(ridge=1e-6), "C2"),
    ("deltanet", "DeltaNet (β = 1)", lambda: tt.recipes.deltanet(beta=1.0), "C5"),
)
FULL = {
    "d": 64,
    "P": (8, 16, 24, 32, 48, 64, 96, 128),
    "T": (None, 512, 2048),  # None: T = 3P, no padding
    "n_batch": 8,
    "live": {"n_pairs": 16, "seq_len": 128, "vocab": 256, "steps": 400, "seconds": 25.0, "seeds": (0,)},
}
QUICK = {
    "d": 16,
    "P": (4, 8, 16),
    "T": (None, 128),
    "n_batch": 4,
    "live": {"n_pairs": 4, "seq_len": 32, "vocab": 64, "steps": 30, "seconds": 5.0, "seeds": (0,)},
}
#: the live run's other settings (the GPU grid's, benchmarks/gpu_mqar.py, with its larger rate)
LIVE = {"d_model": 64, "batch_size": 32, "lr": 1e-2, "eval_sequences": 128, "ridge": 1.0, "threads": 2}

PAPER = {  # the paper's Fig. 3 (§7), also in benchmarks/gpu_mqar.py
    ("linear_attention", 64): {512: 1.0, 1024: 1.0, 2048: 1.0, 4096: 1.0},
    ("linear_attention", 128): {512: 0.934, 1024: 0.930, 2048: 0.921, 4096: 0.915},
    ("rls", 64): {512: 1.0, 1024: 1.0, 2048: 1.0, 4096: 1.0},
    ("rls", 128): {512: 1.0, 1024: 1.0, 2048: 1.0, 4096: 1.0},
}


def capacity_rows(cfg, seed=SEED):
    """Panel (a): rows (layer, P, T, d, accuracy, se); T = 3P where ``cfg["T"]`` has None."""
    d, rows = cfg["d"], []
    for j, P in enumerate(cfg["P"]):
        for T in cfg["T"]:
            T_ = 3 * P if T is None else T
            if T_ < 3 * P:
                continue
            for name, _, make, _ in LAYERS:  # common random numbers: the same sequences for every layer
                acc = cap.mqar_accuracy(
                    make(), P, d, embedding="random", n_batch=cfg["n_batch"], seq_len=T_, seed=seed + j
                )
                rows.append((name, P, "3P" if T is None else T_, d, acc.accuracy, acc.se))
    return rows


def torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def live_rows(cfg):
    """Panel (c): train both layers briefly on the CPU; rows (recipe, seed, step, seconds, loss, accuracy)
    with accuracy (held out) on the last row of each run only. [] without torch."""
    if not torch_available():
        return []
    from ttr_stats.train import MQARTrainConfig, train_mqar

    rows = []
    for recipe in ("linear_attention", "rls"):
        c = MQARTrainConfig(recipe=recipe, device="cpu", **LIVE, **cfg["live"])
        _, results = train_mqar(c)
        for r in results:
            for step, secs, loss in r.history:
                rows.append((recipe, r.seed, step, secs, loss, float("nan")))
            rows.append((recipe, r.seed, r.steps, r.train_seconds, r.last_train_loss, r.accuracy))
    return rows


def trained_rows(path=GPU_CSV):
    """Panel (b): the ``status == ok`` rows of the committed GPU grid (list of dicts), [] if none."""
    path = Path(path)
    if not path.is_file():
        return []
    return [r for r in read_csv(path) if r.get("status") == "ok"]


def summarise(rows):
    """(recipe, P) -> sorted list of (T, mean accuracy, se over seeds, n seeds, paper, lr).

    Per cell the learning rate with the best mean accuracy over its seeds (Zoology sweeps the rate and
    reports the best); rows without an ``lr`` column count as one rate.
    """
    groups = {}
    for r in rows:
        key = (r["recipe"], int(r["n_pairs"]), int(r["seq_len"]))
        lr = float(r["lr"]) if r.get("lr") not in (None, "") else float("nan")
        groups.setdefault(key, {}).setdefault(lr, []).append(float(r["accuracy"]))
    out = {}
    for (recipe, P, T), by_lr in sorted(groups.items()):
        lr, accs = max(by_lr.items(), key=lambda kv: (float(np.mean(kv[1])), -len(kv[1])))
        a = np.asarray(accs)
        se = float(np.std(a, ddof=1) / math.sqrt(a.size)) if a.size > 1 else float("nan")
        paper = PAPER.get((recipe, P), {}).get(T, float("nan"))
        out.setdefault((recipe, P), []).append((T, float(a.mean()), se, a.size, paper, lr))
    return out


def plot(cap_rows, d, trained, live, live_cfg, has_torch):
    fig = Figure(figsize=(17, 5.4), layout="constrained")
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    styles = {}
    Ts = list(dict.fromkeys(r[2] for r in cap_rows))
    for i, T in enumerate(Ts):
        styles[T] = ("-", "--", ":", "-.")[i % 4]
    for name, label, _, color in LAYERS:
        for T in Ts:
            pts = sorted((r[1], r[4], r[5]) for r in cap_rows if r[0] == name and r[2] == T)
            if not pts:
                continue
            P, acc, se = (np.array(c) for c in zip(*pts, strict=True))
            ax_a.errorbar(P, acc, yerr=se, color=color, ls=styles[T], marker="o", ms=3, lw=1.2,
                          label=f"{label}, T = {T}")  # fmt: skip
    ax_a.axvline(d / 2, color="gray", lw=0.6, ls=":")
    ax_a.set_xscale("log", base=2)
    ax_a.set_xlabel("P (key-value pairs)")
    ax_a.set_ylabel("MQAR accuracy (nearest embedding)")
    ax_a.set_ylim(-0.02, 1.02)
    ax_a.set_title(f"(a) untrained: k_t = x_(t-1), random embeddings, d = {d}")
    ax_a.legend(fontsize=6, ncol=1)
    ax_a.grid(True, alpha=0.25)

    if trained:
        summary = summarise(trained)
        colors = {"linear_attention": "C0", "rls": "C2"}
        for (recipe, P), pts in sorted(summary.items()):
            T, m, se, n, paper, _ = (np.array(c) for c in zip(*pts, strict=True))
            ls = "-" if P == min(p for _, p in summary) else "--"
            ax_b.errorbar(T, m, yerr=np.nan_to_num(se), color=colors.get(recipe, "k"), ls=ls, marker="o",
                          ms=4, label=f"{recipe}, P = {P} (ours, {int(n.min())} seeds)")  # fmt: skip
            ax_b.plot(T, paper, color=colors.get(recipe, "k"), ls="none", marker="x", ms=7,
                      label=f"{recipe}, P = {P} (paper)")  # fmt: skip
        card = trained[0].get("card", "?")
        steps = sorted({int(r["steps"]) for r in trained})
        ax_b.set_title(f"(b) trained, d = 64: {card}, {steps[0]}-{steps[-1]} steps", fontsize=9)
        ax_b.set_xscale("log", base=2)
        ax_b.legend(fontsize=6)
    else:
        ax_b.text(0.5, 0.5, "no GPU grid committed yet\n(paper_figures/data/mqar_trained.csv:\n"
                  "python -m benchmarks.gpu_mqar on a GPU);\nthe live CPU run is panel (c)",
                  ha="center", va="center", transform=ax_b.transAxes, fontsize=9)  # fmt: skip
        ax_b.set_title("(b) trained, P ∈ {64, 128}, T = 512 … 4096: not run here")
    ax_b.set_xlabel("T (sequence length)")
    ax_b.set_ylabel("held-out MQAR accuracy")
    ax_b.set_ylim(-0.02, 1.05)
    ax_b.grid(True, alpha=0.25)

    if live:
        colors = {"linear_attention": "C0", "rls": "C2"}
        for recipe in ("linear_attention", "rls"):
            pts = [r for r in live if r[0] == recipe and math.isnan(r[5])]
            final = [r for r in live if r[0] == recipe and not math.isnan(r[5])]
            if pts:
                f = final[0]
                label = f"{recipe}: held-out accuracy {f[5]:.2f} after {f[2]} steps, {f[3]:.0f} s"
                ax_c.plot([r[2] for r in pts], [r[4] for r in pts], color=colors[recipe], marker=".",
                          label=label)  # fmt: skip
        lc = live_cfg
        ax_c.set_title(f"(c) live CPU run: P = {lc['n_pairs']}, T = {lc['seq_len']}, vocab {lc['vocab']}")
        ax_c.set_xlabel("step")
        ax_c.set_ylabel("training cross-entropy")
        ax_c.legend(fontsize=7)
    else:
        why = "PyTorch is not installed:\npip install 'ttr_stats[train]'" if not has_torch else "no rows"
        ax_c.text(0.5, 0.5, f"(c) live training not run\n{why}", ha="center", va="center",
                  transform=ax_c.transAxes, fontsize=9)  # fmt: skip
        ax_c.set_title("(c) live CPU run")
    ax_c.grid(True, alpha=0.25)
    fig.suptitle("Figure 3: MQAR, one test-time-regression layer + a length-2 short convolution on keys")
    return fig


def main(out_dir, quick=False, trained_csv=None, live=True):
    """Compute (a), train (c), read (b); write the CSVs and ``mqar.png``. Returns (a)'s rows.

    ``trained_csv``: the grid to draw in (b) (default the committed ``paper_figures/data/mqar_trained.csv``);
    ``live=False`` skips the live training of (c).
    """
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows = capacity_rows(cfg)
    write_csv(out_dir / "mqar_capacity.csv", ["layer", "P", "T", "d", "accuracy", "se"], rows)
    src = GPU_CSV if trained_csv is None else Path(trained_csv)
    trained = trained_rows(src)
    if trained and src.resolve() != (out_dir / "mqar_trained.csv").resolve():
        shutil.copyfile(src, out_dir / "mqar_trained.csv")
    has_torch = torch_available()
    live = live_rows(cfg) if live else []
    write_csv(
        out_dir / "mqar_live.csv", ["recipe", "seed", "step", "seconds", "loss", "accuracy"], live
    )  # fmt: skip
    save_figure(plot(rows, cfg["d"], trained, live, cfg["live"], has_torch), out_dir, "mqar.png")
    return rows


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick):
        print(*r)
