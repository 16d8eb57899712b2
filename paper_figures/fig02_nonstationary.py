r"""Figure 2 of the paper: non-stationary online regression with no learned parameters (paper §7).

Data (float64, ``n_seeds`` independent sequences as the batch dimension). Keys follow an AR(1) whose
coefficient switches at T/4,

.. math::

    k_{t+1} = a_t k_t + 0.02\,\varepsilon_t,\qquad a_t = 0.9 \ (t < T/4),\quad a_t = 0.999 \ (t \ge T/4),
    \qquad \varepsilon_t \sim N(0, \Sigma),

with :math:`\Sigma` unit-diagonal and equicorrelated (off-diagonals ``rho``, default 0.5: the paper says only
"non-zero"). **Initial key** (not given by the paper): :math:`k_0 \sim N(0, \Sigma)`, an independent draw at
the noise's own unit scale. The first phase then decays it deterministically (:math:`0.9^t`) until, around
t = 20-30, it reaches the phase's stationary scale :math:`0.02/\sqrt{1 - 0.81} \approx 0.046` per coordinate
and the key's direction starts to be driven by the noise: that is what puts the error peaks at t = 30-60.
(With :math:`k_0` at the stationary scale the first phase is flat instead of peaked; with a 10x larger
:math:`k_0` the peaks move to t = 55-65.) Values :math:`v_t = k_{t+1}/\|k_{t+1}\|`, queries
:math:`q_t = k_{t+1}`; keys :math:`k_0, \dots, k_{T+1}` are generated, the layer sees t = 0..T-1.

Metric: the one-step-ahead error :math:`e_t = \|v_{t+1} - m_t(k_{t+1})\|^2`. The layer reads after writing
:math:`(k_t, v_t)`, so its output :math:`y_t = m_t(q_t)` with :math:`q_t = k_{t+1}` is exactly the forecast of
:math:`v_{t+1}` (which uses :math:`k_{t+2}`, never seen by the layer at t). Curves are the mean over seeds
± one standard error; the late-phase numbers average t >= 150 (for T = 256) per seed first.

Methods (the paper's five):

* ``linear_attention`` -- ``recipes.linear_attention(normalize="output")``: :math:`y = Mq/\|Mq\|`, raw keys.
* ``rls`` -- ``recipes.rls(ridge=1e-3)``, unweighted RLS on raw keys (float64; identical to
  ``least_squares(ridge=1e-3)`` to 1e-11). The ridge matters: with 1e-6 the mean error spikes to ~6 at the
  regime switch (t ~ 63), when the first phase's tiny keys (~0.05 per coordinate) leave R_t badly conditioned.
* ``softmax_p0`` -- softmax attention with QKNorm, logits :math:`\tau\cos(q, k)`, default :math:`\tau = 64`
  (bandwidth :math:`h = \tau^{-1/2} = 1/8` on the sphere).
* ``local_linear_p1`` -- local linear attention with the **same** QKNorm kernel (:math:`\tau = 64`) and ridge
  :math:`\lambda = 10^{-3}` on the slope (paper §5: with QKNorm the local covariance is singular along q, and
  here only ~4-6 neighbours carry weight, so it has rank ~20 of 64; its leading eigenvalues, along the
  trajectory, are ~1e-3-1e-2, so 1e-3 keeps that slope and shrinks the rest). Using p = 0's kernel makes the
  p = 0 vs p = 1 comparison isolate the polynomial order. Sensitivity (full run): late error 0.0099 /
  0.0103 / 0.014 / 0.019 / 0.0205 for :math:`\lambda` = 1e-4 / 1e-3 / 1e-2 / 0.1 / 1 (:math:`\lambda\to\infty`
  is p = 0, 0.0206). A Gaussian kernel on the raw keys (``LocalPolynomial(1, Gaussian(h), ridge=1e-4)``,
  h = 0.1-0.4) gives nearly the same curve (late 0.010-0.013).
* ``naive`` -- the previous value: :math:`v_{t+1}` forecast by :math:`v_t` (= the normalised query).

**QKNorm is applied here, by hand**, to the queries and keys of the two softmax layers (they also keep
``qk_norm=True``, which is idempotent on unit vectors). In ``ttr_stats`` as of commit 0ff63a5,
``TestTimeRegression.__call__`` ignores the similarity's ``qk_norm``: ``_prepare`` maps Q and K through
``regressor.features`` (the identity for nonparametric regressors) and never calls ``regressor.prepare``, so
``qknorm_attention(scale=tau)`` equals ``softmax_attention(scale=tau)`` on the raw keys (late error 0.37
instead of 0.02 here). Once ``NonparametricRegressor.features`` applies ``prepare``, the hand normalisation
is a no-op (checked: the outputs then agree to 1e-14).

Panel (b) sweeps the temperature :math:`\tau \in \{1/8 = 1/\sqrt{d}, 1, 8, 32, 64, 128\}` for p = 0 and
p = 1 (same ridge), showing the late-phase error (t >= 150) and the peak-window error (30 <= t < 60).

Against the paper's description (full run): linear attention matches (peak ~1.1 at t ~ 35-65, late 0.20),
RLS late 0.07 (paper: noisy ~0.1), p = 0 late 0.021 (paper ~0.03), p = 1 lowest of the learners at 0.010 and
0.02-0.03 over 90 <= t < 150 (paper 0.02-0.05). The peaks of RLS, p = 0 and p = 1 (0.25-0.33 with this
figure's seeds; 0.36-0.44 over five other sets of 20 sequences) are lower than the paper's (0.5-0.8; p = 0
1.0-1.25). The naive forecast is below every learner late (0.008): the keys' direction moves slowly by then,
and the previous value is almost the next one.

**What explains the early peaks: the noise correlation rho**, which the paper does not give
(``experiments/fig02_settings.py``, five independent sets of 20 sequences, mean +- s.e.; details in
``paper_figures/README.md``). At rho = 0.9 the first-phase peaks are linear attention 1.17 +- 0.07, RLS
0.52 +- 0.02, p = 1 0.76 +- 0.04, p = 0 0.75 +- 0.04 and the late levels 0.22 / 0.098 / 0.025 / 0.032: the
paper's shape in every number it describes except p = 0's peak (its 1.0-1.25). Strongly correlated noise
moves the keys mostly along the common direction, so their direction turns sharply when that component
crosses zero, and every method's first-phase error rises (the naive forecast's from 0.32 to 0.55). Nothing
tried reaches p = 0's peak without losing its late level: a wider QKNorm kernel (tau = 8: peak 0.74, late
0.081), a Gaussian kernel on the raw keys (wide while they are small; h = 0.3: 0.85, late 0.088), a
different initial key (stationary scale or 10x: p = 0 0.29-0.38 at rho = 0.5). A single sequence's curve
overshoots instead (linear attention 2.2 at rho = 0.5), and RLS with ridge 1 (a P_0 = I start) reaches 0.68
at rho = 0.5 but settles at 0.047, half the paper's ~0.1. **The figure keeps rho = 0.5** (the spec's
default): at rho = 0.9 the late separations shrink (p = 1 over p = 0 from 1.9x to 1.3x) and the 12-sequence
quick run no longer resolves the paper's late orderings (over 10 draws, ``tests/test_figures.py``'s "RLS
below linear attention by 3 s.e." fails 6 times); ``main(out, rho=0.9)`` draws the paper-like version, and
the temperature sweep covers rho up to 0.9.

Writes ``nonstationary.csv`` (t, then ``<method>_mean``, ``<method>_se``), ``nonstationary_temperature.csv``
(order, tau, late and peak-window mean and se) and ``nonstationary.png``. With ``--from-results DIR`` (a
results folder of ``experiments/fig02_temperature.py``) both panels come from the sweep's cells instead:
panel (a) from its metric ``curve`` (the errors averaged over bins of 4 steps, so ``nonstationary.csv``
then has one row per bin: ``t`` the bin centre, ``t_start``, ``t_stop``), and ``nonstationary_late.csv``
is added (:func:`main_from_results`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import save_figure, write_csv
from paper_figures._results import parse_args

SEED = 20250202
#: full settings (the paper's)
FULL = dict(n_seeds=20, T=256, d=64)
#: quick settings (CI): the paper's T and d_k, fewer seeds. Shrinking T or d_k changes the experiment (the
#: regime switch at T/4, how far the random walk gets, how many neighbours a key has), so only the number of
#: independent sequences is cut; the methods are cheap at this size (~1 s for p = 1 over 20 seeds). 12 seeds:
#: over 30 base seeds every late-phase ordering of the learners held by > 3 paired standard errors (weakest:
#: linear attention vs RLS, min 3.2, median 6.0); with 8 seeds that pair fell to 2.5 in 2 of 30.
QUICK = dict(n_seeds=12, T=256, d=64)
RHO = 0.5
TAU = 64.0
P1_RIDGE = 1e-3
RLS_RIDGE = 1e-3
TAUS = (0.125, 1.0, 8.0, 32.0, 64.0, 128.0)
#: late phase: t >= 150 of T = 256 (scaled with T)
LATE_FRACTION = 150 / 256
#: window around the paper's peaks (30 <= t < 60 of T = 256, scaled with T)
PEAK_FRACTION = (30 / 256, 60 / 256)

#: (key, legend label) in plotting order
METHODS = (
    ("linear_attention", "linear attention (output norm.)"),
    ("rls", "RLS (unweighted, ridge 1e-3)"),
    ("softmax_p0", "softmax attention p = 0 (QKNorm)"),
    ("local_linear_p1", "local linear p = 1 (QKNorm)"),
    ("naive", "naive forecast (previous value)"),
)
LEARNERS = ("linear_attention", "rls", "softmax_p0", "local_linear_p1")


def late_start(T):
    return int(round(LATE_FRACTION * T))


def peak_window(T):
    return int(round(PEAK_FRACTION[0] * T)), int(round(PEAK_FRACTION[1] * T))


def simulate(n_seeds, T, d, rho=RHO, seed=SEED, k0_scale=1.0):
    r"""Keys, values, queries and targets of the experiment.

    Returns ``(Q, K, V, target)``, each of shape (n_seeds, T, d): ``K[:, t] = k_t``,
    ``V[:, t] = v_t = k_{t+1}/\|k_{t+1}\|``, ``Q[:, t] = k_{t+1}``, ``target[:, t] = v_{t+1}``.
    ``k0_scale`` multiplies the initial key :math:`k_0 \sim N(0, \Sigma)` (the paper does not give it;
    ``experiments/fig02_settings.py`` tries others). The random draws do not depend on it.
    """
    rng = np.random.default_rng(seed)
    sigma = (1.0 - rho) * np.eye(d) + rho * np.ones((d, d))
    L = np.linalg.cholesky(sigma)
    k0 = float(k0_scale) * (rng.standard_normal((n_seeds, d)) @ L.T)
    eps = rng.standard_normal((n_seeds, T + 1, d)) @ L.T
    k = np.empty((n_seeds, T + 2, d))
    k[:, 0] = k0
    for t in range(T + 1):
        a = 0.9 if t < T // 4 else 0.999
        k[:, t + 1] = a * k[:, t] + 0.02 * eps[:, t]
    u = k / np.linalg.norm(k, axis=-1, keepdims=True)
    return k[:, 1 : T + 1], k[:, :T], u[:, 1 : T + 1], u[:, 2 : T + 2]


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def softmax_layer(order, tau, ridge=P1_RIDGE):
    """Softmax attention (order 0) or local linear attention (order 1) with QKNorm at logit scale ``tau``."""
    if order == 0:
        return tt.recipes.qknorm_attention(scale=tau)
    return tt.recipes.local_linear_attention(scale=tau, ridge=ridge, qk_norm=True)


def run_softmax(order, tau, Q, K, V, ridge=P1_RIDGE):
    # QKNorm by hand: ttr_stats at 0ff63a5 ignores qk_norm in __call__ (see the module docstring)
    return np.asarray(softmax_layer(order, tau, ridge)(unit(Q), unit(K), V))


def sq_error(Y, target):
    return np.sum((np.asarray(Y) - target) ** 2, axis=-1)


def errors(n_seeds, T, d, rho=RHO, tau=TAU, p1_ridge=P1_RIDGE, rls_ridge=RLS_RIDGE, seed=SEED):
    """Per-seed, per-step one-step-ahead errors: dict method -> array (n_seeds, T)."""
    Q, K, V, target = simulate(n_seeds, T, d, rho, seed)
    r = tt.recipes
    out = {
        "linear_attention": sq_error(r.linear_attention(normalize="output")(Q, K, V), target),
        "rls": sq_error(r.rls(ridge=rls_ridge)(Q, K, V), target),
        "softmax_p0": sq_error(run_softmax(0, tau, Q, K, V), target),
        "local_linear_p1": sq_error(run_softmax(1, tau, Q, K, V, ridge=p1_ridge), target),
        "naive": sq_error(V, target),
    }
    for name, e in out.items():
        if not np.all(np.isfinite(e)):
            raise FloatingPointError(f"{name}: non-finite error")
    return out


def mean_se(x):
    """Mean and standard error over the first axis (seeds)."""
    x = np.asarray(x, dtype=np.float64)
    return x.mean(axis=0), x.std(axis=0, ddof=1) / np.sqrt(x.shape[0])


def window_mean_se(e, lo, hi=None):
    """Mean over seeds of each seed's average error on t in [lo, hi), and its standard error."""
    return tuple(float(v) for v in mean_se(e[:, lo:hi].mean(axis=1)))


