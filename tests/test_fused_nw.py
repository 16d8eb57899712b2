"""The fused tiled softmax / Nadaraya-Watson kernel (``methods/kernel_smoother/_fused_nw.py``).

Three layers of trust:

* on the host (always): :func:`~ttr_stats.methods.kernel_smoother._fused_nw.fused_nw_reference` (the
  kernel's tile order, gate sums, skips and online normaliser in array operations) put in the kernel's
  place behind ``method="tiled"`` equals the dense ``"parallel"`` method on odd shapes: this checks the
  operands the dispatch prepares (the Gaussian rewrite, non-causal last weights, windows, resets, write
  strengths, lengths) and the tile algorithm, independently of CUDA;
* on the host with g++ (skipped without): the CUDA source itself, run by ``tests/cuda_on_host.py`` (every
  thread a coroutine, shared memory poisoned with NaN, warp shuffles through shared slots and barriers),
  equals the reference for every template instance family (float / double, 32- and 64-long tiles, 1 to 8
  value columns a thread);
* on a GPU (CuPy; skipped without one, before importing it): the kernel equals the reference and
  ``parallel``, layers with the kernel equal the array form, and outputs before s are bit-for-bit
  independent of inputs at s and after.

Tolerances (``max |a - b| / max |b|``): float64 1e-10 (the same convex combination in another summation
order: ~``(|logit| + log T) eps``, measured < 1e-13); float32 1e-5 (the same at eps = 6e-8 with
``sqrt(T)`` growth; the tiled method's own float32 tolerance).
"""

import numpy as np
import pytest
from conftest import _cupy_available

import ttr_stats as tt
from ttr_stats.methods.kernel_smoother import _fused_nw as F
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot, Gaussian

F64, F32 = 1e-10, 1e-5


def rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = np.abs(b).max() if b.size else 0.0
    return float(np.abs(a - b).max() / scale) if b.size and scale > 0 else float(np.abs(a - b).max(initial=0))


def layer(weights=None, similarity=None, order=0):
    return tt.TestTimeRegression(
        weights=weights or tt.weights.Uniform(), regressor=LocalPolynomial(order, similarity or ExpDot())
    )


def data(rng, T, d, d_v=5, batch=(2,), dtype=np.float64):
    Q, K, V = (rng.standard_normal(batch + (T, n)) for n in (d, d, d_v))
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)


def log_gates(rng, shape, strength=3.0, p=0.02):
    """Log-decays uniform in (-strength, 0) with hard resets (-inf) at rate p."""
    return np.where(rng.uniform(size=shape) < p, -np.inf, -rng.uniform(0, strength, shape))


def resets(rng, shape, strength=3.0, p=0.02):
    """alpha = exp(log_gates): 0 at a reset."""
    return np.exp(log_gates(rng, shape, strength, p))


VARIANTS = {  # name -> (layer, call arguments as a function of (rng, T))
    "softmax": (layer(), lambda rng, T: {}),
    "non-causal": (layer(), lambda rng, T: {"causal": False}),
    "qknorm": (layer(similarity=ExpDot(10.0, qk_norm=True)), lambda rng, T: {}),
    "gaussian": (layer(similarity=Gaussian(1.5)), lambda rng, T: {}),
    "gaussian non-causal": (layer(similarity=Gaussian(1.5)), lambda rng, T: {"causal": False}),
    "decay": (layer(tt.weights.ExponentialDecay(0.9)), lambda rng, T: {}),
    "window 1": (layer(tt.weights.SlidingWindow(1)), lambda rng, T: {}),
    "window 5": (layer(tt.weights.SlidingWindow(5)), lambda rng, T: {}),
    "window 100": (layer(tt.weights.SlidingWindow(100)), lambda rng, T: {}),
    "window 2000": (layer(tt.weights.SlidingWindow(2000)), lambda rng, T: {}),
    "forgetting, resets": (
        layer(tt.weights.Gated()),
        lambda rng, T: {"alpha": resets(rng, (2, T)), "beta": rng.uniform(0.5, 2.0, (2, T))},
    ),
    "forgetting, very negative": (
        layer(tt.weights.Gated()),
        lambda rng, T: {"log_alpha": np.full((2, T), -50.0)},
    ),
}


