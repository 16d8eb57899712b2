"""The exact chunked methods of ``least_squares`` (ClosedForm: least_squares, mesa) and ``rls``, and
ClosedForm's conjugate-gradient read (``solver="cg"``).

Every comparison is against the recurrent loop (the definition) and, where it exists, the direct method.

Tolerances (float64, relative RMS, :func:`conftest.rel_err`):

* ``TOL = 1e-10`` where the prefix systems are well conditioned (ridge >= 1e-2, or ridge 0 with Gaussian
  keys, cond < 1e4): the methods sum the same terms in a different order and solve the same systems, so
  they differ by ~cond * eps ~ 1e-12 (measured: at most 3e-12, least squares ridge 0 under gates, where
  the recurrent loop's running sums are the less accurate side: chunked vs direct 4e-15).
* ``TOL_RLS_SMALL_RIDGE = 1e-8`` for RLS at its default ridge 1e-6: R_t (t < d) has cond ~1e7, so every
  method is off the exact answer by ~1e-9 (measured: recurrent vs direct 5e-11, chunked vs recurrent 9e-11).
* ``TOL_STATE = 1e-9`` for final states (the test_methods tolerance): P = R^{-1} of RLS is compared
  where the loop has propagated it by Sherman-Morrison for T steps.
"""

import numpy as np
import pytest
from conftest import make_qkv, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w
from ttr_stats.methods import registry
from ttr_stats.methods.least_squares import chunked as ls_chunked
from ttr_stats.optimizers.closed_form import conjugate_gradient

TOL = 1e-10
TOL_RLS_SMALL_RIDGE = 1e-8
TOL_STATE = 1e-9


def gated(opt):
    return tt.TestTimeRegression(w.Gated(alpha=1.0), optimizer=opt)


def cg_layer(ridge=1.0, k=3):
    return gated(o.ClosedForm(ridge=ridge, solver="cg", max_iter=k))


#: name -> (layer factory, takes alpha gates, which chunked read runs)
LAYERS = {
    "least_squares": (tt.recipes.least_squares, False, "prefix"),  # ridge 0: minimum-norm solves
    "least_squares_ridge": (lambda: tt.recipes.least_squares(ridge=0.1), False, "woodbury"),
    "mesa": (tt.recipes.mesa, False, "woodbury"),  # no gates: the fixed base shares one factor
    "mesa_gated": (tt.recipes.mesa, True, "prefix"),
    "cg": (cg_layer, True, "cg"),
    "rls": (lambda: tt.recipes.rls(ridge=1e-2), False, None),
    "rls_forgetting": (lambda: tt.recipes.rls(ridge=1e-2, forgetting=0.99), False, None),
    "rls_gated": (lambda: gated(o.RecursiveLeastSquares(ridge=1e-2)), True, None),
}


def inputs(rng, name, batch, T, d_k, d_v, log_alpha=None):
    Q, K, V = make_qkv(rng, batch=batch, T=T, d_k=d_k, d_v=d_v)
    K = K / np.sqrt(d_k)  # keys of norm ~1: the RLS prior and the ridge stay comparable to the data
    kw = {"beta": rng.uniform(0.5, 1.5, batch + (T,))}
    if LAYERS[name][1]:
        # RLS's prior decays too: with d_k > T keys, log alpha ~ -0.25 leaves R_t at cond ~1e9 by t = 65
        # (wind-up, where every method loses digits); -0.025 keeps it below 1e4
        low = -0.05 if name.startswith("rls") else -0.5
        la = rng.uniform(low, 0.0, batch + (T,)) if log_alpha is None else log_alpha
        kw["log_alpha"] = la * np.ones(batch + (T,))
    return Q, K, V, kw


def check_against_reference(layer, Q, K, V, kw, chunk_size, tol=TOL):
    ref, ref_state = layer(Q, K, V, method="recurrent", return_state=True, **kw)
    Y, state = layer(Q, K, V, method="chunked", chunk_size=chunk_size, return_state=True, **kw)
    assert layer.method_ == "chunked"
    assert Y.shape == ref.shape and Y.dtype == ref.dtype
    err = rel_err(Y, ref)
    assert err < tol, err
    for f in state._fields:
        assert rel_err(getattr(state, f), getattr(ref_state, f)) < max(tol, TOL_STATE), f
    if "direct" in layer.supported_methods:
        assert rel_err(Y, layer(Q, K, V, method="direct", **kw)) < tol
    return Y