def curve_bins(T, width):
    """The step bins ``[(lo, hi), ...]`` of a binned curve: ``[0, w), [w, 2w), ...``, the last ending at T.
    Width 1 is the per-step curve the figure draws when it computes."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"width must be an integer >= 1 (steps per bin), got {width!r}")
    return [(lo, min(lo + int(width), T)) for lo in range(0, T, int(width))]


def binned(e, width):
    """Per-sequence mean error in each bin of :func:`curve_bins`: (n_seeds, n_bins). Width 1 is ``e``."""
    e = np.asarray(e, dtype=np.float64)
    return np.stack([e[:, lo:hi].mean(axis=1) for lo, hi in curve_bins(e.shape[-1], width)], axis=-1)


#: column prefix of the binned per-step errors in a results folder (``err_t<lo>``: the bin starting at lo)
CURVE_PREFIX = "err_t"


def temperature_sweep(n_seeds, T, d, rho=RHO, taus=TAUS, p1_ridge=P1_RIDGE, seed=SEED):
    """Rows (order, tau, late_mean, late_se, peak_mean, peak_se) for p = 0 and p = 1 at each tau."""
    Q, K, V, target = simulate(n_seeds, T, d, rho, seed)
    lo, (a, b) = late_start(T), peak_window(T)
    rows = []
    for order in (0, 1):
        for tau in taus:
            e = sq_error(run_softmax(order, tau, Q, K, V, ridge=p1_ridge), target)
            rows.append((order, float(tau), *window_mean_se(e, lo), *window_mean_se(e, a, b)))
    return rows


COLORS = {
    "linear_attention": "tab:red",
    "rls": "tab:blue",
    "softmax_p0": "tab:orange",
    "local_linear_p1": "tab:green",
    "naive": "0.4",
}


def plot(t, curves, sweep, late, settings):
    """Both panels. ``t``: the steps (or bin centres) of ``curves`` (method -> (mean, se)); a method missing
    from ``curves`` is not drawn, and ``curves=None`` leaves panel (a) with a note (a results folder
    without per-step errors)."""
    T = settings["T"]
    fig = Figure(figsize=(13, 5), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=(1.6, 1))
    for m, label in METHODS:
        if curves is None or m not in curves:
            continue
        mean, se = curves[m]
        ls = ":" if m == "naive" else "-"
        text = f"{label}: late {late[m]:.3f}" if m in late else label
        ax.plot(t, mean, ls, color=COLORS[m], linewidth=1.3, label=text)
        ax.fill_between(t, mean - se, mean + se, color=COLORS[m], alpha=0.2, linewidth=0)
    if curves is None:
        ax.text(0.5, 0.5, settings.get("missing", "no per-step errors"), transform=ax.transAxes,
                ha="center", va="center", fontsize=9, wrap=True)  # fmt: skip
    ax.axvline(T // 4, color="k", linewidth=0.6, linestyle="--")
    ax.text(T // 4 + 2, 1.93, "AR 0.9 → 0.999", fontsize=8, va="top")
    ax.axvline(late_start(T), color="gray", linewidth=0.6, linestyle=":")
    ax.text(late_start(T) + 2, 1.93, f"late phase (t ≥ {late_start(T)})", fontsize=8, va="top", color="gray")
    ax.set_ylim(0, 2)
    ax.set_xlim(0, T - 1)
    ax.set_xlabel("t" if settings.get("bin", 1) == 1 else f"t (means over bins of {settings['bin']} steps)")
    ax.set_ylabel(r"one-step-ahead error $\|v_{t+1} - m_t(k_{t+1})\|^2$")
    over = (
        f"{settings['n_seeds']} seed indices of {settings['n_seq']} sequences"
        if "n_seq" in settings
        else f"{settings['n_seeds']} seeds"
    )
    ax.set_title(
        f"(a) non-stationary online regression: d = {settings['d']}, T = {T}, ρ = {settings['rho']}, "
        f"τ = {settings['tau']:g}, mean ± se over {over}",
        fontsize=9,
    )
    if curves:
        ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 0.9))

    plot_temperature(bx, sweep, late, settings)
    return fig


def plot_temperature(bx, sweep, late, settings):
    """Panel (b): late-phase and peak-window error against tau, the baselines' late errors as lines."""
    T = settings["T"]
    a, b = peak_window(T)
    for order, color in ((0, COLORS["softmax_p0"]), (1, COLORS["local_linear_p1"])):
        rows = [r for r in sweep if r[0] == order]
        taus = np.array([r[1] for r in rows])
        bx.errorbar(
            taus,
            [r[2] for r in rows],
            yerr=[r[3] for r in rows],
            color=color,
            marker="o",
            markersize=4,
            capsize=2,
            label=f"p = {order}, late (t ≥ {late_start(T)})",
        )
        bx.errorbar(
            taus,
            [r[4] for r in rows],
            yerr=[r[5] for r in rows],
            color=color,
            marker="s",
            markersize=3,
            capsize=2,
            linestyle=":",
            label=f"p = {order}, peak window ({a} ≤ t < {b})",
        )
    for m in (m for m in ("linear_attention", "rls", "naive") if m in late):
        bx.axhline(late[m], color=COLORS[m], linewidth=0.8, linestyle="--", label=f"{m}, late")
    bx.axvline(1 / np.sqrt(settings["d"]), color="gray", linewidth=0.5, linestyle=":")
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.set_xlabel(r"logit scale τ (QKNorm; $h = τ^{-1/2}$); dotted line: $1/\sqrt{d}$")
    bx.set_ylabel("mean error")
    bx.set_title(f"(b) softmax temperature (p = 1 ridge {P1_RIDGE:g})", fontsize=9)
    bx.set_ylim(top=3.0)
    bx.legend(fontsize=7, loc="upper right", ncol=2)


