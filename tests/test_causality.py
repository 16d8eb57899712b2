"""Exact causality of every registered method of every recipe, driven by the registry.

Changing Q, K, V, alpha and beta at positions >= s (for DeltaProduct: every pair written by tokens >= s)
must leave every output before s *bit-for-bit* unchanged (``np.array_equal``, no tolerance): a causal
method never lets a later row enter an earlier output, not even through rounding (a dense solve mixing the
rows of a triangular system, a normaliser or a max taken over the whole sequence, a chunk-wide reduction
would all show up here). The cases are generated from ``tt.recipes.registry()`` and each layer's
``supported_methods``, so a newly registered method (``"chunked"``) is covered as soon as it lands, plus
the catalogue-only recipes whose causal call needs per-token inputs or is causal-only (PaTH, DeltaFormer:
:data:`CATALOGUE_CAUSAL`).

The helpers :func:`make_layer`, :func:`make_inputs` and :func:`chunk_sizes` are shared with
``test_registry.py``.
"""

import zlib

import numpy as np
import pytest

import ttr_stats as tt

RECIPES = {r.name: r for r in tt.recipes.registry()}

#: (recipe, method) for every registered method that can run the recipe's default layer
CASES = [(r.name, m) for r in RECIPES.values() for m in r.methods]

#: catalogue recipes outside registry() (tt.recipes.catalogue() notes why) whose causal call this suite can
#: still make: PaTH needs per-token inputs (``inputs={"w": ..., "w_beta": ...}``, drawn by
#: :func:`make_inputs` from the components' ``token_inputs`` and perturbed like every other input), and
#: DeltaFormer is causal-only. Kept out of :data:`CASES`, which test_registry's length and chaining
#: suites share (PaTH's and DeltaFormer's own files test those).
CATALOGUE = {r.name: r for r in tt.recipes.catalogue()}
CATALOGUE_CAUSAL = ("path_attention", "deltaformer")
CAUSAL_CASES = CASES + [(n, m) for n in CATALOGUE_CAUSAL for m in CATALOGUE[n].methods]

# RLS's default ridge 1e-6 leaves R_t + ridge I (t < d) at cond ~1e7, where the methods that agree to
# ~cond * eps cannot meet the 1e-12 of test_registry; a ridge that conditions the prefix systems is used
# there (causality itself is exact at any ridge, but one layer per recipe keeps the cases simple).
OVERRIDES = {"rls": lambda: tt.recipes.rls(ridge=1e-2)}


def make_layer(name):
    """The recipe's layer (with the conditioning override of :data:`OVERRIDES`)."""
    return OVERRIDES.get(name, CATALOGUE[name].factory)()


def gate_kinds(layer):
    """Which call-time gates the layer takes: ``(takes_alpha, takes_beta)``.

    Every weights class with ``accepts_gates`` takes alpha (per-dimension for GLA); every layer takes beta
    except a nonparametric regressor without gate support (kernel ridge: uniform weights only).
    """
    gated = not (layer.nonparametric and not layer.regressor.supports_gates)
    return gated and layer.weights.accepts_gates, gated