# --- odd shapes, chunk sizes that do not divide T ---------------------------------------------------------
SHAPES = [  # (T, d_k, d_v, chunk_size)
    (1, 1, 1, None),
    (63, 7, 3, 16),
    (65, 7, 2, None),
    (65, 100, 3, 64),
    (1000, 7, 5, 29),
    (40, 1, 1, 7),
    (23, 5, 9, 1),
    (23, 5, 4, 100),
]


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-dk{}-dv{}-C{}".format(*s))
def test_chunked_equals_recurrent_and_direct(name, shape, rng):
    T, d_k, d_v, C = shape
    if name == "least_squares" and d_k == 100 and T < 2 * d_k:
        pytest.skip("minimum-norm solves near t = d_k: covered at d_k = 7")
    batch = (1,) if d_k == 100 else (2,)  # one sequence of 100 x 100 solves is enough (time)
    Q, K, V, kw = inputs(rng, name, batch, T, d_k, d_v)
    check_against_reference(LAYERS[name][0](), Q, K, V, kw, C)


def test_paths_are_the_documented_ones(rng):
    """Each layer above really runs the read it is meant to cover (no silent fallback)."""
    for name, (factory, takes_alpha, path) in LAYERS.items():
        if path is None:
            continue
        layer = factory()
        P = layer._prepare(
            *inputs(rng, name, (1,), 8, 3, 2)[:3], None, -0.1 if takes_alpha else None, None, None
        )
        assert ls_chunked._path(layer.optimizer, P) == path, name


@pytest.mark.parametrize("log_alpha", [0.0, -7.0, -50.0])
@pytest.mark.parametrize("name", ["mesa_gated", "cg"])
def test_mesa_at_gate_extremes(name, log_alpha, rng):
    """A fixed ridge keeps every prefix well posed at any decay; -50 per step never overflows (the decays
    are exponentials of segment sums relative to each chunk start)."""
    Q, K, V, kw = inputs(rng, name, (2, 3), 45, 6, 4, log_alpha=log_alpha)
    Y = check_against_reference(LAYERS[name][0](), Q, K, V, kw, 8)
    assert np.all(np.isfinite(Y))


@pytest.mark.parametrize("forgetting", [1.0, 0.99])
def test_rls_at_its_default_ridge(forgetting, rng):
    Q, K, V = make_qkv(rng, batch=(3,), T=300, d_k=16, d_v=4)
    layer = tt.recipes.rls(forgetting=forgetting)
    check_against_reference(layer, Q, K / 4, V, {}, None, tol=TOL_RLS_SMALL_RIDGE)


@pytest.mark.parametrize("name", ["least_squares", "mesa", "mesa_gated", "cg", "rls_forgetting"])
def test_two_pieces_with_initial_state_equal_one_run(name, rng):
    layer = LAYERS[name][0]()
    Q, K, V, kw = inputs(rng, name, (2,), 50, 5, 3)
    full, state = layer(Q, K, V, method="chunked", chunk_size=8, return_state=True, **kw)
    s = 21
    first = {k: v[..., :s] for k, v in kw.items()}
    second = {k: v[..., s:] for k, v in kw.items()}
    y1, mid = layer(Q[..., :s, :], K[..., :s, :], V[..., :s, :], method="chunked", chunk_size=8,
                    return_state=True, **first)  # fmt: skip
    y2, end = layer(Q[..., s:, :], K[..., s:, :], V[..., s:, :], method="chunked", chunk_size=8,
                    initial_state=mid, return_state=True, **second)  # fmt: skip
    assert rel_err(np.concatenate([y1, y2], axis=-2), full) < TOL
    for f in state._fields:
        assert rel_err(getattr(end, f), getattr(state, f)) < TOL_STATE


