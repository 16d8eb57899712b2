"""The per-dimension parallel form runs big batches in slices (``MAX_ELEMENTS``): same numbers as one
call, initial states and lengths carried per slice, and a clear refusal when one sequence alone is too big.

Tolerance: the slices run the very same operations on sub-batches, so float64 results agree to ~1e-15
(matmul blocking may differ with the batch size); 1e-12 against the unsliced call and the loop.
"""

import numpy as np
import pytest
from conftest import rel_err

import ttr_stats as tt
from ttr_stats.methods.identity import parallel as par


def _inputs(rng, batch=(2, 3), T=9, d=4):
    Q, K, V = (rng.standard_normal(batch + (T, d)) for _ in range(3))
    la = -rng.uniform(0, 0.5, batch + (T, d))
    return Q, K / 2, V, la


@pytest.mark.parametrize("method", ["parallel", "direct"])
def test_slices_equal_one_call_and_the_loop(rng, monkeypatch, method):
    Q, K, V, la = _inputs(rng)
    layer = tt.recipes.gla()
    whole, s_whole = layer(Q, K, V, log_alpha=la, method=method, return_state=True)
    loop = layer(Q, K, V, log_alpha=la, method="recurrent")
    calls = []
    orig = par.in_slices
    monkeypatch.setattr(par, "in_slices", lambda *a: calls.append(a[-1].n_batch) or orig(*a))
    monkeypatch.setattr(par, "MAX_ELEMENTS", 2 * 9 * 9 * 4)  # two sequences a slice: three slices of 6
    y, st = layer(Q, K, V, log_alpha=la, method=method, return_state=True)
    assert calls == [6]
    assert rel_err(y, whole) < 1e-12 and rel_err(y, loop) < 1e-12
    assert rel_err(st.M, s_whole.M) < 1e-12 and rel_err(st.z, s_whole.z) < 1e-12


def test_slices_carry_initial_states_and_lengths(rng, monkeypatch):
    Q, K, V, la = _inputs(rng, batch=(5,), T=8)
    layer = tt.recipes.gla()
    _, st0 = layer(Q, K, V, log_alpha=la, method="recurrent", return_state=True)
    lengths = np.array([8, 0, 3, 5, 1])
    kw = dict(log_alpha=la, initial_state=st0, lengths=lengths, return_state=True)
    ref, sref = layer(Q, K, V, method="recurrent", **kw)
    monkeypatch.setattr(par, "MAX_ELEMENTS", 2 * 8 * 8 * 4)
    for method in ("parallel", "direct"):
        y, st = layer(Q, K, V, method=method, **kw)
        assert rel_err(y, ref) < 1e-12 and rel_err(st.M, sref.M) < 1e-12 and rel_err(st.z, sref.z) < 1e-12


@pytest.mark.parametrize("method", ["parallel", "direct"])
def test_one_sequence_over_the_limit_is_refused_naming_chunked(rng, monkeypatch, method):
    Q, K, V, la = _inputs(rng, batch=(2,))
    monkeypatch.setattr(par, "MAX_ELEMENTS", 100)
    with pytest.raises(MemoryError, match=f"^method='{method}' .*method='chunked'"):
        tt.recipes.gla()(Q, K, V, log_alpha=la, method=method)
