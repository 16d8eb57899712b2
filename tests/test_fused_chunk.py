"""The fused chunked forward of scalar-decay identity layers (``methods/identity/_fused_chunk.py``):
its two CUDA kernels against the recurrent loop and the array-API chunked path.

* host, g++ (``tests/cuda_on_host.py`` runs the CUDA source): the kernels, launched as ``forward``
  launches them, against a float64 recurrence written out here (``M_t = a_t M + b_t v k^T``) and the
  NumPy chunked path ``chunked._kernel`` on odd shapes (T in {1, 31, 33, 100}, d in {1, 7, 64, 100},
  d_v != d_k), an initial state, log-gates 0 / -7 / -50 / -inf (clamped), the sum denominator; and the
  layers' device call site (chunked.py with ``forward`` replaced by the emulation) against the loop,
  windows included;
* nvcc: the source compiles for sm_90 with the module's template settings;
* GPU (CuPy; skipped without one, before importing cupy): the same comparisons on the card, and the
  layers with the switch on and off.

Tolerances (relative RMS): float64 1e-10 (rounding of O(T) sums, measured ~1e-15), float32 1e-5 (the
float32 products against a float64 reference, measured ~1e-7).
"""

import contextlib
import shutil
import subprocess
import sys
import types
from unittest import mock

import numpy as np
import pytest
from conftest import _cupy_available, rel_err
from conftest import host_cuda as needs_gxx

import ttr_stats as tt
from ttr_stats.methods.identity import _fused_chunk as fc
from ttr_stats.methods.identity import chunked as ich

TOL64, TOL32 = 1e-10, 1e-5
_FORWARD = fc.forward  # the real one (a test below replaces the module's with one that calls this)


def operands(rng, lead, T, dk, dv, log_alpha=None, dtype=np.float64, state=True):
    Q = rng.standard_normal(lead + (T, dk))
    K = rng.standard_normal(lead + (T, dk)) / np.sqrt(dk)
    V = rng.standard_normal(lead + (T, dv))
    g = -rng.uniform(0, 0.5, lead + (T, 1)) if log_alpha is None else np.full(lead + (T, 1), float(log_alpha))
    if T > 3:
        g[..., 3, 0] = -np.inf  # a hard reset: clamped to LOG_FLOOR
    b = rng.uniform(0.2, 1.0, lead + (T,))
    M0 = rng.standard_normal(lead + (dv, dk)) if state else np.zeros(lead + (dv, dk))
    z0 = rng.uniform(0, 1, lead + (dk,)) if state else np.zeros(lead + (dk,))
    return tuple(x.astype(dtype) for x in (Q, K, V, g, b, M0, z0))


def recurrence(Q, K, V, g, b, M0, z0):
    """float64 loop: ``y_t = M_t q_t``, ``den_t = q_t . z_t``, the final (M, z)."""
    f = lambda x: np.asarray(x, dtype=np.float64)  # noqa: E731
    Q, K, V, g, b, M, z = map(f, (Q, K, V, g, b, M0, z0))
    a = np.exp(np.maximum(g[..., 0], ich.LOG_FLOOR))
    ys, ds = [], []
    for t in range(Q.shape[-2]):
        M = a[..., t, None, None] * M + b[..., t, None, None] * V[..., t, :, None] * K[..., t, None, :]
        z = a[..., t, None] * z + b[..., t, None] * K[..., t, :]
        ys.append(np.einsum("...vk,...k->...v", M, Q[..., t, :]))
        ds.append(np.sum(z * Q[..., t, :], axis=-1))
    return np.stack(ys, -2), np.stack(ds, -1), M, z


def array_path(Q, K, V, g, b, M0, z0, C, need_den):
    import array_api_compat.numpy as xp

    return ich._kernel(xp, Q, K, V, g, b, M0, z0, C, need_den, True, None)[:4]


