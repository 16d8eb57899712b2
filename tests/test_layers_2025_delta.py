"""The 2025-26 delta-family layers (issue 13) against flash-linear-attention's references and their stated
objectives.

Tolerances:

* against fla, 2e-5 (max abs, O(1) outputs): fla's references compute in float32 on the CPU; ours run the
  same recursion in float32 in a different operation order, T = 32 steps of a contractive recursion with
  unit keys, i.e. a few hundred float32 roundings of size 6e-8 (measured maxima in the report line of each
  test, all below 3e-6).
* float64 identities, 1e-12 relative: the same recursion in two algebraically equal forms (the stated
  objective's gradient step, a scalar-gate special case), O(T) roundings of 1.1e-16 at T <= 32.

fla's naive files are loaded by path (fla's package ``__init__`` imports Triton, absent on the CPU).
Where fla-core 0.5.2 has no naive reference (the gated Oja rule: a Triton kernel only; the
preconditioned delta rule: on fla's main branch only) the reference here is a line-by-line
transcription of fla's code, cited at the function. Comba has no recipe of its own: with p = k it is
Gated DeltaNet, for any p the DPLR rows of ``rwkv7()``; fla-core 0.5.2's recurrent and chunk Comba
references are two different recursions (decayed vs undecayed error read), each matched (see the Comba
block).
"""

import importlib.util
import pathlib

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.optimizers.generalized_delta import interleave

TOL_FLA = 2e-5
TOL_F64 = 1e-12
B, T, H, DK, DV = 2, 32, 2, 8, 6