# --- 1. the reference in the kernel's place, on the host --------------------------------------------------
@pytest.fixture
def reference_kernel(monkeypatch):
    """``method="tiled"`` on NumPy runs the fused path with the reference as the kernel; counts calls."""
    calls = []

    def forward(xp, **ops):
        calls.append(ops)
        return F.fused_nw_reference(xp, **ops)

    monkeypatch.setattr(F, "_on_device", lambda xp: True)
    monkeypatch.setattr(F, "forward", forward)
    return calls


@pytest.mark.parametrize("T", [1, 63, 65, 1000])
@pytest.mark.parametrize("d", [1, 7, 64, 100, 128])
def test_reference_equals_parallel_on_odd_shapes(reference_kernel, rng, T, d):
    Q, K, V = data(rng, T, d, d_v=d)
    for causal in (True, False):
        got = layer()(Q, K, V, method="tiled", causal=causal)
        ref = layer()(Q, K, V, method="parallel", causal=causal)
        assert rel(got, ref) < F64, (T, d, causal)
    assert len(reference_kernel) == 2  # the fused path ran


@pytest.mark.parametrize("name", list(VARIANTS))
def test_reference_variants_equal_parallel(reference_kernel, rng, name):
    L, args = VARIANTS[name]
    T = 300
    Q, K, V = data(rng, T, 7)
    kw = args(rng, T)
    got, ref = L(Q, K, V, method="tiled", **kw), L(Q, K, V, method="parallel", **kw)
    assert rel(got, ref) < F64, name
    assert reference_kernel, name


@pytest.mark.parametrize("C", [32, 64])
def test_reference_tile_lengths_agree(rng, C):
    """Both tile lengths the kernel uses give the same outputs (another tiling: another summation order)."""
    Q, K, V = data(rng, 150, 7, batch=(3,))
    g = log_gates(rng, (3, 150))
    logb = np.log(rng.uniform(0.5, 2.0, (3, 150)))
    ops = dict(Q=Q, K=K, V=V, g=g, logb=logb, tau=0.4, causal=True, window=40)
    assert rel(F.fused_nw_reference(np, C=C, **ops), F.fused_nw_reference(np, C=96, **ops)) < F64


def dense_nw(Q, K, V, g, logb, tau, causal, window, gated=True, sinks=0):
    """The operands' definition with dense (BH, T, T) log-weights: ``segsum(g) + logb + tau q.k``, pairs
    ``i <= t`` with ``t - i < window`` or ``i < sinks`` (causal); ``logb + tau q.k`` (non-causal)."""
    from ttr_stats import _array
    from ttr_stats.regressors.nonparametric import normalised_weights

    logits = tau * Q @ np.swapaxes(K, -1, -2)
    if not causal:
        return normalised_weights(np, logits + logb[:, None, :]) @ V
    T = K.shape[1]
    t, i = np.arange(T)[:, None], np.arange(T)[None, :]
    L = _array.segsum(np, g) + logb[:, None, :]
    if window:
        L = np.where(((t - i) < window) | (i < sinks), L, -np.inf)
    return normalised_weights(np, np.where(L == -np.inf, -np.inf, L + logits)) @ V


@pytest.mark.parametrize(("window", "sinks"), [(5, 1), (5, 3), (40, 64), (40, 65), (100, 500), (1, 200)])
@pytest.mark.parametrize("C", [32, 64])
def test_reference_keeps_attention_sinks(rng, window, sinks, C):
    """Sinks with windows narrower and wider than a tile, sink blocks ending at and just past a tile
    edge, more sinks than T, under gates with resets and write strengths: the dense definition."""
    T = 300
    Q, K, V = data(rng, T, 7, batch=(3,))
    g = log_gates(rng, (3, T), strength=0.3, p=0.01)
    logb = np.log(rng.uniform(0.5, 2.0, (3, T)))
    ops = dict(Q=Q, K=K, V=V, g=g, logb=logb, tau=0.4, causal=True, window=window, gated=True, sinks=sinks)
    assert rel(F.fused_nw_reference(np, C=C, **ops), dense_nw(**ops)) < F64


def test_operands_carry_sinks_of_a_window(rng):
    """Problem.sinks (where the layer has it) reaches the kernel with a window, and is dropped without one
    (a window as wide as T keeps every pair)."""
    Q, K, V = data(rng, 10, 3)
    L = layer(tt.weights.SlidingWindow(4))
    P = L._prepare(Q, K, V, None, None, None, None)
    if "sinks" not in P._fields:
        pytest.skip("this Problem has no sinks yet")
    assert F.operands(np, L, P._replace(sinks=2))["sinks"] == 2
    assert F.operands(np, L, P._replace(sinks=2, window=10))["sinks"] == 0


