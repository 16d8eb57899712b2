"""``method="tiled"`` of the kernel smoothers against the dense ``"parallel"`` reference (issue 10).

Tolerances (``max |tiled - parallel| / max |parallel|``):

* **1e-10** in float64. Both compute the same convex combination (softmax) or the same centred weighted
  least squares (local polynomials) and differ only in the order of the additions: for softmax the error
  is ~``(|logit| + log T) eps`` (< 1e-11 for logits up to 1e4 and T = 1000); for local polynomials it is
  ~``cond * eps`` of the centred moment matrix, and the local polynomial cases are either well excited
  (t > 2 d_k) or carry a ridge (d_k = 100) so that cond * eps < 1e-11.
* **1e-5** in float32: the same sums in float32, ~``sqrt(T) * (|logit| + log T) * eps32`` (6e-8) for softmax,
  with a margin for the local linear solve (measured 1e-7 .. 2e-6).
* Causality is bit-for-bit (``np.array_equal``).
"""

import math
import tracemalloc

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.methods.kernel_smoother import tiled as tiled_mod
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot, Gaussian

F64, F32 = 1e-10, 1e-5


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max() if b.size else 0.0
    return float(np.abs(a - b).max() / scale) if b.size and scale > 0 else float(np.abs(a - b).max(initial=0))


def layer(order=0, weights=None, similarity=None, ridge=0.0):
    return tt.TestTimeRegression(
        weights=weights or tt.weights.Uniform(),
        regressor=LocalPolynomial(order, similarity or ExpDot(), ridge),
    )


def data(rng, T, d, d_v=3, batch=(2,), dtype=np.float64):
    Q, K, V = (rng.standard_normal(batch + (T, n)) for n in (d, d, d_v))
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)


def both(L, Q, K, V, **kw):
    return L(Q, K, V, method="tiled", **kw), L(Q, K, V, method="parallel", **kw)


# --- softmax / Nadaraya-Watson ------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 63, 65, 1000])
@pytest.mark.parametrize("d", [1, 7, 100])
@pytest.mark.parametrize("causal", [True, False])
def test_softmax_equals_parallel_on_odd_shapes(rng, T, d, causal):
    Q, K, V = data(rng, T, d)
    got, ref = both(layer(0), Q, K, V, causal=causal)
    assert got.shape == ref.shape
    assert rel(got, ref) < F64


@pytest.mark.parametrize(
    "name, L",
    [
        ("qknorm", layer(0, similarity=ExpDot(10.0, qk_norm=True))),
        ("gaussian", layer(0, similarity=Gaussian(1.5))),
        ("decay", layer(0, weights=tt.weights.ExponentialDecay(0.9))),
        ("window 5 (narrower than a tile)", layer(0, weights=tt.weights.SlidingWindow(5))),
        ("window 1", layer(0, weights=tt.weights.SlidingWindow(1))),
        ("window 300 (wider than a tile)", layer(0, weights=tt.weights.SlidingWindow(300))),
        ("window 2000 (wider than T)", layer(0, weights=tt.weights.SlidingWindow(2000))),
    ],
)
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_softmax_variants_equal_parallel(rng, name, L, chunk_size):
    Q, K, V = data(rng, 1000, 7)
    got, ref = both(L, Q, K, V, chunk_size=chunk_size)
    assert rel(got, ref) < F64, name


@pytest.mark.parametrize("regime", ["mild", "strong", "resets", "very negative"])
def test_forgetting_attention_equals_parallel(rng, regime):
    """Softmax under data-dependent Gated weights (the Forgetting Transformer), with write strengths."""
    T = 1000
    Q, K, V = data(rng, T, 7)
    la = {
        "mild": -rng.uniform(0, 1e-2, (2, T)),
        "strong": -rng.uniform(0, 7, (2, T)),
        "resets": np.where(rng.uniform(size=(2, T)) < 0.02, -np.inf, -rng.uniform(0, 0.1, (2, T))),
        "very negative": np.full((2, T), -50.0),
    }[regime]
    beta = rng.uniform(0.5, 2.0, (2, T))
    gates = {"alpha": np.exp(la)} if regime == "resets" else {"log_alpha": la}  # alpha = 0: a reset
    L = layer(0, weights=tt.weights.Gated())
    for c in (None, 16):
        got, ref = both(L, Q, K, V, beta=beta, chunk_size=c, **gates)
        assert rel(got, ref) < F64, (regime, c)


def test_float32_gate_sums_are_block_local(rng):
    """Float32 over a long sequence with a total log-decay of -1e4: a difference of whole-sequence cumulative
    sums would put ~1e4 * eps32 = 1e-3 of error on every log-weight; block-local sums keep each pair's error
    relative to its own gate sum, so float32 stays within 1e-5 of the float64 reference."""
    T = 2000
    Q, K, V = data(rng, T, 7)
    la = -rng.uniform(4, 6, (2, T))  # sum ~ -1e4
    L = layer(0, weights=tt.weights.Gated())
    ref = L(Q, K, V, log_alpha=la, method="parallel")
    f = lambda x: x.astype(np.float32)  # noqa: E731
    got = L(f(Q), f(K), f(V), log_alpha=f(la), method="tiled")
    assert got.dtype == np.float32
    assert rel(got, ref) < F32


