r"""Parallax as the first-order expansion of local linear attention: errors against LLA vs ‖ρ‖.

Local linear attention (LLA) reads the intercept :math:`a = \bar v - \mathrm{Cov}_p(v,k)\,\rho` of a
softmax-weighted linear fit, :math:`\rho = \Sigma^{-1}\mu`, :math:`\mu = \bar k - q`, :math:`\Sigma =
\mathrm{Cov}_p(k)` under the softmax weights :math:`p_i \propto \exp(\tau q^\top k_i)`. Three cheaper
readings of it, each measured against ``tt.recipes.local_linear_attention`` at one query:

* softmax attention (:math:`\bar v`, r = 0): off by :math:`\mathrm{Cov}_p(v,k)\rho`, **first order** in ρ;
* softmax tilted by :math:`e^{-\rho^\top k_i}` (the weights Parallax linearises): the mean of v under
  :math:`p_i e^{-\rho^\top k_i}` is :math:`\bar v - \mathrm{Cov}_p(v,k)\rho + O(\|\rho\|^2)`, **second
  order**. It is softmax attention at the shifted query :math:`q - \rho/\tau`, so the library's softmax
  computes it;
* Parallax with the probe :math:`r = \rho` (``tt.recipes.parallax(probe="local_linear")``): the first-order
  term exactly, so it *is* LLA (rounding only). Its gap to the tilted softmax, the second-order remainder
  of the expansion it keeps, is the column ``tilt_gap``: halving ‖ρ‖ quarters it.

Setting: n = 64 centred Gaussian keys (d_k = 4), values :math:`\tanh(KA)` (d_v = 2, so LLA's fit is not
exact), :math:`\tau = 1/2`; the query :math:`q = s u` for a unit u and :math:`s = 2^{1}, \dots, 2^{-8}`, so
ρ ≈ (τ − 1)q halves with s (ρ = 0 at q = 0 since the keys are centred). Errors are max over value
coordinates of :math:`|y - y_{LLA}|` at the last token (the one that sees all n keys), one row per (seed, s).

Writes ``parallax.csv`` (seed, s, rho_norm, softmax_err, tilted_err, parallax_err, tilt_gap),
``parallax_slopes.csv`` (series, slope of log error on log ‖ρ‖ over ‖ρ‖ < 0.1, max error) and
``parallax.png``. About 4 s on 2 cores (quick: 3 s, mostly the imports).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

SEED = 20260513
TAU = 0.5
FULL = {"n": 64, "d_k": 4, "d_v": 2, "seeds": 6, "exponents": tuple(range(1, -9, -1))}
QUICK = {"n": 64, "d_k": 4, "d_v": 2, "seeds": 2, "exponents": tuple(range(0, -8, -1))}
SERIES = ("softmax_err", "tilted_err", "parallax_err", "tilt_gap")
SMALL_RHO = 0.1  # the slopes are fitted where the O(||rho||^3) terms are negligible


def problem(cfg, seed):
    """Centred keys K (n, d_k), values V = tanh(K A) (n, d_v) and a unit query direction u."""
    rng = np.random.default_rng(seed)
    K = rng.standard_normal((cfg["n"], cfg["d_k"]))
    K -= K.mean(axis=0)
    V = np.tanh(K @ rng.standard_normal((cfg["d_k"], cfg["d_v"])))
    u = rng.standard_normal(cfg["d_k"])
    return K, V, u / np.linalg.norm(u)


def rho_of(K, q):
    """:math:`\\rho = \\Sigma^{-1}(\\bar k - q)` under the softmax weights at q (float64, direct)."""
    logits = TAU * K @ q
    p = np.exp(logits - logits.max())
    p /= p.sum()
    kbar = p @ K
    Sigma = (K * p[:, None]).T @ K - np.outer(kbar, kbar)
    return np.linalg.solve(Sigma, kbar - q)


def last_output(layer, K, V, queries):
    """The layer's output at the last token for each query (rows of ``queries``), batched."""
    S, (n, _) = len(queries), K.shape
    Q = np.broadcast_to(queries[:, None, :], (S, n, K.shape[1])).copy()
    Kb = np.broadcast_to(K, (S,) + K.shape).copy()
    Vb = np.broadcast_to(V, (S,) + V.shape).copy()
    return np.asarray(layer(Q, Kb, Vb))[:, -1]


