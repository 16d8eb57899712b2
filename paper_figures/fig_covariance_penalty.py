r"""Linear attention ignores the key covariance (paper §3; theory §3–4): recall error against t/d_k.

For t pairs (k_i, v_i) written into a memory M_t, the relative recall error is

.. math:: \frac{\sum_{i\le t}\|M_t k_i - v_i\|^2}{\sum_{i\le t}\|v_i\|^2},

computed per seed and averaged over seeds (a batch dimension). Keys are N(0, Σ_ρ), Σ_ρ equicorrelated
(unit diagonal, off-diagonal ρ ∈ {0, 0.5, 0.9}, one panel each), values N(0, I), d_v = d_k = 64 (quick:
16), t/d_k = 2^{k/4} from 1/4 to 8 (quick: 2^{k/2}). Methods:

* ``linear_attention`` on the raw keys (‖k‖² ≈ d_k, so its memory overshoots by ≈ d_k: error ≈ d_k²);
* ``linear_attention_unit_keys``: the same layer on unit-normalised keys;
* ``least_squares`` (ridge 0, minimum norm for t < d_k), ridge least squares with ridge 1e-3 and 1e-1;
* ``deltanet_nlms``: ``deltanet()`` with the call-time step β_t = 1/‖k_t‖² (that is ``nlms()``).

Theory lines: the dashed line (n − 1)/d is for the outer-product memory with **unit isotropic keys**
(theory §4), i.e. for the ``linear_attention_unit_keys`` curve in the ρ = 0 panel only (raw N(0, I) keys
would give about d² + (n + 1)·d, and correlated keys more). The dotted line is least squares: exact recall
for n ≤ d and 1 − d/n beyond (theory §4, exact in expectation for any full-rank keys, so for every ρ).
The gray curve on the right axis is the median over seeds of κ(K_tᵀK_t) for the raw keys of the first t
pairs (infinite for t < d: rank t; not drawn), with the Marchenko–Pastur limit ((1+√γ)/(1−√γ))², γ = d/t,
for ρ = 0.

Each memory comes from ``layer.memorize``, continued chunk by chunk from the previous prefix's state
(``initial_state``), so every sequence is written once. Writes ``covariance_penalty.csv`` (long format:
rho, t_over_d, method, recall_error, kappa, then recall_se = standard error over seeds and n_seeds) and
``covariance_penalty.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

RHOS = (0.0, 0.5, 0.9)
SEED = 20250121
#: recall errors below this are drawn at it (exact recall up to rounding) on the log axis
DISPLAY_FLOOR = 1e-10

FULL = {"d": 64, "n_seeds": 8, "exponents": np.arange(-8, 13) / 4}  # t/d = 2^(k/4): 21 points
# At d = 16 the per-seed spread of the recall ratio is ~4x larger than at d = 64 (it scales like 1/d), and
# the seeds are cheap, so quick mode uses more seeds to keep the test's tolerances several standard errors.
QUICK = {"d": 16, "n_seeds": 32, "exponents": np.arange(-4, 7) / 2}  # t/d = 2^(k/2): 11 points

METHODS = (
    # name, label, unit keys?, style
    ("linear_attention", "linear attention (raw keys)", False, dict(color="C0", marker="o")),
    ("linear_attention_unit_keys", "linear attention (unit keys)", True, dict(color="C1", marker="s")),
    ("least_squares", "least squares (ridge 0)", False, dict(color="C2", marker="^")),
    ("ridge_1e-3", "ridge LS, ridge 1e-3", False, dict(color="C3", marker="v", linestyle="--")),
    ("ridge_1e-1", "ridge LS, ridge 1e-1", False, dict(color="C4", marker="D", linestyle="--")),
    ("deltanet_nlms", r"DeltaNet, $\beta_t = 1/\|k_t\|^2$ (= NLMS)", False, dict(color="C5", marker="x")),
)


def _layer(name):
    r = tt.recipes
    return {
        "linear_attention": r.linear_attention,
        "linear_attention_unit_keys": r.linear_attention,
        "least_squares": lambda: r.least_squares(ridge=0.0),
        "ridge_1e-3": lambda: r.least_squares(ridge=1e-3),
        "ridge_1e-1": lambda: r.least_squares(ridge=1e-1),
        "deltanet_nlms": r.deltanet,
    }[name]()


def equicorrelated_keys(Z, s, rho):
    """k = √(1−ρ) z + √ρ s 1: covariance (1−ρ)I + ρ 11ᵀ (unit diagonal, off-diagonal ρ).

    Z: (..., T, d) standard normal, s: (..., T, 1) standard normal (shared across ρ: common random numbers).
    """
    return np.sqrt(1.0 - rho) * Z + np.sqrt(rho) * s


def prefix_lengths(d, exponents):
    """Distinct prefix lengths t = round(d 2^e)."""
    return np.unique(np.round(d * 2.0**exponents).astype(int))


def recall_ratio(M, K, V):
    """Per-seed Σ_i ‖M k_i − v_i‖² / Σ_i ‖v_i‖²; M (S, d_v, d_k), K (S, t, d_k), V (S, t, d_v) -> (S,)."""
    E = np.einsum("svk,stk->stv", M, K) - V
    return np.sum(E * E, axis=(-2, -1)) / np.sum(V * V, axis=(-2, -1))


def gram_condition(K, ts):
    """Median over seeds of κ(K_tᵀK_t) for each prefix length t (inf when t < d: rank-deficient)."""
    d = K.shape[-1]
    out = []
    for t in ts:
        if t < d:
            out.append(np.inf)
            continue
        Kt = K[..., :t, :]
        lam = np.linalg.eigvalsh(np.swapaxes(Kt, -1, -2) @ Kt)
        out.append(float(np.median(lam[..., -1] / lam[..., 0])))
    return np.array(out)


def memories_along_prefixes(layer, K, V, ts, beta=None):
    """Memory M_t (S, d_v, d_k) after each prefix length t in ``ts``, writing the sequence once.

    Each chunk K[..., t_prev:t, :] is memorised starting from the state after t_prev pairs; for these
    recurrent optimizers that is the same state as memorising the whole prefix at once.
    """
    state, prev, out = None, 0, []
    for t in ts:
        b = None if beta is None else beta[..., prev:t]
        state = layer.memorize(K[..., prev:t, :], V[..., prev:t, :], beta=b, initial_state=state)
        out.append(layer.optimizer.memory(state))
        prev = t
    return out


def compute(cfg, seed=SEED):
    """Rows (rho, t_over_d, method, recall_error, kappa, recall_se, n_seeds)."""
    d, S = cfg["d"], cfg["n_seeds"]
    ts = prefix_lengths(d, cfg["exponents"])
    T = int(ts[-1])
    rng = np.random.default_rng(seed)
    Z = rng.standard_normal((S, T, d))
    s = rng.standard_normal((S, T, 1))
    V = rng.standard_normal((S, T, d))
    rows = []
    for rho in RHOS:
        K_raw = equicorrelated_keys(Z, s, rho)
        K_unit = K_raw / np.linalg.norm(K_raw, axis=-1, keepdims=True)
        kappa = {False: gram_condition(K_raw, ts), True: gram_condition(K_unit, ts)}
        for name, _, unit, _ in METHODS:
            K = K_unit if unit else K_raw
            beta = 1.0 / np.sum(K * K, axis=-1) if name == "deltanet_nlms" else None
            Ms = memories_along_prefixes(_layer(name), K, V, ts, beta=beta)
            for j, (t, M) in enumerate(zip(ts, Ms, strict=True)):
                r = recall_ratio(M, K[:, :t], V[:, :t])
                se = float(np.std(r, ddof=1) / np.sqrt(S)) if S > 1 else float("nan")
                rows.append((rho, t / d, name, float(np.mean(r)), float(kappa[unit][j]), se, S))
    return rows


def plot(rows, d):
    fig = Figure(figsize=(17, 5.6), layout="constrained")
    axes = fig.subplots(1, len(RHOS), sharey=True)
    twins = []
    for ax, rho in zip(axes, RHOS, strict=True):
        sub = [r for r in rows if r[0] == rho]
        for name, label, _, style in METHODS:
            pts = sorted((r[1], r[3]) for r in sub if r[2] == name)
            x = np.array([p[0] for p in pts])
            y = np.maximum([p[1] for p in pts], DISPLAY_FLOOR)
            ax.plot(x, y, label=label, markersize=4, linewidth=1.2, **style)
        x = np.array(sorted({r[1] for r in sub}))
        xf = np.geomspace(x[0], x[-1], 200)
        if rho == 0.0:
            ax.plot(xf, (xf * d - 1) / d, "k--", linewidth=1, label="theory, unit isotropic keys: (n−1)/d")
        xl = xf[xf > 1]
        ax.plot(xl, 1 - 1 / xl, "k:", linewidth=1.5, label="theory, least squares: 0 (n ≤ d), 1 − d/n")
        ax.axvline(1.0, color="gray", linewidth=0.6, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("t / d_k  (number of stored pairs / key dimension)")
        ax.set_title(f"keys N(0, Σ_ρ), equicorrelation ρ = {rho:g}")
        ax.grid(True, which="major", alpha=0.25)

        tw = ax.twinx()
        kap = sorted({(r[1], r[4]) for r in sub if r[2] == "linear_attention"})
        kx = np.array([k[0] for k in kap if np.isfinite(k[1])])
        ky = np.array([k[1] for k in kap if np.isfinite(k[1])])
        tw.plot(kx, ky, color="0.45", linestyle="-.", marker=".", linewidth=1, label="κ(KᵀK), median (right)")
        if rho == 0.0:
            g = 1 / xf[xf > 1.05]
            mp = ((1 + np.sqrt(g)) / (1 - np.sqrt(g))) ** 2
            tw.plot(1 / g, mp, color="0.45", linestyle=(0, (1, 3)), linewidth=1, label="κ Marchenko–Pastur")
        tw.set_yscale("log")
        twins.append(tw)
    top = max(r[3] for r in rows)
    axes[0].set_ylim(DISPLAY_FLOOR / 3, 3 * top)  # shared by every panel
    lo = min(tw.get_ylim()[0] for tw in twins)
    hi = max(tw.get_ylim()[1] for tw in twins)
    for tw in twins[:-1]:
        tw.set_ylim(lo, hi)
        tw.tick_params(labelright=False)
    twins[-1].set_ylim(lo, hi)
    twins[-1].set_ylabel("κ(K_tᵀK_t) (raw keys; ∞ for t < d)", color="0.35")
    axes[0].set_ylabel(
        f"relative recall error  Σ‖M k_i − v_i‖² / Σ‖v_i‖²   (< {DISPLAY_FLOOR:g} drawn at it)"
    )
    h1, l1 = axes[0].get_legend_handles_labels()
    h2, l2 = twins[0].get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncol=5, fontsize=8)
    fig.suptitle(f"Linear attention ignores the key covariance; least squares does not (d_k = d_v = {d})")
    return fig


def main(out_dir, quick=False):
    """Compute the recall curves, write ``covariance_penalty.csv`` and ``covariance_penalty.png``.

    Returns
    -------
    dict
        ``{(rho, method): {t_over_d: recall_error}}``.
    """
    out_dir = Path(out_dir)
    cfg = QUICK if quick else FULL
    rows = compute(cfg)
    write_csv(
        out_dir / "covariance_penalty.csv",
        ["rho", "t_over_d", "method", "recall_error", "kappa", "recall_se", "n_seeds"],
        rows,
    )
    save_figure(plot(rows, cfg["d"]), out_dir, "covariance_penalty.png")
    res = {}
    for rho, x, name, err, *_ in rows:
        res.setdefault((rho, name), {})[x] = err
    return res


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    res = main(args.out, quick=args.quick)
    for (rho, name), curve in res.items():
        pts = ", ".join(f"{x:g}: {curve[x]:.4g}" for x in (1.0, 2.0, 4.0) if x in curve)
        print(f"rho={rho:g} {name:28s} {pts}")