def _fla(op):
    """fla's ``fla/ops/<op>/naive.py`` as a module, or skip."""
    pytest.importorskip("torch")
    pytest.importorskip("einops")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla-core) is not installed")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "ops" / op / "naive.py"
    if not path.exists():
        pytest.skip(f"fla has no {op} naive reference")
    mod_spec = importlib.util.spec_from_file_location(f"_fla_naive_{op.replace('/', '_')}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


def _unit(rng, shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ours(layer, Q, K, V, **gates):
    """Our layer in float32 on (B, H, T, d) arrays."""
    f32 = {k: np.asarray(v, np.float32) for k, v in gates.items()}
    return layer(Q.astype(np.float32), K.astype(np.float32), V.astype(np.float32), method="recurrent",
                 return_state=True, **f32)  # fmt: skip


def _report(name, err):
    print(f"{name}: max |ours - fla| = {err:.2e}")
    assert err < TOL_FLA, (name, err)


def _bthd(torch, x):
    """(B, H, T, d) numpy -> fla's (B, T, H, d) float32 tensor."""
    return torch.tensor(np.swapaxes(x, 1, 2), dtype=torch.float32)


# --- KDA ----------------------------------------------------------------------------------------------
def test_kda_equals_fla_naive_recurrent_and_chunk():
    torch = pytest.importorskip("torch")
    fla = _fla("kda")
    rng = np.random.default_rng(0)
    Q, K = _unit(rng, (B, H, T, DK)), _unit(rng, (B, H, T, DK))
    V = rng.standard_normal((B, H, T, DV))
    g = -rng.uniform(0.0, 0.5, (B, H, T, DK))  # natural-log per-channel decay
    beta = rng.uniform(0.2, 1.0, (B, H, T))
    scale = DK**-0.5
    Y, state = _ours(tt.recipes.kda(), Q * scale, K, V, log_alpha=g, beta=beta)
    args = [_bthd(torch, x) for x in (Q, K, V, g)] + [
        torch.tensor(np.swapaxes(beta, 1, 2), dtype=torch.float32)
    ]
    o, S = fla.naive_recurrent_kda(*args, scale=scale, output_final_state=True)
    _report("kda vs naive_recurrent_kda", float(np.abs(Y - np.swapaxes(o.numpy(), 1, 2)).max()))
    _report("kda state (M = S^T)", float(np.abs(state.M - np.swapaxes(S.numpy(), -1, -2)).max()))
    o2, _ = fla.naive_chunk_kda(*args, scale=scale, chunk_size=16)
    _report("kda vs naive_chunk_kda", float(np.abs(Y - np.swapaxes(o2.numpy(), 1, 2)).max()))


def test_kda_with_scalar_gates_is_gated_deltanet(rng):
    Q, K, V = _unit(rng, (B, T, DK)), _unit(rng, (B, T, DK)), rng.standard_normal((B, T, DV))
    a, beta = rng.uniform(0.6, 1.0, (B, T)), rng.uniform(0.2, 1.0, (B, T))
    y = tt.recipes.kda()(Q, K, V, alpha=np.repeat(a[..., None], DK, -1), beta=beta)
    ref = tt.recipes.gated_deltanet()(Q, K, V, alpha=a, beta=beta, method="recurrent")
    assert np.abs(y - ref).max() < TOL_F64 * np.abs(ref).max()


def test_kda_step_is_sgd_on_the_newest_pair_from_the_channel_decayed_memory(rng):
    """M_t = M' - beta grad l(M'), l(M) = 1/2 ||v - M k||^2, M' = M_{t-1} Diag(alpha): the gradient taken
    by finite differences-free autograd-free algebra: grad l(M) = -(v - Mk) k^T, checked entrywise
    against a central difference (exact for a quadratic up to rounding)."""
    M0 = rng.standard_normal((DV, DK))
    k, v, a, b = _unit(rng, (DK,)), rng.standard_normal(DV), rng.uniform(0.5, 1, DK), 0.7
    layer = tt.recipes.kda()
    _, st = layer(k[None], k[None], v[None], alpha=a[None], beta=np.array([b]),
                  initial_state=tt.optimizers.MemoryState(M0), return_state=True)  # fmt: skip
    Mp = M0 * a
    loss = lambda M: 0.5 * np.sum((v - M @ k) ** 2)  # noqa: E731
    h = 1e-3
    grad = np.zeros_like(Mp)
    for i in range(DV):
        for j in range(DK):
            E = np.zeros_like(Mp)
            E[i, j] = h
            grad[i, j] = (loss(Mp + E) - loss(Mp - E)) / (2 * h)
    # central differences of a quadratic are exact; rounding ~ eps * |loss| / h ~ 1e-13
    assert np.abs(st.M - (Mp - b * grad)).max() < 1e-10


# --- GDN-2 --------------------------------------------------------------------------------------------
def test_gdn2_equals_fla_naive_recurrent_and_chunk():
    torch = pytest.importorskip("torch")
    fla = _fla("gdn2")
    rng = np.random.default_rng(1)
    Q, K = _unit(rng, (B, H, T, DK)), _unit(rng, (B, H, T, DK))
    V = rng.standard_normal((B, H, T, DV))
    g = -rng.uniform(0.0, 0.5, (B, H, T, DK))
    b = rng.uniform(0.0, 1.0, (B, H, T, DK))  # erase gate (key axis)
    wg = rng.uniform(0.0, 1.0, (B, H, T, DV))  # write gate (value axis)
    scale = DK**-0.5
    Y, state = _ours(tt.recipes.gdn2(), Q * scale, interleave(K, b), interleave(V, wg), log_alpha=g)
    args = [_bthd(torch, x) for x in (Q, K, V, g, b, wg)]
    o, S = fla.naive_recurrent_gdn2(*args, scale=scale, output_final_state=True)
    _report("gdn2 vs naive_recurrent_gdn2", float(np.abs(Y - np.swapaxes(o.numpy(), 1, 2)).max()))
    _report("gdn2 state (M = S^T)", float(np.abs(state.M - np.swapaxes(S.numpy(), -1, -2)).max()))
    o2, _ = fla.naive_chunk_gdn2(*args, scale=scale, chunk_size=16)
    _report("gdn2 vs naive_chunk_gdn2", float(np.abs(Y - np.swapaxes(o2.numpy(), 1, 2)).max()))


def test_gdn2_with_equal_scalar_gates_is_kda(rng):
    Q, K, V = _unit(rng, (B, T, DK)), _unit(rng, (B, T, DK)), rng.standard_normal((B, T, DV))
    a, beta = rng.uniform(0.6, 1.0, (B, T, DK)), rng.uniform(0.2, 1.0, (B, T))
    ones_k, ones_v = np.ones_like(K), np.ones_like(V)
    y = tt.recipes.gdn2()(Q, interleave(K, ones_k), interleave(V, ones_v), alpha=a,
                          beta=interleave(beta, beta, scalar=True))  # fmt: skip
    ref = tt.recipes.kda()(Q, K, V, alpha=a, beta=beta)
    assert np.abs(y - ref).max() < TOL_F64 * np.abs(ref).max()


def test_gdn2_step_is_preconditioned_sgd_on_the_gated_value_regressed_on_the_erase_key(rng):
    """From a warm start M_0 (float64): M_1 = M' - grad l(M') Diag(b)^-1, M' = M_0 Diag(alpha),
    l(M) = 1/2 ||w * v - M (b * k)||^2, grad l(M) = -(w * v - M (b * k)) (b * k)^T, for b > 0 (the
    docstring's objective, written out; 1e-12 relative: a handful of roundings)."""
    M0 = rng.standard_normal((DV, DK))
    k, v = _unit(rng, (DK,)), rng.standard_normal(DV)
    al, b, wg = rng.uniform(0.5, 1.0, DK), rng.uniform(0.2, 1.0, DK), rng.uniform(0.2, 1.0, DV)
    _, st = tt.recipes.gdn2()(k[None], interleave(k[None], b[None]), interleave(v[None], wg[None]),
                              alpha=al[None], initial_state=tt.optimizers.MemoryState(M0),
                              return_state=True)  # fmt: skip
    Mp = M0 * al
    kt = b * k
    grad = -np.outer(wg * v - Mp @ kt, kt)
    ref = Mp - grad / b
    assert np.abs(st.M - ref).max() < TOL_F64 * np.abs(ref).max()


# --- DPLR / IPLR / RWKV-7 -----------------------------------------------------------------------------
def _dplr_inputs(rng):
    Q, K = _unit(rng, (B, H, T, DK)), _unit(rng, (B, H, T, DK))
    V = rng.standard_normal((B, H, T, DV))
    kappa = _unit(rng, (B, H, T, DK))
    eta = rng.uniform(0.0, 1.0, (B, H, T, DK))  # RWKV-7's in-context learning rate
    g = -rng.uniform(0.0, 0.5, (B, H, T, DK))
    return Q, K, V, -kappa, kappa * eta, g


def test_rwkv7_dplr_equals_fla_dplr_and_iplr_recurrence():
    torch = pytest.importorskip("torch")
    fla = _fla("generalized_delta_rule/dplr")
    fla_i = _fla("generalized_delta_rule/iplr")
    rng = np.random.default_rng(2)
    Q, K, V, a, b, g = _dplr_inputs(rng)
    scale = DK**-0.5
    Vrows = interleave(V, np.zeros_like(V), np.zeros_like(V))
    Y, state = _ours(tt.recipes.rwkv7(), Q * scale, interleave(K, a, b), Vrows, log_alpha=g)
    t = [torch.tensor(x, dtype=torch.float32) for x in (Q, K, V, a, b, g)]  # fla's [B, H, T, D]
    o, S = fla.dplr_recurrence(*t)
    _report("rwkv7 vs dplr_recurrence", float(np.abs(Y - o.numpy()).max()))
    _report("rwkv7 state (M = S^T)", float(np.abs(state.M - np.swapaxes(S.numpy(), -1, -2)).max()))
    o2, _ = fla.dplr_chunkwise(*t, chunk_size=16)
    _report("rwkv7 vs dplr_chunkwise", float(np.abs(Y - o2.numpy()).max()))
    iplr = tt.TestTimeRegression(tt.weights.Uniform(), tt.regressors.Linear(), tt.recipes.rwkv7().optimizer)
    Yi, _ = _ours(iplr, Q * scale, interleave(K, a, b), Vrows)
    oi, _ = fla_i.iplr_recurrence(*t[:5])
    _report("iplr vs iplr_recurrence", float(np.abs(Yi - oi.numpy()).max()))


def test_rwkv7_step_is_a_preconditioned_sgd_step_with_decoupled_decay(rng):
    """a = -kappa, b = eta * kappa: M_t = M Diag(alpha) - grad l(M) Diag(eta),
    l(M) = 1/2 ||M kappa||^2 - v^T M (k / eta), grad l(M) = (M kappa) kappa^T - v (k / eta)^T."""
    M0 = rng.standard_normal((DV, DK))
    k, kap, v = _unit(rng, (DK,)), _unit(rng, (DK,)), rng.standard_normal(DV)
    eta, al = rng.uniform(0.2, 1.0, DK), rng.uniform(0.5, 1.0, DK)
    layer = tt.recipes.rwkv7()
    _, st = layer(k[None], interleave(k[None], -kap[None], (eta * kap)[None]),
                  interleave(v[None], 0 * v[None], 0 * v[None]), alpha=al[None],
                  initial_state=tt.optimizers.MemoryState(M0), return_state=True)  # fmt: skip
    grad = np.outer(M0 @ kap, kap) - np.outer(v, k / eta)
    ref = M0 * al - grad * eta
    assert np.abs(st.M - ref).max() < TOL_F64 * np.abs(ref).max()


# --- Comba ----------------------------------------------------------------------------------------------
# fla-core 0.5.2 ships two Comba references that are NOT the same recursion (they differ by 8e-2 on these
# inputs; measured in the tests below):
# * naive_recurrent_comba: S <- exp(g) S; u = beta (v - S^T p); S <- S + k u^T. In the memory layout
#   (M = S^T): M_t = M' + beta_t (v_t - M' p_t) k_t^T, M' = alpha_t M_{t-1}: the delta step on the newest
#   pair's error read at p_t from the decayed memory, written along k_t. With p = k it is Gated DeltaNet
#   (the "Comba with p = k").
# * naive_chunk_comba reads the error from the undecayed memory (its W uses the exclusive decay cumsum):
#   M_t = alpha_t M_{t-1} + beta_t (v_t - M_{t-1} p_t) k_t^T, the decay decoupled from the error as in
#   RWKV-7 (with p = k this is not Gated DeltaNet).
# Both are the DPLR form M_{t-1}(alpha I + a b^T) + beta v k^T with b = k and a = -c beta p, c = alpha_t
# (recurrent) or 1 (chunk): rwkv7() with key rows (k, -p, k), beta rows (beta, c beta, 1), value rows
# (v, 0, 0) and the scalar gate on every channel.
def _comba_inputs(rng):
    Q, K, P = (_unit(rng, (B, H, T, DK)) for _ in range(3))
    V = rng.standard_normal((B, H, T, DV))
    beta = rng.uniform(0.2, 1.0, (B, H, T))
    g = -rng.uniform(0.0, 0.5, (B, H, T))
    return Q, K, V, P, beta, g


def _fla_comba(torch, fla, Q, K, V, P, beta, g, scale):
    """fla's naive_recurrent_comba (output, final state) and naive_chunk_comba (output) on (B, H, T, d)
    arrays; outputs (B, H, T, d_v), state [B, H, K, V]."""
    q, k, v, p = (_bthd(torch, x) for x in (Q, K, V, P))
    bt, gt = (torch.tensor(np.swapaxes(x, 1, 2), dtype=torch.float32) for x in (beta, g))
    o, S = fla.naive_recurrent_comba(q, k, v, p, beta=bt, g=gt, scale=scale, output_final_state=True)
    o2, _ = fla.naive_chunk_comba(q, k, v, p, g=gt, beta=bt, chunk_size=16, scale=scale)
    return np.swapaxes(o.numpy(), 1, 2), np.swapaxes(o2.numpy(), 1, 2), S.numpy()


def _comba_as_dplr(Q, K, V, P, beta, g, scale, decayed_read):
    """rwkv7()'s DPLR layer on Comba's rows (see the block comment), float32."""
    c = np.exp(g) if decayed_read else np.ones_like(g)
    rows = interleave(K, -P, K)
    brows = interleave(beta, c * beta, np.ones_like(beta), scalar=True)
    Vrows = interleave(V, np.zeros_like(V), np.zeros_like(V))
    gk = np.repeat(g[..., None], DK, -1)
    return _ours(tt.recipes.rwkv7(), Q * scale, rows, Vrows, log_alpha=gk, beta=brows)


def test_comba_with_p_equal_k_is_gated_deltanet_as_fla_naive_recurrent():
    torch = pytest.importorskip("torch")
    fla = _fla("comba")
    rng = np.random.default_rng(5)
    Q, K, V, _, beta, g = _comba_inputs(rng)
    scale = DK**-0.5
    o, o2, S = _fla_comba(torch, fla, Q, K, V, K, beta, g, scale)
    Y, state = _ours(tt.recipes.gated_deltanet(), Q * scale, K, V, log_alpha=g, beta=beta)
    _report("gated_deltanet vs naive_recurrent_comba(p=k)", float(np.abs(Y - o).max()))
    _report("gated_deltanet state (M = S^T)", float(np.abs(state.M - np.swapaxes(S, -1, -2)).max()))
    # fla's chunk reference reads the undecayed memory: not Gated DeltaNet, but the decoupled DPLR form
    assert float(np.abs(Y - o2).max()) > 1e-2
    Yc, _ = _comba_as_dplr(Q, K, V, K, beta, g, scale, decayed_read=False)
    _report("decoupled delta (DPLR rows) vs naive_chunk_comba(p=k)", float(np.abs(Yc - o2).max()))


def test_comba_with_any_p_is_the_dplr_form_as_fla_naive():
    torch = pytest.importorskip("torch")
    fla = _fla("comba")
    rng = np.random.default_rng(6)
    Q, K, V, P, beta, g = _comba_inputs(rng)
    scale = DK**-0.5
    o, o2, S = _fla_comba(torch, fla, Q, K, V, P, beta, g, scale)
    Y, state = _comba_as_dplr(Q, K, V, P, beta, g, scale, decayed_read=True)
    _report("rwkv7 (Comba rows, decayed read) vs naive_recurrent_comba", float(np.abs(Y - o).max()))
    _report("rwkv7 (Comba rows) state (M = S^T)", float(np.abs(state.M - np.swapaxes(S, -1, -2)).max()))
    Yc, _ = _comba_as_dplr(Q, K, V, P, beta, g, scale, decayed_read=False)
    _report("rwkv7 (Comba rows, undecayed read) vs naive_chunk_comba", float(np.abs(Yc - o2).max()))
    # the two fla references differ, and p != k matters (Gated DeltaNet is O(1e-1) away)
    assert float(np.abs(o - o2).max()) > 1e-2
    Yg, _ = _ours(tt.recipes.gated_deltanet(), Q * scale, K, V, log_alpha=g, beta=beta)
    assert float(np.abs(Yg - o).max()) > 1e-2


# --- preconditioned delta rule ------------------------------------------------------------------------
def _fla_precond_reference(torch, q, k, v, g, beta, x=1.5, eps=1e-6, center=-0.2):
    """fla main branch, fla/ops/precond_gated_delta_rule/naive.py, ``naive_recurrent_precond_gated_
    delta_rule`` (not in fla-core 0.5.2), transcribed with g_atk = 0 and beta_atk = 1 (constants), on
    already L2-normalised q, k and q pre-scaled; tensors [B, H, T, D]."""
    Bq, Hq, Tq, Kd = k.shape
    S = torch.zeros(Bq, Hq, Kd, v.shape[-1])
    A = torch.zeros(Bq, Hq, Kd)
    o = torch.zeros(Bq, Hq, Tq, v.shape[-1])
    logx = torch.log(torch.tensor(x))
    for i in range(Tq):
        b_k = k[:, :, i]
        A = A * 1.0 + 1.0 * (b_k**2)  # ATK recurrence
        r = torch.log(A + eps) - center  # symmetric fast squash
        s = r / (1.0 + torch.abs(r))
        Mp = torch.exp(-logx * s)
        S = S * g[:, :, i].exp()[..., None, None]
        b_v = (v[:, :, i] - (S * b_k[..., None]).sum(-2)) * beta[:, :, i][..., None]
        S = S + (b_k * Mp).unsqueeze(-1) * b_v.unsqueeze(-2)
        o[:, :, i] = torch.einsum("bhd,bhdm->bhm", q[:, :, i], S)
    return o, S


def test_preconditioned_deltanet_equals_fla_precond_gated_delta_rule():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    Q, K, V = _unit(rng, (B, H, T, DK)), _unit(rng, (B, H, T, DK)), rng.standard_normal((B, H, T, DV))
    g, beta = -rng.uniform(0.0, 0.5, (B, H, T)), rng.uniform(0.2, 1.0, (B, H, T))
    scale = DK**-0.5
    Y, _ = _ours(tt.recipes.preconditioned_deltanet(), Q * scale, K, V, log_alpha=g, beta=beta)
    t = [torch.tensor(x, dtype=torch.float32) for x in (Q * scale, K, V, g, beta)]
    o, _ = _fla_precond_reference(torch, *t)
    _report("preconditioned delta vs fla precond (transcribed)", float(np.abs(Y - o.numpy()).max()))


def test_inverse_preconditioner_is_the_jacobi_of_the_key_covariance(rng):
    """The state's A is diag(sum_i lambda^(t-i) k_i k_i^T) exactly, and the step uses 1/(ridge + A)."""
    lam, ridge = 0.9, 0.5
    K, V = _unit(rng, (T, DK)), rng.standard_normal((T, DV))
    opt = tt.optimizers.generalized_delta.PreconditionedDelta(0.5, moment_decay=lam,
                                                              preconditioner="inverse", ridge=ridge)  # fmt: skip
    layer = tt.TestTimeRegression(tt.weights.Uniform(), tt.regressors.Linear(), opt)
    _, st = layer(K, K, V, return_state=True)
    R = sum(lam ** (T - 1 - i) * np.outer(K[i], K[i]) for i in range(T))
    assert np.abs(st.A - np.diag(R)).max() < TOL_F64 * np.abs(np.diag(R)).max()
    M = np.zeros((DV, DK))
    for i in range(T):  # the stated update, in float64
        A = np.diag(sum(lam ** (i - j) * np.outer(K[j], K[j]) for j in range(i + 1)))
        M = M + 0.5 * np.outer(V[i] - M @ K[i], K[i] / (ridge + A))
    assert np.abs(st.M - M).max() < TOL_F64 * np.abs(M).max()


# --- gated Oja rule -----------------------------------------------------------------------------------
def _fla_oja_reference(torch, q, k, v, gv, beta):
    """fla-core 0.5.2 fla/ops/gated_oja_rule/fused_recurrent.py, ``fused_recurrent_oja_fwd_kernel`` (a
    Triton kernel; no naive file), its loop body transcribed: h *= exp(gv)[None, :] (per value channel);
    k' = beta (k - h v); h += k' v^T; o = h^T q. Tensors [B, H, T, D], h of shape [K, V]."""
    h = torch.zeros(k.shape[0], k.shape[1], k.shape[-1], v.shape[-1])
    o = torch.zeros(*v.shape)
    for i in range(k.shape[2]):
        h = h * gv[:, :, i].exp()[..., None, :]
        b_k = beta[:, :, i][..., None] * (k[:, :, i] - (h * v[:, :, i][..., None, :]).sum(-1))
        h = h + b_k[..., :, None] * v[:, :, i][..., None, :]
        o[:, :, i] = (h * q[:, :, i][..., :, None]).sum(-2)
    return o, h


def test_gated_oja_equals_fla_kernel_transcription():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    Q, K, V = _unit(rng, (B, H, T, DK)), _unit(rng, (B, H, T, DK)), _unit(rng, (B, H, T, DV))
    g, beta = -rng.uniform(0.0, 0.5, (B, H, T)), rng.uniform(0.2, 1.0, (B, H, T))
    scale = DK**-0.5
    Y, state = _ours(tt.recipes.gated_oja(), Q * scale, K, V, log_alpha=g, beta=beta)
    gv = np.repeat(g[..., None], DV, -1)  # a scalar gate, broadcast over fla's value channels
    t = [torch.tensor(x, dtype=torch.float32) for x in (Q * scale, K, V, gv, beta)]
    o, h = _fla_oja_reference(torch, *t)
    _report("gated oja vs fla kernel (transcribed)", float(np.abs(Y - o.numpy()).max()))
    _report("gated oja state (M = h^T)", float(np.abs(state.M - np.swapaxes(h.numpy(), -1, -2)).max()))


def test_gated_oja_is_sgd_on_keys_regressed_on_values_read_through_the_adjoint(rng):
    W0 = rng.standard_normal((DK, DV))  # keys from values
    k, v, q = _unit(rng, (DK,)), _unit(rng, (DV,)), rng.standard_normal(DK)
    a, b = 0.8, 0.6
    layer = tt.recipes.gated_oja()
    y, st = layer(q[None], k[None], v[None], alpha=np.array([a]), beta=np.array([b]),
                  initial_state=tt.optimizers.MemoryState(W0.T), return_state=True)  # fmt: skip
    Wp = a * W0
    W = Wp + b * np.outer(k - Wp @ v, v)  # W' - b grad of 1/2 ||k - W v||^2
    assert np.abs(st.M - W.T).max() < TOL_F64 * np.abs(W).max()
    assert np.abs(y[0] - W.T @ q).max() < TOL_F64 * np.abs(W.T @ q).max()


# --- contracts ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["gdn2", "rwkv7"])
def test_multi_row_layers_memorize_through_their_own_loop(name, rng):
    """memorize runs the family's reference loop (a token's rows together), so its state is the state of
    a call with return_state=True, bit for bit (the same loop on the same rows); the one-row update still
    refuses, naming the way that works."""
    layer = getattr(tt.recipes, name)()
    n = layer.optimizer.steps_per_token
    K, V = rng.standard_normal((4 * n, DK)), rng.standard_normal((4 * n, DV))
    st = layer.memorize(K, V)
    _, ref = layer(rng.standard_normal((4, DK)), K, V, return_state=True)
    for a, b in zip(st, ref, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(NotImplementedError, match="return_state=True"):
        layer.optimizer.update(st, K[0], V[0], np.ones(DK), np.ones(()))


def test_chunked_method_is_refused_naming_the_reference(rng):
    Q, K, V = _unit(rng, (T, DK)), _unit(rng, (T, DK)), rng.standard_normal((T, DV))
    with pytest.raises(ValueError, match="recurrent"):
        tt.recipes.kda()(Q, K, V, method="chunked")
