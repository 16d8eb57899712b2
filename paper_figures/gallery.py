"""The figure gallery: ``python -m paper_figures.gallery --out DIR`` writes ``DIR/index.html``.

Every PNG in DIR is shown with a caption: what it shows, the paper's claim, and the numbers that support it.
Each number is read from a CSV in DIR when the page is written and is marked up as
``<span class="num" data-csv=... data-where=... data-col=... data-agg=...>`` so that a test (and a reader)
can recompute it from the CSV. A figure without a caption entry here is still shown, marked "no caption".
Not a figure module (the name does not start with ``fig``), so ``run_all`` does not run it as one.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path
from typing import NamedTuple

from paper_figures._common import read_csv

__all__ = ["Number", "Caption", "CAPTIONS", "select", "value", "fmt", "write"]


class Number(NamedTuple):
    """A number of a caption: ``agg`` over column(s) ``col`` of the rows of ``csv`` matching ``where``.

    ``agg``: ``first``, ``last`` (CSV order), ``min``, ``max``, ``mean`` or ``count`` (rows); ``col`` may be a
    tuple of columns (``max`` over all of them). ``where`` maps a column to the text it must equal, or (for
    a number) a value it must equal as a float.
    """

    csv: str
    col: object
    agg: str = "last"
    where: dict = {}


class Caption(NamedTuple):
    title: str
    shows: str
    claim: str
    evidence: str  # with {0}, {1}, ... for the numbers
    numbers: tuple
    images: tuple  # PNG names


def _match(row, where):
    for k, want in where.items():
        got = row.get(k)
        if got is None:
            return False
        if isinstance(want, (int, float)):
            try:
                if float(got) != float(want):
                    return False
            except ValueError:
                return False
        elif got != want:
            return False
    return True


def select(rows, where):
    return [r for r in rows if _match(r, where)]


def value(out_dir, number):
    """The number's value from its CSV in ``out_dir`` (raises if the CSV or the rows are missing)."""
    rows = select(read_csv(Path(out_dir) / number.csv), number.where)
    if not rows:
        raise LookupError(f"{number.csv}: no row matches {number.where}")
    if number.agg == "count":
        return float(len(rows))
    cols = (number.col,) if isinstance(number.col, str) else tuple(number.col)
    if number.agg in ("first", "last"):
        row = rows[0] if number.agg == "first" else rows[-1]
        return float(row[cols[0]])
    vals = [float(r[c]) for r in rows for c in cols]
    vals = [v for v in vals if not math.isnan(v)]
    return {"min": min, "max": max, "mean": lambda v: sum(v) / len(v)}[number.agg](vals)


def fmt(x):
    """Three significant digits (integers as integers)."""
    if float(x).is_integer() and abs(x) < 1e6:
        return str(int(x))
    return f"{x:.3g}"