def test_reference_with_lengths_and_empty_sequences(reference_kernel, rng):
    T = 150
    Q, K, V = data(rng, T, 4, batch=(4,))
    lengths = np.array([0, 1, 77, T])
    L = layer(tt.weights.SlidingWindow(90))
    got, ref = (L(Q, K, V, lengths=lengths, method=m) for m in ("tiled", "parallel"))
    assert rel(got, ref) < F64
    assert np.all(got[0] == 0) and np.all(got[1, 1:] == 0) and np.all(got[2, 77:] == 0)


def test_reference_float32_within_1e5_of_float64(reference_kernel, rng):
    """Float32 over 2000 steps with a total log-decay of ~-1e4: block-local gate sums keep every pair's
    error relative to its own sum (a difference of whole-sequence cumulative sums would be 1e-3 off)."""
    T = 2000
    Q, K, V = data(rng, T, 7)
    la = -rng.uniform(4, 6, (2, T))
    L = layer(tt.weights.Gated())
    ref = L(Q, K, V, log_alpha=la, method="parallel")
    f = lambda x: x.astype(np.float32)  # noqa: E731
    got = L(f(Q), f(K), f(V), log_alpha=f(la), method="tiled")
    assert got.dtype == np.float32 and reference_kernel
    assert rel(got, ref) < F32


def test_reference_is_exactly_causal(reference_kernel, rng):
    T = 150
    Q, K, V = data(rng, T, 3)
    la, beta = -rng.uniform(0, 0.5, (2, T)), rng.uniform(0.5, 1.0, (2, T))
    L = layer(tt.weights.Gated())
    y = L(Q, K, V, log_alpha=la, beta=beta, method="tiled")
    for s in (1, 63, 64, 65, 130):
        Q2, K2, V2, la2, b2 = (x.copy() for x in (Q, K, V, la, beta))
        for x in (Q2, K2, V2):
            x[:, s:] = rng.standard_normal(x[:, s:].shape) * 10
        la2[:, s:], b2[:, s:] = -rng.uniform(0, 9, la2[:, s:].shape), rng.uniform(0.1, 5, b2[:, s:].shape)
        y2 = L(Q2, K2, V2, log_alpha=la2, beta=b2, method="tiled")
        assert np.array_equal(y[:, :s], y2[:, :s]), s
        assert not np.array_equal(y[:, s:], y2[:, s:]), s


def test_fused_path_is_off_the_host_and_for_what_it_does_not_cover(rng):
    """On NumPy the dispatch returns None (the array form runs); operands refuse local polynomials of
    order >= 1 and (causal) T_q != T_k."""
    Q, K, V = data(rng, 10, 3)
    L = layer()
    P = L._prepare(Q, K, V, None, None, None, None)
    assert F.nadaraya_watson(L, P) is None
    assert F.operands(np, L, P) is not None
    assert F.operands(np, layer(order=1), P) is None
    assert F.operands(np, L, P._replace(Q=Q[:, :5])) is None
    assert F.tile_length("float32", 64, 64, 227 * 1024) == 64
    assert F.tile_length("float64", 128, 128, 227 * 1024) == 32  # a 64-long float64 tile needs 237 KiB
    assert F.tile_length("float32", 64, 129, 227 * 1024) is None
    assert F.tile_length("float16", 64, 64, 227 * 1024) is None
    assert F.tile_length("float32", 64, 64, 227 * 1024, prefer=128) == 128
    assert F.tile_length("float64", 64, 64, 227 * 1024, prefer=128) == 64  # spills: not built for float64


