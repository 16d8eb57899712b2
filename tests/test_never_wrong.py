"""Every recipe, every method, near-degenerate inputs: a clean refusal or a right answer, never a finite
wrong one (issue 9, "What proves it").

Hypothesis draws a recipe of :func:`ttr_stats.recipes.registry` (all of them, whatever the registry holds
when the suite runs), one of its ``supported_methods``, small shapes (T <= 40, d_k <= 6, 0-2 batch dims),
keys that are generic, coincident, clustered within 1e-10 or exactly collinear, Q and K scales up to 1e4,
log-gates from 0 down to -1e4 (constant, random, or one -1e4 spike) and write strengths at their edges
(1e-12, 1e-6, 1, 2, the delta-rule bound 2 / ||k||^2, 1e4). Each call must either

* raise ``ValueError``, ``TypeError``, ``FloatingPointError`` or ``MemoryError`` (``numpy.linalg.LinAlgError``,
  a ``ValueError`` subclass, is not clean) whose message names an argument of the call or a hyperparameter
  of the layer, or
* return a finite array that agrees with the recurrent method (the definition) where that returns, and
  with this file's own float64 evaluation of the definition where a family has a closed form.

Tolerances (first-order rounding analysis, evaluated on the drawn problem, ``C = 32`` safety factor on
``eps = 2.2e-16``; a method that is wrong by cancellation, underflow or a bad solve is off by many orders
more). Writing ``|.|`` for entrywise absolute values and ``Gamma_ts = exp(L_t - L_s)`` for the decay:

* linear in the memory (identity covariance, batch GD): ``C eps (T + d) sum_s b_s |v_s| |q_t|^T |k_s|
  Gamma_ts (1 + |L_t| + |L_s|)``, the error of any summation order of the sum that defines y_t, plus the
  cumulative log-gate rounding; ``normalize="sum"`` adds ``|y_t|`` times the same sum of the denominator,
  over ``|den|``;
* exact least squares and RLS: ``y = S A^+ q`` with ``A = R + ridge``; ``C eps (T + d) (||S_abs|| ||x|| +
  ||S|| ||A^+|| ||A_abs|| ||x||)``, the perturbation bound of a solve (condition-aware: ``||A^+|| ||A_abs||``
  is the condition number). At ridge 0 the minimum-norm solution is discontinuous at the rank cut of
  ``psd_solve`` (``100 d eps lambda_max``): draws with a nonzero eigenvalue within a factor 1e3 of the cut
  are not compared (the float rank is a coin toss there), exact zeros are found by exact (Fraction) rank;
* softmax-type smoothers (order 0): ``C eps ((T + d) max |v| + (d + 2) sum_s w_s |v_s - y| l_ts)``, the
  values' rounding plus the logits' (``l_ts`` bounds the logit's magnitude with absolute values);
* local linear / polynomial: the 500-digit reference and rounding bound of
  ``tests/test_local_polynomial_degenerate.py`` (small cases, no gates);
* kernel ridge: the solve bound with ``||k_q A^{-1}|| ||G_abs||``, each kernel entry's relative error
  ``eps (1 + |log k|)``;
* delta rule: ``C eps (T + d) ||q_t|| sum_s beta_s |v_s| ||k_s|| prod_r max(1, ||I - beta_r k_r k_r^T||)``
  (errors are not amplified by a contracting step and grow by at most the step's norm otherwise).

Families with no model here (neural memories, and any family added later) get the refusal-or-finite
property in every regime and cross-method agreement on benign draws (generic keys, scales <= 10, log-gates
>= -7, no beta) within 1e-7 of max |y| + max |V| (measured worst 1e-12 or better on these draws).

Where the suite found a finite wrong answer in a file others are editing, the regime is excused in the
property (``known_wrong``) and pinned by a strict xfail with the exact case at the end of this file.
"""

from __future__ import annotations

import math
import re
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ttr_stats as tt
from ttr_stats._array import psd_solve  # noqa: F401 - the rank cut the least-squares model follows

EPS = float(np.finfo(np.float64).eps)
C = 32.0
CLEAN = (ValueError, TypeError, FloatingPointError, MemoryError)
RECIPES = {r.name: r.factory for r in tt.recipes.registry()}
CALL_ARGS = ("Q", "K", "V", "alpha", "log_alpha", "beta", "method", "lengths", "chunk_size", "d_k", "d_v")
BENIGN_TOL = 1e-7