#: sweep names of ``experiments/fig02_temperature.py``: ``--from-results DIR`` also finds ``DIR/<name>``
RESULTS = ("fig02_temperature", "fig02_temperature_quick")
#: the baselines and the two tau = TAU learners in a results folder: method -> (recipe, params)
RESULT_METHODS = {
    "linear_attention": ("linear_attention", {"normalize": "output"}),
    "rls": ("rls", {"ridge": RLS_RIDGE}),
    "naive": ("naive", {}),
}


def from_results(folder, rho=RHO, tau=TAU):
    """Both panels' numbers from a results folder of ``experiments/fig02_temperature.py``.

    A cell there is one seed index: ``n_seq`` sequences, whose late-phase and peak-window errors it
    averages, and (metric ``curve``) their mean error in each bin of :func:`curve_bins` (columns
    ``err_t<lo>``). The cells are the replicates: each number is :func:`mean_se` over the seed indices (in
    seed order) of the cells' values, as :func:`window_mean_se` and :func:`binned` do over the sequences
    when the figure computes (both estimate the standard error of the same mean; they coincide when
    ``n_seq = 1``).

    Returns
    -------
    sweep : list of tuple
        ``(order, tau, late_mean, late_se, peak_mean, peak_se)``, as :func:`temperature_sweep`.
    late : dict
        Method -> ``(late_mean, late_se, peak_mean, peak_se, n_seeds)`` for the methods present
        (``softmax_p0`` / ``local_linear_p1`` at logit scale ``tau``).
    settings : dict
        ``n_seeds, n_seq, T, d, rho, tau`` of the cells, and ``bin`` (steps per bin of the curves).
    curves : tuple or None
        ``(bins, {method: (mean, se)})``: the bins ``[(lo, hi), ...]`` and, per method present, arrays of
        the mean and standard error over seed indices of the bins' errors; None when the cells have no
        ``curve`` metric (a folder written before it existed).
    """
    import json

    from paper_figures import _results

    cells = _results.load(
        folder,
        lambda c: c["data"] == "nonstationary" and c["data_params"].get("rho") == rho,
        what=f"Figure 2 at rho = {rho}",
    )
    shape = {(c["data_params"]["n_seq"], c["data_params"]["T"], c["data_params"]["d"]) for c in cells}
    if len(shape) != 1:
        raise _results.ResultsError(
            f"{folder}: cells at rho = {rho} differ in (n_seq, T, d): {sorted(shape)}"
        )
    ((n_seq, T, d),) = shape
    groups = _results.by_seed(cells, lambda c: (c["recipe"], json.dumps(c["params"], sort_keys=True)))

    def agg(group, metric):
        return tuple(float(v) for v in mean_se([c[metric] for c in group]))

    learners = {}
    for (recipe, key), g in groups.items():
        if recipe == "softmax_qknorm":
            p = json.loads(key)
            learners[(p["order"], float(p["tau"]))] = g
    sweep = [(o, t, *agg(g, "late"), *agg(g, "peak")) for (o, t), g in sorted(learners.items())]
    wanted = {
        **RESULT_METHODS,
        "softmax_p0": ("softmax_qknorm", {"order": 0, "tau": float(tau)}),
        "local_linear_p1": ("softmax_qknorm", {"order": 1, "tau": float(tau)}),
    }
    late, with_curve = {}, {}
    for m, _ in METHODS:
        recipe, params = wanted[m]
        g = groups.get((recipe, json.dumps(params, sort_keys=True)))
        if g:
            late[m] = (*agg(g, "late"), *agg(g, "peak"), len(g))
            if all("curve" in c["metrics"] for c in g):
                with_curve[m] = g
    n_seeds = len({c["seed"] for c in cells})
    settings = dict(n_seeds=n_seeds, n_seq=n_seq, T=T, d=d, rho=rho, tau=tau, bin=1)
    curves = None
    if with_curve:
        bins = _curve_bins_of(folder, next(iter(with_curve.values()))[0], T)
        settings["bin"] = bins[0][1] - bins[0][0]
        cols = [f"{CURVE_PREFIX}{lo}" for lo, _ in bins]
        curves = (bins, {})
        for m, g in with_curve.items():
            if any(c.get(col) is None for c in g for col in cols):
                raise _results.ResultsError(f"{folder}: {m}'s cells do not all have the columns {cols[0]}...")
            curves[1][m] = mean_se([[c[col] for col in cols] for c in g])
    return sweep, late, settings, curves


