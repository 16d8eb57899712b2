r"""Bias², variance and MSE of local polynomial attention (p = 0, 1, 2) against the bandwidth (theory §1).

Two settings, one row each: an interior point (Beta(2, 2) design, x = 0.3, where f' != 0 gives NW its design
bias) and the left boundary of U[0, 1] (x = 0, where NW's bias is of order h). Target
:math:`m(x) = \sin(4x) + 4x^2`, noise :math:`\sigma = 0.5`, n = 10000 pairs, Gaussian similarity.
Lines: the asymptotic theory (:func:`ttr_stats.diagnostics.bias_variance.theory`, two-term bias);
points: Monte Carlo (:func:`~ttr_stats.diagnostics.bias_variance.monte_carlo`, conditional bias) with
±2 SE bars (SE of bias² by the delta method, 2|b| SE_b; of the MSE, the two combined).

Writes ``bias_variance.csv`` (one row per setting, order and bandwidth: MC and theory) and
``bias_variance.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

from paper_figures._common import save_figure, write_csv
from paper_figures._results import parse_args
from ttr_stats.diagnostics.bias_variance import monte_carlo, theory

N = 10000
SIGMA = 0.5
SEED = 20250121
ORDERS = {"NW (p = 0)": 0, "local linear (p = 1)": 1, "local quadratic (p = 2)": 2}
SETTINGS = {  # name -> (design, x0, boundary)
    "interior": ("beta22", 0.3, False),
    "boundary": ("uniform", 0.0, True),
}
BANDWIDTHS_FULL = np.geomspace(0.01, 0.16, 9)
BANDWIDTHS_QUICK = np.geomspace(0.02, 0.16, 4)
N_REP_FULL, N_REP_QUICK = 1000, 60

COLUMNS = (
    "setting",
    "estimator",
    "order",
    "bandwidth",
    "bias",
    "bias_se",
    "bias2",
    "variance",
    "variance_se",
    "mse",
    "mse_se",
    "theory_bias",
    "theory_variance",
    "theory_mse",
    "n_rep",
)


def target(x):
    """m(x) = sin(4x) + 4x², on (..., 1) arrays of any namespace (only elementwise sin and powers)."""
    import array_api_compat

    xp = array_api_compat.array_namespace(x)
    u = x[..., 0]
    return xp.sin(4.0 * u) + 4.0 * u**2


def _np_target(x):
    return np.sin(4.0 * x[..., 0]) + 4.0 * x[..., 0] ** 2


def theory_curves(setting, h, n=N):
    """Asymptotic bias, variance, MSE of every order on the bandwidth grid h: dict order -> AsymptoticMSE."""
    design, x0, boundary = SETTINGS[setting]
    return {
        p: theory(p, n=n, h=h, sigma=SIGMA, x0=[x0], target=_np_target, f=design, boundary=boundary)
        for p in ORDERS.values()
    }


def compute(quick=False, *, n=N, bandwidths=None, n_rep=None, seeds=None, orders=None):
    """Run the Monte Carlo for both settings; return the CSV rows (dicts keyed by COLUMNS).

    The keywords override the settings (``--quick`` or full): ``seeds`` maps a setting to the Monte Carlo
    seed (default ``SEED + k`` for the k-th setting), ``orders`` is a subset of ``ORDERS.values()``.
    """
    hs = (BANDWIDTHS_QUICK if quick else BANDWIDTHS_FULL) if bandwidths is None else bandwidths
    n_rep = (N_REP_QUICK if quick else N_REP_FULL) if n_rep is None else n_rep
    estimators = {k: p for k, p in ORDERS.items() if orders is None or p in orders}
    rows = []
    for k, (setting, (design, x0, _)) in enumerate(SETTINGS.items()):
        seed = SEED + k if seeds is None else seeds[setting]
        df = monte_carlo(estimators, target, design, [x0], hs, n, SIGMA, n_rep, seed=seed)
        th = theory_curves(setting, np.asarray(df["bandwidth"], dtype=np.float64), n)
        for i, r in enumerate(df.itertuples()):
            p = ORDERS[r.estimator]
            t = th[p]
            mse_se = math.hypot(2 * abs(r.bias) * r.bias_se, r.variance_se)
            rows.append(
                dict(
                    setting=setting,
                    estimator=r.estimator,
                    order=p,
                    bandwidth=float(r.bandwidth),
                    bias=float(r.bias),
                    bias_se=float(r.bias_se),
                    bias2=float(r.bias2),
                    variance=float(r.variance),
                    variance_se=float(r.variance_se),
                    mse=float(r.mse),
                    mse_se=mse_se,
                    theory_bias=float(t.bias[i]),
                    theory_variance=float(t.variance[i]),
                    theory_mse=float(t.mse[i]),
                    n_rep=int(r.n_rep),
                )
            )
    return rows


def pool(rows):
    """One row from the rows of independent Monte Carlo runs of the same (setting, order, bandwidth) with
    the same n_rep (the seed indices of a results folder, in seed order).

    Bias and variance: the mean over runs; their standard errors: sqrt(sum SE^2) / runs (independent
    runs); ``bias2``, ``mse`` and ``mse_se`` from the pooled values as :func:`compute` and
    :func:`~ttr_stats.diagnostics.bias_variance.monte_carlo` form them; ``n_rep`` the total. One run is
    returned as it is.
    """
    first = rows[0]
    if len(rows) == 1:
        return dict(first)
    S = len(rows)
    for c in ("n_rep", "theory_bias", "theory_variance", "theory_mse"):
        if any(r[c] != first[c] for r in rows):
            raise ValueError(f"pool: the runs differ in {c}; pool only replications of one setting")
    bias = float(np.mean([r["bias"] for r in rows]))
    bias_se = math.sqrt(sum(r["bias_se"] ** 2 for r in rows)) / S
    variance = float(np.mean([r["variance"] for r in rows]))
    variance_se = math.sqrt(sum(r["variance_se"] ** 2 for r in rows)) / S
    return dict(
        first,
        bias=bias,
        bias_se=bias_se,
        bias2=bias**2,
        variance=variance,
        variance_se=variance_se,
        mse=bias**2 + variance,
        mse_se=math.hypot(2 * abs(bias) * bias_se, variance_se),
        n_rep=int(sum(r["n_rep"] for r in rows)),
    )


#: sweep names of ``experiments/bias_variance.py``: ``--from-results DIR`` also finds ``DIR/<name>``
RESULTS = ("bias_variance", "bias_variance_quick")


def from_results(folder, n=None):
    """The CSV rows from a results folder of ``experiments/bias_variance.py``.

    A cell there is one seed index: a Monte Carlo of ``n_rep`` replications at one (setting, n, order,
    bandwidth), with the theory beside. The seed indices are pooled by :func:`pool`. ``n``: the sample size
    to draw (default: the folder's only one, or the figure's N when it has several). Returns
    ``(rows, n)``.
    """
    from paper_figures import _results

    cells = _results.load(folder, lambda c: c["data"] == "regression", what="the bias/variance figure")
    ns = sorted({c["data_params"]["n"] for c in cells})
    if n is None:
        n = ns[0] if len(ns) == 1 else N
    if n not in ns:
        raise _results.ResultsError(f"{folder}: no cells at n = {n}; the folder has n in {ns}")
    names = {p: name for name, p in ORDERS.items()}
    groups = _results.by_seed(
        [c for c in cells if c["data_params"]["n"] == n],
        lambda c: (c["data_params"]["setting"], c["params"]["order"], float(c["params"]["bandwidth"])),
    )
    rows = []
    for setting in SETTINGS:
        for (s, p, h), group in sorted(groups.items(), key=lambda kv: kv[0][1:]):
            if s != setting:
                continue
            runs = [
                dict(
                    setting=s,
                    estimator=names[p],
                    order=p,
                    bandwidth=h,
                    **{c: float(g[c]) for c in COLUMNS if c in g and c not in ("bias2", "mse_se")},
                    bias2=float(g["bias"]) ** 2,
                    mse_se=math.hypot(2 * abs(g["bias"]) * g["bias_se"], g["variance_se"]),
                    n_rep=int(g["data_params"]["n_rep"]),
                )
                for g in group
            ]
            rows.append({c: pool(runs)[c] for c in COLUMNS})
    return rows, n


def plot(rows, quick=False, n=N):
    fig = Figure(figsize=(13, 7.5), layout="constrained")
    axes = fig.subplots(2, 3, sharex=True)
    hs = sorted({r["bandwidth"] for r in rows})
    grid = np.geomspace(hs[0] * 0.8, hs[-1] * 1.2, 100)
    colors = {0: "C0", 1: "C1", 2: "C2"}
    for i, setting in enumerate(SETTINGS):
        th = theory_curves(setting, grid, n)
        for name, p in ORDERS.items():
            sel = [r for r in rows if r["setting"] == setting and r["order"] == p]
            if not sel:
                continue
            h = np.array([r["bandwidth"] for r in sel])
            panels = (
                (
                    "bias²",
                    th[p].bias ** 2,
                    [r["bias2"] for r in sel],
                    [2 * abs(r["bias"]) * r["bias_se"] for r in sel],
                ),
                ("variance", th[p].variance, [r["variance"] for r in sel], [r["variance_se"] for r in sel]),
                ("MSE", th[p].mse, [r["mse"] for r in sel], [r["mse_se"] for r in sel]),
            )
            for j, (label, curve, mc, se) in enumerate(panels):
                ax = axes[i, j]
                ax.plot(grid, curve, color=colors[p], linewidth=1.2, label=f"{name} theory")
                mc, se = np.asarray(mc), np.asarray(se)
                # bars are ±2 SE, clipped above zero for the log axis
                lo = np.minimum(2 * se, mc * (1 - 1e-3))
                ax.errorbar(
                    h,
                    mc,
                    yerr=[lo, 2 * se],
                    fmt="o",
                    color=colors[p],
                    markersize=4,
                    capsize=2,
                    label=f"{name} MC ±2 SE",
                )
                ax.set_xscale("log")
                ax.set_yscale("log")
                ax.xaxis.set_major_locator(FixedLocator([0.01, 0.02, 0.05, 0.1, 0.2]))
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_title(f"{setting}: {label}", fontsize=10)
                if i == 1:
                    ax.set_xlabel("bandwidth h")
    design, x0, _ = SETTINGS["interior"]
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(
        f"Local polynomial attention, m(x) = sin 4x + 4x², σ = {SIGMA}, n = {n}: interior x = {x0} "
        f"(Beta(2,2)), boundary x = 0 (U[0,1]); n_rep = {rows[0]['n_rep']}",
        fontsize=10,
    )
    return fig


def main(out_dir, quick=False, results=None):
    """Simulate, write ``bias_variance.csv`` and ``bias_variance.png`` in ``out_dir``.

    With ``results`` (a results folder of ``experiments/bias_variance.py``, or a folder holding one under
    its sweep name), draw from it instead of simulating (:func:`from_results`).

    Returns
    -------
    dict
        ``n_rows`` and, per setting and order, (MC - theory) bias / SE at the smallest bandwidth.
    """
    out_dir = Path(out_dir)
    if results is None:
        rows, n = compute(quick), N
    else:
        from paper_figures._results import locate

        rows, n = from_results(locate(results, RESULTS[::-1] if quick else RESULTS))
    write_csv(out_dir / "bias_variance.csv", COLUMNS, ([r[c] for c in COLUMNS] for r in rows))
    save_figure(plot(rows, quick, n), out_dir, "bias_variance.png")
    out = {"n_rows": len(rows)}
    # the asymptotic theory holds as h -> 0: report |MC - theory| / SE of the bias at the smallest bandwidth
    h0 = min(r["bandwidth"] for r in rows)
    for r in rows:
        if r["bandwidth"] == h0:
            out[f"{r['setting']} p={r['order']} bias z at h={h0:.3g}"] = (r["bias"] - r["theory_bias"]) / r[
                "bias_se"
            ]
    return out


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for k, v in main(args.out, quick=args.quick, results=args.from_results).items():
        print(f"{k:40s} {v}")
