"""RLS is right or refuses loudly: strong decay, decays that underflow, float32 (issue 9, part B).

References are exact: weighted least squares in rational arithmetic (``fractions.Fraction`` of the very
float64 inputs and decays the methods use), so every digit of the reference is right whatever cond(R_t) is.
Each method either matches it within its documented guarantee or raises ``FloatingPointError`` naming the
gate and the remedy; none returns a finite wrong answer. Tolerances (relative to max |V|):

* recurrent: 5e-5, its docstring's guarantee (measured error <= 4.4 kappa_hat eps / alpha_t, refused above
  1e-5);
* direct: 1e-5 (a Cholesky solve with cond * eps <= 1e-6 loses at most ~d_k times that);
* chunked: 1e-4 (chunk starts with cond * eps <= 1e-3; measured 4e-6 at log alpha = -3, the worst case
  it accepts here).
"""

from fractions import Fraction

import numpy as np
import pytest
from conftest import make_qkv, rel_err

import ttr_stats as tt

TOL = {"recurrent": 5e-5, "direct": 1e-5, "chunked": 1e-4}
METHODS = ("recurrent", "direct", "chunked", "auto")


def _solve(A, b):
    """Exact Gauss-Jordan elimination on Fractions."""
    n = len(A)
    M = [row[:] + [b[i]] for i, row in enumerate(A)]
    for c in range(n):
        p = next(r for r in range(c, n) if M[r][c] != 0)
        M[c], M[p] = M[p], M[c]
        for r in range(n):
            if r != c and M[r][c] != 0:
                f = M[r][c] / M[c][c]
                M[r] = [x - f * y for x, y in zip(M[r], M[c], strict=True)]
    return [M[i][n] / M[i][i] for i in range(n)]


def exact_rls(Q, K, V, log_alpha, ridge):
    r"""y_t = S_t R_t^{-1} q_t with R_t = gamma_t R_{t-1} + k_t k_t^T, R_0 = ridge I, S likewise, exactly
    (gamma_t = exp(log_alpha_t) rounded to float64 as the methods do, then exact)."""
    T, d = K.shape
    F = lambda x: Fraction(float(x))  # noqa: E731
    gam = np.exp(np.asarray(log_alpha, dtype=np.float64))
    R = [[F(ridge) if i == j else Fraction(0) for j in range(d)] for i in range(d)]
    S = [[Fraction(0)] * d for _ in range(V.shape[1])]
    Y = np.zeros((T, V.shape[1]))
    for t in range(T):
        g, k, v = F(gam[t]), [F(x) for x in K[t]], [F(x) for x in V[t]]
        R = [[g * R[i][j] + k[i] * k[j] for j in range(d)] for i in range(d)]
        S = [[g * S[i][j] + v[i] * k[j] for j in range(d)] for i in range(len(v))]
        x = _solve(R, [F(x) for x in Q[t]])
        Y[t] = [float(sum(s * xj for s, xj in zip(row, x, strict=True))) for row in S]
    return Y


def _data(seed, T=16, d=5, d_v=2):
    rng = np.random.default_rng(seed)
    Q = rng.standard_normal((T, d))
    K = rng.standard_normal((T, d)) / np.sqrt(d)
    return Q, K, rng.standard_normal((T, d_v))


def _check(layer, method, Q, K, V, la, ref, scale):
    """Match ``ref`` within the method's tolerance, or refuse naming the gate and the remedy."""
    try:
        Y = layer(Q, K, V, log_alpha=la, method=method)
    except FloatingPointError as exc:
        msg = str(exc)
        assert "alpha" in msg and ("ClosedForm" in msg or "ridge" in msg), msg
        return "refused"
    assert np.all(np.isfinite(Y))
    assert ref is not None, f"{method} returned a value where the decay underflows"
    err = float(np.max(np.abs(Y - ref)) / scale)
    assert err < TOL[layer.method_], (method, layer.method_, float(la[0]), err)
    return err


# --- strong decay, against exact weighted least squares -------------------------------------------------
@pytest.mark.parametrize("ridge", [1e-6, 1.0])
@pytest.mark.parametrize("log_alpha", [-0.5, -1.0, -2.0, -3.0, -5.0, -7.0, -10.0, -20.0, -50.0])
def test_every_method_matches_exact_weighted_least_squares_or_refuses(log_alpha, ridge):
    Q, K, V = _data(seed=int(-10 * log_alpha))
    la = np.full(Q.shape[0], log_alpha)
    ref = exact_rls(Q, K, V, la, ridge)
    layer = tt.recipes.rls(ridge=ridge)
    out = {m: _check(layer, m, Q, K, V, la, ref, np.abs(V).max()) for m in METHODS}
    if log_alpha >= -1.0 and ridge == 1e-6:
        # mild decay is not refused by any method (the guards are not blanket refusals)
        assert "refused" not in out.values(), out
    if log_alpha <= -7.0 and ridge == 1e-6:
        # before: the loop was 0.50 (-7) and 118 (-10) of max |V| wrong, direct raised a raw LinAlgError
        assert out["recurrent"] == "refused" and out["direct"] == "refused", out


