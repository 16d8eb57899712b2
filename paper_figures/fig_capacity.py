r"""Associative-memory capacity (theory §4, paper §6): recall against the load n/d, and untrained MQAR.

(a) Relative recall error :math:`\sum_i\|m_n(k_i) - v_i\|^2/\sum_i\|v_i\|^2` of the memory after n pairs,
    read at every stored key (:func:`ttr_stats.diagnostics.capacity.recall_curve`), for unit keys uniform on
    the sphere and standard normal values, d = d_v = 64 (quick: 16), mean ± s.e. over replications:
    linear attention, least squares (ridge 0, minimum norm), DeltaNet with the NLMS step (``nlms()``:
    for unit keys DeltaNet with beta = 1) and softmax attention with QKNorm and logit scale beta = 8.
    Theory: (n − 1)/d (outer-product memory, unit keys), 0 then 1 − d/n (least squares), and the
    Hopfield half-weight load n*/d, :math:`\log n^* \approx \beta - \log M_d(\beta)`.
(b) Self weight of a stored pair under its own key (softmax/QKNorm, beta = 8): Monte Carlo
    (:func:`~ttr_stats.diagnostics.capacity.self_weight`) against :math:`1/(1 + (n-1)M_d(\beta)e^{-\beta})`;
    it crosses 1/2 at n*.
(c) Untrained MQAR accuracy (:func:`~ttr_stats.diagnostics.capacity.mqar_accuracy`, bigram keys
    :math:`k_t = x_{t-1}`, decode by nearest embedding) against n_pairs/d: orthonormal key embeddings keep
    linear attention exact up to n_pairs = d; with random embeddings it fails earlier, while least squares
    (ridge 1e-6) still recalls.

Writes ``capacity.csv`` (long format: panel, series, n, d, x, value, se, theory) and ``capacity.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import save_figure, write_csv
from paper_figures._results import parse_args
from ttr_stats.datasets import random_pairs
from ttr_stats.diagnostics import capacity as cap

SEED = 20250121
BETA = 8.0
FULL = {
    "d": 64,
    "n_batch": 6,
    "ratios": 2.0 ** (np.arange(-4, 11) / 2),  # 1/4 .. 32
    "self_n": (64, 256, 1024, 1816, 3000),
    "self_batch": 2,
    "mqar_ratios": (0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
    "mqar_batch": 8,
}
QUICK = {
    "d": 16,
    "n_batch": 8,
    "ratios": 2.0 ** np.arange(-2, 5),  # 1/4 .. 16
    "self_n": (16, 64, 256),
    "self_batch": 4,
    "mqar_ratios": (0.5, 1.0, 2.0),
    "mqar_batch": 8,
}

RECALL = (
    ("linear_attention", "linear attention", lambda: tt.recipes.linear_attention(), "C0", "o"),
    ("least_squares", "least squares (ridge 0)", lambda: tt.recipes.least_squares(0.0), "C2", "^"),
    ("deltanet_nlms", "DeltaNet, NLMS step", lambda: tt.recipes.nlms(), "C5", "x"),
    (
        "softmax_qknorm",
        f"softmax, QKNorm, β = {BETA:g}",
        lambda: tt.recipes.qknorm_attention(BETA),
        "C3",
        "s",
    ),
)
MQAR = (
    ("la_orthonormal", "linear attention, orthonormal emb.", "linear_attention", "orthonormal", "C0", "-"),
    ("la_random", "linear attention, random emb.", "linear_attention", "random", "C0", "--"),
    ("ls_orthonormal", "least squares, orthonormal emb.", "least_squares", "orthonormal", "C2", "-"),
    ("ls_random", "least squares, random emb.", "least_squares", "random", "C2", "--"),
)


def _mqar_layer(name):
    return tt.recipes.linear_attention() if name == "linear_attention" else tt.recipes.least_squares(1e-6)


def self_weight_per_sequence(layer, K):
    """Each sequence's mean self weight over its n stored pairs: array (n_batch,)."""
    return np.mean(np.asarray(cap.self_weight(layer, K)), axis=-1)