@pytest.mark.parametrize("order", [0, 1])
def test_float32_equals_parallel(rng, order):
    Q, K, V = data(rng, 1000, 7, dtype=np.float32)
    got, ref = both(layer(order), Q, K, V)
    assert got.dtype == np.float32
    assert rel(got, ref) < F32


@pytest.mark.parametrize("order, scale, ridge", [(0, 1e4, 0.0), (0, 1e3, 0.0), (1, 1e4, 1e-2)])
def test_large_logits(rng, order, scale, ridge):
    """Unit queries and keys at logit scales up to 1e4 (peaked rows): float64 within 1e-10. (float32 is
    not compared here: rounding a logit of 1e4 costs 1e4 * eps32 = 6e-4 in both methods alike.) Local
    linear carries a ridge: at ridge 0 the peaked design moments are so ill-conditioned that the definition
    (``"recurrent"``) and ``"parallel"`` themselves differ by 4e-5 near the pseudo-inverse cut; those
    degenerate regimes are checked against exact references in test_local_polynomial_degenerate.py."""
    Q, K, V = data(rng, 300, 7)
    Q, K = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (Q, K))
    got, ref = both(layer(order, similarity=ExpDot(scale), ridge=ridge), Q, K, V)
    assert rel(got, ref) < F64


# --- local polynomials --------------------------------------------------------------------------------
@pytest.mark.parametrize("T", [1, 63, 65, 1000])
@pytest.mark.parametrize("d", [1, 7])
@pytest.mark.parametrize("causal", [True, False])
def test_local_linear_equals_parallel(rng, T, d, causal):
    Q, K, V = data(rng, T, d)
    got, ref = both(layer(1), Q, K, V, causal=causal)
    assert rel(got, ref) < F64


@pytest.mark.parametrize("T", [1, 65, 130])
def test_local_linear_d100_with_ridge_equals_parallel(rng, T):
    """d_k = 100 with a ridge (ridge 0 is rank-deficient until t > 100, where the pseudo-inverse cut makes
    both methods agree only to ~cond * eps of the cut eigenvalues)."""
    Q, K, V = data(rng, T, 100)
    got, ref = both(layer(1, ridge=1e-2), Q, K, V)
    assert rel(got, ref) < F64


@pytest.mark.parametrize(
    "name, L, gates",
    [
        ("window 20", layer(1, weights=tt.weights.SlidingWindow(20)), {}),
        ("window 200", layer(1, weights=tt.weights.SlidingWindow(200)), {}),
        ("gated", layer(1, weights=tt.weights.Gated()), "gated"),
        ("quadratic, ridge", layer(2, ridge=1e-3), {}),
        ("quadratic, window 40", layer(2, weights=tt.weights.SlidingWindow(40)), {}),
        ("gaussian", layer(1, similarity=Gaussian(2.0)), {}),
    ],
)
def test_local_polynomial_variants_equal_parallel(rng, name, L, gates):
    T = 400
    Q, K, V = data(rng, T, 3)
    if gates == "gated":
        gates = {"log_alpha": -rng.uniform(0, 0.05, (2, T))}
    for c in (None, 16):
        got, ref = both(L, Q, K, V, chunk_size=c, **gates)
        assert rel(got, ref) < F64, (name, c)


def test_local_linear_keeps_the_exact_centring_on_coincident_keys(rng):
    """Four copies of one far key (|k| = 1e3): the centred covariance is exactly 0, so the output is the
    Nadaraya-Watson value (the mean of the values), as in the reference; an uncentred sum would leave
    eps |k|^2 residues that the pseudo-inverse reads as spread."""
    k = rng.standard_normal(5) * 1e3
    K = np.tile(k, (4, 1))
    V = rng.standard_normal((4, 2))
    Q = K + rng.standard_normal((4, 5))
    L = layer(1, similarity=ExpDot(1e-6))
    got = L(Q, K, V, method="tiled", causal=False)
    ref = L(Q, K, V, method="parallel", causal=False)
    assert rel(got, ref) < F64
    assert rel(got, np.broadcast_to(V.mean(0), got.shape)) < 1e-14  # a mean of 4 values: a few eps


# --- lengths, empty sequences, states ------------------------------------------------------------------
@pytest.mark.parametrize("order", [0, 1])
def test_lengths_with_empty_sequences(rng, order):
    T = 150
    Q, K, V = data(rng, T, 4, batch=(4,))
    lengths = np.array([0, 1, 77, T])
    L = layer(order, weights=tt.weights.SlidingWindow(90))
    got, ref = both(L, Q, K, V, lengths=lengths)
    assert rel(got, ref) < F64
    assert np.all(got[0] == 0) and np.all(got[1, 1:] == 0) and np.all(got[2, 77:] == 0)