@pytest.mark.parametrize("name", ["mesa", "cg", "least_squares_ridge"])
def test_outputs_before_s_are_bit_for_bit_causal(name, rng):
    """test_causality covers the recipes' default layers (prefix solves, RLS); this covers the Woodbury
    read of ClosedForm and the CG read: changing everything from s on leaves earlier outputs identical."""
    layer = LAYERS[name][0]()
    T = 37
    Q, K, V, kw = inputs(rng, name, (2,), T, 5, 3)
    for s in (0, 1, 8, 20, 36):
        Q2, K2, V2, kw2 = inputs(rng, name, (2,), T, 5, 3)
        Q2[..., :s, :], K2[..., :s, :], V2[..., :s, :] = Q[..., :s, :], K[..., :s, :], V[..., :s, :]
        for k in kw:
            kw2[k][..., :s] = kw[k][..., :s]
        for C in (7, None):
            Y = layer(Q, K, V, method="chunked", chunk_size=C, **kw)
            Y2 = layer(Q2, K2, V2, method="chunked", chunk_size=C, **kw2)
            assert np.array_equal(Y[..., :s, :], Y2[..., :s, :]), (s, C)


# --- float32 ----------------------------------------------------------------------------------------------
def test_float32_rls_stays_within_1e4_of_float64_at_T_16384(rng):
    """The methods compute in float64 for float32 inputs: at ridge 1e-6 the prefix systems have cond ~1e7,
    beyond float32 (measured, d = 16: chunked float32 5e-7 from float64; the float32 recurrent loop 4e-3;
    computing the chunked method in float32 refuses, cond * eps > 1e-3)."""
    Q, K, V = make_qkv(rng, batch=(1,), T=16384, d_k=16, d_v=4)
    K = K / 4
    layer = tt.recipes.rls(forgetting=0.99)
    y64 = layer(Q, K, V, method="chunked")
    y32 = layer(*(x.astype(np.float32) for x in (Q, K, V)), method="chunked")
    assert y32.dtype == np.float32
    assert rel_err(y32, y64) < 1e-4


@pytest.mark.parametrize("name", ["mesa_gated", "least_squares_ridge", "rls_forgetting"])
def test_float32_inputs_agree_with_the_float64_loop(name, rng):
    """1e-5: the float32 inputs are rounded (2^-24 ~ 6e-8 relative) and the outputs rounded once more;
    the float64 solve in between amplifies the input rounding by cond < 1e2 (measured ~1e-7)."""
    layer = LAYERS[name][0]()
    Q, K, V, kw = inputs(rng, name, (2,), 70, 6, 3)
    ref = layer(Q, K, V, method="recurrent", **kw)
    args = [x.astype(np.float32) for x in (Q, K, V)]
    Y = layer(*args, method="chunked", **{k: v.astype(np.float32) for k, v in kw.items()})
    assert Y.dtype == np.float32
    assert rel_err(Y, ref) < 1e-5


# --- refusing numerically singular prefix systems --------------------------------------------------------
@pytest.mark.parametrize("log_alpha", [-7.0, -50.0])
def test_rls_under_strong_decay_refuses_naming_the_gate_and_the_remedy(log_alpha, rng):
    """R_t = sum e^{-7 (t-j)} k_j k_j^T has cond ~e^{7 d} > 1e16: no digit of S_t R_t^{-1} q_t is left. The
    loop returns finite numbers here at -7 (P has not overflowed yet); the chunked method refuses."""
    layer = LAYERS["rls_gated"][0]()
    Q, K, V, kw = inputs(rng, "rls_gated", (2,), 60, 6, 3, log_alpha=log_alpha)
    with pytest.raises(FloatingPointError, match=r"numerically singular.*alpha / log_alpha.*ClosedForm"):
        layer(Q, K, V, method="chunked", **kw)


def test_rls_forgetting_wind_up_names_the_forgetting_factor(rng):
    Q, K, V = make_qkv(rng, batch=(2,), T=100, d_k=8, d_v=2)
    with pytest.raises(FloatingPointError, match=r"forgetting=0\.001.*wind-up"):
        tt.recipes.rls(forgetting=1e-3)(Q, K, V, method="chunked")