N = Number
LOO = {"panel": "a_qknorm_softmax", "criterion": "loo"}
CAPTIONS = {
    "fig01_taxonomy": Caption(
        "Figure 1: the taxonomy",
        "Every recipe of ttr_stats.recipes.registry() as weights × regressor × optimizer, its "
        "update rule and "
        "the computation methods it supports (also written as taxonomy.md).",
        "Sequence layers are test-time regressors: a choice of weights, regressor and optimizer (paper §2).",
        "{0} recipes are built from these three parts; each runs its recurrent reference method.",
        (N("taxonomy.csv", "recipe", "count"),),
        ("taxonomy.png",),
    ),
    "fig02_nonstationary": Caption(
        "Figure 2: non-stationary online regression",
        "One-step-ahead error vs t on a two-phase AR key stream for normalised linear attention, RLS, "
        "softmax (p = 0) and local linear (p = 1) attention, and the naive forecast; (b) the "
        "temperature sweep.",
        "Higher-order local regression and exact least squares track a changing stream better than linear "
        "attention (paper §7).",
        "At the last step the error is {0} for linear attention, {1} for RLS and {2} for local linear p = 1. "
        "The early peaks are lower than the paper's at this noise correlation (ρ = 0.5, which the paper does "
        "not give): at ρ = 0.9 they reach its 0.5–0.8 for RLS and p = 1, p = 0 excepted "
        "(experiments/fig02_settings.py; paper_figures/README.md has the numbers).",
        (
            N("nonstationary.csv", "linear_attention_mean"),
            N("nonstationary.csv", "rls_mean"),
            N("nonstationary.csv", "local_linear_p1_mean"),
        ),
        ("nonstationary.png",),
    ),
    "fig03_mqar": Caption(
        "Figure 3: multi-query associative recall (MQAR)",
        "(a) Untrained bigram construction (k_t = x_(t−1), q_t = v_t = x_t, random embeddings): accuracy vs "
        "the pairs P at several lengths T for linear attention, RLS and DeltaNet. (b) Trained: one "
        "test-time-regression layer plus a length-2 short convolution on keys, d = 64, Zoology's MQAR, "
        "linear attention vs unweighted RLS over P ∈ {64, 128} and T = 512 … 4096, from the committed GPU "
        "grid (paper_figures/data/mqar_trained.csv) with the paper's numbers beside; without it the panel "
        "says so. "
        "(c) A live CPU training run of the same code (small P and T).",
        "Least squares recalls where linear attention's interference grows with P and T; trained, RLS is "
        "≈ 1.00 everywhere and linear attention 1.00 at P = 64, 0.934 … 0.915 at P = 128 (paper §7).",
        "Untrained, at P = 8 pairs the worst accuracy over the lengths is {0} for linear attention, {1} for "
        "RLS and {2} for DeltaNet. The live CPU run ends at held-out accuracy {3} (linear attention) and {4} "
        "(RLS). Trained on one H200 (the committed cells: T = 512 and 1024, one seed, the better of two "
        "rates, ~430 s a cell), RLS beats linear attention in every cell, as in the paper: at P = 128 RLS "
        "reaches {5} (T = 512) and {6} (T = 1024) against linear attention's {7} and {8} (paper: 1.00 "
        "against 0.934 and 0.930). Both are below the paper's numbers, most likely because the cells are "
        "short "
        "(7–13 thousand steps; the one cell trained for half as long the session before, linear "
        "attention at P = 64, T = 512, had 0.937 where it has {9} now).",
        (
            N("mqar_capacity.csv", "accuracy", "min", {"layer": "linear_attention", "P": 8}),
            N("mqar_capacity.csv", "accuracy", "min", {"layer": "rls", "P": 8}),
            N("mqar_capacity.csv", "accuracy", "min", {"layer": "deltanet", "P": 8}),
            N("mqar_live.csv", "accuracy", "max", {"recipe": "linear_attention"}),
            N("mqar_live.csv", "accuracy", "max", {"recipe": "rls"}),
            N("mqar_trained.csv", "accuracy", "max", {"recipe": "rls", "n_pairs": 128, "seq_len": 512}),
            N("mqar_trained.csv", "accuracy", "max", {"recipe": "rls", "n_pairs": 128, "seq_len": 1024}),
            N("mqar_trained.csv", "accuracy", "max", {"recipe": "linear_attention", "n_pairs": 128,
                                                      "seq_len": 512}),  # fmt: skip
            N("mqar_trained.csv", "accuracy", "max", {"recipe": "linear_attention", "n_pairs": 128,
                                                      "seq_len": 1024}),  # fmt: skip
            N("mqar_trained.csv", "accuracy", "max", {"recipe": "linear_attention", "n_pairs": 64,
                                                      "seq_len": 512}),  # fmt: skip
        ),
        ("mqar.png",),
    ),
    "fig_bias_variance": Caption(
        "Bias and variance of local polynomial attention",
        "Bias², variance and MSE vs bandwidth for p = 0, 1, 2 at an interior and a boundary point, Monte "
        "Carlo over the asymptotic theory.",
        "Local linear removes the boundary bias of Nadaraya-Watson (softmax) attention (theory §1).",
        "Best boundary MSE: {0} for p = 0 against {1} for p = 1.",
        (
            N("bias_variance.csv", "mse", "min", {"setting": "boundary", "order": 0}),
            N("bias_variance.csv", "mse", "min", {"setting": "boundary", "order": 1}),
        ),
        ("bias_variance.png",),
    ),
    "fig_capacity": Caption(
        "Associative-memory capacity",
        "Relative recall error vs n/d for linear attention, least squares, DeltaNet and QKNorm softmax, with "
        "the theory lines; untrained MQAR accuracy.",
        "Least squares recalls exactly up to n = d; linear attention pays (n − 1)/d from the start "
        "(theory §4).",
        "Least-squares recall error at n = d/4 is {0} (exact); linear attention's at the largest n is {1} "
        "(theory {2}).",
        (
            N("capacity.csv", "value", "max", {"panel": "recall", "series": "least_squares", "x": 0.25}),
            N("capacity.csv", "value", "last", {"panel": "recall", "series": "linear_attention"}),
            N("capacity.csv", "theory", "last", {"panel": "recall", "series": "linear_attention"}),
        ),
        ("capacity.png",),
    ),
    "fig_covariance_penalty": Caption(
        "The covariance penalty",
        "Relative recall error vs t/d for linear attention, least squares and DeltaNet/NLMS under "
        "equicorrelated keys (ρ = 0, 0.5, 0.9).",
        "Linear attention ignores the key covariance and pays for correlated keys; least squares does not "
        "(paper §3).",
        "At ρ = 0.9 and the largest t/d: linear attention {0}; least squares {1}, its floor 1 − "
        "d/n for values "
        "independent of the keys.",
        (
            N("covariance_penalty.csv", "recall_error", "last", {"rho": 0.9, "method": "linear_attention"}),
            N("covariance_penalty.csv", "recall_error", "last", {"rho": 0.9, "method": "least_squares"}),
        ),
        ("covariance_penalty.png",),
    ),
    "fig_identities": Caption(
        "Identities of the taxonomy",
        "Per-step error of each identity (LA = one GD step, LS = one Newton step, Gated DeltaNet = "
        "leaky LMS, "
        "...), float64.",
        "The named layers are special cases of one recursion (paper §2–3).",
        "The worst identity error over all steps is {0} (float64 rounding).",
        (N("identities.csv", ("a_linear_attention_vs_batch_gd", "b_least_squares_vs_newton"), "max"),),
        ("identities.png",),
    ),
    "fig_memory": Caption(
        "Delta rule = LMS, RLS with forgetting",
        "LMS learning curves and misadjustment, RLS excess error vs 1 − γ, Monte Carlo against "
        "adaptive-filter theory.",
        "Online test-time optimizers behave as the classical adaptive filters (theory §4).",
        "RLS excess error at the last γ: {0} measured, {1} theory.",
        (
            N("memory.csv", "value", "last", {"panel": "rls_excess"}),
            N("memory.csv", "theory", "last", {"panel": "rls_excess"}),
        ),
        ("memory.png",),
    ),
    "fig_neural_memory": Caption(
        "Neural memories",
        "Recall error vs n/d for linear memories and MLP memories (TTT-MLP, Titans) after one and 16 passes.",
        "An MLP memory can exceed the best linear memory only with several passes (issue 6).",
        "At the largest n: least squares (1 pass) {0}, TTT-MLP after 16 passes {1}.",
        (
            N("neural_memory.csv", "recall_error", "last", {"series": "least_squares"}),
            N("neural_memory.csv", "recall_error", "last", {"series": "ttt_mlp", "passes": 16}),
        ),
        ("neural_memory.png",),
    ),
    "fig_qknorm": Caption(
        "QKNorm",
        "Softmax weight vs distance for raw vs normalised keys with lognormal key norms; effective sample "
        "size and NW error vs norm heterogeneity.",
        "Normalising queries and keys makes softmax a kernel smoother in the key direction (paper §4).",
        "At the largest norm spread the effective sample size is {0} raw against {1} with QKNorm.",
        (
            N("qknorm_sweep.csv", "n_eff", "last", {"variant": "raw"}),
            N("qknorm_sweep.csv", "n_eff", "last", {"variant": "qknorm"}),
        ),
        ("qknorm.png",),
    ),
    "fig_selection": Caption(
        "Choosing the temperature and the bandwidth",
        "LOO, GCV, prequential and fresh-data error vs the QKNorm temperature and the local linear "
        "bandwidth.",
        "Classical smoother selection criteria pick the temperature of attention (theory §2).",
        "LOO picks τ = {0}, with fresh-data error {1}.",
        (
            N("selection_choices.csv", "value", "first", LOO),
            N("selection_choices.csv", "fresh_error", "first", LOO),
        ),
        ("selection.png",),
    ),
    "fig_output_norm": Caption(
        "Output-norm growth and the stability bound",
        "‖y_t‖ vs t for linear attention, normalised linear attention and least squares, with the bound "
        "‖q‖ Σ‖v_i‖‖k_i‖ / λ_min(KᵀK).",
        "Without the inverse covariance the output grows with t; least squares stays inside the bound (§3).",
        "At the last t: linear attention {0}, least squares {1}; the largest ‖y‖/bound of least squares over "
        "every sequence and t is {2} (≤ 1: the bound holds).",
        (
            N("output_norm.csv", "mean_norm", "last", {"series": "linear_attention"}),
            N("output_norm.csv", "mean_norm", "last", {"series": "least_squares"}),
            N("output_norm.csv", "max_ratio_to_bound", "max", {"series": "least_squares"}),
        ),
        ("output_norm.png",),
    ),
    "fig_optimizer_interpolation": Caption(
        "Optimizer interpolation",
        "Recall error vs iterations of batch GD, Jacobi-preconditioned GD and Newton on one "
        "prefix, ρ = 0, 0.9.",
        "LA is one unpreconditioned GD step and LS one Newton step; preconditioners interpolate (paper §3).",
        "At ρ = 0.9, κ(R) = {0} and κ after Jacobi = {1}; Newton's error is {2} after 1 step, "
        "Jacobi GD's {3} "
        "and GD's {4} after the most iterations.",
        (
            N("optimizer_interpolation_summary.csv", "kappa", "first", {"rho": 0.9, "method": "gd"}),
            N("optimizer_interpolation_summary.csv", "kappa", "first", {"rho": 0.9, "method": "jacobi"}),
            N("optimizer_interpolation.csv", "recall_error", "first", {"rho": 0.9, "method": "newton"}),
            N("optimizer_interpolation.csv", "recall_error", "last", {"rho": 0.9, "method": "jacobi"}),
            N("optimizer_interpolation.csv", "recall_error", "last", {"rho": 0.9, "method": "gd"}),
        ),
        ("optimizer_interpolation.png",),
    ),
    "fig_gating_wls": Caption(
        "Gating = weighted least squares",
        "(a) the weights γ_i^(t) a gate sequence defines; (b) tracking error on piecewise-stationary data of "
        "exact weighted LS, gated LA, Gated DeltaNet and ungated RLS.",
        "Gates are sample weights: exact weighted LS with them is the target the gated layers "
        "approximate (§2).",
        "Late-segment error: exact weighted LS {0}, Gated DeltaNet {1}, gated LA {2}, RLS without gates {3}.",
        (
            N("gating_wls_summary.csv", "late_error", "first", {"method": "weighted_ls"}),
            N("gating_wls_summary.csv", "late_error", "first", {"method": "gated_deltanet"}),
            N("gating_wls_summary.csv", "late_error", "first", {"method": "mamba2"}),
            N("gating_wls_summary.csv", "late_error", "first", {"method": "rls_uniform"}),
        ),
        ("gating_wls.png",),
    ),
    "fig_parallax": Caption(
        "Parallax: the first-order expansion of local linear attention",
        "Error against local linear attention at one query vs ‖ρ‖ = ‖Σ⁻¹(k̄ − q)‖ for softmax, softmax tilted "
        "by exp(−ρ·k), and Parallax with the probe r = ρ; n = 64 keys, d_k = 4.",
        "Parallax's correction −Cov(v, k) r is the first-order term of the tilted softmax; with r = ρ it is "
        "local linear attention (issue 13).",
        "Log-log slopes for ‖ρ‖ < 0.1: softmax {0} (first order), Parallax − tilted softmax {1} (second "
        "order: halving ‖ρ‖ quarters it); Parallax with r = ρ is off LLA by at most {2} (rounding).",
        (
            N("parallax_slopes.csv", "slope", "first", {"series": "softmax_err"}),
            N("parallax_slopes.csv", "slope", "first", {"series": "tilt_gap"}),
            N("parallax_slopes.csv", "max_err", "first", {"series": "parallax_err"}),
        ),
        ("parallax.png",),
    ),
    "fig_cost_scaling": Caption(
        "Cost scaling",
        "Time and peak memory vs T per family and method, measured on the machine that drew it.",
        "Chunked and recurrent forms are linear in T; dense T × T forms are quadratic (paper §5).",
        "Linear attention at the largest T measured for both: chunked {0} s, recurrent {1} s; the dense "
        "parallel form's largest peak is {2} MiB.",
        (
            N("cost_scaling.csv", "seconds", "last", {"recipe": "linear_attention", "method": "chunked"}),
            N("cost_scaling.csv", "seconds", "last", {"recipe": "linear_attention", "method": "recurrent"}),
            N("cost_scaling.csv", "peak_mib", "max", {"recipe": "linear_attention", "method": "parallel"}),
        ),
        ("cost_scaling.png",),
    ),
}