# --- 2. the CUDA source on the host (g++) -----------------------------------------------------------------
_HOST_SHIM = r"""
// renamed so that they never clash with what tests/cuda_on_host.py itself defines
#undef __align__
#define __align__(n)
#define float2 nw_float2
#define float4 nw_float4
#define double2 nw_double2
#define __int_as_float nw_int_as_float
#define __longlong_as_double nw_longlong_as_double
#define __shfl_xor_sync nw_shfl_xor_sync
struct alignas(8) nw_float2 { float x, y; };
struct alignas(16) nw_float4 { float x, y, z, w; };
struct alignas(16) nw_double2 { double x, y; };
static inline float nw_int_as_float(unsigned i) { float f; memcpy(&f, &i, 4); return f; }
static inline double nw_longlong_as_double(unsigned long long i) { double f; memcpy(&f, &i, 8); return f; }
static double nw_shfl_slot[1024];
// a warp shuffle where every thread of the block takes part (as in the kernel): through shared slots
template <typename T> static T nw_shfl_xor_sync(unsigned, T v, int off) {
    const int t = threadIdx.x;
    nw_shfl_slot[t] = (double)v;
    __syncthreads();
    const T r = (T)nw_shfl_slot[t ^ off];
    __syncthreads();
    return r;
}
"""


def _host_kernel(tname, TM, DVT):
    cuda_on_host = pytest.importorskip("cuda_on_host")
    if not cuda_on_host.available():
        pytest.skip("no g++")
    types = [f"const {tname}*"] * 6 + [f"{tname}*", "int*"] + ["int"] * 5 + [tname] + ["int"] * 4
    return cuda_on_host.compile_kernel(F._SOURCE, f"nw_forward<{tname}, {TM}, {DVT}>", types, _HOST_SHIM)