def test_rls_under_moderate_decay_is_exact(rng):
    """log alpha = -1 per step: R_t is well conditioned (cond ~1e3) though a 64-token chunk spans e^-64;
    the method shortens its chunks (at most e^-6.9 each) instead of refusing (measured 6e-13)."""
    layer = gated(o.RecursiveLeastSquares(ridge=1.0))
    Q, K, V, kw = inputs(rng, "rls_gated", (2,), 200, 8, 3, log_alpha=-1.0)
    check_against_reference(layer, Q, K, V, kw, None, tol=1e-10)


# --- hypothesis: shapes, regimes, chunk sizes -------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(["least_squares_ridge", "mesa", "mesa_gated", "cg", "rls", "rls_forgetting"]),
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple),
    T=st.integers(1, 40),
    d_k=st.integers(1, 6),
    d_v=st.integers(1, 4),
    C=st.one_of(st.none(), st.integers(1, 17)),
    log_gate=st.sampled_from([0.0, -1e-3, -0.3, -7.0, -50.0]),
    seed=st.integers(0, 2**16),
)
def test_property_chunked_equals_recurrent(name, batch, T, d_k, d_v, C, log_gate, seed):
    rng = np.random.default_rng(seed)
    Q, K, V, kw = inputs(rng, name, batch, T, d_k, d_v, log_alpha=log_gate)
    check_against_reference(LAYERS[name][0](), Q, K, V, kw, C)


# --- every backend --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["least_squares", "mesa", "mesa_gated", "cg", "rls_forgetting"])
def test_backends_agree_with_numpy(name, backend, rng):
    layer = LAYERS[name][0]()
    Q, K, V, kw = inputs(rng, name, (2,), 29, 4, 3)
    ref, ref_state = layer(Q, K, V, method="chunked", chunk_size=6, return_state=True, **kw)
    Y, state = layer(*(backend.put(x) for x in (Q, K, V)), method="chunked", chunk_size=6,
                     return_state=True, **{k: backend.put(v) for k, v in kw.items()})  # fmt: skip
    assert backend.is_native(Y)
    assert rel_err(backend.get(Y), ref) < TOL
    for f in state._fields:
        assert rel_err(backend.get(getattr(state, f)), getattr(ref_state, f)) < TOL


# --- the CG read: MesaNet's convention --------------------------------------------------------------------
def fla_naive_mesa_cg(q, k, v, g, lamb, beta, chunk_size, max_cg, eps=1e-5):
    """A NumPy transcription of flash-linear-attention 0.5.2 ``fla/ops/mesa_net/naive.py::naive_mesa_net_CG``.

    fla's layout (B, L, H, d) and names, mapped to ours: ``q, k, v`` = Q, K, V; ``g`` = log alpha (per
    token, scalar per head); ``beta`` = beta; ``lamb`` (H, d) = the ridge (ours is one scalar); ``h_kk`` =
    R, ``h_kv`` = S^T (so ``o = x @ h_kv`` = S x). The CG starts at x = 0 and adds ``eps`` to both
    denominators (``eps=0`` removes that float32 guard). L must be a multiple of ``chunk_size``.
    """
    B, L, H, d = q.shape
    C = chunk_size
    n = L // C

    def chunk(x):  # 'b (n c) h ... -> b h n c ...'
        x = x.reshape((B, n, C, H) + x.shape[3:])
        return np.moveaxis(x, 3, 1)

    qc, kc, vc, gc, bc = map(chunk, (q, k, v, g, beta))
    gc = np.cumsum(gc, axis=-1)
    pairwise = np.tril(np.exp(gc[..., :, None] - gc[..., None, :])) * bc[..., None, :]
    h_kv = np.zeros((B, H, d, v.shape[-1]))
    h_kk = np.zeros((B, H, d, d))
    kv_all = np.zeros((B, H, n, d, v.shape[-1]))
    kk_all = np.zeros((B, H, n, d, d))
    decay_k = np.exp(gc[..., -1:] - gc)
    decay_q = np.exp(gc)
    k_proc = kc * decay_k[..., None] * bc[..., None]
    for i in range(n):
        kv_all[:, :, i], kk_all[:, :, i] = h_kv, h_kk
        h_kk = (
            h_kk * np.exp(gc[:, :, i, -1])[..., None, None] + k_proc[:, :, i].swapaxes(-1, -2) @ kc[:, :, i]
        )
        h_kv = (
            h_kv * np.exp(gc[:, :, i, -1])[..., None, None] + k_proc[:, :, i].swapaxes(-1, -2) @ vc[:, :, i]
        )
    lam = lamb[None, :, None, None, :]

    def A(p):
        return (p * decay_q[..., None]) @ kk_all + ((p @ kc.swapaxes(-1, -2)) * pairwise) @ kc + lam * p

    x = np.zeros_like(qc)
    r = qc - A(x)
    p = r.copy()
    delta_old = (r * r).sum(-1)
    for _ in range(max_cg):
        Ap = A(p)
        alpha = delta_old / ((p * Ap).sum(-1) + eps)
        x = x + alpha[..., None] * p
        r = r - alpha[..., None] * Ap
        delta_new = (r * r).sum(-1)
        p = r + (delta_new / (delta_old + eps))[..., None] * p
        delta_old = delta_new
    o_ = (x * decay_q[..., None]) @ kv_all + ((x @ kc.swapaxes(-1, -2)) * pairwise) @ vc
    return np.moveaxis(o_, 1, 3).reshape(B, L, H, v.shape[-1])


