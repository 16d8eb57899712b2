"""Per-call algorithm choices stay exactly causal: a gate that starts to decay at position s (after a
stretch of exact zeros) must not change any output before s, not even by rounding.

Chunked methods pick faster paths for calls without decay; those choices now come from the call's
structure (``Problem.gated``: a decaying weights class, a forgetting factor or call-time gates) or are
bit-identical to the general path, never from a later gate's value. Exact equality (``array_equal``):
bit-for-bit is the claim.
"""

import numpy as np
import pytest

import ttr_stats as tt


def _pair(rng, T=80, d=5, dv=3, s=47):
    Q, K, V = (rng.standard_normal((2, T, n)) for n in (d, d, dv))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    flat = np.zeros((2, T))
    later = flat.copy()
    later[:, s:] = -0.3  # decays from s on only
    return Q, K, V, flat, later, s


@pytest.mark.parametrize(
    ("name", "make", "method", "beta"),
    [
        ("mesa", lambda: tt.recipes.mesa(ridge=1.0), "chunked", True),  # Woodbury vs prefix solves
        ("mamba2", tt.recipes.mamba2, "chunked", True),  # no-decay host path vs the general one
        ("mamba2_unit_b", tt.recipes.mamba2, "chunked", False),
        ("mamba2_loop", tt.recipes.mamba2, "recurrent", True),  # the loop's skipped decay pass
        ("rls_loop", tt.recipes.rls, "recurrent", False),
        ("gated_deltanet", tt.recipes.gated_deltanet, "chunked", True),
    ],
)
def test_a_gate_that_starts_decaying_later_changes_no_earlier_bit(rng, name, make, method, beta):
    Q, K, V, flat, later, s = _pair(rng)
    gates = {"beta": rng.uniform(0.2, 0.9, (2, 80))} if beta else {}
    layer = make()
    if name.startswith("rls"):  # RLS takes its decay as a forgetting factor per call: alpha
        y0 = layer(Q, K, V, method=method, alpha=np.exp(flat), **gates)
        y1 = layer(Q, K, V, method=method, alpha=np.exp(later), **gates)
    else:
        y0 = layer(Q, K, V, method=method, log_alpha=flat, **gates)
        y1 = layer(Q, K, V, method=method, log_alpha=later, **gates)
    assert np.array_equal(y0[..., :s, :], y1[..., :s, :]), name
    assert not np.array_equal(y0[..., s:, :], y1[..., s:, :])  # the later gate does act


def test_gated_is_known_from_structure():
    """least_squares (Uniform weights) without gates takes Woodbury; with call-time gates (even all-zero
    ones) the prefix solves: structure, not values."""
    from ttr_stats.methods.least_squares import chunked as lsc

    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((40, 3)) for _ in range(3))
    seen = []
    orig = lsc._path
    lsc_path = lambda opt, P: seen.append(orig(opt, P)) or seen[-1]  # noqa: E731
    mp = pytest.MonkeyPatch()
    mp.setattr(lsc, "_path", lsc_path)
    try:
        layer = tt.recipes.least_squares(ridge=0.5)
        layer(Q, K, V, method="chunked")
        layer(Q, K, V, method="chunked", log_alpha=np.zeros(40))
    finally:
        mp.undo()
    assert seen == ["woodbury", "prefix"]