def compute(cfg, seed=SEED):
    """Rows (panel, series, n, d, x, value, se, theory)."""
    d = cfg["d"]
    rows = []
    layers = {name: make() for name, _, make, _, _ in RECALL}
    df = cap.recall_curve(layers, cfg["ratios"], d, n_batch=cfg["n_batch"], seed=seed)
    for r in df.itertuples():
        th = {"linear_attention": r.outer_product_theory, "least_squares": r.least_squares_theory}
        rows.append(("recall", r.layer, r.n, d, r.ratio, r.recall_error, r.se, th.get(r.layer, float("nan"))))
    sm = tt.recipes.qknorm_attention(BETA)
    for j, n in enumerate(cfg["self_n"]):
        K, _ = random_pairs(n, d, 1, n_batch=cfg["self_batch"], seed=seed + 1000 + j)
        per_seq = self_weight_per_sequence(sm, K)  # batch elements are independent
        se = float(np.std(per_seq, ddof=1) / np.sqrt(per_seq.size))
        theory = float(cap.hopfield_self_weight(n, d, BETA))
        rows.append(("self_weight", "softmax_qknorm", n, d, n / d, float(np.mean(per_seq)), se, theory))
    n_star = cap.hopfield_half_weight(d, BETA)
    rows.append(("self_weight", "half_weight_n_star", n_star, d, n_star / d, 0.5, 0.0, 0.5))
    for name, _, layer_name, emb, _, _ in MQAR:
        for j, ratio in enumerate(cfg["mqar_ratios"]):
            P = max(1, int(round(ratio * d)))
            acc = cap.mqar_accuracy(
                _mqar_layer(layer_name), P, d, embedding=emb, n_batch=cfg["mqar_batch"], seed=seed + j
            )
            rows.append(("mqar", name, P, d, P / d, acc.accuracy, acc.se, float("nan")))
    return rows


#: sweep names of ``experiments/capacity.py``: ``--from-results DIR`` also finds ``DIR/<name>``
RESULTS = ("capacity", "capacity_quick")
#: (recipe, params) of a results folder -> recall series of panel (a)
RESULT_RECALL = {
    ("linear_attention", "{}"): "linear_attention",
    ("least_squares", '{"ridge": 0.0}'): "least_squares",
    ("nlms", "{}"): "deltanet_nlms",
    ("qknorm_attention", f'{{"scale": {BETA!r}}}'): "softmax_qknorm",
}
#: (recipe, params) of the self-weight cells of a results folder: panel (b)
RESULT_SELF_WEIGHT = ("qknorm_attention", f'{{"scale": {BETA!r}}}')
#: (recipe, params, embedding) of a results folder -> MQAR series of panel (c)
RESULT_MQAR = {
    ("linear_attention", "{}", "orthonormal"): "la_orthonormal",
    ("linear_attention", "{}", "random"): "la_random",
    ("least_squares", '{"ridge": 1e-06}', "orthonormal"): "ls_orthonormal",
    ("least_squares", '{"ridge": 1e-06}', "random"): "ls_random",
}


def mean_se(values):
    """Mean and standard error (ddof 1) over replications, as recall_curve and mqar_accuracy form them;
    the standard error is nan for one replication."""
    v = np.asarray(values, dtype=np.float64)
    se = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(np.mean(v)), se


