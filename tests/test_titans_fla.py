"""titans(convention="fla"): flash-linear-attention's Titans memory (a residual, layer-normed linear memory
trained by chunked momentum SGD) against fla's naive code, and its coherent form against its objective.

Tolerances: fla's naive reference runs in float32 on the CPU; T = 48 steps of O(1) updates through a layer
norm agree to 2e-5 (~1e2 eps32, the issue's bound). Float64 checks of our own recursion are at rounding
(1e-12: the same operations in another order at most); the finite-difference gradient check is central
differences with h = 1e-5 in float64, whose truncation error is O(h^2 |f'''|) ~ 1e-10 and rounding
~eps / h ~ 1e-11, so it allows 1e-8.
"""

from __future__ import annotations

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.optimizers.titans import MiniBatchMomentum
from ttr_stats.regressors.residual_ln import ResidualLayerNorm

TOL_FLA = 2e-5


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / max(1.0, float(np.max(np.abs(b)))))


@pytest.fixture
def rng():
    return np.random.default_rng(2025)


def unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def data(rng, B=2, H=2, T=48, D=8):
    Q, K = (unit(rng.standard_normal((B, H, T, D))) for _ in range(2))
    V = rng.standard_normal((B, H, T, D))
    theta = rng.uniform(0.01, 0.05, (B, H, T))
    forget = rng.uniform(0.0, 0.1, (B, H, T))  # fla's alpha: M_t = (1 - alpha_t) M_{t-1} + S_t
    gain = 1.0 + 0.3 * rng.standard_normal((H, D))  # fla's w, b: one vector per head
    bias = 0.1 * rng.standard_normal((H, D))
    return Q, K, V, theta, forget, gain, bias


def fla_titans():
    """fla-core's ``chunk_titans_linear_ref``, loaded from its file (``fla.ops`` pulls in triton, absent on
    the CPU); its one fla import (``log_impl.combine_params_log``, torch only) is loaded the same way."""
    import importlib.util
    import os

    pytest.importorskip("torch")
    spec = importlib.util.find_spec("fla")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("flash-linear-attention (fla-core) is not installed")
    folder = os.path.join(spec.submodule_search_locations[0], "ops", "titans")
    lspec = importlib.util.spec_from_file_location(
        "_fla_titans_log_impl", os.path.join(folder, "log_impl.py")
    )
    log_impl = importlib.util.module_from_spec(lspec)
    lspec.loader.exec_module(log_impl)
    with open(os.path.join(folder, "naive.py"), encoding="utf-8") as fh:
        src = fh.read()
    line = "from fla.ops.titans.log_impl import combine_params_log"
    assert line in src, "fla's titans naive.py changed its imports"
    ns = {"combine_params_log": log_impl.combine_params_log, "__name__": "_fla_titans_naive"}
    exec(compile(src.replace(line, ""), "fla/ops/titans/naive.py", "exec"), ns)
    return ns["chunk_titans_linear_ref"]


def fla_layer(gain, bias, momentum, quirks=True, batch_size=16):
    layer = tt.recipes.titans(lr=0.1, momentum=momentum, weight_decay=0.0, convention="fla")
    return layer.set_params(
        regressor__gain=gain,
        regressor__bias=bias,
        regressor__fla_quirks=quirks,
        optimizer__batch_size=batch_size,
    )


@pytest.mark.parametrize("use_chunk", [True, False])
@pytest.mark.parametrize("T", [48, 37])
def test_fla_quirks_equal_fla_naive_titans(rng, use_chunk, T):
    ref = fla_titans()  # skips without torch / fla, before torch is imported
    import torch

    Q, K, V, theta, forget, gain, bias = data(rng, T=T)
    eta = 0.8
    t = lambda x: torch.tensor(np.swapaxes(x, 1, 2), dtype=torch.float32)  # noqa: E731 - (B,H,T,.)->(B,T,H,.)
    g = lambda x: t(x[..., None])  # noqa: E731 - gates (B,H,T) -> (B,T,H,1)
    o, M = ref(
        t(Q), t(K), t(V), torch.tensor(gain, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32),
        g(theta), g(forget), g(np.full_like(theta, eta)), eps=1e-6, chunk_size=16, output_final_state=True,
        use_chunk=use_chunk,
    )  # fmt: skip
    layer = fla_layer(gain, bias, eta)  # (H, D) broadcasts against the (B, H, D) of every step
    Y, state = layer(
        *(x.astype(np.float32) for x in (Q, K, V)),
        alpha=(1 - forget).astype(np.float32),
        beta=(2 * theta).astype(np.float32),
        return_state=True,
    )
    assert Y.dtype == np.float32
    assert rel(Y, np.swapaxes(o.numpy(), 1, 2)) < TOL_FLA
    if T % 16 == 0:  # fla pads T up to a multiple of its chunk and keeps writing there: compare whole chunks
        assert rel(state.M, np.swapaxes(M.numpy(), -1, -2)) < TOL_FLA


