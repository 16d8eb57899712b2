"""``method="banded"`` of windowed identity-covariance layers: exact window sums, no subtraction.

Reference: the T x T ``parallel`` form (dense masked weights, ``methods/identity/parallel.py``) and the
recurrent loop. Tolerances: float64 1e-12 relative to the largest output (sums of at most w terms of
size O(1) in another order); float32 against float64, 1e-5 (a few eps per output, whatever T: the point
of the method, where ``chunked`` loses digits like eps T / w).
"""

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w


def _layer(width, gated, normalize=None):
    weights = w.GatedWindow(width, alpha=None) if gated else w.SlidingWindow(width)
    opt = o.IdentityCovariance(normalize) if normalize else o.IdentityCovariance()
    return tt.TestTimeRegression(weights=weights, optimizer=opt)


def _data(rng, T, dk, dv, positive=False, batch=(2,)):
    Q, K = (rng.standard_normal(batch + (T, dk)) / np.sqrt(dk) for _ in range(2))
    if positive:
        Q, K = np.abs(Q), np.abs(K)
    return Q, K, rng.standard_normal(batch + (T, dv))


def _rel(a, b):
    return np.max(np.abs(a - b)) / max(1.0, np.max(np.abs(b)))


CASES = [(1, 1, 1, 1), (63, 7, 3, 5), (65, 7, 100, 64), (65, 100, 7, 64), (1000, 7, 3, 7), (200, 3, 2, 199),
         (40, 3, 2, 100)]  # fmt: skip


@pytest.mark.parametrize("T, dk, dv, width", CASES)
@pytest.mark.parametrize("gates", [None, 0.0, -7.0, -50.0, "mixed"])
@pytest.mark.parametrize("normalize", [None, "sum"])
def test_banded_equals_parallel_and_the_loop(rng, T, dk, dv, width, gates, normalize):
    layer = _layer(width, gates is not None, normalize)
    Q, K, V = _data(rng, T, dk, dv, positive=normalize == "sum")
    kw = {}
    if gates == "mixed":
        kw["log_alpha"] = np.where(rng.uniform(size=(2, T)) < 0.1, -50.0, -rng.uniform(0, 0.3, (2, T)))
    elif gates is not None:
        kw["log_alpha"] = np.full((2, T), gates)
    if gates is not None:
        kw["beta"] = rng.uniform(0.5, 2.0, (2, T))
    M0 = rng.standard_normal((2, dv, dk))
    z0 = np.abs(rng.standard_normal((2, dk)))
    s0 = tt.optimizers.LinearAttentionState(M0, z0)
    y, s = layer(Q, K, V, method="banded", initial_state=s0, return_state=True, **kw)
    yp, sp = layer(Q, K, V, method="parallel", initial_state=s0, return_state=True, **kw)
    yr, sr = layer(Q, K, V, method="recurrent", initial_state=s0, return_state=True, **kw)
    assert np.all(np.isfinite(y))
    assert _rel(y, yp) < 1e-12 and _rel(y, yr) < 1e-10
    for a, b in zip(s, sr, strict=True):
        assert _rel(a, b) < 1e-12


@pytest.mark.parametrize("normalize", [None, "sum"])
def test_float32_error_does_not_grow_with_T(rng, normalize):
    # T / w = 2300: chunked's subtraction loses ~T/w eps in float32 (measured 2.5e-4 sum-normalised);
    # the banded sums stay within a few eps of float64
    T, width = 16000, 7
    layer = _layer(width, False, normalize)
    Q, K, V = _data(rng, T, 16, 8, positive=True, batch=(1,))
    ref = layer(Q, K, V, method="banded")
    got = layer(*(x.astype(np.float32) for x in (Q, K, V)), method="banded")
    assert got.dtype == np.float32
    assert np.max(np.abs(got - ref)) / np.max(np.abs(ref)) < 1e-5
    # and auto picks it for a float32 window
    from ttr_stats.methods import registry

    P = layer._prepare(*(x.astype(np.float32) for x in (Q, K, V)), None, None, None, None)
    assert registry.choose_auto(layer, P, None).name == "banded"


def test_banded_is_exactly_causal(rng):
    T, width = 150, 9
    layer = _layer(width, True)
    Q, K, V = _data(rng, T, 5, 3)
    g = -rng.uniform(0, 0.5, (2, T))
    y = layer(Q, K, V, log_alpha=g, method="banded")
    for s in (1, 8, 9, 10, 100, 149):
        Q2, K2, V2, g2 = Q.copy(), K.copy(), V.copy(), g.copy()
        Q2[:, s:] += 1.0
        K2[:, s:] = 1e150 * rng.standard_normal(K2[:, s:].shape)  # scores may overflow: never leak
        V2[:, s:] *= -3.0
        g2[:, s:] = -50.0
        y2 = layer(Q2, K2, V2, log_alpha=g2, method="banded")
        assert np.array_equal(y[:, :s], y2[:, :s]), s


def test_banded_needs_a_window():
    layer = tt.recipes.linear_attention()
    assert "banded" not in layer.supported_methods
    with pytest.raises(ValueError, match="banded"):
        layer(np.ones((4, 2)), np.ones((4, 2)), np.ones((4, 2)), method="banded")


def test_banded_with_lengths_equals_each_sequence_alone(rng):
    layer = _layer(5, True)
    T, lengths = 30, (30, 12, 3)
    Q, K, V = _data(rng, T, 4, 3, batch=(3,))
    g = -rng.uniform(0, 0.5, (3, T))
    Y, st = layer(Q, K, V, log_alpha=g, lengths=np.array(lengths), method="banded", return_state=True)
    for i, L in enumerate(lengths):
        y, own = layer(Q[i, :L], K[i, :L], V[i, :L], log_alpha=g[i, :L], method="recurrent",
                       return_state=True)  # fmt: skip
        assert _rel(Y[i, :L], y) < 1e-12
        for a, b in zip(st, own, strict=True):
            assert _rel(np.asarray(a)[i], b) < 1e-12
