"""Cases shared by the torch suites (test_torch_device, test_torch_grad, test_torch_cuda).

Importing this module imports neither torch nor CuPy: each suite skips before importing torch.

* :func:`recipe_case`: every recipe of the registry with well-conditioned inputs and the call-time gates it
  takes (decay ``alpha`` and write strength ``beta``, found by trying them on NumPy), so the data-dependent
  gate paths (what training feeds) run too.
* :data:`GRAD_CASES`: the layers whose fast methods (chunked, tiled) the gradient suites differentiate.
"""

from __future__ import annotations

import numpy as np

import ttr_stats as tt

#: the chunk / tile length the suites pass to chunked and tiled methods: several chunks, the last partial
CHUNK = 5
#: methods that take ``chunk_size``
CHUNKED = ("chunked", "tiled")


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _gate_options(layer, rng, B, T, d_f, steps):
    a_scalar = rng.uniform(0.6, 1.0, (B, T))
    a_dim = rng.uniform(0.6, 1.0, (B, T, d_f))
    beta = rng.uniform(0.3, 0.9, (B, T * steps))
    alpha = a_dim if layer.weights.per_dimension else a_scalar
    return [{"alpha": alpha, "beta": beta}, {"alpha": alpha}, {"beta": beta}, {}]


def recipe_case(info, seed=0, B=2, T=14, d=4, d_v=3):
    """``(layer, Q, K, V, gates)`` (NumPy float64) for recipe ``info`` (a :func:`ttr_stats.recipes.registry`
    row): unit keys and queries, ridges large enough for well-posed solves, and the richest gates the
    recipe accepts (the first of alpha+beta, alpha, beta, none that its recurrent method runs)."""
    rng = np.random.default_rng(seed)
    layer = info.factory()
    if info.name in ("rls", "least_squares"):
        layer.set_params(optimizer__ridge=1e-2)
    if info.name in ("local_linear_attention", "local_polynomial_attention"):
        layer.set_params(regressor__ridge=1e-2)
    steps = int(layer.optimizer.steps_per_token)
    Q = _unit(rng.standard_normal((B, T, d)))
    K = _unit(rng.standard_normal((B, T * steps, d)))
    V = rng.standard_normal((B, T * steps, d_v))
    for gates in _gate_options(layer, rng, B, T, layer.regressor.output_dim(d), steps):
        try:
            layer(Q, K, V, method="recurrent", **gates)
        except ValueError:
            continue
        return layer, Q, K, V, gates
    raise AssertionError(f"{info.name}: no gate option runs")  # pragma: no cover - {} always runs


def recipes():
    """The registry rows, for parametrize."""
    return tt.recipes.registry()


def variants(layer, method, T=14, B=2):
    """Call options every method is run with: plain, right-padded ``lengths`` and (chunked / tiled) a
    small ``chunk_size``."""
    out = [("plain", {}), ("lengths", {"lengths": np.array([T, T - 5])[:B]})]
    if method in CHUNKED:
        out.append(("chunk_size", {"chunk_size": CHUNK}))
    return out


#: name -> (factory, gates): the layers whose chunked / tiled methods the gradient suites check, with the
#: gates their training feeds: linear attention, Mamba-2 (scalar gate) and GLA (per-dimension gate),
#: DeltaNet / Gated DeltaNet (write strength, decay), RLS, Mesa, softmax and local linear attention
GRAD_CASES = {
    "linear_attention": (tt.recipes.linear_attention, ()),
    "mamba2": (tt.recipes.mamba2, ("alpha",)),
    "gla": (tt.recipes.gla, ("alpha_dim",)),
    "deltanet": (tt.recipes.deltanet, ("beta",)),
    "gated_deltanet": (tt.recipes.gated_deltanet, ("alpha", "beta")),
    "rls": (lambda: tt.recipes.rls(ridge=0.5), ()),
    "mesa": (lambda: tt.recipes.mesa(ridge=0.5), ("alpha", "beta")),
    "softmax_attention": (tt.recipes.softmax_attention, ()),
    "local_linear_attention": (lambda: tt.recipes.local_linear_attention(ridge=0.1), ()),
}


def grad_inputs(name, seed=1, B=1, T=10, d=3, d_v=2):
    """NumPy float64 ``(names, arrays)`` of one gradient case: Q, K, V and its gates."""
    rng = np.random.default_rng(seed)
    Q = _unit(rng.standard_normal((B, T, d)))
    K = _unit(rng.standard_normal((B, T, d)))
    V = rng.standard_normal((B, T, d_v))
    names, arrays = ["Q", "K", "V"], [Q, K, V]
    for g in GRAD_CASES[name][1]:
        if g == "alpha":
            names.append("alpha"), arrays.append(rng.uniform(0.6, 1.0, (B, T)))
        elif g == "alpha_dim":
            names.append("alpha"), arrays.append(rng.uniform(0.6, 1.0, (B, T, d)))
        else:
            names.append("beta"), arrays.append(rng.uniform(0.3, 0.9, (B, T)))
    return names, arrays


def fast_method(layer):
    """The chunked or tiled method of ``layer`` (what training uses)."""
    return next(m for m in layer.supported_methods if m in CHUNKED)