@pytest.mark.parametrize("order", [0, 1])
def test_empty_calls(rng, order):
    L = layer(order)
    Q, K, V = data(rng, 0, 3)
    assert L(Q, K, V, method="tiled").shape == (2, 0, 3)
    Qn = rng.standard_normal((2, 5, 3))
    assert np.array_equal(L(Qn, K, V, method="tiled", causal=False), np.zeros((2, 5, 3)))


def test_final_cache_and_initial_state(rng):
    """The state is the cache (as for every kernel-smoother method); initial states are refused with the
    family's remedy (the family has no initial state: concatenate the earlier pairs)."""
    Q, K, V = data(rng, 70, 3)
    L = layer(0, weights=tt.weights.ExponentialDecay(0.8))
    (_, s1), (_, s2) = (L(Q, K, V, method=m, return_state=True) for m in ("tiled", "parallel"))
    for a, b in zip(s1, s2, strict=True):
        assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="concatenate the earlier keys"):
        L(Q, K, V, method="tiled", initial_state=s1)


# --- causality ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "L",
    [
        layer(0, weights=tt.weights.Gated()),
        layer(0, weights=tt.weights.SlidingWindow(10)),
        layer(1, weights=tt.weights.Gated()),
        layer(2, weights=tt.weights.SlidingWindow(30), ridge=1e-3),
    ],
    ids=["forgetting", "window", "local linear", "local quadratic"],
)
@pytest.mark.parametrize("s", [1, 16, 17, 40, 63])
def test_causality_bit_for_bit(rng, L, s):
    T = 64
    Q, K, V = data(rng, T, 3)
    la = -rng.uniform(0, 0.5, (2, T))
    beta = rng.uniform(0.5, 1.0, (2, T))
    gated = L.weights.accepts_gates

    def run(Q, K, V, la, beta):
        gates = {"log_alpha": la} if gated else {}
        return L(Q, K, V, beta=beta, method="tiled", chunk_size=16, **gates)

    y = run(Q, K, V, la, beta)
    Q2, K2, V2, la2, b2 = (x.copy() for x in (Q, K, V, la, beta))
    for x in (Q2, K2, V2):
        x[:, s:] = rng.standard_normal(x[:, s:].shape) * 10
    la2[:, s:], b2[:, s:] = -rng.uniform(0, 9, la2[:, s:].shape), rng.uniform(0.1, 5, b2[:, s:].shape)
    y2 = run(Q2, K2, V2, la2, b2)
    assert np.array_equal(y[:, :s], y2[:, :s])
    assert not np.array_equal(y[:, s:], y2[:, s:])


# --- memory and auto ---------------------------------------------------------------------------------
def test_memory_estimate_is_linear_in_T_and_far_below_dense(rng):
    from ttr_stats.methods.kernel_smoother._common import dense_bytes

    L = layer(0)
    P = {}
    for T in (4096, 8192):
        Q, K, V = data(rng, T, 8, batch=(1,))
        P[T] = L._prepare(Q, K, V, None, None, None, None)
    fixed = tiled_mod.tiled_bytes(P[4096]) * 2 - tiled_mod.tiled_bytes(P[8192])  # the T-independent part
    assert math.isclose(
        tiled_mod.tiled_bytes(P[8192]) - fixed, 2 * (tiled_mod.tiled_bytes(P[4096]) - fixed), rel_tol=0.05
    )
    assert tiled_mod.tiled_bytes(P[8192]) < dense_bytes(P[8192]) / 10


@pytest.mark.parametrize("order", [0, 1])
def test_peak_host_memory_never_holds_T_by_T(rng, order):
    """tracemalloc sees NumPy's allocations: the peak stays below one T x T float64 array."""
    T = 4096
    Q, K, V = data(rng, T, 1, batch=(1,))
    L = layer(order)
    L(Q[..., :8, :], K[..., :8, :], V[..., :8, :], method="tiled")  # imports and caches first
    tracemalloc.start()
    L(Q, K, V, method="tiled")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < T * T * 8 / 2, peak / 2**20


def test_auto_picks_tiled_from_the_measured_crossover(rng):
    L = layer(0)
    for T, expected in ((tiled_mod.AUTO_MIN_T // 2, "parallel"), (tiled_mod.AUTO_MIN_T, "tiled")):
        Q, K, V = data(rng, T, 4)
        L(Q, K, V)
        assert L.method_ == expected, (T, L.method_)


def test_tiled_is_listed_and_refuses_other_regressors():
    assert "tiled" in layer(0).supported_methods
    assert "tiled" not in tt.recipes.kernel_regression().supported_methods