def test_coherent_form_steps_along_the_gradient_of_its_loss(rng):
    """convention='fla' without the quirks: the step is the gradient of 1/2 |v - m_M(k)|^2 (central finite
    differences in float64), and fla's direction is not (it differs by O(1))."""
    D = 5
    gain, bias = 1 + 0.3 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)
    M = rng.standard_normal((D, D))
    k, v = unit(rng.standard_normal(D)), rng.standard_normal(D)
    reg = ResidualLayerNorm(gain, bias)
    loss, (grad,) = reg.loss_grad(np, (M,), k, v)

    def f(M):
        return 0.5 * float(np.sum((reg.predict(np, (M,), k) - v) ** 2))

    assert abs(loss - f(M)) < 1e-14  # the loss is the read's squared error: the read is the trained predictor
    h, fd = 1e-5, np.zeros_like(M)
    for i in np.ndindex(M.shape):
        E = np.zeros_like(M)
        E[i] = h
        fd[i] = (f(M + E) - f(M - E)) / (2 * h)
    assert np.max(np.abs(grad - fd)) < 1e-8
    _, (fla_dir,) = ResidualLayerNorm(gain, bias, fla_quirks=True).loss_grad(np, (M,), k, v)
    assert np.max(np.abs(fla_dir - fd)) > 1e-2 * np.max(np.abs(fd))


def test_coherent_read_is_the_residual_predictor(rng):
    D = 4
    gain, bias = 1 + 0.3 * rng.standard_normal(D), 0.1 * rng.standard_normal(D)
    M, q = rng.standard_normal((D, D)), rng.standard_normal(D)
    z = M @ q
    ln = (z - z.mean()) / np.sqrt(z.var() + 1e-6)
    assert np.allclose(
        ResidualLayerNorm(gain, bias).predict(np, (M,), q), q + gain * ln + bias, rtol=0, atol=1e-14
    )
    quirky = ResidualLayerNorm(gain, bias, fla_quirks=True).predict(np, (M,), q)
    assert np.allclose(quirky, z + gain * ln + bias, rtol=0, atol=1e-14)


def test_batch_size_one_is_momentum(rng):
    """Chunks of one token: every gradient at theta_{t-1}, i.e. Titans' Momentum, at rounding (1e-12)."""
    Q, K, V, theta, forget, gain, bias = data(rng, T=20)
    reg = ResidualLayerNorm(gain, bias)
    a = tt.TestTimeRegression(
        tt.weights.Gated(alpha=1.0), reg, MiniBatchMomentum(0.1, 0.7, 0.01, batch_size=1)
    )
    b = tt.TestTimeRegression(tt.weights.Gated(alpha=1.0), reg, tt.optimizers.Momentum(0.1, 0.7, 0.01))
    kw = dict(alpha=1 - forget, beta=2 * theta)
    assert rel(a(Q, K, V, **kw), b(Q, K, V, **kw)) < 1e-12


def test_chunk_anchor_is_the_chunk_start(rng):
    """Within a chunk the gradients are taken at the chunk's first parameters: a plain float64 loop."""
    Q, K, V, theta, forget, gain, bias = data(rng, B=1, H=1, T=11, D=4)
    gain, bias = gain[0], bias[0]
    reg, eta, n = ResidualLayerNorm(gain, bias), 0.6, 4
    M, S, anchor, ys = np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 4)), []
    for t in range(11):
        _, (g,) = reg.loss_grad(np, (anchor,), K[0, 0, t], V[0, 0, t])
        S = eta * S - 2 * theta[0, 0, t] * g
        M = (1 - forget[0, 0, t]) * M + S
        ys.append(reg.predict(np, (M,), Q[0, 0, t]))
        if (t + 1) % n == 0:
            anchor = M
    layer = fla_layer(gain, bias, eta, quirks=False, batch_size=n)
    Y = layer(Q, K, V, alpha=1 - forget, beta=2 * theta)
    assert rel(Y[0, 0], np.array(ys)) < 1e-12


def test_two_pieces_continue_the_chunk(rng):
    """The position in the chunk is part of the state: a call split mid-chunk equals one call (1e-12)."""
    Q, K, V, theta, forget, gain, bias = data(rng, T=30)
    layer = fla_layer(gain, bias, 0.8, quirks=False)
    kw = lambda s: dict(alpha=1 - forget[..., s], beta=2 * theta[..., s])  # noqa: E731
    Y = layer(Q, K, V, **kw(slice(None)))
    s = slice(0, 21)
    _, st = layer(Q[..., s, :], K[..., s, :], V[..., s, :], return_state=True, **kw(s))
    s = slice(21, None)
    Y2 = layer(Q[..., s, :], K[..., s, :], V[..., s, :], initial_state=st, **kw(s))
    assert rel(Y2, Y[..., 21:, :]) < 1e-12


def test_fla_convention_bad_inputs(rng):
    with pytest.raises(ValueError, match="^convention must be 'paper'"):
        tt.recipes.titans(convention="Fla")
    with pytest.raises(ValueError, match="^hidden: .*linear memory"):
        tt.recipes.titans(hidden=8, convention="fla")
    Q, K, V = rng.standard_normal((3, 10, 4))
    with pytest.raises(ValueError, match="^V: ResidualLayerNorm .*d_v must equal d_k"):
        tt.recipes.titans(convention="fla")(Q, K, V[:, :3])
    with pytest.raises(ValueError, match="^batch_size must be >= 1"):
        tt.recipes.titans(convention="fla").set_params(optimizer__batch_size=0)(Q, K, V)
    with pytest.raises(ValueError, match="^fla_quirks must be True or False"):
        tt.recipes.titans(convention="fla").set_params(regressor__fla_quirks="yes")(Q, K, V)