def compute(cfg, seed=SEED):
    """Rows (seed, s, rho_norm, softmax_err, tilted_err, parallax_err, tilt_gap)."""
    softmax = tt.recipes.softmax_attention(scale=TAU)
    lla = tt.recipes.local_linear_attention(scale=TAU)
    parallax = tt.recipes.parallax(probe="local_linear", scale=TAU)
    rows = []
    for j in range(cfg["seeds"]):
        K, V, u = problem(cfg, seed + j)
        s = np.array([2.0**e for e in cfg["exponents"]])
        queries = s[:, None] * u
        rhos = np.stack([rho_of(K, q) for q in queries])
        y_lla = last_output(lla, K, V, queries)
        y_sm = last_output(softmax, K, V, queries)
        y_tilt = last_output(softmax, K, V, queries - rhos / TAU)  # weights p_i exp(-rho^T k_i)
        y_px = last_output(parallax, K, V, queries)

        def err(a, b):
            return np.max(np.abs(a - b), axis=-1)

        for i in range(len(s)):
            rows.append((
                j, float(s[i]), float(np.linalg.norm(rhos[i])), float(err(y_sm, y_lla)[i]),
                float(err(y_tilt, y_lla)[i]), float(err(y_px, y_lla)[i]), float(err(y_tilt, y_px)[i]),
            ))  # fmt: skip
    return rows


def slopes(rows):
    """(series, slope of log err on log ||rho|| over ||rho|| < SMALL_RHO, max err over all rows)."""
    out = []
    r = np.array([row[2] for row in rows])
    small = r < SMALL_RHO
    for c, name in enumerate(SERIES):
        e = np.array([row[3 + c] for row in rows])
        if name == "parallax_err":  # at rounding: no power law to fit
            slope = float("nan")
        else:
            slope = float(np.polyfit(np.log(r[small]), np.log(e[small]), 1)[0])
        out.append((name, slope, float(e.max())))
    return out


def plot(rows, summary):
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    labels = {
        "softmax_err": "softmax (r = 0)",
        "tilted_err": "softmax tilted by exp(−ρ·k)",
        "parallax_err": "Parallax, r = ρ",
        "tilt_gap": "Parallax − tilted softmax",
    }
    slope = {s[0]: s[1] for s in summary}
    r = np.array([row[2] for row in rows])
    seed = np.array([row[0] for row in rows])
    for c, name in enumerate(SERIES):
        e = np.maximum(np.array([row[3 + c] for row in rows]), 1e-17)
        lab = labels[name] + ("" if np.isnan(slope[name]) else f" (slope {slope[name]:.2f})")
        for j in np.unique(seed):  # one line per seed (its s halves along it)
            m = seed == j
            style = {"ls": ":", "marker": None} if name == "tilt_gap" else {"ls": "-", "lw": 0.5, "ms": 4}
            style.setdefault("marker", "os^x"[c])
            ax.plot(r[m], e[m], color=f"C{c}", label=lab if j == seed[0] else None, **style)
    rf = np.geomspace(r.min(), r.max(), 50)
    ax.plot(rf, 0.3 * rf, "k--", lw=0.7, label="∝ ‖ρ‖")
    ax.plot(rf, 0.3 * rf**2, "k-.", lw=0.7, label="∝ ‖ρ‖²")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("‖ρ‖ = ‖Σ⁻¹(k̄ − q)‖")
    ax.set_ylabel("max |y − y_LLA| at the last token")
    ax.set_title("Error against local linear attention (n = 64, d_k = 4, τ = 1/2)")
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.25, which="both")
    return fig


def main(out_dir, quick=False):
    """Compute the errors, write ``parallax.csv``, ``parallax_slopes.csv`` and ``parallax.png``.

    Returns
    -------
    list of tuple
        The slope rows (series, slope, max_err).
    """
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows = compute(cfg)
    summary = slopes(rows)
    write_csv(out_dir / "parallax.csv", ["seed", "s", "rho_norm", *SERIES], rows)
    write_csv(out_dir / "parallax_slopes.csv", ["series", "slope", "max_err"], summary)
    save_figure(plot(rows, summary), out_dir, "parallax.png")
    return summary


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for r in main(args.out, quick=args.quick):
        print(*r)