def call(layer, method, Q, K, V, kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return layer(Q, K, V, method=method, **kw)


def _takes(name, gate):
    """Whether a recipe accepts call-time log_alpha / beta at all (else drawing them only tests a refusal)."""
    layer = RECIPES[name]()
    s = int(layer.optimizer.steps_per_token)
    d = 2
    Q, K, V = np.ones((3, d)), np.ones((3 * s, d)), np.ones((3 * s, 1))
    shape = (3, layer.regressor.output_dim(d)) if layer.weights.per_dimension else (3,)
    kw = {"log_alpha": np.full(shape, -0.5)} if gate else {"beta": np.full(3 * s, 0.5)}
    if not gate and isinstance(layer.weights, tt.weights.Gated):
        kw["log_alpha"] = np.full(shape, -0.5)
    try:
        call(layer, "recurrent", Q, K, V, kw)
    except ValueError:
        return False
    return True


TAKES_GATES = {n: _takes(n, True) for n in RECIPES}
TAKES_BETA = {n: _takes(n, False) for n in RECIPES}
RLS_GUARANTEE = {"recurrent": 5e-5, "direct": 1e-5, "chunked": 1e-4}  # of max |V|, documented
SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- drawing a case ---------------------------------------------------------------------------------------
def _keys(rng, regime, n, d):
    base = rng.standard_normal(d)
    if regime == "coincident":
        return np.tile(base, (n, 1))
    if regime == "clustered":
        return base + 1e-10 * rng.standard_normal((n, d))
    if regime == "collinear" and d > 1:
        u = base / np.linalg.norm(base)
        return rng.standard_normal((n, 1)) * u
    return rng.standard_normal((n, d))


@st.composite
def cases(draw, names=None):
    name = draw(st.sampled_from(sorted(RECIPES) if names is None else names))
    layer = RECIPES[name]()
    small = layer.nonparametric and getattr(layer.regressor, "order", 0) >= 1 or layer.neural
    label = dict(
        recipe=name,
        method=draw(st.sampled_from(layer.supported_methods)),
        T=draw(st.integers(1, 12 if small else 40)),
        d=draw(st.integers(1, 6)),
        d_v=draw(st.integers(1, 3)),
        batch=draw(st.sampled_from([(), (2,), (1, 2)])),
        keys=draw(st.sampled_from(["generic", "coincident", "clustered", "collinear"])),
        q_like_k=draw(st.booleans()),
        sq=draw(st.sampled_from([1.0, 1e-3, 10.0, 1e2, 1e4])),
        sk=draw(st.sampled_from([1.0, 1e-3, 10.0, 1e2, 1e4])),
        gate=draw(st.sampled_from([None, 0.0, -1e-3, -1.0, -7.0, -50.0, -1e4, "random", "spike"]))
        if TAKES_GATES[name]
        else None,
        beta=draw(st.sampled_from([None, None, 1e-12, 1e-6, 1.0, 2.0, "edge", 1e4]))
        if TAKES_BETA[name]
        else None,
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    return build(label)


def build(label):
    """The case a label describes: ``(layer, method, Q, K, V, kwargs, label, benign)``, deterministic."""
    layer = RECIPES[label["recipe"]]()
    T, d, batch, regime = label["T"], label["d"], label["batch"], label["keys"]
    sq, sk, gate, beta = label["sq"], label["sk"], label["gate"], label["beta"]
    rng = np.random.default_rng(label["seed"])
    s = int(layer.optimizer.steps_per_token)
    nb = math.prod(batch)
    K = np.stack([_keys(rng, regime, T * s, d) for _ in range(nb)]).reshape(batch + (T * s, d)) * sk
    if label["q_like_k"]:
        Q = K[..., ::s, :] * (sq / sk)
    else:
        Q = rng.standard_normal(batch + (T, d)) * sq
    V = rng.standard_normal(batch + (T * s, label["d_v"]))
    kw = {}
    if gate is not None or isinstance(layer.weights, tt.weights.Gated):
        g = -1.0 if gate is None else gate
        shape = batch + ((T, layer.regressor.output_dim(d)) if layer.weights.per_dimension else (T,))
        if g == "random":
            la = rng.uniform(-10.0, 0.0, shape)
        elif g == "spike":
            la = np.full(shape, -0.1)
            t = int(rng.integers(T))
            la[(..., t, slice(None)) if layer.weights.per_dimension else (..., t)] = -1e4
        else:
            la = np.full(shape, float(g))
        kw["log_alpha"] = la
    if beta is not None:
        if beta == "edge":  # the delta rule's stability bound beta ||k||^2 = 2, exactly at the edge
            kk = np.sum(K * K, axis=-1)
            b = np.where(kk > 0, 2.0 / np.where(kk > 0, kk, 1.0), 1.0)
        else:
            b = np.full(batch + (T * s,), float(beta))
        kw["beta"] = b
    benign = (
        regime == "generic" and sq <= 10 and sk <= 10 and gate in (None, 0.0, -1e-3, -1.0) and beta is None
    )
    return layer, label["method"], Q, K, V, kw, label, benign


# --- the clean refusal ------------------------------------------------------------------------------------
def _argument_names(layer):
    names = set(CALL_ARGS)
    for key in layer.get_params(deep=True):
        names.add(key.split("__")[-1])
    for comp in (layer.weights, layer.regressor, layer.optimizer):
        names.update(k.split("__")[-1] for k in comp.get_params(deep=True))
    return names


# Known and tracked by the strict xfails at the end of this file (ttr_stats/layer.py and the RLS loop are
# being edited by others; a fix there belongs to them): excused in the property so that it guards the rest.
DIVERGED = "produced a non-finite output from finite inputs"  # TestTimeRegression._check_output


def known_wrong(label):
    """Regimes this file cannot judge yet (see the pinned tests at the end). RLS's loop used to return
    finite wrong answers once a write was large against the ridge (its P cancelled to nothing, which the
    norm estimate read as well conditioned); its guard now also checks tr(R_t P_t) = d, and the regime is
    back in the property."""
    if label["recipe"] == "kernel_regression":
        # the model here takes its Gram matrix from KernelRidge.kern too (the shifted expansion of
        # similarity.sq_distances), so it cannot judge keys far apart at large scale, where the expansion's
        # documented error eps ||k - k_0||^2 exceeds this file's direct-difference bound (generic keys at
        # scale 1e2: 1.7e-13 against 2.3e-14); clustered keys are pinned with an 80-digit reference in
        # test_kernel_ridge_parallel_on_clustered_keys (fixed by the shift)
        return label["keys"] != "generic" or label["sk"] >= 10 or label["sq"] >= 10
    return False


def assert_clean(exc, layer, label, excuse_diverged=True):
    assert not isinstance(exc, np.linalg.LinAlgError), (label, repr(exc))
    msg = str(exc)
    if excuse_diverged and isinstance(exc, FloatingPointError) and DIVERGED in msg:
        return
    named = [
        n
        for n in _argument_names(layer)
        if re.search(rf"(?<![A-Za-z0-9_]){re.escape(n)}(?![A-Za-z0-9_])", msg)
    ]
    assert named, f"{type(exc).__name__} names no argument: {msg!r} ({label})"


# --- float64 models of the definition: (y, tol) per batch element, None where undetermined ------------
def _log_decay(P, i):
    """log Gamma_ts (T, T_k, d_g), -inf outside the causal window, and |L_t| + |L_s|."""
    g = np.asarray(P.g[i], dtype=np.float64)
    L = np.cumsum(g, axis=0)
    s = P.steps_per_token
    tok = np.arange(P.K.shape[-2]) // s
    lw = L[:, None, :] - L[tok][None, :, :]
    t = np.arange(P.T)[:, None]
    keep = tok[None, :] <= t
    if P.window is not None:
        keep &= tok[None, :] > t - int(P.window)
    lw = np.where(keep[..., None], lw, -np.inf)
    labs = np.abs(L)[:, None, :] + np.abs(L[tok])[None, :, :]
    return lw, np.where(keep[..., None], labs, 0.0), L


def model_identity(layer, P, i):
    q, k, v, b = (np.asarray(x[i]) for x in (P.Q, P.K, P.V, P.b))
    lw, labs, _ = _log_decay(P, i)
    G = np.exp(lw)
    kern = np.einsum("tj,sj,tsj->ts", q, k, np.broadcast_to(G, lw.shape[:2] + (q.shape[-1],))) * b
    Gabs = G * (1.0 + labs)
    kabs = (
        np.einsum("tj,sj,tsj->ts", abs(q), abs(k), np.broadcast_to(Gabs, lw.shape[:2] + (q.shape[-1],))) * b
    )
    n = P.T + P.d_k
    if getattr(layer.optimizer, "normalize", None) == "sum":
        den = kern.sum(1)
        with np.errstate(all="ignore"):
            y = kern @ v / den[:, None]
            tol = C * EPS * n * (kabs @ abs(v) + abs(y) * kabs.sum(1)[:, None]) / abs(den)[:, None]
        return y, tol
    return kern @ v, C * EPS * n * (kabs @ abs(v))


def _norm(x, ord=None):
    """A norm that does not underflow: kernel values of 1e-243 square to 0 in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = float(np.max(abs(x), initial=0.0))
    return 0.0 if m == 0 or not np.isfinite(m) else m * float(np.linalg.norm(x / m, ord))


def _exact_rank(rows):
    rows = [list(map(Fraction, r)) for r in {tuple(map(float, r)) for r in rows}]
    rank, d = 0, len(rows[0]) if rows else 0
    for c in range(d):
        p = next((r for r in range(rank, len(rows)) if rows[r][c] != 0), None)
        if p is None:
            continue
        rows[rank], rows[p] = rows[p], rows[rank]
        for r in range(len(rows)):
            if r != rank and rows[r][c] != 0:
                f = rows[r][c] / rows[rank][c]
                rows[r] = [a - f * bb for a, bb in zip(rows[r], rows[rank], strict=True)]
        rank += 1
    return rank


def model_least_squares(layer, P, i, decaying_ridge):
    q, k, v, b = (np.asarray(x[i]) for x in (P.Q, P.K, P.V, P.b))
    lw, labs, L = _log_decay(P, i)
    ridge = float(layer.optimizer.ridge)
    d = P.d_k
    Y = np.zeros((P.T, P.d_v))
    tol = np.zeros((P.T, P.d_v))
    for t in range(P.T):
        w = np.exp(lw[t, :, 0]) * b
        wa = w * (1.0 + labs[t, :, 0])
        R = (k.T * w) @ k
        S = (v.T * w) @ k
        Aabs = (abs(k).T * wa) @ abs(k)
        Sabs = (abs(v).T * wa) @ abs(k)
        rho = ridge * math.exp(L[t, 0]) if decaying_ridge else ridge
        A = R + rho * np.eye(d)
        Aabs = Aabs + rho * (1.0 + abs(L[t, 0])) * np.eye(d)
        lam, U = np.linalg.eigh(A)
        if rho > 0:
            if lam.min() <= 0:
                return None
            keep = np.ones(d, bool)
        else:
            lmax = max(lam.max(), 0.0)
            cut = max(100.0 * d * EPS * lmax, float(np.finfo(np.float64).smallest_normal))
            r = _exact_rank(k[w > 0]) if np.any(w > 0) else 0
            nonzero = np.argsort(lam)[::-1][:r]
            if any(cut / 1e3 < lam[j] < cut * 1e3 for j in nonzero):
                return None  # the float rank is a coin toss here
            keep = lam > cut
        inv = np.where(keep, 1.0 / np.where(keep, lam, 1.0), 0.0)
        Ainv = (U * inv) @ U.T
        x = Ainv @ q[t]
        Y[t] = S @ x
        nx = _norm(x)
        tol[t] = (
            C * EPS * (P.T + d) * (_norm(Sabs, 2) * nx + _norm(S, 2) * _norm(Ainv, 2) * _norm(Aabs, 2) * nx)
        )
    return Y, tol


def model_softmax(layer, P, i):
    q, k, v, b = (np.asarray(x[i]) for x in (P.Q, P.K, P.V, P.b))
    lw, labs, _ = _log_decay(P, i)
    reg = layer.regressor
    ell = reg.log_similarity(np, q, k)
    mag = np.maximum(abs(ell), abs(reg.log_similarity(np, abs(q), abs(k))))
    with np.errstate(divide="ignore"):
        logit = ell + lw[..., 0] + np.log(b)
    mag = mag + labs[..., 0] + abs(np.log(b))
    m = logit.max(1, keepdims=True)
    w = np.exp(logit - m)
    w /= w.sum(1, keepdims=True)
    y = w @ v
    spread = np.einsum("ts,tsc->tc", w * mag, abs(v[None] - y[:, None]))
    vmax = np.max(abs(v)) if v.size else 0.0
    return y, C * EPS * ((P.T + P.d_k) * vmax + (P.d_k + 2) * spread)


def model_kernel_ridge(layer, P, i):
    reg = layer.regressor
    q, k, v = (np.asarray(x[i]) for x in (P.Q, P.K, P.V))
    lam = float(reg.ridge)
    Y = np.zeros((P.T, P.d_v))
    tol = np.zeros((P.T, P.d_v))
    tiny = float(np.finfo(np.float64).tiny)
    for t in range(P.T):
        Kt, Vt = k[: t + 1], v[: t + 1]
        G = reg.kern(np, Kt, Kt)
        kq = reg.kern(np, q[t : t + 1], Kt)[0]
        mG = 1.0 + np.clip(-np.log(np.maximum(G, tiny)), 0, 745)
        mq = 1.0 + np.clip(-np.log(np.maximum(kq, tiny)), 0, 745)
        A = G + lam * np.eye(t + 1)
        ev, U = np.linalg.eigh(A)
        if ev.min() <= 0:
            return None
        Ainv = (U / ev) @ U.T
        alpha = Ainv @ Vt
        Y[t] = kq @ alpha
        na = _norm(alpha, 2)
        tol[t] = (
            C
            * EPS
            * (t + 1 + P.d_k)
            * (_norm(kq * mq) * na + _norm(kq @ Ainv) * (_norm(G * mG, 2) + lam) * na)
        )
    return Y, tol


def model_delta(layer, P, i):
    """No own y (the recurrence is the definition); the bound on the difference of two evaluations."""
    q, k, v, b = (np.asarray(x[i]) for x in (P.Q, P.K, P.V, P.b))
    opt = layer.optimizer
    name = type(opt).__name__
    s = P.steps_per_token
    kk = np.sum(k * k, axis=-1)
    step = b  # the effective step of the write (S -= step (S k - v) k^T)
    if name == "LMS":
        amp = np.maximum(1.0, abs(1.0 - b * kk))
    elif name == "NLMS":  # step beta / ||k||^2
        step = np.where(kk > 0, b / np.where(kk > 0, kk, 1.0), 0.0)
        amp = np.maximum(1.0, abs(1.0 - np.where(kk > 0, b, 0.0)))
    elif name == "Implicit":  # step beta / (1 + beta ||k||^2): always contracting
        step = b / (1.0 + b * kk)
        amp = np.ones_like(kk)
    elif name == "LeakyLMS":
        l2 = float(opt.l2)
        amp = np.maximum(1.0, np.maximum(abs(1.0 - b * l2), abs(1.0 - b * l2 - b * kk)))
    else:
        amp = 1.0 + b * kk
    write = step * np.max(abs(v), axis=-1) * np.max(abs(k), axis=-1) * np.sqrt(k.shape[-1])
    grow = np.cumprod(amp)
    acc = np.cumsum(write)
    per_tok = (acc * grow)[s - 1 :: s]
    qn = np.max(abs(q), axis=-1) * np.sqrt(q.shape[-1])  # >= ||q||, no underflow
    with np.errstate(over="ignore"):
        tol = C * EPS * (P.T * s + P.d_k) * qn * per_tok
    return None, np.broadcast_to(tol[:, None], (P.T, P.d_v))


def model(layer, P):
    """``(y or None, tol)`` arrays of the batch shape, or None when the family has no model here."""
    fam = layer.family
    order = getattr(layer.regressor, "order", None)
    if fam in ("identity", "batch_gd"):
        f = lambda i: model_identity(layer, P, i)  # noqa: E731
    elif fam in ("least_squares", "rls") and P.g.shape[-1] == 1 and P.steps_per_token == 1:
        f = lambda i: model_least_squares(layer, P, i, decaying_ridge=fam == "rls")  # noqa: E731
    elif fam == "kernel_smoother" and order == 0 and type(layer.regressor.similarity).__name__ == "ExpDot":
        f = lambda i: model_softmax(layer, P, i)  # noqa: E731
    elif fam == "kernel_ridge":
        f = lambda i: model_kernel_ridge(layer, P, i)  # noqa: E731
    elif fam == "delta" and type(layer.optimizer).__name__ in ("LMS", "NLMS", "Implicit", "LeakyLMS"):
        f = lambda i: model_delta(layer, P, i)  # noqa: E731
    else:
        return None
    ys, tols = [], []
    for i in np.ndindex(*P.batch_shape):
        out = f(i)
        if out is None:
            return "undetermined"
        ys.append(out[0])
        tols.append(out[1])
    return ys, tols


def _flat(Y, batch):
    Y = np.asarray(Y)
    return [Y[i] for i in np.ndindex(*batch)]


# --- the property -------------------------------------------------------------------------------------
def check_case(layer, method, Q, K, V, kw, label, benign):
    try:
        Y = call(layer, method, Q, K, V, kw)
    except CLEAN as exc:
        assert_clean(exc, layer, label)
        return "refused"
    Y = np.asarray(Y)
    used = layer.method_
    assert np.all(np.isfinite(Y)), label
    if layer.family == "rls":
        return _check_rls(layer, used, Q, K, V, kw, Y, label)
    try:
        Yr = np.asarray(call(layer, "recurrent", Q, K, V, kw))
    except CLEAN as exc:
        assert_clean(exc, layer, label)
        Yr = None
    P = layer._prepare(Q, K, V, None, kw.get("log_alpha"), kw.get("beta"), None)
    mdl = model(layer, P)
    batch = P.batch_shape
    if mdl is None:  # no sensitivity model: agreement on benign draws only
        if benign and Yr is not None:
            err = np.max(abs(Y - Yr), initial=0.0) / (np.max(abs(Yr), initial=0.0) + np.max(abs(V)))
            assert err <= BENIGN_TOL, (label, err)
        return "returned"
    if mdl == "undetermined":
        return "undetermined"
    ys, tols = mdl
    Yb = _flat(Y, batch)
    Yrb = None if Yr is None else _flat(Yr, batch)
    for j in range(len(tols)):
        tol = np.where(np.isfinite(tols[j]), tols[j], np.inf)
        if Yrb is not None:
            # both evaluations are within tol of the exact value: they differ by at most 2 tol
            bad = abs(Yb[j] - Yrb[j]) > 2 * tol
            assert not bad.any(), (label, "vs recurrent", _worst(Yb[j], Yrb[j], tol))
        if ys[j] is not None:
            bad = abs(Yb[j] - ys[j]) > 2 * tol
            assert not bad.any(), (label, "vs float64 model", _worst(Yb[j], ys[j], tol))
    return "returned"


def _check_rls(layer, used, Q, K, V, kw, Y, label):
    """RLS is not compared with its loop: Sherman-Morrison is not backward stable, so each method is held
    to its documented guarantee (``RecursiveLeastSquares`` docstring, ``tests/test_rls_reliability.py``)
    against this file's solve-based evaluation of exact weighted least squares, or the first-order solve
    bound where that is larger (an ill-conditioned R_t)."""
    P = layer._prepare(Q, K, V, None, kw.get("log_alpha"), kw.get("beta"), None)
    mdl = model(layer, P)
    if mdl in (None, "undetermined"):
        return "undetermined"
    ys, tols = mdl
    for j, (Yj, yj, tj) in enumerate(zip(_flat(Y, P.batch_shape), ys, tols, strict=True)):
        vmax = float(np.max(abs(np.asarray(P.V[np.unravel_index(j, P.batch_shape)])), initial=0.0))
        tol = np.maximum(2 * tj, RLS_GUARANTEE[used] * vmax)
        bad = abs(Yj - yj) > tol
        assert not bad.any(), (label, used, "vs exact weighted least squares", _worst(Yj, yj, tol))
    return "returned"


def _worst(a, b, tol):
    r = abs(a - b) / np.maximum(tol, 1e-300)
    idx = np.unravel_index(np.argmax(r), r.shape)
    return dict(at=idx, got=float(a[idx]), ref=float(b[idx]), tol=float(tol[idx]), ratio=float(r[idx]))


@SETTINGS
@given(cases())
def test_every_recipe_and_method_is_right_or_refuses(case):
    assume(not known_wrong(case[6]))
    check_case(*case)


# --- what the suite found and is not fixed here (strict: each must start passing when fixed) -----------
RLS_LOOP_CASES = [
    # found by this suite: before the guard's trace check the loop returned these, measured against exact
    # (Fraction) weighted least squares as error / max |V| (chunked and direct are within 5e-15 on all
    # three); now it refuses each:
    # 1.41 (sequence 0, t = 2: -3.359 instead of -0.3776) and 5.58 (sequence 1, t = 8: 6.707 instead of
    # 0.7317): d = 1, log alpha = -50, beta at the delta-rule edge 2 / k^2 (up to ~1e3 here)
    dict(method="recurrent", T=14, d=1, d_v=1, batch=(1, 2), keys="collinear", q_like_k=True, sq=1.0, sk=1.0,
         gate=-50.0, beta="edge", seed=1),
    # 1.9e-3 (t = 3: 0.07495 instead of 0.07164): no decay, beta = 2, keys ~1e4 (beta k^2 / ridge ~ 1e14)
    dict(method="recurrent", T=40, d=1, d_v=1, batch=(2,), keys="clustered", q_like_k=True, sq=1e4, sk=1e4,
         gate=None, beta=2.0, seed=160),
    # 4.6e-4 (t = 1: 0.44637 instead of 0.44679): log alpha = -7, beta = 1e4, keys ~1e4
    dict(method="recurrent", T=3, d=1, d_v=1, batch=(), keys="clustered", q_like_k=True, sq=1e4, sk=1e4,
         gate=-7.0, beta=1e4, seed=1),
]  # fmt: skip


@pytest.mark.parametrize(
    "case", RLS_LOOP_CASES, ids=["edge-beta-decay-50", "beta2-scale1e4", "beta1e4-decay7"]
)
def test_rls_loop_is_right_or_refuses(case):
    layer, method, Q, K, V, kw, label, _ = build(dict(recipe="rls", **case))
    check_case(layer, method, Q, K, V, kw, label, False)


DIVERGED_CASES = [
    dict(recipe="titans", method="recurrent", T=6, d=2, d_v=3, batch=(2,), keys="generic", q_like_k=False,
         sq=1e4, sk=1e4, gate=None, beta=1.0, seed=96638637),
    dict(recipe="leaky_lms", method="chunked", T=36, d=2, d_v=3, batch=(2,), keys="clustered", q_like_k=False,
         sq=1e4, sk=1e4, gate=-1.0, beta=None, seed=3),
]  # fmt: skip


@pytest.mark.parametrize("case", DIVERGED_CASES, ids=["titans", "leaky_lms"])
def test_divergence_error_names_the_step(case):
    """A diverged delta rule / Momentum raises a FloatingPointError naming the argument the user can change
    (``beta``, ``lr``); before, it said "Use float64, a smaller step, or ClosedForm with a ridge", and
    "ridge" is not a parameter of these layers."""
    layer, method, Q, K, V, kw, label, _ = build(case)
    with pytest.raises(FloatingPointError) as info:
        call(layer, method, Q, K, V, kw)
    msg = str(info.value)
    assert re.search(r"\bbeta\b|\blr\b", msg), msg


def test_kernel_ridge_parallel_on_clustered_keys():
    """Two keys 1.3e-8 apart at scale 1e2 (rbf gamma = 1/4, ridge 1e-3, cond(G + ridge) ~ 2e3): exact
    (80-digit decimal) y_1 = -0.4744296672965878; recurrent -0.47442966729478 and direct -0.47442966729477
    (error 1.8e-12, within the bound 3.3e-11), parallel -0.47442966870352 (error 1.4e-9). Consistent with a
    Gram matrix from the expanded |q|^2 + |k|^2 - 2 q.k (cancellation of ~4e4 eps in the exponent) instead
    of the direct difference. Fixed by shifting both by the first key before the expansion
    (similarity.sq_distances)."""
    case = dict(recipe="kernel_regression", method="parallel", T=2, d=4, d_v=1, batch=(), keys="clustered",
                q_like_k=True, sq=100.0, sk=100.0, gate=None, beta=None, seed=3)  # fmt: skip
    check_case(*build(case))
