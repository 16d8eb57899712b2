"""The fused kernel's variant ``"v2"`` (``methods/kernel_smoother/_fused_nw.py``: register tiles of RM query
rows x RN keys per thread, query tiles longer than key tiles, exp2 with log2 e folded into the scale,
precomputed block-local gate sums).

* on the host (always): :func:`~ttr_stats.methods.kernel_smoother._fused_nw.tile_sums` are the block-local
  sums they claim (float64, exact sums of the same terms: 1e-12), and the shapes v2 picks / refuses;
* on the host with g++ (skipped without): the CUDA source of ``nw_forward2`` run by
  ``tests/cuda_on_host.py`` (every thread a coroutine, shared memory poisoned with NaN, warp shuffles
  through shared slots) equals the reference and the dense definition on odd shapes (T in {1, 63, 65,
  200}, d in {1, 7, 64, 100}), windows narrower / wider than a tile, sinks, gates down to -50 with resets,
  logits up to 1e4 (float64), for the default tile shapes of both dtypes and two more float32 ones;
* on a GPU (CuPy; skipped without, before importing it): v2 equals the float64 reference, v1 and the
  dense definition, for every tile shape of ``SWEEP``.

Tolerances (``max |a - b| / max |b|``, as in ``tests/test_fused_nw.py``): float64 1e-10 (the same convex
combination in another summation order and tiling; at |logit| ~ 1e4 the logit's own rounding is ~1e-12),
float32 1e-5 (the tiled method's own float32 tolerance; float32 runs keep |logit| <~ 10, as float32
resolves a logit of size L only to L eps32).
"""

import numpy as np
import pytest
from conftest import _cupy_available
from test_fused_nw import _HOST_SHIM, dense_nw, log_gates, rel

from ttr_stats.methods.kernel_smoother import _fused_nw as F

F64, F32 = 1e-10, 1e-5