def _curve_bins_of(folder, cell, T):
    """The bins of a cell's ``err_t<lo>`` columns; they must be :func:`curve_bins` of one width."""
    from paper_figures import _results

    starts = sorted(int(k[len(CURVE_PREFIX) :]) for k, v in cell.items() if k.startswith(CURVE_PREFIX))
    width = starts[1] - starts[0] if len(starts) > 1 else T
    bins = curve_bins(T, width) if starts else []
    if [lo for lo, _ in bins] != starts:
        raise _results.ResultsError(
            f"{folder}: the curve columns {CURVE_PREFIX}<lo> of cell {cell['id']} are not equal bins of "
            f"T = {T}"
        )
    return bins


def main_from_results(out_dir, folder, rho=RHO, tau=TAU):
    """Draw the figure from a results folder.

    Writes ``nonstationary.csv`` (``t`` the bin centre, ``t_start``, ``t_stop``, then the computed figure's
    ``<method>_mean``, ``<method>_se``), ``nonstationary_temperature.csv`` (the computed figure's columns),
    ``nonstationary_late.csv`` (method, late and peak-window mean and se, n_seeds) and ``nonstationary.png``
    (both panels; panel (a) over bins of the sweep's width, a note instead when the folder has no per-step
    errors, and then no ``nonstationary.csv``).
    """
    out_dir = Path(out_dir)
    sweep, late, settings, curves = from_results(folder, rho, tau)
    write_csv(
        out_dir / "nonstationary_temperature.csv",
        ["order", "tau", "late_mean", "late_se", "peak_mean", "peak_se"],
        sweep,
    )
    write_csv(
        out_dir / "nonstationary_late.csv",
        ["method", "late_mean", "late_se", "peak_mean", "peak_se", "n_seeds"],
        ((m, *v) for m, v in late.items()),
    )
    t, drawn = None, None
    if curves is not None:
        bins, drawn = curves
        t = np.array([(lo + hi - 1) / 2 for lo, hi in bins])
        names = [m for m, _ in METHODS if m in drawn]
        write_csv(
            out_dir / "nonstationary.csv",
            ["t", "t_start", "t_stop", *(f"{m}_{s}" for m in names for s in ("mean", "se"))],
            (
                [float(t[i]), lo, hi, *(float(drawn[m][j][i]) for m in names for j in (0, 1))]
                for i, (lo, hi) in enumerate(bins)
            ),
        )
    else:
        settings["missing"] = (
            f"{Path(folder).name} has no per-step errors (metric 'curve');\n"
            "rerun experiments/fig02_temperature.py to draw this panel"
        )
    fig = plot(t, drawn, sweep, {m: v[0] for m, v in late.items()}, settings)
    fig.suptitle(f"drawn from the results folder {Path(folder).name}", fontsize=9)
    save_figure(fig, out_dir, "nonstationary.png")
    return {m: v[0] for m, v in late.items()}