def _fla_case(rng, B=1, H=2, T=32, d=6, dv=3):
    Q, K, V = make_qkv(rng, batch=(B, H), T=T, d_k=d, d_v=dv)
    la = rng.uniform(-0.3, 0.0, (B, H, T))
    beta = rng.uniform(0.5, 1.5, (B, H, T))
    to_fla = lambda x: np.moveaxis(x, 1, 2)  # noqa: E731  (B, H, T, ...) -> (B, T, H, ...)
    return Q, K, V, la, beta, to_fla


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("method", ["recurrent", "chunked", "direct"])
def test_cg_read_equals_fla_naive_mesa_net_cg(k, method, rng):
    """Same iteration as fla's chunked naive reference (x_0 = 0) once its 1e-5 denominator guard is
    removed: agreement to rounding (1e-10). With the guard (fla as shipped) the read differs by ~1e-6
    relative at these scales (asserted < 1e-4: the guard perturbs each step length by 1e-5 / p^T A p)."""
    Q, K, V, la, beta, to_fla = _fla_case(rng)
    ridge = 0.7
    layer = cg_layer(ridge=ridge, k=k)
    Y = layer(Q, K, V, log_alpha=la, beta=beta, method=method, chunk_size=8)
    lamb = np.full((Q.shape[1], Q.shape[-1]), ridge)
    args = (to_fla(Q), to_fla(K), to_fla(V), to_fla(la), lamb, to_fla(beta), 8, k)
    exact_fla = to_fla(fla_naive_mesa_cg(*args, eps=0.0))
    assert rel_err(Y, exact_fla) < TOL
    assert rel_err(Y, to_fla(fla_naive_mesa_cg(*args))) < 1e-4


def test_cg_with_max_iter_at_least_d_is_the_exact_solve(rng):
    """CG terminates in d steps in exact arithmetic; rounding leaves ~cond * eps (asserted 1e-8)."""
    Q, K, V, la, beta, _ = _fla_case(rng, d=6)
    exact = gated(o.ClosedForm(ridge=0.7))(Q, K, V, log_alpha=la, beta=beta, method="recurrent")
    for k in (6, 12):
        for method in ("recurrent", "chunked", "direct"):
            Y = cg_layer(ridge=0.7, k=k)(Q, K, V, log_alpha=la, beta=beta, method=method)
            assert rel_err(Y, exact) < 1e-8, (k, method)
    few = cg_layer(ridge=0.7, k=1)(Q, K, V, log_alpha=la, beta=beta, method="recurrent")
    assert rel_err(few, exact) > 1e-3  # one step is not the solve (the test can tell them apart)