# --- 1. the block-local gate sums and the shapes ----------------------------------------------------------
@pytest.mark.parametrize(("T", "BQ", "BK"), [(1, 128, 64), (63, 64, 32), (200, 128, 64), (129, 64, 64)])
def test_tile_sums_are_block_local(rng, T, BQ, BK):
    g = log_gates(rng, (3, T), strength=50.0, p=0.05)
    pre, suf, tot = F.tile_sums(np, g, BQ, BK, T)
    for t in range(T):
        q0 = t // BQ * BQ
        np.testing.assert_allclose(pre[:, t], g[:, q0 : t + 1].sum(-1), rtol=1e-12, atol=0)
        end = min(T, t // BK * BK + BK)
        np.testing.assert_allclose(suf[:, t], g[:, t + 1 : end].sum(-1), rtol=1e-12, atol=0)
    for kt in range(-(-T // BK)):
        np.testing.assert_allclose(tot[:, kt], g[:, kt * BK : (kt + 1) * BK].sum(-1), rtol=1e-12, atol=0)
    assert not np.isnan(pre).any() and not np.isnan(suf).any()  # resets (-inf) never meet a difference


def test_v2_shapes():
    big = 227 * 1024
    assert F._v2_shape("float32", 64, 64, big)[0] == (16, 8, 8, 8, 8, 0)
    assert F._v2_shape("float32", 64, 128, big)[0] == (16, 8, 4, 8, 16, 0)  # wide values: fewer rows
    assert F._v2_shape("float64", 64, 64, big)[0] == (16, 8, 4, 4, 8, 0)
    assert F._v2_shape("float32", 1, 1, big)[0] == (16, 8, 8, 8, 4, 0)
    one, two = (
        F._v2_shape("float32", 64, 64, big)[1],
        F._v2_shape("float32", 64, 64, big, (16, 8, 8, 8, 1))[1],
    )
    assert two - one == 4 * 64 * (68 + 64)  # DB: a second key (64 x 68) and value (64 x 64) tile
    assert F._v2_shape("float32", 64, 129, big) is None
    assert F._v2_shape("float16", 64, 64, big) is None
    assert F._v2_shape("float32", 2000, 64, big) is None  # does not fit: forward falls back to v1 / None
    with pytest.raises(ValueError, match="config"):
        F._v2_shape("float32", 64, 64, big, config=(16, 8, 2, 8))  # BQ = 32 < BK = 64
    for dt, shapes in F.SWEEP.items():
        for c in shapes:
            assert F._v2_shape(dt, 64, 64, big, config=c) is not None, (dt, c)
    # a call's own default: half the rows a thread where the base shape's grid is small, from the shapes
    BQ = F.CONFIGS["float32"][0] * F.CONFIGS["float32"][2]
    few = F.SMALL_GRID_BLOCKS // 2  # sequences x query tiles below the limit
    assert F.default_config("float32", few, BQ) == F.SMALL_CONFIGS["float32"]
    assert F.default_config("float32", F.SMALL_GRID_BLOCKS, BQ) == F.CONFIGS["float32"]
    assert F.default_config("float32", 128, 1024) == F.SMALL_CONFIGS["float32"]  # 1024 blocks
    assert F.default_config("float32", 128, 2048) == F.CONFIGS["float32"]  # 2048 blocks
    assert F.default_config("float64", 1, 64) == F.CONFIGS["float64"]  # no small shape for float64
    assert F._v2_shape("float32", 64, 64, big, BH=128, Tq=1024)[0] == (16, 8, 4, 8, 8, 0)
    assert F._v2_shape("float32", 64, 64, big, BH=128, Tq=4096)[0] == (16, 8, 8, 8, 8, 0)
    assert F.SMALL_CONFIGS["float32"] in F.SWEEP["float32"]  # so the sweep tests run it on host and card
    with pytest.raises(ValueError, match="variant"):
        F.forward(np, *([None] * 5), 1.0, True, 0, variant="v3")


# --- 2. the CUDA source on the host (g++) -----------------------------------------------------------------
def _host_kernel2(tname, shape):
    cuda_on_host = pytest.importorskip("cuda_on_host")
    if not cuda_on_host.available():
        pytest.skip("no g++")
    types = [f"const {tname}*"] * 8 + [f"{tname}*", "int*"] + ["int"] * 5 + [tname] + ["int"] * 5
    name = f"nw_forward2<{tname}, {', '.join(map(str, shape))}>"
    return cuda_on_host.compile_kernel(F._SOURCE, name, types, _HOST_SHIM)


def run_host_tile_sums(g, BQ, BK, Tq):
    """``device_tile_sums`` with its kernel (``gate_tile_sums``) run on the host: the same launch."""
    cuda_on_host = pytest.importorskip("cuda_on_host")
    if not cuda_on_host.available():
        pytest.skip("no g++")
    tname = "float" if g.dtype == np.float32 else "double"
    types = [f"const {tname}*"] + [f"{tname}*"] * 3 + ["int"] * 5
    kern = cuda_on_host.compile_kernel(F._SOURCE, f"gate_tile_sums<{tname}>", types, _HOST_SHIM)
    BH, Tk = g.shape
    nqt, nkt = -(-Tq // BQ), -(-Tk // BK)
    pre, suf, tot = (np.full(shape, np.nan, dtype=g.dtype) for shape in ((BH, Tq), (BH, Tk), (BH, nkt)))
    n = BH * (nqt + nkt)
    kern((-(-n // 128),), (128,), 0, np.ascontiguousarray(g), pre, suf, tot, BH, Tq, Tk, BQ, BK)
    return pre, suf, tot


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("T", "BQ", "BK"), [(1, 64, 64), (63, 64, 32), (200, 128, 64), (129, 64, 64), (300, 128, 8)]
)
def test_the_tile_sums_kernel_gives_the_bits_of_the_array_form(rng, dtype, T, BQ, BK):
    """One launch in NumPy's cumsum order: equal bit for bit to ``tile_sums`` on the host (float32 and
    float64, gates down to -50 with resets, partial tiles at the end), every entry written."""
    g = log_gates(rng, (3, T), strength=50.0, p=0.05).astype(dtype)
    got = run_host_tile_sums(g, BQ, BK, T)
    want = F.tile_sums(np, g, BQ, BK, T)
    for name, a, b in zip(("PRE", "SUF", "TOT"), got, want, strict=True):
        assert a.dtype == dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), (name, np.nanmax(np.abs(a - b)))  # no NaN either: every entry written


def _aligned(x, dt):
    x = np.ascontiguousarray(x, dtype=dt)
    if x.ctypes.data % 16:
        buf = np.empty(x.size + 16, dtype=dt)
        off = (-buf.ctypes.data % 16) // buf.itemsize
        y = buf[off : off + x.size].reshape(x.shape)
        y[...] = x
        x = y
    assert x.ctypes.data % 16 == 0
    return x


def run_host_v2(ops, config=None, flag=None):
    """``forward(variant="v2")`` with the kernel run on the host: the same operands and launch; ``flag``: a
    zeroed int32 array of one entry for the kernel's finiteness flag."""
    BH, Tq, dk = ops["Q"].shape
    Tk, dv = ops["V"].shape[1:]
    dt = ops["Q"].dtype
    tname = "float" if dt == np.float32 else "double"
    shape, smem = F._v2_shape(str(dt), dk, dv, 1 << 20, config)
    NTY, NTX, RM, RN, _, _ = shape
    kern = _host_kernel2(tname, shape)
    arrs = [_aligned(ops[k], dt) for k in ("Q", "K", "V", "g", "logb")]
    arrs += [_aligned(x, dt) for x in F.tile_sums(np, arrs[3], NTY * RM, NTX * RN, Tq)]
    Y = _aligned(np.full((BH, Tq, dv), np.nan), dt)
    W = 16 // dt.itemsize
    vec = (1 if dk % W == 0 else 0) | (2 if dv % W == 0 else 0)
    flags = (int(ops["causal"]), ops["window"], int(ops["gated"]), ops.get("sinks", 0), vec)
    grid = (BH * -(-Tq // (NTY * RM)),)
    flag = np.zeros(1, np.int32) if flag is None else flag
    kern(grid, (NTY * NTX,), smem, *arrs, Y, flag, BH, Tq, Tk, dk, dv, ops["tau"] * F._LOG2E, *flags)
    return Y


def operands(rng, dtype, T, dk, dv, mode, logit=None, strength=0.2):
    """The kernel's operands of one mode (``test_fused_nw``'s MODES plus 'gated -50': log-gates down to -50
    with resets); ``logit``: queries and keys scaled so that the largest |tau q.k| is about that."""
    Q, K, V = (rng.standard_normal((2, T, n)) for n in (dk, dk, dv))
    tau = dk**-0.5
    if logit is not None:
        s = np.abs(tau * Q @ np.swapaxes(K, -1, -2)).max()
        Q = Q * (logit / s)
    g, logb = np.zeros((2, T)), np.zeros((2, T))
    causal = mode != "non-causal"
    if mode.startswith("gated"):
        g = log_gates(rng, (2, T), p=0.01, strength=50.0 if "-50" in mode else strength)
        logb = np.log(rng.uniform(0.5, 2.0, (2, T)))
        if T > 3:
            logb[1, 3] = -np.inf  # a padded pair
    elif mode == "non-causal":
        logb = -rng.uniform(0, 3, (2, T))
    words = mode.split()
    window = int(words[words.index("window") + 1]) if "window" in words else 0
    sinks = int(words[-1]) if "sinks" in words else 0
    ops = dict(
        Q=Q, K=K, V=V, g=g, logb=logb, tau=tau, causal=causal, window=window, gated=mode.startswith("gated")
    )
    ops["sinks"] = sinks
    return {k: v.astype(dtype) if isinstance(v, np.ndarray) else v for k, v in ops.items()}, ops


MODES = ["causal", "gated", "gated -50", "gated window 19", "gated window 100", "gated window 19 sinks 3",
         "gated window 30 sinks 70", "window 19 sinks 3", "window 70 sinks 65", "non-causal"]  # fmt: skip
SHAPES = [(np.float32, None), (np.float64, None), (np.float32, (32, 4, 4, 8)), (np.float32, (16, 8, 4, 8)),
          (np.float32, (16, 8, 8, 8, 1)), (np.float64, (16, 8, 4, 4, 1))]  # fmt: skip


def _check(got, ops64, dtype, what):
    assert not np.isnan(got).any(), what  # every output written, no read of unwritten shared memory
    tol = F32 if dtype == np.float32 else F64
    ref = F.fused_nw_reference(np, **ops64)  # float64, C = 64
    assert rel(got, ref) < tol, (what, rel(got, ref))
    if ops64["Q"].shape[1] <= 200:
        assert rel(got, dense_nw(**ops64)) < tol, (what, "dense")


@pytest.mark.parametrize(("dtype", "config"), SHAPES)
@pytest.mark.parametrize("mode", MODES)
def test_v2_source_on_the_host_equals_the_reference(rng, dtype, config, mode):
    """T = 200 over >= 3 key tiles of every shape (gated: the totals in between, ``mid``); windows narrower
    than a key tile and wider than one; sinks over a tile edge."""
    ops, ops64 = operands(rng, dtype, 200, 7, 20, mode)
    _check(run_host_v2(ops, config), ops64, dtype, mode)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 63, 65, 200])
@pytest.mark.parametrize("d", [1, 7, 64, 100])
def test_v2_source_on_the_host_on_odd_shapes(rng, dtype, T, d):
    """d = 1, 7: not a multiple of the 16-byte width (the scalar load path); 100: 4 value chunks a thread
    (float32: fewer rows a thread); T = 1, 63, 65: one tile, partial tiles."""
    for mode in ("gated window 40 sinks 5", "non-causal"):
        ops, ops64 = operands(rng, dtype, T, d, d, mode)
        if dtype == np.float32 and d > 7:  # keep |logit| <~ 10 in float32 (module docstring)
            ops["Q"] = (ops["Q"] * (7 / d) ** 0.5).astype(dtype)
            ops64["Q"] = ops["Q"].astype(np.float64)
        _check(run_host_v2(ops), ops64, dtype, (mode, T, d))


@pytest.mark.parametrize("logit", [1e2, 1e4])
def test_v2_source_on_the_host_with_large_logits(rng, logit):
    """float64 logits up to 1e4: one pair dominates each row; exp2 of log2-scaled logits keeps 1e-10."""
    for mode in ("gated", "window 19 sinks 3", "non-causal"):
        ops, ops64 = operands(rng, np.float64, 130, 16, 8, mode, logit=logit)
        _check(run_host_v2(ops), ops64, np.float64, (mode, logit))


def test_v2_source_on_the_host_skips_tiles_behind_a_reset(rng):
    T = 300
    ops, ops64 = operands(rng, np.float64, T, 4, 4, "gated")
    ops["g"][:] = 0
    ops["g"][0, ::64] = -np.inf  # a reset at every key-tile start
    ops64["g"] = ops["g"]
    _check(run_host_v2(ops), ops64, np.float64, "resets")


# --- 3. on a GPU ---------------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_tile_sums_kernel_on_the_card_gives_the_bits_of_numpy(rng, dtype):
    import cupy as cp

    for T, BQ, BK in ((1, 64, 64), (63, 64, 32), (1000, 128, 64), (4097, 64, 64)):
        g = log_gates(rng, (5, T), strength=50.0, p=0.05).astype(dtype)
        got = F.device_tile_sums(cp.asarray(g), BQ, BK, T)
        for name, a, b in zip(("PRE", "SUF", "TOT"), got, F.tile_sums(np, g, BQ, BK, T), strict=True):
            assert np.array_equal(cp.asnumpy(a), b), (name, T, BQ, BK)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("T", [1, 63, 65, 1000])
@pytest.mark.parametrize("d", [1, 7, 64, 100, 128])
def test_v2_on_the_card_equals_reference_v1_and_dense(rng, dtype, T, d):
    import cupy as cp

    tname = "float32" if dtype == np.float32 else "float64"
    for mode in MODES:
        ops, ops64 = operands(rng, dtype, T, d, d, mode)
        if dtype == np.float32 and d > 7:
            ops["Q"] = (ops["Q"] * (7 / d) ** 0.5).astype(dtype)
            ops64["Q"] = ops["Q"].astype(np.float64)
        dev = {k: cp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in ops.items()}
        ref = F.fused_nw_reference(np, **ops64)
        v1 = F.forward(cp, variant="v1", **dev)
        for config in (None,) + F.SWEEP[tname]:
            got = F.forward(cp, variant="v2", config=config, **dev)
            if got is None:
                assert config is not None and d > 64  # a sweep shape too big for wide tiles
                continue
            tol = F32 if dtype == np.float32 else F64
            assert got.dtype == dtype
            assert rel(cp.asnumpy(got), ref) < tol, (mode, config)
            assert rel(cp.asnumpy(got), cp.asnumpy(v1)) < tol, (mode, config, "v1")
            if T <= 65:
                assert rel(cp.asnumpy(got), dense_nw(**ops64)) < tol, (mode, config, "dense")


@pytest.mark.parametrize(
    ("dtype", "config"),
    [(np.float32, c) for c in F.SWEEP["float32"]] + [(np.float64, c) for c in F.SWEEP["float64"]],
)
def test_v2_source_on_the_host_for_every_sweep_shape(rng, dtype, config):
    """Every shape the benchmark sweeps (and the GPU test runs) is correct on the host first."""
    for mode in ("gated window 45 sinks 70", "causal", "non-causal"):
        ops, ops64 = operands(rng, dtype, 150, 64 if dtype == np.float32 else 7, 64, mode)
        if dtype == np.float32:
            ops["Q"] = (ops["Q"] * (7 / 64) ** 0.5).astype(dtype)
            ops64["Q"] = ops["Q"].astype(np.float64)
        _check(run_host_v2(ops, config), ops64, dtype, (mode, config))


def test_a_v2_that_does_not_compile_falls_back_to_v1(monkeypatch):
    """An NVRTC failure of v2 (``CompileException``) warns once and runs v1 from then on; other errors, and
    failures of an explicitly asked shape, propagate."""

    class CompileException(Exception):
        pass

    def broken(*args):
        raise CompileException("nw_forward2: error: something")

    monkeypatch.setattr(F, "VARIANT", "v2")
    monkeypatch.setattr(F, "_forward2", broken)
    monkeypatch.setattr(F, "_forward1", lambda *args: "v1 ran")
    with pytest.warns(RuntimeWarning, match="v2 did not compile"):
        assert F.forward(np, *([None] * 5), 1.0, True, 0) == "v1 ran"
    assert F.VARIANT == "v1"
    assert F.forward(np, *([None] * 5), 1.0, True, 0) == "v1 ran"  # no second warning needed
    with pytest.raises(CompileException):
        F.forward(np, *([None] * 5), 1.0, True, 0, variant="v2", config=(16, 8, 8, 8))
    monkeypatch.setattr(F, "_forward2", lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        F.forward(np, *([None] * 5), 1.0, True, 0, variant="v2")