@contextlib.contextmanager
def host_cupy():
    """``_fused_chunk.forward`` runs its own glue and launches with :class:`_FakeCupy`: the kernels on
    the host, every output buffer poisoned with NaN (an entry no kernel writes shows)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(sys.modules, {"cupy": _FakeCupy}))
        stack.enter_context(
            mock.patch.object(
                fc, "array_api_compat", types.SimpleNamespace(is_cupy_namespace=lambda xp: True)
            )
        )
        stack.enter_context(mock.patch.object(fc, "_shared_limit", lambda: 227 * 1024))
        stack.enter_context(mock.patch.object(fc, "_MODULES", {}))
        yield


def emulated(Q, K, V, g, b, M0, z0, C, need_den, gated=True, flag=None):
    """``_fused_chunk.forward`` itself with the kernels run on the host (NumPy in, NumPy out)."""
    import array_api_compat.numpy as xp

    with host_cupy():
        got = _FORWARD(xp, Q, K, V, g, b, M0, z0, C, need_den, gated=gated, flag=flag)
    assert got is not None, "forward did not apply"
    return got


CASES = [  # lead, T, dk, dv, C
    ((1,), 1, 1, 1, 32),
    ((2,), 31, 7, 5, 8),
    ((1, 2), 33, 7, 9, 32),
    ((1,), 100, 64, 64, 32),
    ((1,), 33, 100, 70, 16),
    ((1,), 37, 64, 100, 7),
]


@needs_gxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("lead", "T", "dk", "dv", "C"), CASES)
@pytest.mark.parametrize("log_alpha", [None, 0.0, -7.0, -50.0])
@pytest.mark.parametrize("algo", fc.STATE_ALGOS)
@pytest.mark.parametrize("out_algo", fc.OUT_ALGOS)
def test_kernels_on_the_host_match_the_loop_and_the_array_path(
    monkeypatch, rng, algo, out_algo, dtype, lead, T, dk, dv, C, log_alpha
):
    if out_algo != fc.OUT_ALGO and dtype == np.float64:
        pytest.skip("float64 has one output kernel")
    monkeypatch.setattr(fc, "STATE_ALGO", algo)
    monkeypatch.setattr(fc, "OUT_ALGO", out_algo)
    need_den = log_alpha in (None, -7.0)
    ops = operands(rng, lead, T, dk, dv, log_alpha, dtype, state=log_alpha != 0.0)
    got = emulated(*ops, C, need_den)
    ref = recurrence(*ops)
    arr = array_path(*ops, C, need_den)
    tol = TOL32 if dtype == np.float32 else TOL64
    for name, x, r, a in zip(("y", "den", "M", "z"), got, ref, arr, strict=True):
        if name == "den" and not need_den:
            assert x is None
            continue
        assert np.all(np.isfinite(x)), name
        assert rel_err(x, r) < tol, (name, rel_err(x, r))
        assert rel_err(x, a) < tol, (name, rel_err(x, a))


@needs_gxx
@pytest.mark.parametrize(
    "consts",
    [
        dict(
            STATE_ALGO="sequential",
            STATE_BK=16,
            STATE_BV=16,
            STATE_TK=4,
            STATE_TV=4,
            OUT_BV=32,
            OUT_TI=2,
            OUT_TV=4,
            OUT_THREADS=32,
            OUT_ALGO="simt",
        ),
        dict(
            STATE_ALGO="sequential",
            STATE_BK=64,
            STATE_BV=64,
            STATE_TK=4,
            STATE_TV=4,
            OUT_BV=64,
            OUT_TI=8,
            OUT_TV=4,
            OUT_THREADS=64,
            OUT_ALGO="simt",
        ),
        dict(
            STATE_ALGO="sequential",
            STATE_BK=16,
            STATE_BV=64,
            STATE_TK=1,
            STATE_TV=4,
            OUT_BV=64,
            OUT_TI=2,
            OUT_TV=4,
            OUT_THREADS=256,
            OUT_ALGO="simt",
        ),
        # the pipelined pass: fewer threads than a chunk has rows (two gates a thread), and a tile whose
        # entries a chunk do not divide by the threads
        dict(STATE_ALGO="pipelined", PIPE_BK=16, PIPE_BV=16, PIPE_TK=4, PIPE_TV=4, FACTOR_THREADS=32),
        dict(STATE_ALGO="pipelined", PIPE_BK=32, PIPE_BV=16, PIPE_TK=2, PIPE_TV=1, FACTOR_THREADS=7),
        # the scan's kernels: tiles smaller than d (several a chunk), 1 and 3 chunks a load group (3
        # does not divide the chunk count), fewer scan threads than the state has entries
        dict(DELTA_BK=16, DELTA_BV=32, DELTA_TK=2, DELTA_TV=4, SCAN_UNROLL=3, SCAN_THREADS=64),
        dict(DELTA_BK=32, DELTA_BV=16, DELTA_TK=1, DELTA_TV=1, SCAN_UNROLL=1, SCAN_THREADS=32),
        # the tensor-core output kernel: fewer warps than strips and tiles, more warps than strips, a
        # column tile wider than d_v
        dict(OUT_ALGO="tf32x3", OUT_TC_BV=32, OUT_TC_THREADS=32),
        dict(OUT_ALGO="tf32x3", OUT_TC_BV=32, OUT_TC_THREADS=128),
        dict(OUT_ALGO="tf32x3", OUT_TC_BV=96, OUT_TC_THREADS=64),
    ],
)
@pytest.mark.parametrize(("T", "dk", "dv", "C"), [(100, 64, 72, 64), (70, 20, 40, 32), (9, 3, 2, 4)])
def test_other_module_constants_on_the_host(monkeypatch, rng, consts, T, dk, dv, C):
    """The tile settings a GPU run sweeps (fewer threads than chunk rows, several tiles a dimension)."""
    for k, v in consts.items():
        monkeypatch.setattr(fc, k, v)
    fc._check_layout()
    for dtype, tol in ((np.float32, TOL32), (np.float64, TOL64)):
        ops = operands(rng, (2,), T, dk, dv, None, dtype)
        got, ref = emulated(*ops, C, True), recurrence(*ops)
        for name, x, r in zip(("y", "den", "M", "z"), got, ref, strict=True):
            assert rel_err(x, r) < tol, (name, dtype, rel_err(x, r))


@needs_gxx
def test_kernels_on_the_host_are_exactly_causal(rng):
    """Outputs before s do not change by a bit when inputs at s and after change (s inside a chunk)."""
    ops = operands(rng, (1,), 40, 7, 5, None, np.float32)
    y1 = emulated(*ops, 16, True)
    s = 21
    ops2 = [x.copy() for x in ops]
    for x in ops2[:5]:
        x[:, s:] = x[:, s:] * 3 - 1 if x.ndim == 3 else x[:, s:] * 0.5  # (1, T, d) or b (1, T)
    y2 = emulated(*ops2, 16, True)
    assert np.array_equal(y1[0][..., :s, :], y2[0][..., :s, :])
    assert np.array_equal(y1[1][..., :s], y2[1][..., :s])


@needs_gxx
@pytest.mark.parametrize(("T", "C"), [(100, 32), (37, 7), (5, 16)])
def test_pipelined_pass_equals_the_sequential_one_to_the_bit(monkeypatch, rng, T, C):
    """The pipelined state pass (loads one chunk ahead, two buffers) sums what the sequential one sums,
    in its order: the same outputs and final state, bit for bit (float32 and float64)."""
    for dtype in (np.float32, np.float64):
        ops = operands(rng, (2,), T, 20, 12, None, dtype)
        got = {}
        for algo in ("sequential", "pipelined"):
            monkeypatch.setattr(fc, "STATE_ALGO", algo)
            got[algo] = emulated(*ops, C, True)
        for x, y in zip(got["sequential"], got["pipelined"], strict=True):
            assert np.array_equal(x, y)


@needs_gxx
@pytest.mark.parametrize(("T", "dk", "dv", "C"), [(100, 64, 64, 32), (37, 7, 5, 7), (1, 1, 1, 32)])
def test_ungated_output_kernel_equals_the_gated_one_at_zero_gates(rng, T, dk, dv, C):
    """``gated=False`` (every log-gate 0, known from the layer) skips the decays in the output kernel:
    the same bits as the gated kernel given g = 0 (exp(0) = 1 multiplies exactly), and the loop."""
    for dtype, tol in ((np.float32, TOL32), (np.float64, TOL64)):
        ops = list(operands(rng, (2,), T, dk, dv, 0.0, dtype))
        ops[3] = np.zeros_like(ops[3])  # operands() puts a reset (-inf) at t = 3
        gated, ungated = emulated(*ops, C, True, True), emulated(*ops, C, True, False)
        for x, y in zip(gated, ungated, strict=True):
            assert np.array_equal(x, y)
        for name, x, r in zip(("y", "den", "M", "z"), ungated, recurrence(*ops), strict=True):
            assert rel_err(x, r) < tol, (name, dtype, rel_err(x, r))


@needs_gxx
@pytest.mark.parametrize("name", ["linear", "retnet_sum", "mamba2", "window"])
@pytest.mark.parametrize(("T", "chunk"), [(1, None), (33, 8), (70, 32)])
def test_device_call_site_through_the_emulated_kernels_matches_the_loop(monkeypatch, rng, name, T, chunk):
    """identity/chunked.py on its device path with ``forward`` run on the host: the operands it hands
    over (windows: both stacked runs) and takes back are the right ones."""
    calls = []

    def forward(xp, Q, K, V, g, b, M0, z0, C, need_den, gated=True, flag=None):
        calls.append((C, gated))
        return emulated(*(np.asarray(x) for x in (Q, K, V, g, b, M0, z0)), C, need_den, gated, flag)

    monkeypatch.setattr(fc, "forward", forward)
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)
    sum_opt = tt.optimizers.IdentityCovariance("sum")
    layer = {
        "linear": lambda: tt.recipes.linear_attention(),
        "retnet_sum": lambda: tt.TestTimeRegression(weights=tt.weights.Gated(), optimizer=sum_opt),
        "mamba2": tt.recipes.mamba2,
        "window": lambda: tt.TestTimeRegression(weights=tt.weights.SlidingWindow(5), optimizer=sum_opt),
    }[name]()
    dk, dv = 7, 5
    Q, K, V = (rng.standard_normal((2, T, d)) for d in (dk, dk, dv))
    if "sum" in name or name == "window":
        Q, K = np.abs(Q), np.abs(K)
    kw = {"log_alpha": -rng.uniform(0, 0.5, (2, T))} if name in ("retnet_sum", "mamba2") else {}
    yc = layer(Q, K, V, method="chunked", chunk_size=chunk, **kw)
    yr = layer(Q, K, V, method="recurrent", **kw)
    assert calls, "the fused path was not taken"
    # the layer's own gating reaches the output kernel: ungated layers skip the decays there
    assert {gated for _, gated in calls} == {name in ("retnet_sum", "mamba2")}, calls
    assert rel_err(yc, yr) < TOL64, (name, rel_err(yc, yr))


class _FakeCupy:
    """Just enough of CuPy for ``forward``: NumPy arrays (``empty`` ones full of NaN), and ``RawModule``
    functions that run the kernels on the host (``cuda_on_host``), with the parameter types of
    ``fc.SIGNATURES``, so that ``forward``'s own launches (argument order, grids, shared sizes) are what
    is tested."""

    ascontiguousarray = staticmethod(np.ascontiguousarray)
    broadcast_to = staticmethod(np.broadcast_to)
    int32, float32, float64 = np.int32, np.float32, np.float64

    @staticmethod
    def empty(shape, dtype):
        return np.full(shape, np.nan, dtype)

    @staticmethod
    def zeros(shape, dtype):
        return np.zeros(shape, dtype)

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.code = code

        def get_function(self, name):
            import cuda_on_host

            t = "double" if name.split("<")[1].startswith("double") else "float"
            kinds = {"P": f"const {t}*", "W": f"{t}*", "F": "int*", "i": "int"}
            types = [kinds[c] for c in fc.SIGNATURES[name.split("<")[0]]]
            kern = cuda_on_host.compile_kernel(self.code, name, types)

            class Function:
                max_dynamic_shared_size_bytes = 0

                def __call__(self, grid, block, args, shared_mem=0):
                    kern(grid, block, shared_mem, *(a if isinstance(a, np.ndarray) else int(a) for a in args))

            return Function()


@needs_gxx
@pytest.mark.parametrize("name", ["linear", "retnet_sum", "window"])
def test_forward_itself_with_a_host_cupy_matches_the_loop(monkeypatch, rng, name):
    """``forward``'s own CuPy glue and launches, the kernels run on the host, through the layers."""
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)
    sum_opt = tt.optimizers.IdentityCovariance("sum")
    layer = {
        "linear": lambda: tt.recipes.linear_attention(),
        "retnet_sum": lambda: tt.TestTimeRegression(weights=tt.weights.Gated(), optimizer=sum_opt),
        "window": lambda: tt.TestTimeRegression(weights=tt.weights.SlidingWindow(5), optimizer=sum_opt),
    }[name]()
    T, dk, dv = 45, 9, 6
    Q, K, V = (np.abs(rng.standard_normal((2, T, d))) for d in (dk, dk, dv))
    kw = {"log_alpha": -rng.uniform(0, 0.5, (2, T))} if name == "retnet_sum" else {}
    for dt, tol in ((np.float32, TOL32), (np.float64, TOL64)):
        args = [x.astype(dt) for x in (Q, K, V)]
        kwd = {k: v.astype(dt) for k, v in kw.items()}
        with host_cupy():
            yc, st = layer(*args, method="chunked", chunk_size=16, return_state=True, **kwd)
            assert fc._MODULES, "forward did not launch the kernels"
        yr, sr = layer(Q, K, V, method="recurrent", return_state=True, **kw)
        assert yc.dtype == dt
        assert rel_err(yc, yr) < tol, (name, dt, rel_err(yc, yr))
        assert rel_err(st.M, sr.M) < tol and rel_err(st.z, sr.z) < tol