def from_results(folder, T=None):
    """The three panels from a results folder of ``experiments/capacity.py``; rows as :func:`compute`.

    A cell there is one seed index of ``n_batch`` sequences (recall) or sequences of T tokens (MQAR); the
    cells are the replicates, aggregated by :func:`mean_se` over the seed indices in seed order (what the
    figure does over the sequences when it computes). MQAR at ``T`` (default: the smallest T in the
    folder). Panel (b): the self weight of softmax/QKNorm at beta = 8 for each n of the sweep's ``keys``
    cells (:func:`self_weight_per_sequence` averaged over a cell's sequences, then :func:`mean_se` over
    the seed indices), its closed form, and the closed-form n* row.
    """
    import json

    from paper_figures import _results

    cells = _results.load(
        folder, lambda c: c["data"] in ("pairs", "mqar", "keys"), what="the capacity figure"
    )
    ds = {c["data_params"]["d"] for c in cells}
    if len(ds) != 1:
        raise _results.ResultsError(f"{folder}: cells of several d {sorted(ds)}; one figure draws one d")
    (d,) = ds
    mq = [c for c in cells if c["data"] == "mqar"]
    if mq and T is None:
        T = min(c["data_params"]["T"] for c in mq)
    params = lambda c: json.dumps(c["params"], sort_keys=True)  # noqa: E731
    rows = []
    rec = _results.by_seed(
        [c for c in cells if c["data"] == "pairs" and (c["recipe"], params(c)) in RESULT_RECALL],
        lambda c: (RESULT_RECALL[c["recipe"], params(c)], float(c["data_params"]["ratio"])),
    )
    order = [name for name, *_ in RECALL]
    for (series, _), g in sorted(rec.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
        n = int(g[0]["n"])
        th = {"linear_attention": "outer_product_theory", "least_squares": "least_squares_theory"}
        theory = float(g[0][th[series]]) if series in th else float("nan")
        rows.append(("recall", series, n, d, n / d, *mean_se([c["recall_error"] for c in g]), theory))
    sw = _results.by_seed(
        [c for c in cells if c["data"] == "keys" and (c["recipe"], params(c)) == RESULT_SELF_WEIGHT],
        lambda c: int(c["data_params"]["n"]),
    )
    for n, g in sorted(sw.items()):
        value = mean_se([c["self_weight"] for c in g])
        rows.append(("self_weight", "softmax_qknorm", n, d, n / d, *value, float(g[0]["hopfield_theory"])))
    n_star = cap.hopfield_half_weight(d, BETA)
    rows.append(("self_weight", "half_weight_n_star", n_star, d, n_star / d, 0.5, 0.0, 0.5))
    key = lambda c: (c["recipe"], params(c), c["data_params"]["embedding"])  # noqa: E731
    mqar = _results.by_seed(
        [c for c in mq if c["data_params"]["T"] == T and key(c) in RESULT_MQAR],
        lambda c: (RESULT_MQAR[key(c)], float(c["data_params"]["ratio"])),
    )
    order = [name for name, *_ in MQAR]
    for (series, _), g in sorted(mqar.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        P = int(g[0]["P"])
        rows.append(("mqar", series, P, d, P / d, *mean_se([c["accuracy"] for c in g]), float("nan")))
    return rows, d


def plot(rows, d):
    fig = Figure(figsize=(17, 5.4), layout="constrained")
    ax_r, ax_s, ax_m = fig.subplots(1, 3)
    rec = [r for r in rows if r[0] == "recall"]
    floor = 1e-6
    for name, label, _, color, marker in RECALL:
        pts = sorted((r[4], r[5], r[6]) for r in rec if r[1] == name)
        x, y, se = (np.array(c) for c in zip(*pts, strict=True))
        ax_r.errorbar(x, np.maximum(y, floor), yerr=se, color=color, marker=marker, ms=4, lw=1.2, label=label)
    x = np.array(sorted({r[4] for r in rec}))
    xf = np.geomspace(x[0], x[-1], 200)
    ax_r.plot(xf, (xf * d - 1) / d, "k--", lw=1, label="theory (n − 1)/d")
    xl = xf[xf > 1]
    ax_r.plot(xl, 1 - 1 / xl, "k:", lw=1.5, label="theory 1 − d/n (least squares)")
    n_star = next(r[2] for r in rows if r[1] == "half_weight_n_star")
    if n_star / d <= x[-1] * 1.5:
        ax_r.axvline(
            n_star / d, color="C3", lw=0.8, ls="-.", label=f"Hopfield half weight n*/d = {n_star / d:.1f}"
        )
    ax_r.set_xscale("log", base=2)
    ax_r.set_yscale("log")
    ax_r.set_ylim(floor / 2, None)
    ax_r.set_xlabel("n / d  (stored pairs / key dimension)")
    ax_r.set_ylabel(f"relative recall error Σ‖m(k_i) − v_i‖² / Σ‖v_i‖²  (< {floor:g} drawn at it)")
    ax_r.set_title(f"(a) recall vs load, unit keys, d = {d}")
    ax_r.legend(fontsize=7)
    ax_r.grid(True, alpha=0.25)

    sw = sorted((r[2], r[5], r[6], r[7]) for r in rows if r[0] == "self_weight" and r[1] == "softmax_qknorm")
    if sw:
        n, y, se, th = (np.array(c) for c in zip(*sw, strict=True))
        ax_s.errorbar(
            n, y, yerr=se, color="C3", marker="s", ms=4, ls="none", label="Monte Carlo (mean ± s.e.)"
        )
    else:  # a results folder without self-weight cells (written before the sweep had them)
        n = np.array([d, 4 * d])
        ax_s.text(0.05, 0.05, "Monte Carlo: not in the results folder", transform=ax_s.transAxes, fontsize=8)
    nf = np.geomspace(n[0], max(n[-1], n_star) * 1.3, 200)
    ax_s.plot(nf, cap.hopfield_self_weight(nf, d, BETA), "k-", lw=1, label="1/(1 + (n−1) M_d(β) e^{−β})")
    ax_s.axhline(0.5, color="gray", lw=0.6, ls=":")
    ax_s.axvline(n_star, color="C3", lw=0.8, ls="-.", label=f"n* = {n_star:.0f}")
    ax_s.set_xscale("log")
    ax_s.set_xlabel("n (stored pairs)")
    ax_s.set_ylabel("self weight of an exact-match query")
    ax_s.set_title(f"(b) softmax/QKNorm β = {BETA:g}, d = {d}: half weight at n*")
    ax_s.legend(fontsize=7)
    ax_s.grid(True, alpha=0.25)

    mq = [r for r in rows if r[0] == "mqar"]
    for name, label, _, _, color, ls in MQAR:
        pts = sorted((r[4], r[5], r[6]) for r in mq if r[1] == name)
        x, y, se = (np.array(c) for c in zip(*pts, strict=True))
        ax_m.errorbar(x, y, yerr=se, color=color, ls=ls, marker="o", ms=4, lw=1.2, label=label)
    ax_m.axvline(1.0, color="gray", lw=0.6, ls=":")
    ax_m.set_xlabel("n_pairs / d")
    ax_m.set_ylabel("MQAR accuracy (nearest embedding)")
    ax_m.set_title(f"(c) untrained MQAR, bigram keys, d = {d}")
    ax_m.legend(fontsize=7)
    ax_m.grid(True, alpha=0.25)
    fig.suptitle(
        "Associative-memory capacity: outer products, least squares, delta rule, softmax (theory §4)"
    )
    return fig


def main(out_dir, quick=False, results=None):
    """Compute the three panels, write ``capacity.csv`` and ``capacity.png``.

    With ``results`` (a results folder of ``experiments/capacity.py``, or a folder holding one under its
    sweep name), draw the three panels from it instead (:func:`from_results`).

    Returns
    -------
    list of tuple
        The CSV rows (panel, series, n, d, x, value, se, theory).
    """
    out_dir = Path(out_dir)
    if results is None:
        cfg = QUICK if quick else FULL
        rows, d = compute(cfg), cfg["d"]
    else:
        from paper_figures._results import locate

        rows, d = from_results(locate(results, RESULTS[::-1] if quick else RESULTS))
    write_csv(out_dir / "capacity.csv", ["panel", "series", "n", "d", "x", "value", "se", "theory"], rows)
    save_figure(plot(rows, d), out_dir, "capacity.png")
    return rows


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick, results=args.from_results):
        print(*r)
