r"""The paper's identities, checked numerically against t (float64, D = 16, one fixed seed).

Each curve is, at every step t, the largest absolute difference between a layer's output and an
independent reference, divided by the reference's scale at that step (its largest absolute entry), and
floored at 1e-17 so the log scale can show exact agreement:

(a) linear attention = one batch-GD step from 0 with step 1 (paper §3);
(b) least squares (ridge 0, minimum norm for t < D) = one Newton step from 0, :math:`M = S_t R_t^+`,
    computed here from the prefix statistics with ``np.linalg.pinv`` (not by the library);
(c) Gated DeltaNet = leaky LMS reparameterised: ``leaky_lms`` on V equals ``gated_deltanet`` with
    :math:`(\alpha_t, \eta_t)` from :func:`ttr_stats.optimizers.leaky_lms_to_gated_deltanet` on
    :math:`\alpha_t V` (time-varying step sizes);
(d) ``TestTimeRegression(ExponentialDecay(1), Linear(), IdentityCovariance())`` = linear attention;
(e) Mamba-2 with a constant gate 0.9 = RetNet(0.9);
(f) NLMS interpolates the current pair: with Q = K, :math:`y_t = M_t k_t = v_t` (reference: V);
(g) Longhorn's closed form (delta rule with :math:`\beta = \delta/(1+\delta\|k\|^2)`) = the proximal
    argmin, solved here from its normal equations, one step at each t from the library's previous state;
(h) recurrent vs direct vs parallel methods of linear attention, recurrent vs direct of
    ``least_squares(ridge=1e-3)``;
(i) DeltaNet with the call-time step :math:`\beta_t = 1/\|k_t\|^2` = ``nlms()`` (used by the
    covariance-penalty figure).

Writes ``identities.csv`` (t, then one column per identity) and ``identities.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

D = 16
T_FULL, T_QUICK = 128, 32
SEED = 20250121
FLOOR = 1e-17

#: (CSV column, legend label) of each identity, in plotting order
IDENTITIES = (
    ("a_linear_attention_vs_batch_gd", "(a) linear attention = batch GD, 1 step, lr 1"),
    ("b_least_squares_vs_newton", "(b) least squares = Newton step $S_t R_t^+$"),
    ("c_gated_deltanet_vs_leaky_lms", "(c) Gated DeltaNet on $\\alpha v$ = leaky LMS"),
    ("d_ttr_identity_cov_vs_linear_attention", "(d) TTR(ExpDecay(1), Linear, IdentityCov) = LA"),
    ("e_mamba2_vs_retnet", "(e) Mamba-2, $\\alpha_t$ = 0.9 = RetNet(0.9)"),
    ("f_nlms_interpolation", "(f) NLMS residual $M_t k_t - v_t$"),
    ("g_longhorn_vs_proximal_argmin", "(g) Longhorn = proximal argmin"),
    ("h_la_recurrent_vs_direct", "(h1) LA recurrent vs direct"),
    ("h_la_recurrent_vs_parallel", "(h2) LA recurrent vs parallel"),
    ("h_ridge_ls_recurrent_vs_direct", "(h3) LS(ridge 1e-3) recurrent vs direct"),
    ("i_deltanet_inv_norm_vs_nlms", "(i) DeltaNet, $\\beta_t = 1/\\|k_t\\|^2$ = NLMS"),
)


def step_error(Y, Yref):
    """Per-step relative error: ``max_j |Y[t, j] - Yref[t, j]| / max_j |Yref[t, j]|``, floored at 1e-17.

    Y, Yref: arrays of shape (T, d) (or (T, a, b) for matrices, flattened per step).
    """
    Y = np.asarray(Y, dtype=np.float64).reshape(len(Y), -1)
    Yref = np.asarray(Yref, dtype=np.float64).reshape(len(Yref), -1)
    num = np.max(np.abs(Y - Yref), axis=1)
    scale = np.max(np.abs(Yref), axis=1)
    rel = num / np.where(scale > 0, scale, 1.0)
    return np.maximum(rel, FLOOR)


def newton_step_outputs(Q, K, V, rcond=1e-10):
    """Reference for (b): one Newton step from M = 0 on every prefix, by hand.

    The objective ½ Σ_{i≤t} ‖v_i − M k_i‖² has gradient −S_t at M = 0 and Hessian R_t (acting on rows of
    M), so the Newton step is M_t = S_t R_t^+ (pseudo-inverse: minimum norm when t < D). ``rcond``: for
    t < D the null-space eigenvalues of R_t are rounding noise (~1e-15 of the largest) while the genuine
    ones of Gaussian keys at D = 16 stay above ~1e-5 of it, so any cut-off in between gives the same R_t^+.
    """
    T = len(Q)
    Y = np.empty((T, V.shape[-1]))
    for t in range(1, T + 1):
        Kt, Vt = K[:t], V[:t]
        R = Kt.T @ Kt
        S = Vt.T @ Kt
        M = S @ np.linalg.pinv(R, rcond=rcond, hermitian=True)
        Y[t - 1] = M @ Q[t - 1]
    return Y


def longhorn_step_errors(K, V, delta):
    """Reference for (g): the proximal step from the library's own previous state, at every t.

    For each t the library takes one step (``memorize`` on the single pair (k_t, v_t) with
    ``initial_state`` = its state after t − 1 pairs). Independently, the argmin of
    ½‖M − M_{t−1}‖² + (δ_t/2)‖v_t − M k_t‖² solves its normal equations
    (M − M_{t−1}) − δ_t (v_t − M k_t) k_tᵀ = 0, i.e. M (I + δ_t k_t k_tᵀ) = M_{t−1} + δ_t v_t k_tᵀ, with a
    dense linear solve (no Sherman-Morrison). Comparing the memory M_t itself (not a read-out) checks every
    entry; starting each step from the library's state keeps the comparison local, so an error at one
    step cannot hide behind or be amplified by later ones.
    """
    layer = tt.recipes.longhorn()
    d = K.shape[-1]
    T = len(K)
    errs = np.empty(T)
    state = None
    M_prev = np.zeros((V.shape[-1], d))
    for t in range(T):
        k, v, dl = K[t], V[t], delta[t]
        state = layer.memorize(K[t : t + 1], V[t : t + 1], beta=delta[t : t + 1], initial_state=state)
        M_lib = layer.optimizer.memory(state)
        A = np.eye(d) + dl * np.outer(k, k)  # symmetric
        B = M_prev + dl * np.outer(v, k)
        M_ref = np.linalg.solve(A, B.T).T  # M A = B  <=>  A M^T = B^T
        errs[t] = step_error(M_lib[None], M_ref[None])[0]
        M_prev = M_lib
    return errs


def compute(T, seed=SEED):
    """All identity curves for a sequence of length T: dict column -> array (T,)."""
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((T, D))
    K = rng.standard_normal((T, D))
    V = rng.standard_normal((T, D))
    Ku = K / np.linalg.norm(K, axis=-1, keepdims=True)  # unit keys for the LMS family (stable steps)
    Qu = Q / np.linalg.norm(Q, axis=-1, keepdims=True)
    r = tt.recipes
    out = {}

    Y_la = r.linear_attention()(Q, K, V)
    out["a_linear_attention_vs_batch_gd"] = step_error(r.batch_gd(steps=1, lr=1.0)(Q, K, V), Y_la)

    out["b_least_squares_vs_newton"] = step_error(r.least_squares()(Q, K, V), newton_step_outputs(Q, K, V))

    # (c) time-varying leaky-LMS steps; decay lambda = 0.25 gives alpha_t = 1 - beta_t lambda in [0.8, 0.95]
    beta = rng.uniform(0.2, 0.8, size=T)
    lam = 0.25
    alpha, eta, vscale = tt.optimizers.leaky_lms_to_gated_deltanet(beta, lam)
    Y_leaky = r.leaky_lms(beta=1.0, l2=lam)(Qu, Ku, V, beta=beta)
    Y_gdn = r.gated_deltanet()(Qu, Ku, vscale[:, None] * V, alpha=alpha, beta=eta)
    out["c_gated_deltanet_vs_leaky_lms"] = step_error(Y_gdn, Y_leaky)

    ttr = tt.TestTimeRegression(
        weights=tt.weights.ExponentialDecay(1.0),
        regressor=tt.regressors.Linear(),
        optimizer=tt.optimizers.IdentityCovariance(),
    )
    out["d_ttr_identity_cov_vs_linear_attention"] = step_error(ttr(Q, K, V), Y_la)

    out["e_mamba2_vs_retnet"] = step_error(r.mamba2()(Q, K, V, alpha=np.full(T, 0.9)), r.retnet(0.9)(Q, K, V))

    # (f) reading with q_t = k_t after step t's update gives M_t k_t, which NLMS makes equal to v_t
    out["f_nlms_interpolation"] = step_error(r.nlms()(K, K, V), V)

    out["g_longhorn_vs_proximal_argmin"] = longhorn_step_errors(K, V, rng.uniform(0.1, 2.0, size=T))

    la = r.linear_attention()
    Y_rec = la(Q, K, V, method="recurrent")
    out["h_la_recurrent_vs_direct"] = step_error(la(Q, K, V, method="direct"), Y_rec)
    out["h_la_recurrent_vs_parallel"] = step_error(la(Q, K, V, method="parallel"), Y_rec)
    ls = r.least_squares(ridge=1e-3)
    out["h_ridge_ls_recurrent_vs_direct"] = step_error(
        ls(Q, K, V, method="direct"), ls(Q, K, V, method="recurrent")
    )

    inv_norm2 = 1.0 / np.sum(K * K, axis=-1)
    out["i_deltanet_inv_norm_vs_nlms"] = step_error(r.deltanet()(Q, K, V, beta=inv_norm2), r.nlms()(Q, K, V))
    return out


def plot(t, curves):
    fig = Figure(figsize=(10, 5.5), layout="constrained")
    ax = fig.subplots()
    styles = ["-", "--", "-.", ":"]
    markers = ["o", "s", "^", "v", "D", "x", "+", "*", "<", ">", "P"]
    for j, (col, label) in enumerate(IDENTITIES):
        ax.plot(
            t,
            curves[col],
            linestyle=styles[j % 4],
            marker=markers[j % len(markers)],
            markevery=max(1, len(t) // 12),
            markersize=4,
            linewidth=1,
            label=label,
        )
    eps = np.finfo(np.float64).eps
    ax.axhline(eps, color="k", linewidth=0.6, alpha=0.5)
    ax.text(t[-1], eps * 1.3, "float64 eps", fontsize=7, alpha=0.7, ha="right", va="bottom")
    ax.axvline(D, color="gray", linewidth=0.6, linestyle=":")
    top = max(1e-11, 30 * max(float(np.max(curves[c])) for c, _ in IDENTITIES))
    ax.text(D * 1.02, top / 3, "t = D", fontsize=7, color="gray", va="top")
    exact = [label.split(")")[0] + ")" for c, label in IDENTITIES if np.all(curves[c] <= FLOOR)]
    if exact:
        ax.text(
            t[len(t) // 2],
            FLOOR * 1.6,
            "bit-for-bit equal at every t (drawn at the floor): " + ", ".join(exact),
            fontsize=7,
            ha="center",
            va="bottom",
        )
    ax.set_yscale("log")
    ax.set_ylim(FLOOR / 2, top)
    ax.set_xlabel("t")
    ax.set_ylabel("max |output − reference| / max |reference|   (floored at 1e-17)")
    ax.set_title(f"Identities of the test-time regression taxonomy (float64, D = {D}, seed {SEED})")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def main(out_dir, quick=False):
    """Compute every identity curve, write ``identities.csv`` and ``identities.png`` in ``out_dir``.

    Returns
    -------
    dict
        Identity column -> its maximum error over t.
    """
    out_dir = Path(out_dir)
    T = T_QUICK if quick else T_FULL
    curves = compute(T)
    t = np.arange(1, T + 1)
    cols = [c for c, _ in IDENTITIES]
    write_csv(
        out_dir / "identities.csv",
        ["t", *cols],
        ([int(t[i]), *(float(curves[c][i]) for c in cols)] for i in range(T)),
    )
    save_figure(plot(t, curves), out_dir, "identities.png")
    return {c: float(np.max(curves[c])) for c in cols}


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    for name, err in main(args.out, quick=args.quick).items():
        print(f"{name:45s} {err:.3g}")