def test_does_not_apply_off_cupy_or_beyond_max_d():
    import array_api_compat.numpy as xp

    assert not fc.applies(xp, np.dtype("float32"), 32, 64, 64)
    ops = operands(np.random.default_rng(0), (1,), 4, 2, 2)
    assert fc.forward(xp, *ops, 32, False) is None


def test_kernel_floor_is_the_module_floor():
    assert f"#define TTR_LOG_FLOOR {ich.LOG_FLOOR!r}" in fc._SOURCE


@pytest.mark.parametrize(
    ("name", "value"), [("STATE_TK", 3), ("DELTA_TV", 5), ("SCAN_UNROLL", 0), ("STATE_ALGO", "tree")]
)
def test_bad_constants_are_refused(monkeypatch, name, value):
    monkeypatch.setattr(fc, name, value)
    with pytest.raises(ValueError, match=name):
        fc._check_layout()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_source_compiles_with_nvcc(tmp_path):
    inst = ""
    names = set()
    for algo, out_algo in ((a, o) for a in fc.STATE_ALGOS for o in fc.OUT_ALGOS):
        with mock.patch.object(fc, "STATE_ALGO", algo), mock.patch.object(fc, "OUT_ALGO", out_algo):
            names |= {
                (nm, t)
                for dt, t in fc._DTYPES.items()
                for dk in (7, 64)
                for C in (32, 100)
                for gated in (True, False)
                for nm in fc._names(np.dtype(dt), dk, C, gated)
            }
    for nm, t in sorted(names):
        kinds = {"P": f"const {t}*", "W": f"{t}*", "F": "int*", "i": "int"}
        params = ", ".join(kinds[c] for c in fc.SIGNATURES[nm.split("<")[0]])
        inst += f"\ntemplate __global__ void {nm}({params});"
    src = tmp_path / "k.cu"
    src.write_text(fc._SOURCE + inst + "\n")
    res = subprocess.run(
        ["nvcc", "-arch=sm_90", "-std=c++17", "-c", str(src), "-o", str(tmp_path / "k.o")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------------------------------------- GPU
gpu = [pytest.mark.gpu, pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("lead", "T", "dk", "dv", "C"), CASES + [((2, 3), 300, 128, 128, 32)])
@pytest.mark.parametrize("log_alpha", [None, 0.0, -50.0])
@pytest.mark.parametrize("algo", fc.STATE_ALGOS)
@pytest.mark.parametrize("out_algo", fc.OUT_ALGOS)
@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
def test_gpu_forward_matches_the_loop(monkeypatch, rng, algo, out_algo, dtype, lead, T, dk, dv, C, log_alpha):
    import array_api_compat.cupy as cxp
    import cupy

    if out_algo != fc.OUT_ALGO and dtype == np.float64:
        pytest.skip("float64 has one output kernel")
    monkeypatch.setattr(fc, "STATE_ALGO", algo)
    monkeypatch.setattr(fc, "OUT_ALGO", out_algo)
    ops = operands(rng, lead, T, dk, dv, log_alpha, dtype)
    got = fc.forward(cxp, *(cupy.asarray(x) for x in ops), C, True)
    assert got is not None
    ref = recurrence(*ops)
    tol = TOL32 if dtype == np.float32 else TOL64
    for name, x, r in zip(("y", "den", "M", "z"), got, ref, strict=True):
        x = cupy.asnumpy(x)
        assert np.all(np.isfinite(x)), name
        assert rel_err(x, r) < tol, (name, rel_err(x, r))


@pytest.mark.parametrize("name", ["linear", "mamba2", "window"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
def test_gpu_layers_with_and_without_the_switch(monkeypatch, rng, name, dtype):
    import cupy

    layer = {
        "linear": tt.recipes.linear_attention,
        "mamba2": tt.recipes.mamba2,
        "window": lambda: tt.TestTimeRegression(
            weights=tt.weights.SlidingWindow(9), optimizer=tt.optimizers.IdentityCovariance("sum")
        ),
    }[name]()
    T, dk, dv = 77, 16, 24
    Q, K, V = (np.abs(rng.standard_normal((2, 3, T, d))).astype(dtype) for d in (dk, dk, dv))
    kw = (
        {"log_alpha": cupy.asarray(-rng.uniform(0, 0.5, (2, 3, T)).astype(dtype))} if name == "mamba2" else {}
    )
    args = [cupy.asarray(x) for x in (Q, K, V)]
    y_new = cupy.asnumpy(layer(*args, method="chunked", **kw))
    monkeypatch.setattr(fc, "ENABLED", False)
    y_old = cupy.asnumpy(layer(*args, method="chunked", **kw))
    kw_h = {k: cupy.asnumpy(v).astype(np.float64) for k, v in kw.items()}
    y_ref = layer(*(x.astype(np.float64) for x in (Q, K, V)), method="recurrent", **kw_h)
    tol = TOL32 if dtype == np.float32 else TOL64
    assert rel_err(y_new, y_ref) < tol
    assert rel_err(y_old, y_ref) < tol


# ------------------------------------------------------------------- the scan alone and the per-dim path
def _scan_loop(D, dec, S0):
    """float64 loop: the states before every chunk and the final one (dec broadcast over the columns)."""
    D, dec, S = (np.asarray(x, np.float64) for x in (D, dec, S0))
    S = np.broadcast_to(S, D.shape[:-3] + D.shape[-2:]).copy()
    out = np.empty(D.shape)
    for n in range(D.shape[-3]):
        out[..., n, :, :] = S
        S = dec[..., n, :, None] * S + D[..., n, :, :]
    return out, S


@needs_gxx
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("lead", "N", "R", "Cc", "per_row"), [((2,), 1, 1, 1, False), ((1, 3), 9, 7, 5, True),
                                                               ((2,), 20, 16, 33, False), ((1,), 17, 5, 3, True)])  # fmt: skip
def test_scan_states_on_the_host_matches_the_loop(monkeypatch, rng, dtype, lead, N, R, Cc, per_row):
    """``scan_states`` (kernel 1b alone, as the per-dimension path calls it): every state before a chunk
    and the final one, scalar and per-row decays (down to exp(-50)), a chunk count that the load group
    (3) does not divide, a broadcast initial state."""
    import array_api_compat.numpy as xp

    monkeypatch.setattr(fc, "SCAN_UNROLL", 3)
    monkeypatch.setattr(fc, "SCAN_THREADS", 32)
    D = rng.standard_normal(lead + (N, R, Cc)).astype(dtype)
    dec = np.exp(-rng.uniform(0, 1, lead + (N, R if per_row else 1))).astype(dtype)
    dec[..., 0, :] = np.exp(-50.0)
    S0 = rng.standard_normal((R, Cc)).astype(dtype)
    ref_states, ref_final = _scan_loop(D, dec, S0)
    with host_cupy():
        states, final = fc.scan_states(xp, D.copy(), dec, S0)
    tol = TOL32 if dtype == np.float32 else TOL64
    assert states.dtype == dtype and final.shape == lead + (R, Cc)
    assert rel_err(states, ref_states) < tol and rel_err(final, ref_final) < tol


def test_scan_states_does_not_apply_off_cupy_and_refuses_bad_decays():
    import array_api_compat.numpy as xp

    D = np.zeros((2, 3, 4, 5))
    assert fc.scan_states(xp, D, np.ones((2, 3, 1)), np.zeros((4, 5))) is None
    with host_cupy(), pytest.raises(ValueError, match="1 or 4 decays"):
        fc.scan_states(xp, D, np.ones((2, 3, 2)), np.zeros((4, 5)))


@needs_gxx
@pytest.mark.parametrize("name", ["gla", "gla_sum"])
@pytest.mark.parametrize(("T", "chunk", "log_alpha"), [(1, None, None), (45, 8, None), (70, 16, -50.0),
                                                       (33, 32, 0.0)])  # fmt: skip
def test_per_dimension_device_path_through_the_emulated_scan(monkeypatch, rng, name, T, chunk, log_alpha):
    """identity/chunked.py's per-dimension device path (GLA: batched products and ``scan_states``, the
    scan kernel run on the host) against the recurrent loop, with an initial state."""
    calls = []
    real = fc.scan_states

    def counted(*a):
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(fc, "scan_states", counted)
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)
    opt = tt.optimizers.IdentityCovariance("sum") if name == "gla_sum" else tt.optimizers.IdentityCovariance()
    layer = tt.TestTimeRegression(weights=tt.weights.Gated(per_dimension=True), optimizer=opt)
    dk, dv = 7, 5
    Q, K, V = (np.abs(rng.standard_normal((2, T, d))) for d in (dk, dk, dv))
    la = -rng.uniform(0, 0.5, (2, T, dk)) if log_alpha is None else np.full((2, T, dk), log_alpha)
    _, st0 = layer(Q[:, :3], K[:, :3], V[:, :3], log_alpha=la[:, :3], method="recurrent", return_state=True)
    for dt, tol in ((np.float32, TOL32), (np.float64, TOL64)):
        args = [x.astype(dt) for x in (Q, K, V)]
        s0 = type(st0)(*(np.asarray(f, dt) for f in st0))
        with host_cupy():
            yc, sc = layer(*args, log_alpha=la.astype(dt), method="chunked", chunk_size=chunk,
                           initial_state=s0, return_state=True)  # fmt: skip
        yr, sr = layer(Q, K, V, log_alpha=la, method="recurrent", initial_state=st0, return_state=True)
        assert yc.dtype == dt
        assert rel_err(yc, yr) < tol, (name, dt, rel_err(yc, yr))
        assert rel_err(sc.M, sr.M) < tol and rel_err(sc.z, sr.z) < tol
    assert calls, "the scan was not taken"


@pytest.mark.parametrize("states", ["scan", "pass"])
@pytest.mark.parametrize("normalize", [None, "sum"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
def test_gpu_per_dimension_states_by_scan_and_by_pass(monkeypatch, rng, states, normalize, dtype):
    import cupy

    monkeypatch.setattr(ich, "DEVICE_STATES", states)
    opt = tt.optimizers.IdentityCovariance(normalize) if normalize else tt.optimizers.IdentityCovariance()
    layer = tt.TestTimeRegression(weights=tt.weights.Gated(per_dimension=True), optimizer=opt)
    T, dk, dv = 301, 16, 24
    Q, K, V = (np.abs(rng.standard_normal((2, 3, T, d))) for d in (dk, dk, dv))
    la = -rng.uniform(0, 0.5, (2, 3, T, dk))
    la[..., 100, :] = -50.0
    y = layer(*(cupy.asarray(x.astype(dtype)) for x in (Q, K, V)), log_alpha=cupy.asarray(la.astype(dtype)),
              method="chunked")  # fmt: skip
    ref = layer(Q, K, V, log_alpha=la, method="recurrent")
    assert rel_err(cupy.asnumpy(y), ref) < (TOL32 if dtype == np.float32 else TOL64)