def test_cg_one_step_is_the_linear_attention_read_rescaled(rng):
    """From x_0 = 0 one step gives x = (q^T q / q^T (R + rho I) q) q: y = S x, the gated linear-attention
    read S q times a per-token scalar. (fla's decoding kernel starts from the Jacobi guess
    q / (diag R + rho) instead: there max_iter = 0 is a diagonally rescaled GLA read; our chunked, direct
    and recurrent reads all follow the training kernel's x_0 = 0.)"""
    Q, K, V, la, beta, _ = _fla_case(rng)
    layer = cg_layer(ridge=0.7, k=1)
    Y, state = layer(Q, K, V, log_alpha=la, beta=beta, return_state=True, method="recurrent")
    q = Q[..., -1, :]
    Rq = np.einsum("...ij,...j->...i", state.R, q) + 0.7 * q
    scale = np.sum(q * q, -1) / np.sum(q * Rq, -1)
    gla = np.einsum("...ij,...j->...i", state.S, q)
    assert rel_err(Y[..., -1, :], scale[..., None] * gla) < TOL


def test_conjugate_gradient_handles_zero_right_hand_sides():
    import array_api_compat.numpy as xp

    A = np.diag([1.0, 2.0, 3.0])
    b = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    x = conjugate_gradient(xp, lambda p: p @ A, b, 5)
    assert np.array_equal(x[0], np.zeros(3))
    assert np.allclose(x[1], [1.0, 0.5, 1 / 3], rtol=1e-12)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"solver": "lu"}, "solver must be 'exact' or 'cg'"),
        ({"max_iter": 5}, "max_iter=5 only applies to solver='cg'"),
        ({"solver": "cg", "ridge": 0.0}, "needs ridge > 0"),
        ({"solver": "cg", "ridge": 1.0, "max_iter": 0}, "max_iter must be >= 1"),
        ({"solver": "cg", "ridge": 1.0, "max_iter": 2.5}, "max_iter must be an integer"),
    ],
)
def test_bad_cg_parameters_raise_clearly(params, match, rng):
    Q, K, V = make_qkv(rng, T=4)
    with pytest.raises(ValueError, match=match):
        tt.TestTimeRegression(optimizer=o.ClosedForm(**params))(Q, K, V)


def test_cg_has_no_memory_matrix_and_the_default_read_is_unchanged(rng):
    Q, K, V = make_qkv(rng, T=10)
    layer = cg_layer()
    _, state = layer(Q, K, V, return_state=True)
    with pytest.raises(ValueError, match="nonlinear in q"):
        layer.optimizer.memory(state)
    assert o.ClosedForm(ridge=1.0).cg_steps is None
    assert o.ClosedForm(ridge=1.0, solver="cg").cg_steps == 30  # MesaNet's default
    assert repr(o.ClosedForm(ridge=1.0)) == "ClosedForm(ridge=1.0)"


# --- registry and auto ---------------------------------------------------------------------------------
def test_registered_with_rank_5_and_auto_rules(rng):
    for fam in ("least_squares", "rls"):
        m = {m.name: m for m in registry.methods_for(fam)}["chunked"]
        assert m.rank == 5 and not m.window and not m.per_dimension
    Q, K, V = make_qkv(rng, batch=(1,), T=300, d_k=4, d_v=2)
    rls, mesa = tt.recipes.rls(forgetting=0.99), tt.recipes.mesa()
    rls(Q, K, V)
    mesa(Q, K, V)
    assert (rls.method_, mesa.method_) == ("chunked", "chunked")
    mesa(Q, K, V, alpha=rng.uniform(0.9, 1.0, (1, 300)))
    assert mesa.method_ == "recurrent"  # prefix solves are no faster than the loop on the host
    Qs, Ks, Vs = make_qkv(rng, batch=(1,), T=8, d_k=4, d_v=2)
    rls(Qs, Ks, Vs)
    assert rls.method_ == "recurrent"