_CSS = """body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}
figure{border-top:1px solid #ccc;margin:2em 0;padding-top:1em}img{max-width:100%;border:1px solid #eee}
figcaption p{margin:.3em 0}.num{font-weight:bold;color:#064}.missing{color:#a00}"""


def _number_html(out_dir, number):
    x = value(out_dir, number)
    attrs = {
        "data-csv": number.csv,
        "data-col": json.dumps(number.col if isinstance(number.col, str) else list(number.col)),
        "data-agg": number.agg,
        "data-where": json.dumps(number.where, sort_keys=True),
    }
    a = " ".join(f'{k}="{html.escape(v, quote=True)}"' for k, v in attrs.items())
    return f'<span class="num" {a}>{fmt(x)}</span>'


def _figure_html(out_dir, name, cap, pngs):
    imgs = "".join(f'<img src="{html.escape(p)}" alt="{html.escape(cap.title)}">' for p in pngs)
    try:
        nums = [_number_html(out_dir, n) for n in cap.numbers]
        evidence = html.escape(cap.evidence).format(*nums)
    except (OSError, LookupError, KeyError, ValueError) as exc:
        evidence = f'<span class="missing">numbers unavailable: {html.escape(str(exc))}</span>'
    return (
        f'<figure id="{name}">{imgs}<figcaption><h2>{html.escape(cap.title)}</h2>'
        f"<p><b>Shows.</b> {html.escape(cap.shows)}</p><p><b>Claim.</b> {html.escape(cap.claim)}</p>"
        f"<p><b>Evidence.</b> {evidence}</p><p><small>script: paper_figures/{name}.py</small></p>"
        "</figcaption></figure>"
    )


def write(out_dir):
    """Write ``out_dir/index.html`` from the PNGs and CSVs there; return its path."""
    out_dir = Path(out_dir)
    pngs = sorted(p.name for p in out_dir.glob("*.png"))
    parts, shown = [], set()
    for name, cap in CAPTIONS.items():
        present = [p for p in cap.images if p in pngs]
        if present:
            parts.append(_figure_html(out_dir, name, cap, present))
            shown.update(present)
    for p in pngs:
        if p not in shown:
            parts.append(
                f'<figure id="{html.escape(p)}"><img src="{html.escape(p)}" alt="{html.escape(p)}">'
                f'<figcaption><h2>{html.escape(p)}</h2><p class="missing">no caption written yet '
                "(add one to paper_figures/gallery.py)</p></figcaption></figure>"
            )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ttr_stats: paper figures</title>'
        f"<style>{_CSS}</style></head><body><h1>Test-time regression: the figures</h1>"
        "<p>Generated by <code>ttr-stats figures</code>. Every bold number is read from the CSV beside the "
        "figure in this folder when the page is written.</p>" + "".join(parts) + "</body></html>\n"
    )
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="the folder with the figures (index.html is written there)")
    print(write(ap.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
