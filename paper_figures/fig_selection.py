r"""Choosing the temperature and the bandwidth by LOO, GCV and the prequential error (theory §2).

A smooth regression on the sphere: keys uniform on :math:`S^{d-1}` (d = 8, n = 400), values
:math:`v = m(k) + \sigma\varepsilon` with :math:`m(k) = \sin(3k_1) + 2k_2k_3 + k_4` and :math:`\sigma = 0.3`.
Two layers, each with one smoothing parameter:

(a) QKNorm softmax attention (Nadaraya-Watson, p = 0) against its logit scale (temperature) :math:`\tau`
    (a Gaussian kernel of bandwidth :math:`\tau^{-1/2}` on the sphere);
(b) local linear regression (p = 1, ``ridge=0``) with a Gaussian kernel on the normalised keys against the
    bandwidth h.

Curves: the leave-one-out criterion (exact shortcut), GCV and the prequential one-step-ahead error of the
causal layer (averaged over t), each an estimate of the prediction error, and the prediction error on
fresh data, :math:`\mathrm{mean}(\hat m(k^*) - m(k^*))^2 + \sigma^2` (the target they estimate; the
prequential error is larger: its early predictions use few pairs). At large :math:`\tau` softmax attention
interpolates: :math:`S_{ii}` rounds to 1 and the LOO shortcut :math:`(v_i - \hat v_i)/(1 - S_{ii})` becomes
0/0 (NaN, not drawn, never selected), and GCV diverges as :math:`\operatorname{tr} S \to n`; the prequential
error stays defined. Stars mark
:func:`ttr_stats.diagnostics.select`'s choice for each criterion (grid, then bounded Brent refinement).

Writes ``selection.csv`` (panel, parameter value, the three criteria, the fresh-data error),
``selection_choices.csv`` (panel, criterion, chosen value, criterion there, fresh-data error there) and
``selection.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv
from ttr_stats.diagnostics import smoother

SEED = 20250121
D = 8
SIGMA = 0.3
CRITERIA = ("loo", "gcv", "prequential")


def regression_function(K):
    """m(k) = sin(3 k_1) + 2 k_2 k_3 + k_4 for keys K of shape (n, d >= 4)."""
    return np.sin(3 * K[:, 0]) + 2 * K[:, 1] * K[:, 2] + K[:, 3]


def sphere(rng, n, d=D):
    X = rng.standard_normal((n, d))
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def data(n, n_test, seed=SEED):
    """Training keys/values (n, D), (n, 1) and fresh test keys (n_test, D)."""
    rng = np.random.default_rng(seed)
    K = sphere(rng, n)
    V = (regression_function(K) + SIGMA * rng.standard_normal(n))[:, None]
    return K, V, sphere(rng, n_test)


#: panel -> (label, layer factory, nested parameter, bounds, axis label)
PANELS = {
    "a_qknorm_softmax": (
        "(a) QKNorm softmax attention (NW, p = 0)",
        lambda: tt.recipes.qknorm_attention(10.0),
        "regressor__similarity__scale",
        (1.0, 1000.0),
        r"logit scale (temperature) $\tau$",
    ),
    "b_local_linear": (
        "(b) local linear (p = 1), Gaussian kernel on the sphere",
        lambda: tt.TestTimeRegression(
            regressor=tt.regressors.LocalPolynomial(1, tt.similarity.Gaussian(1.0, qk_norm=True))
        ),
        "regressor__similarity__bandwidth",
        (0.15, 10.0),
        "bandwidth h",
    ),
}


def fresh_error(layer, K, V, K_test):
    """Prediction error on fresh data: mean (m_hat(k*) - m(k*))^2 + sigma^2."""
    pred = layer(K_test, K, V, causal=False)[:, 0]
    return float(np.mean((pred - regression_function(K_test)) ** 2) + SIGMA**2)


def criteria(layer, K, V):
    """The three criteria of one layer: dict name -> float (LOO mean squared residual, GCV, prequential)."""
    r = smoother.loo_residuals(layer, K, V)
    return {
        "loo": float(np.mean(np.sum(r * r, axis=-1))),
        "gcv": float(smoother.gcv(layer, K, V)),
        "prequential": float(np.mean(smoother.prequential_error(layer, K, V))),
    }


def compute(n, n_test, n_grid, n_select):
    """Curves and choices for both panels."""
    K, V, K_test = data(n, n_test)
    curves, choices = [], []
    for panel, (_, make, param, bounds, _) in PANELS.items():
        layer = make()
        for value in np.geomspace(*bounds, n_grid):
            layer.set_params(**{param: float(value)})
            c = criteria(layer, K, V)
            curves.append((panel, float(value), *(c[k] for k in CRITERIA), fresh_error(layer, K, V, K_test)))
        for crit in CRITERIA:
            res = smoother.select(make(), K, V, param, crit, bounds=bounds, n_grid=n_select)
            choices.append((panel, crit, res.value, res.criterion, fresh_error(res.layer, K, V, K_test)))
    return curves, choices


def plot(curves, choices, n):
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    colors = {"loo": "C0", "gcv": "C1", "prequential": "C2"}
    for ax, (panel, (title, _, _, _, xlabel)) in zip(axes, PANELS.items(), strict=True):
        rows = np.array([r[1:] for r in curves if r[0] == panel], dtype=float)
        x = rows[:, 0]
        for j, crit in enumerate(CRITERIA):
            y = rows[:, 1 + j]
            ok = np.isfinite(y)
            ax.plot(x[ok], y[ok], color=colors[crit], marker=".", label=crit)
        ax.plot(x, rows[:, 4], color="k", linestyle="--", label="fresh-data error")
        for p, crit, value, cval, _ in choices:
            if p == panel:
                ax.plot([value], [cval], marker="*", markersize=13, color=colors[crit], markeredgecolor="k")
                ax.axvline(value, color=colors[crit], linewidth=0.7, linestyle=":")
        undefined = ~np.isfinite(rows[:, 1])
        if undefined.any():  # S_ii rounds to 1: the shortcut's 0/0 (the true LOO error is finite)
            ax.text(
                0.98,
                0.03,
                f"LOO shortcut undefined beyond {x[undefined][0]:.3g}:\n$1 - S_{{ii}}$ rounds to 0",
                transform=ax.transAxes,
                ha="right",
                fontsize=7,
                color=colors["loo"],
            )
        ax.axhline(SIGMA**2, color="gray", linewidth=0.6)
        ax.text(x[0], SIGMA**2 * 1.02, r"$\sigma^2$", fontsize=8, color="gray", va="bottom")
        finite = rows[:, 1:][np.isfinite(rows[:, 1:])]
        ax.set_ylim(0.0, min(float(np.max(finite)), 6 * float(np.min(rows[:, 4]))) * 1.05)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("estimated prediction error")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Selection by LOO / GCV / prequential error (keys on $S^{{{D - 1}}}$, n = {n}, "
        f"$\\sigma$ = {SIGMA}; stars: select())",
        fontsize=10,
    )
    return fig


def main(out_dir, quick=False):
    """Write ``selection.csv``, ``selection_choices.csv`` and ``selection.png`` into ``out_dir``.

    Returns
    -------
    dict
        ``(panel, criterion) -> (chosen value, fresh-data error there)``, plus ``(panel, "best_grid") ->
        (grid value, error)`` for the grid point with the smallest fresh-data error.
    """
    out_dir = Path(out_dir)
    n, n_test, n_grid, n_select = (150, 300, 8, 6) if quick else (400, 2000, 16, 8)
    curves, choices = compute(n, n_test, n_grid, n_select)
    write_csv(
        out_dir / "selection.csv",
        ["panel", "value", *CRITERIA, "fresh_error"],
        curves,
    )
    write_csv(
        out_dir / "selection_choices.csv",
        ["panel", "criterion", "value", "criterion_value", "fresh_error"],
        choices,
    )
    save_figure(plot(curves, choices, n), out_dir, "selection.png")
    out = {(p, c): (v, e) for p, c, v, _, e in choices}
    for panel in PANELS:
        best = min((r for r in curves if r[0] == panel), key=lambda r: r[-1])
        out[(panel, "best_grid")] = (best[1], best[-1])
    return out


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for key, (value, err) in main(args.out, quick=args.quick).items():
        print(f"{key[0]:18s} {key[1]:12s} value {value:9.4g}   fresh-data error {err:.4f}")