def test_random_gates_and_write_strengths_match_or_refuse():
    """Varying gates (log alpha uniform in [-4, 0]) over 6 sequences: matched or refused, never wrong."""
    for seed in range(6):
        Q, K, V = _data(seed, T=14, d=4)
        la = np.random.default_rng(seed).uniform(-4.0, 0.0, 14)
        ref = exact_rls(Q, K, V, la, 1e-2)
        layer = tt.recipes.rls(ridge=1e-2)
        for m in METHODS:
            _check(layer, m, Q, K, V, la, ref, np.abs(V).max())


@pytest.mark.parametrize("log_alpha", [-700.0, -745.5, -1e3, -1e4])
@pytest.mark.parametrize("method", METHODS)
def test_decays_that_underflow_or_wind_up_past_float64_are_refused(log_alpha, method, rng):
    """exp(-1e4) is 0 in float64: before, it passed the layer's alpha > 0 check and the loop divided by
    0. Every method now refuses (FloatingPointError naming log_alpha and the remedy)."""
    Q, K, V = make_qkv(rng, batch=(2,), T=12, d_k=4, d_v=2)
    la = np.full((2, 12), log_alpha)
    la[0, :] = -0.1  # one healthy sequence in the batch does not hide the other
    with pytest.raises(FloatingPointError, match=r"(?s)alpha.*(ClosedForm|ridge)"):
        tt.recipes.rls()(Q, K, V, log_alpha=la, method=method)


@pytest.mark.parametrize("method", METHODS)
def test_underflow_message_names_log_alpha(method, rng):
    Q, K, V = make_qkv(rng, batch=(), T=8, d_k=3, d_v=2)
    with pytest.raises(FloatingPointError, match=r"log_alpha.*underflows to 0 in float64"):
        tt.recipes.rls()(Q, K, V, log_alpha=np.full(8, -1e4), method=method)


def test_the_loop_refuses_without_decay_only_at_a_vanishing_ridge(rng):
    """No decay: P only shrinks; the guard allows cond * eps up to 1e-3. ridge = 1e-14 with keys of norm 30
    puts P_0 k k^T at 1e17: refused; the default ridge on the same keys is not."""
    Q, K, V = make_qkv(rng, batch=(1,), T=20, d_k=6, d_v=2)
    with pytest.raises(FloatingPointError, match=r"ridge=1e-14.*larger ridge"):
        tt.recipes.rls(ridge=1e-14)(Q, 30 * K, V, method="recurrent")
    Y = tt.recipes.rls()(Q, 30 * K, V, method="recurrent")
    # 1e-5: both are within ~cond(R_t) eps of the exact answer, and |k|^2 ~ 5e3 next to R_0 = 1e-6 I makes
    # cond ~5e9, cond eps ~1e-6 (measured 1e-7)
    assert rel_err(Y, tt.recipes.rls()(Q, 30 * K, V, method="chunked")) < 1e-5


@pytest.mark.parametrize("forgetting", [1.0, 0.99])
def test_the_guard_accepts_ordinary_layers(forgetting, rng):
    """Default ridge, unnormalised keys of d_k = 32 (cond(R_t) ~ 1e9 while t < d_k), with and without a
    forgetting factor: the loop is not refused and agrees with the chunked method (1e-7: both are within
    ~cond eps of the exact answer, measured 1e-9)."""
    Q, K, V = make_qkv(rng, batch=(2,), T=96, d_k=32, d_v=4)
    layer = tt.recipes.rls(forgetting=forgetting)
    Y = layer(Q, K, V, method="recurrent")
    assert rel_err(Y, layer(Q, K, V, method="chunked")) < 1e-7