def main(out_dir, quick=False, rho=RHO, tau=TAU, results=None):
    """Run the experiment; write ``nonstationary.csv``, ``nonstationary_temperature.csv`` and the PNG.

    With ``results`` (a results folder of ``experiments/fig02_temperature.py``, or a folder holding one
    under its sweep name), draw the figure from it instead (:func:`main_from_results`).

    Returns
    -------
    dict
        Method -> late-phase (t >= 150 for T = 256) mean one-step-ahead error.
    """
    if results is not None:
        from paper_figures._results import locate

        return main_from_results(out_dir, locate(results, RESULTS[::-1] if quick else RESULTS), rho, tau)
    out_dir = Path(out_dir)
    settings = dict(QUICK if quick else FULL, rho=rho, tau=tau)
    n_seeds, T, d = settings["n_seeds"], settings["T"], settings["d"]
    errs = errors(n_seeds, T, d, rho=rho, tau=tau)
    curves = {m: mean_se(errs[m]) for m, _ in METHODS}
    lo = late_start(T)
    late = {m: window_mean_se(errs[m], lo)[0] for m, _ in METHODS}
    sweep = temperature_sweep(n_seeds, T, d, rho=rho)

    t = np.arange(T)
    cols = [f"{m}_{s}" for m, _ in METHODS for s in ("mean", "se")]
    write_csv(
        out_dir / "nonstationary.csv",
        ["t", *cols],
        ([int(t[i]), *(float(curves[m][j][i]) for m, _ in METHODS for j in (0, 1))] for i in range(T)),
    )
    write_csv(
        out_dir / "nonstationary_temperature.csv",
        ["order", "tau", "late_mean", "late_se", "peak_mean", "peak_se"],
        sweep,
    )
    save_figure(plot(t, curves, sweep, late, settings), out_dir, "nonstationary.png")
    return late


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for name, err in main(args.out, quick=args.quick, results=args.from_results).items():
        print(f"{name:20s} late-phase error {err:.4f}")