def _run_host(ops, TM, flag=None):
    """v1 run on the host; ``flag``: a zeroed int32 array of one entry for the kernel's finiteness flag."""
    BH, Tq, dk = ops["Q"].shape
    Tk, dv = ops["V"].shape[1:]
    dt = ops["Q"].dtype
    tname = "float" if dt == np.float32 else "double"
    kern = _host_kernel(tname, TM, F._dvt(dv))
    C = F.NT * TM
    Y = np.full((BH, Tq, dv), np.nan, dtype=dt)
    arrs = [np.ascontiguousarray(ops[k], dtype=dt) for k in ("Q", "K", "V", "g", "logb")]
    arrs.append(np.ascontiguousarray(F._tile_totals(np, arrs[3], C)))  # as forward() passes them
    smem = F._shared_words(C, dk, dv, dt.itemsize) * dt.itemsize
    grid = (BH * -(-Tq // C),)
    sizes = (BH, Tq, Tk, dk, dv)
    flags = (int(ops["causal"]), ops["window"], int(ops["gated"]), ops.get("sinks", 0))
    flag = np.zeros(1, np.int32) if flag is None else flag
    kern(grid, (F.NT * F.NT,), smem, *arrs, Y, flag, *sizes, ops["tau"], *flags)
    return Y


HOST_CASES = [  # dtype, TM, T, d_k, d_v: every (dtype, TM) and DVT in {1, 2, 4, 8}; T over >= 3 tiles
    (np.float64, 4, 130, 7, 7),
    (np.float64, 2, 70, 100, 100),
    (np.float32, 4, 150, 64, 64),
    (np.float32, 2, 100, 1, 20),
    (np.float64, 2, 70, 128, 128),
    (np.float32, 8, 300, 7, 20),  # the 128-long float32 tile (TILES)
]


MODES = ["causal", "gated", "gated window 19", "gated window 45", "gated window 19 sinks 3",
         "gated window 30 sinks 70", "window 19 sinks 3", "non-causal"]  # fmt: skip


@pytest.mark.parametrize(("dtype", "TM", "T", "dk", "dv"), HOST_CASES)
@pytest.mark.parametrize("mode", MODES)
def test_cuda_source_on_the_host_equals_the_reference(rng, dtype, TM, T, dk, dv, mode):
    """Windows narrower than a tile and wider than a 32-long one; gated runs over >= 3 tiles use the
    totals of the tiles in between (``mid``), with sinks those of the tiles jumped over too (70 sinks:
    over two 32-long tiles, and more than some T)."""
    Q, K, V = (rng.standard_normal((2, T, n)).astype(dtype) for n in (dk, dk, dv))
    g = np.zeros((2, T), dtype=dtype)
    logb = np.zeros((2, T), dtype=dtype)
    window, causal = 0, mode != "non-causal"
    if mode.startswith("gated"):
        g = log_gates(rng, (2, T), p=0.01, strength=0.2).astype(dtype)
        logb = np.log(rng.uniform(0.5, 2.0, (2, T))).astype(dtype)
        logb[1, 3] = -np.inf  # a padded pair
    elif mode == "non-causal":
        logb = -rng.uniform(0, 3, (2, T)).astype(dtype)
    words = mode.split()
    window = int(words[words.index("window") + 1]) if "window" in words else 0
    sinks = int(words[-1]) if "sinks" in words else 0
    gated = mode.startswith("gated")  # "causal": the kernel's path without gate sums
    ops = dict(Q=Q, K=K, V=V, g=g, logb=logb, tau=dk**-0.5, causal=causal, window=window, gated=gated)
    ops["sinks"] = sinks
    got = _run_host(ops, TM)
    ref = F.fused_nw_reference(np, C=F.NT * TM, **ops)
    assert not np.isnan(got).any()  # every output written, no read of unwritten shared memory
    tol = F32 if dtype == np.float32 else F64
    assert rel(got, ref) < tol, (mode, rel(got, ref))
    if dtype == np.float64:  # and both equal the dense definition
        assert rel(ref, dense_nw(**ops)) < F64, mode


def test_cuda_source_on_the_host_skips_tiles_behind_a_reset(rng):
    """A reset at every tile start but the last: only the last tile's pairs weigh; the outputs are those of
    the reference (which visits the skipped tiles and finds weight 0 there)."""
    T, C = 200, 64
    Q, K, V = (rng.standard_normal((1, T, 4)) for _ in range(3))
    g = np.zeros((1, T))
    g[0, ::C] = -np.inf
    ops = dict(Q=Q, K=K, V=V, g=g, logb=np.zeros((1, T)), tau=0.5, causal=True, window=0, gated=True)
    assert rel(_run_host(ops, 4), F.fused_nw_reference(np, **ops)) < F64


# --- 3. the kernel on a GPU ---------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 63, 65, 1000])
@pytest.mark.parametrize("d", [1, 7, 64, 100, 128])
def test_kernel_equals_reference_and_parallel(rng, dtype, T, d):
    import cupy as cp

    Q, K, V = data(rng, T, d, d_v=d)
    g = log_gates(rng, (2, T))
    logb = np.log(rng.uniform(0.5, 2.0, (2, T)))
    tol = F32 if dtype == np.float32 else F64
    cases = [(True, 0, 0), (True, 37, 0), (True, 300, 0), (True, 37, 5), (True, 37, 70), (False, 0, 0)]
    for causal, window, sinks in cases:
        ops = dict(Q=Q, K=K, V=V, g=g, logb=logb, tau=d**-0.5, causal=causal, window=window, sinks=sinks)
        ref = F.fused_nw_reference(np, **ops)  # float64 on the host
        dev = {k: cp.asarray(v, dtype=dtype) if isinstance(v, np.ndarray) else v for k, v in ops.items()}
        got = F.forward(cp, **dev)
        assert got is not None and got.dtype == dtype
        assert rel(cp.asnumpy(got), ref) < tol, (causal, window, sinks)
        if T <= 65:  # and the dense definition
            assert rel(cp.asnumpy(got), dense_nw(**ops)) < tol, (causal, window, sinks)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_layers_with_the_kernel_equal_the_array_form_and_parallel(monkeypatch, rng, dtype, name):
    """Float32: a logit of size L is rounded to ~L eps32 in any float32 method (Gaussian(1.5) on standard
    normal keys at d = 100 has |logit| ~ 90, and the float32 NumPy reference is 7e-6 off float64 there), so
    queries and keys are scaled to the spread of d = 7 (|logit| <~ 10): the 1e-5 bound then checks the
    kernel, not float32's resolution of large logits (float64 keeps the unscaled data)."""
    import cupy as cp

    L, args = VARIANTS[name]
    tol = F32 if dtype == np.float32 else F64
    for T, d in ((1, 7), (65, 1), (1000, 64), (300, 100)):
        Q, K, V = data(rng, T, d)
        if dtype == np.float32 and d > 7:
            Q, K = Q * (7 / d) ** 0.5, K * (7 / d) ** 0.5
        kw = args(rng, T)
        ref = L(Q, K, V, method="parallel", **kw)  # float64 on the host
        put = lambda x: cp.asarray(x, dtype=dtype)  # noqa: E731
        dQ, dK, dV = put(Q), put(K), put(V)
        dkw = {k: put(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        yf = L(dQ, dK, dV, method="tiled", **dkw)
        monkeypatch.setattr(F, "ENABLED", False)
        ya = L(dQ, dK, dV, method="tiled", **dkw)
        monkeypatch.setattr(F, "ENABLED", True)
        assert rel(cp.asnumpy(yf), ref) < tol, (name, T, "fused vs parallel")
        assert rel(cp.asnumpy(yf), cp.asnumpy(ya)) < tol, (name, T, "fused vs array form")


@gpu
@pytest.mark.gpu
def test_kernel_is_exactly_causal(rng):
    import cupy as cp

    T = 300
    Q, K, V = data(rng, T, 16)
    la, beta = -rng.uniform(0, 0.5, (2, T)), rng.uniform(0.5, 1.0, (2, T))
    L = layer(tt.weights.Gated())
    c = cp.asarray
    y = cp.asnumpy(L(c(Q), c(K), c(V), log_alpha=c(la), beta=c(beta), method="tiled"))
    for s in (1, 63, 64, 65, 150):
        Q2, K2, V2, la2, b2 = (x.copy() for x in (Q, K, V, la, beta))
        for x in (Q2, K2, V2):
            x[:, s:] = rng.standard_normal(x[:, s:].shape) * 10
        la2[:, s:], b2[:, s:] = -rng.uniform(0, 9, la2[:, s:].shape), rng.uniform(0.1, 5, b2[:, s:].shape)
        y2 = cp.asnumpy(L(c(Q2), c(K2), c(V2), log_alpha=c(la2), beta=c(b2), method="tiled"))
        assert np.array_equal(y[:, :s], y2[:, :s]), s


@gpu
@pytest.mark.gpu
def test_kernel_handles_many_sequences_and_refuses_what_does_not_fit(rng):
    import cupy as cp

    Q, K, V = (rng.standard_normal((70000, 3, 2)) for _ in range(3))  # more blocks than a grid's y range
    z = np.zeros((70000, 3))
    ops = dict(Q=Q, K=K, V=V, g=z, logb=z, tau=1.0, causal=True, window=0)
    ref = F.fused_nw_reference(np, **ops)
    got = F.forward(cp, **{k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in ops.items()})
    assert rel(cp.asnumpy(got), ref) < F64
    big = cp.zeros((1, 4, 2000))  # d_k = 2000 does not fit shared memory
    assert F.forward(cp, big, big, big[..., :4], big[..., 0], big[..., 0], 1.0, True, 0) is None


def test_a_kernel_that_does_not_compile_falls_back_to_the_array_form(monkeypatch, rng):
    """An NVRTC failure (``cupy.cuda.compiler.CompileException``) warns once and switches the kernel off;
    the call still returns the array form's outputs. Other errors propagate."""

    class CompileException(Exception):
        pass

    def broken(xp, **ops):
        raise CompileException("nw_forward: error: something")

    monkeypatch.setattr(F, "_on_device", lambda xp: True)
    monkeypatch.setattr(F, "forward", broken)
    monkeypatch.setattr(F, "ENABLED", True)
    Q, K, V = data(rng, 70, 3)
    with pytest.warns(RuntimeWarning, match="did not compile"):
        got = layer()(Q, K, V, method="tiled")
    assert not F.ENABLED
    assert rel(got, layer()(Q, K, V, method="parallel")) < F64
    monkeypatch.setattr(F, "ENABLED", True)
    monkeypatch.setattr(F, "forward", lambda xp, **ops: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        layer()(Q, K, V, method="tiled")


@pytest.mark.parametrize(("window", "sinks"), [(5, 1), (5, 3), (40, 70), (300, 4)])
@pytest.mark.parametrize("gated", [False, True])
def test_reference_behind_sink_window_layers_equals_parallel(reference_kernel, rng, window, sinks, gated):
    """``recipes.sink_window_attention`` (StreamingLLM; call-time alpha: the gated variant) through the
    fused path equals the dense method: Problem.sinks reaches the kernel's operands."""
    T = 200
    Q, K, V = data(rng, T, 7)
    L = tt.recipes.sink_window_attention(window, sinks)
    kw = {"alpha": resets(rng, (2, T), strength=0.3), "beta": rng.uniform(0.5, 2.0, (2, T))} if gated else {}
    got, ref = (L(Q, K, V, method=m, **kw) for m in ("tiled", "parallel"))
    assert rel(got, ref) < F64
    assert reference_kernel and reference_kernel[-1]["sinks"] == (sinks if window < T else 0)