def make_inputs(layer, rng, batch, T, d_k=5, d_v=3):
    """Inputs of one call: ``(Q, K, V, gates)`` in the layer's regime.

    Parameters
    ----------
    layer : TestTimeRegression
    rng : numpy Generator
    batch : tuple
        Batch shape.
    T : int
        Tokens.

    Returns
    -------
    Q : array of shape (*batch, T, d_k)
        Unit rows (the delta rules are stable for steps < 2 / ||k||^2).
    K : array of shape (*batch, T * n, d_k), unit rows; n = ``steps_per_token``
    V : array of shape (*batch, T * n, d_v)
    gates : dict
        ``alpha`` of shape (*batch, T) (or (*batch, T, d_f) for per-dimension decay) in [0.6, 1], mild
        enough for RLS under decay; ``beta`` of shape (*batch, T * n), the optimizer's default step times
        U(0.5, 1) (Titans' momentum diverges at steps near 1); ``inputs`` when a component declares
        per-token inputs (``token_inputs``): unit rows of shape (*batch, T, d_k) for ``"d_k"``, U(0.5, 1.5)
        of shape (*batch, T) for one value per token (PaTH: Householder directions and strengths in (0, 2)).
    """
    n = int(layer.optimizer.steps_per_token)

    def unit(shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    Q = unit(batch + (T, d_k))
    K = unit(batch + (T * n, d_k))
    V = rng.standard_normal(batch + (T * n, d_v))
    takes_alpha, takes_beta = gate_kinds(layer)
    gates = {}
    if takes_alpha:
        d_f = layer.regressor.output_dim(d_k)
        shape = batch + ((T, d_f) if layer.weights.per_dimension else (T,))
        gates["alpha"] = rng.uniform(0.6, 1.0, shape)
    if takes_beta:
        step = layer.optimizer.default_beta() or 1.0
        gates["beta"] = step * rng.uniform(0.5, 1.0, batch + (T * n,))
    declared = {}
    for part in (layer.regressor, layer.optimizer):
        declared.update(getattr(part, "token_inputs", None) or {})
    if declared:
        gates["inputs"] = {
            name: unit(batch + (T, d_k)) if trailing == "d_k" else rng.uniform(0.5, 1.5, batch + (T,))
            for name, trailing in declared.items()
        }
    return Q, K, V, gates


def chunk_sizes(method, T):
    """Chunk sizes to try: for ``"chunked"`` one that does not divide T and the method's default;
    other methods get the odd size too (they must ignore it)."""
    odd = next(c for c in (7, 6, 5, 9, 11) if T % c)
    return (odd, None) if method == "chunked" else (odd,)


def _perturb(layer, rng, Q, K, V, gates, s):
    """Fresh draws (same distribution, so the run stays stable) at every position >= s."""
    n = int(layer.optimizer.steps_per_token)
    Q2, K2, V2, new = make_inputs(layer, rng, Q.shape[:-2], Q.shape[-2], Q.shape[-1], V.shape[-1])
    Q2[..., :s, :] = Q[..., :s, :]
    K2[..., : s * n, :] = K[..., : s * n, :]
    V2[..., : s * n, :] = V[..., : s * n, :]
    gates2 = {}
    for key, g in gates.items():
        out = new[key].copy()
        if key == "inputs":  # per-token inputs: (*batch, T, d) rows or (*batch, T) values, token axis
            keep = (slice(None),) * (Q.ndim - 2) + (slice(0, s),)  # the batch dims, then tokens < s
            out = {k: v.copy() for k, v in out.items()}
            for k, v in out.items():
                v[keep] = g[k][keep]
        elif key == "beta":
            out[..., : s * n] = g[..., : s * n]
        elif layer.weights.per_dimension:
            out[..., :s, :] = g[..., :s, :]
        else:
            out[..., :s] = g[..., :s]
        gates2[key] = out
    return Q2, K2, V2, gates2


@pytest.mark.parametrize(("name", "method"), CAUSAL_CASES, ids=[f"{n}-{m}" for n, m in CAUSAL_CASES])
def test_outputs_before_s_ignore_everything_from_s_on(name, method):
    """Seeded draws of (T, s) per case: T in [20, 40], s anywhere in [0, T] (0 and T included)."""
    layer = make_layer(name)
    rng = np.random.default_rng(zlib.crc32(f"{name}-{method}".encode()))  # stable across runs
    draws = [(int(rng.integers(20, 41)), None) for _ in range(3)]
    draws = [(T, int(rng.integers(0, T + 1))) for T, _ in draws] + [(23, 0), (23, 1), (23, 22)]
    for T, s in draws:
        Q, K, V, gates = make_inputs(layer, rng, (2,), T)
        Q2, K2, V2, gates2 = _perturb(layer, rng, Q, K, V, gates, s)
        for cs in chunk_sizes(method, T):
            Y = layer(Q, K, V, method=method, chunk_size=cs, **gates)
            Y2 = layer(Q2, K2, V2, method=method, chunk_size=cs, **gates2)
            assert layer.method_ == method
            if s < T:  # the perturbation must reach the output (else the test tests nothing)
                assert not np.array_equal(Y[..., s:, :], Y2[..., s:, :]), (name, method, T, s)
            same = Y[..., :s, :] == Y2[..., :s, :]
            assert np.array_equal(Y[..., :s, :], Y2[..., :s, :]), (
                f"{name} {method} chunk_size={cs} T={T} s={s}: outputs before s changed at positions "
                f"{sorted(set(np.argwhere(~same)[:, -2].tolist()))}"
            )