# --- float32 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("forgetting", [1.0, 0.99])
def test_float32_within_1e4_of_float64_at_T_16384(forgetting):
    """Every method auto can pick, and the loop, compute float32 inputs in float64: the outputs differ from
    the float64 call by the input rounding (2^-24) amplified by cond(R_t) < 1e2 once t >> d_k (measured
    5.4e-8). Before, the float32 loop from P_0 = 1e6 I was 3.4e-3 off at T = 16384."""
    rng = np.random.default_rng(7)
    T, d = 16384, 8
    Q, K, V = rng.standard_normal((T, d)), rng.standard_normal((T, d)) / np.sqrt(d), rng.standard_normal((T, 2))
    layer = tt.recipes.rls(forgetting=forgetting)
    picked = set()
    for m in ("recurrent", "chunked", "auto"):
        y64 = layer(Q, K, V, method=m)
        y32 = layer(*(x.astype(np.float32) for x in (Q, K, V)), method=m)
        picked.add(layer.method_)
        assert y32.dtype == np.float32
        assert np.max(np.abs(y32 - y64)) / np.max(np.abs(y64)) < 1e-4, m
    assert picked == {"recurrent", "chunked"}


def test_float32_direct_and_short_sequences(rng):
    """T = 48 (auto picks the loop on the host) and the direct method: float32 within 1e-4 of float64;
    the final state comes back in float32 too."""
    Q, K, V = make_qkv(rng, batch=(2,), T=48, d_k=6, d_v=2)
    layer = tt.recipes.rls(forgetting=0.99)
    for m in ("auto", "direct"):
        y64 = layer(Q, K / 3, V, method=m)
        y32, s32 = layer(*(x.astype(np.float32) for x in (Q, K / 3, V)), method=m, return_state=True)
        assert y32.dtype == np.float32 and s32.P.dtype == np.float32 and s32.M.dtype == np.float32
        assert np.max(np.abs(y32 - y64)) / np.max(np.abs(y64)) < 1e-4, m
    assert layer(Q, K, V).dtype == np.float64


def test_update_keeps_P_exactly_symmetric_and_matches_the_symmetrised_form():
    """P - w w^T with w = sqrt(s) Pk is exactly symmetric (w_i w_j = w_j w_i in floating point), so the
    loop needs no symmetrising pass; against the textbook form 0.5 (P' + P'^T), P' = (P - s Pk (Pk)^T) /
    gamma, it agrees to rounding (1e-12 relative: a few eps per step over 200 steps of a well-conditioned
    P), with and without decay."""
    import ttr_stats.optimizers as o

    rng = np.random.default_rng(5)
    opt = o.RecursiveLeastSquares(ridge=1e-2)
    st = opt.init(np, (3,), 5, 2, np.float64)
    ref = st
    for t in range(200):
        k = rng.standard_normal((3, 5))
        v = rng.standard_normal((3, 2))
        b = rng.uniform(0.1, 1.0, 3)
        a = None if t % 2 else np.full((3, 1), 0.97)
        st = opt.update(st, k, v, a, b)
        assert np.array_equal(st.P, np.swapaxes(st.P, -1, -2))
        gamma = 1.0 if a is None else a[..., 0]
        Pk = np.einsum("...ij,...j->...i", ref.P, k)
        s = b / (gamma + b * np.einsum("...i,...i->...", k, Pk))
        M = ref.M + (v - np.einsum("...ij,...j->...i", ref.M, k))[..., :, None] * (s[:, None] * Pk)[..., None, :]
        P = (ref.P - s[:, None, None] * Pk[..., :, None] * Pk[..., None, :]) / np.reshape(gamma, (-1, 1, 1))
        ref = type(st)(M, 0.5 * (P + np.swapaxes(P, -1, -2)))
    assert np.max(np.abs(st.P - ref.P)) / np.max(np.abs(ref.P)) < 1e-12
    assert np.max(np.abs(st.M - ref.M)) / np.max(np.abs(ref.M)) < 1e-12


def test_a_non_symmetric_initial_P_is_symmetrised_once():
    """The loop starts from 0.5 (P_0 + P_0^T): a user's slightly asymmetric P_0 gives the same outputs as
    its symmetric part (exactly: the same numbers reach the same code)."""
    import ttr_stats as tt

    rng = np.random.default_rng(6)
    Q, K, V = (rng.standard_normal((2, 12, 4)) for _ in range(3))
    layer = tt.recipes.rls(ridge=1.0)
    st = layer.memorize(K[:, :3], V[:, :3])
    skew = rng.standard_normal((2, 4, 4)) * 1e-3
    asym = type(st)(st.M, st.P + skew - np.swapaxes(skew, -1, -2) * 0.5)
    sym = type(st)(st.M, 0.5 * (asym.P + np.swapaxes(asym.P, -1, -2)))
    y1 = layer(Q, K, V, method="recurrent", initial_state=asym)
    y2 = layer(Q, K, V, method="recurrent", initial_state=sym)
    assert np.array_equal(y1, y2)
