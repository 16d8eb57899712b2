"""The fused per-chunk delta-rule terms (``methods/delta/_fused_wy.py``) against their references.

The chain: the recurrent loop defines the layer; ``_wy.chunk_terms`` (the array form) is checked against it
by the chunked-method tests; here

1. ``wy_terms_reference`` (the kernel's steps as array operations) equals ``_wy.chunk_terms`` on odd shapes
   and at the gate extremes (host, always);
2. the CUDA source itself, run on the host by ``tests/cuda_on_host.py`` (g++; skipped without it), equals
   ``wy_terms_reference``: index arithmetic, padding of the shared-memory rows, barriers;
3. the layers with the reference in place of the kernel (host) and with the kernel (GPU; skipped without
   CuPy and a device, before importing cupy) equal the recurrent loop;
4. the source compiles with nvcc for sm_90 where nvcc exists (the flags NVRTC gets on the card).

Tolerances, relative RMS or max-relative as named: float64 1e-12 between two orders of the same sums
(measured ~2e-16 at C = 64: the solve is a product of unit triangular factors with |N| < 1 here, so
rounding is not amplified), 1e-10 against the recurrent loop (the standard of every chunked method);
float32 1e-5 (eps 6e-8 times the same small growth; measured ~5e-7).
"""

import shutil
import subprocess

import numpy as np
import pytest
from conftest import _cupy_available, host_cuda, rel_err

import ttr_stats as tt
from ttr_stats.methods import _fused
from ttr_stats.methods.delta import _fused_wy as fw
from ttr_stats.methods.delta import _wy
from ttr_stats.methods.delta import chunked as dch

TOL_ORDER, TOL64, TOL32 = 1e-12, 1e-10, 1e-5


def terms_inputs(rng, lead, N, c, n, dk, dv, leak, log_alpha=None, dtype=np.float64):
    """Chunk operands as ``methods/delta/chunked.py`` forms them: unit keys, steps in (0.1, 1], log-decays
    of the state (``gs``, the leak included) and of the read (``gr``) or None; one hard reset."""
    C = c * n
    K = rng.standard_normal(lead + (N, C, dk))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    V = rng.standard_normal(lead + (N, C, dv))
    Q = rng.standard_normal(lead + (N, c, dk))
    eta = rng.uniform(0.1, 1.0, lead + (N, C))
    g = (
        -rng.uniform(0.0, 0.5, lead + (N, C))
        if log_alpha is None
        else np.full(lead + (N, C), float(log_alpha))
    )
    if C > 3:
        g[..., 0, 3] = -np.inf  # a hard reset inside the first chunk
    gr, gs = (g, g + np.log(rng.uniform(0.5, 1.0, g.shape))) if leak else (None, g)
    cast = lambda a: None if a is None else a.astype(dtype)  # noqa: E731
    return tuple(cast(a) for a in (K, V, Q, eta, gs, gr))


SHAPES = [  # lead, N, c, n, dk, dv, leak
    ((2,), 3, 1, 1, 1, 1, False),
    ((2,), 3, 7, 1, 7, 3, False),
    ((1, 2), 2, 16, 1, 100, 7, True),
    ((2,), 2, 4, 3, 7, 33, False),  # DeltaProduct: 3 writes a token
    ((2,), 2, 11, 3, 5, 4, True),
    ((1,), 2, 64, 1, 64, 64, False),  # Gated DeltaNet's shape
]


def _terms_err(a, b):
    """Relative error of every field both hold (the array form leaves ``Qg`` to chunk_outputs: None)."""
    return {
        f: rel_err(np.asarray(x), np.asarray(y))
        for f, x, y in zip(a._fields, a, b, strict=True)
        if x is not None and y is not None
    }


# --- 1. the reference follows the array form ------------------------------------------------------------
@pytest.mark.parametrize(("lead", "N", "c", "n", "dk", "dv", "leak"), SHAPES)
@pytest.mark.parametrize("log_alpha", [None, 0.0, -7.0, -50.0])
def test_reference_equals_the_array_form(rng, lead, N, c, n, dk, dv, leak, log_alpha):
    import array_api_compat.numpy as xp

    args = terms_inputs(rng, lead, N, c, n, dk, dv, leak, log_alpha)
    ref = fw.wy_terms_reference(xp, *args, n)
    arr = _wy.chunk_terms(xp, *args, n)
    for f, e in _terms_err(ref, arr).items():
        assert e < TOL_ORDER, (f, e)
        assert np.all(np.isfinite(getattr(ref, f))), f


def test_kernel_does_not_apply_off_cupy():
    import array_api_compat.numpy as xp

    assert not fw.applies(xp, np.dtype("float64"), 64, 64, 64)
    args = terms_inputs(np.random.default_rng(0), (1,), 1, 4, 1, 2, 2, False)
    assert fw.chunk_terms(xp, *args, 1) is None


def test_chunk_outputs_read_the_decayed_queries_as_the_product_does(rng):
    """``ChunkTerms.Qg`` (the fused kernel's decayed queries) gives the outputs that ``gam_r * Q`` does;
    off CuPy ``matmul_sum`` declines, and the two products are added as written."""
    import array_api_compat.numpy as xp

    from ttr_stats.methods import _fused

    args = terms_inputs(rng, (2,), 3, 5, 1, 7, 4, True)
    t = fw.wy_terms_reference(xp, *args, 1)
    St = rng.standard_normal((2, 3, 7, 4))
    D = rng.standard_normal((2, 3, 5, 4))
    assert _fused.matmul_sum(xp, t.Qg, St, t.P, D) is None
    # ... and matmul_add forms them as written: the same bits as the explicit sum
    assert np.array_equal(_fused.matmul_add(xp, t.Qg, St, t.P, D), t.Qg @ St + t.P @ D)
    with_qg = _wy.chunk_outputs(xp, t, St, D)
    without = _wy.chunk_outputs(xp, t._replace(Qg=None), St, D)
    assert rel_err(with_qg, without) < TOL_ORDER  # float64, the same terms summed in another order


# --- 2. the CUDA source on the host ---------------------------------------------------------------------
def emulated(args, n, dtype):
    """``_fused_wy.chunk_terms`` with the kernel run by tests/cuda_on_host.py (same flattening)."""
    import cuda_on_host

    K, V, Q, eta, gs, gr = args
    T = {np.float32: "float", np.float64: "double"}[dtype]
    kern = cuda_on_host.compile_kernel(
        fw._SOURCE, f"wy_terms<{T}>", [f"const {T}*"] * 6 + [f"{T}*"] * 7 + ["int"] * 6
    )
    lead, (N, C, dk), dv, c = K.shape[:-3], K.shape[-3:], V.shape[-1], Q.shape[-2]
    BN = int(np.prod(lead)) * N
    f = lambda x, tail: np.ascontiguousarray(x.reshape((BN,) + tail), dtype=dtype)  # noqa: E731
    ins = [f(K, (C, dk)), f(V, (C, dv)), f(Q, (c, dk)), f(eta, (C,)), f(gs, (C,))]
    ins.append(f(gr, (C,)) if gr is not None else ins[-1])
    outs = [
        np.full(s, np.nan, dtype)
        for s in ((BN, C, dv), (BN, C, dk), (BN, C, dk), (BN, c, C), (BN, c), (BN,), (BN, c, dk))
    ]
    smem = fw.shared_bytes(C, dk, dv, np.dtype(dtype).itemsize)
    kern((BN,), (fw.THREADS,), smem, *ins, *outs, C, c, n, dk, dv, int(gr is not None))
    U, W, DK, P, gam_r, gamC, Qg = outs
    r = lambda x, tail: x.reshape(lead + (N,) + tail)  # noqa: E731
    return _wy.ChunkTerms(U=r(U, (C, dv)), W=r(W, (C, dk)), DK=r(DK, (C, dk)), gamC=r(gamC, ()),
                          gam_r=r(gam_r, (c,)), P=r(P, (c, C)), Q=Q, Qg=r(Qg, (c, dk)))  # fmt: skip


@host_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "N", "c", "n", "dk", "dv", "leak"), SHAPES[:5] + [((1,), 1, 64, 1, 64, 64, False)]
)
def test_cuda_source_on_the_host_equals_the_reference(rng, dtype, lead, N, c, n, dk, dv, leak):
    import array_api_compat.numpy as xp

    args = terms_inputs(rng, lead, N, c, n, dk, dv, leak, dtype=dtype)
    got = emulated(args, n, dtype)
    ref = fw.wy_terms_reference(xp, *(None if a is None else a.astype(np.float64) for a in args), n)
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for f, e in _terms_err(got, ref).items():
        assert e < tol, (f, e)


# --- 3. the layers -------------------------------------------------------------------------------------
LAYERS = {
    "deltanet": (tt.recipes.deltanet, False),
    "gated_deltanet": (tt.recipes.gated_deltanet, True),
    "delta_product3": (lambda: tt.recipes.delta_product(3), True),
    "leaky_lms": (lambda: tt.recipes.leaky_lms(beta=0.5, l2=0.3), False),
    "longhorn": (tt.recipes.longhorn, False),
}


def layer_inputs(rng, gated, batch, T, dk, dv, n=1, dtype=np.float64):
    Q = rng.standard_normal(batch + (T, dk))
    K = rng.standard_normal(batch + (T * n, dk))
    K /= np.linalg.norm(K, axis=-1, keepdims=True) + 1e-12
    V = rng.standard_normal(batch + (T * n, dv))
    gates = {"beta": rng.uniform(0.2, 1.0, batch + (T * n,))}
    if gated:
        gates["log_alpha"] = -rng.uniform(0.0, 0.5, batch + (T,))
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype), {k: v.astype(dtype) for k, v in gates.items()}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(("T", "dk", "dv", "chunk"), [(1, 7, 3, None), (63, 1, 7, 10), (65, 7, 1, 16)])
def test_call_site_with_the_reference_matches_the_loop(monkeypatch, rng, name, T, dk, dv, chunk):
    """chunked.py on the device path with ``wy_terms_reference`` in place of the kernel (and the state
    pass's reference loop) equals the recurrent definition: the operands it hands over are the right ones."""
    monkeypatch.setattr(
        fw,
        "chunk_terms",
        lambda xp, K, V, Q, eta, gs, gr, n, device=None: fw.wy_terms_reference(xp, K, V, Q, eta, gs, gr, n),
    )
    monkeypatch.setattr(_fused, "state_pass", _fused.state_pass_reference)
    monkeypatch.setattr(dch, "_on_device", lambda xp, device: True)
    factory, gated = LAYERS[name]
    n = 3 if name == "delta_product3" else 1
    Q, K, V, gates = layer_inputs(rng, gated, (2,), T, dk, dv, n)
    layer = factory()
    yc, sc = layer(Q, K, V, method="chunked", chunk_size=chunk, return_state=True, **gates)
    yr, sr = layer(Q, K, V, method="recurrent", return_state=True, **gates)
    assert rel_err(yc, yr) < TOL64, (name, rel_err(yc, yr))
    assert rel_err(sc.M, sr.M) < TOL64


# --- 4. nvcc -----------------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_sources_compile_with_nvcc(tmp_path):
    inst = {
        "wy_terms": (fw._SOURCE, "(const {t}*, const {t}*, const {t}*, const {t}*, const {t}*, const {t}*, "
                     "{t}*, {t}*, {t}*, {t}*, {t}*, {t}*, {t}*, int, int, int, int, int, int)"),
    }  # fmt: skip
    for name, (src, sig) in inst.items():
        body = src + "".join(
            f"\ntemplate __global__ void {name}<{t}>{sig.format(t=t)};" for t in ("float", "double")
        )
        path = tmp_path / f"{name}.cu"
        path.write_text(body)
        res = subprocess.run(
            ["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(path), "-o", str(tmp_path / f"{name}.o")],
            capture_output=True,
            text=True,
        )
        assert res.returncode == 0, res.stderr[-3000:]


# --- 5. on a GPU -------------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "N", "c", "n", "dk", "dv", "leak"), SHAPES + [((70000,), 1, 2, 1, 3, 2, True)]
)
def test_kernel_matches_the_reference(rng, dtype, lead, N, c, n, dk, dv, leak):
    import array_api_compat.cupy as cxp
    import array_api_compat.numpy as xp
    import cupy as cp

    args = terms_inputs(rng, lead, N, c, n, dk, dv, leak, dtype=dtype)
    got = fw.chunk_terms(cxp, *(None if a is None else cp.asarray(a) for a in args), n)
    assert got is not None
    ref = fw.wy_terms_reference(xp, *(None if a is None else a.astype(np.float64) for a in args), n)
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    for f, x, y in zip(got._fields, got, ref, strict=True):
        x = cp.asnumpy(x)
        assert x.shape == y.shape and x.dtype == dtype, f
        assert rel_err(x, y) < tol, (f, rel_err(x, y))


@gpu
@pytest.mark.gpu
def test_kernel_refuses_what_does_not_fit_shared_memory():
    import array_api_compat.cupy as cxp
    import cupy as cp

    assert not fw.applies(cxp, cp.dtype("float64"), 128, 256, 256)
    assert not fw.applies(cxp, cp.dtype("float16"), 4, 4, 4)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_with_the_kernel_match_without_it_and_the_loop(monkeypatch, rng, name, dtype):
    import cupy as cp

    factory, gated = LAYERS[name]
    n = 3 if name == "delta_product3" else 1
    tol = TOL32 if dtype == np.float32 else TOL64
    for T, dk, dv, chunk in [(1, 7, 3, None), (65, 7, 1, 16), (1000, 100, 7, 64), (300, 64, 64, None)]:
        Q, K, V, gates = layer_inputs(rng, gated, (2,), T, dk, dv, n, dtype)
        put = lambda d: {k: cp.asarray(v) for k, v in d.items()}  # noqa: E731
        layer = factory()
        args = (cp.asarray(Q), cp.asarray(K), cp.asarray(V))
        yf = layer(*args, method="chunked", chunk_size=chunk, **put(gates))
        monkeypatch.setattr(fw, "ENABLED", False)
        ya = layer(*args, method="chunked", chunk_size=chunk, **put(gates))
        monkeypatch.setattr(fw, "ENABLED", True)
        yr = layer(Q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), method="recurrent",
                   **{k: v.astype(np.float64) for k, v in gates.items()})  # fmt: skip
        assert rel_err(cp.asnumpy(yf), cp.asnumpy(ya)) < tol, (name, T, "fused terms vs array form")
        assert rel_err(cp.asnumpy(yf), yr) < tol, (name, T, "fused terms vs loop")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "m", "k1", "k2", "n"), [((), 1, 1, 1, 1), ((3,), 5, 7, 64, 9), ((2, 3), 64, 64, 64, 64)]
)
def test_matmul_sum_equals_two_products_and_their_sum(rng, dtype, lead, m, k1, k2, n):
    """``_fused.matmul_sum`` (two cuBLAS products, the second accumulating) against NumPy float64, and
    it declines what it does not take (a transposed view, mismatched batch shapes)."""
    import array_api_compat.cupy as cxp
    import cupy as cp

    from ttr_stats.methods import _fused

    A1, B1 = rng.standard_normal(lead + (m, k1)), rng.standard_normal(lead + (k1, n))
    A2, B2 = rng.standard_normal(lead + (m, k2)), rng.standard_normal(lead + (k2, n))
    got = _fused.matmul_sum(cxp, *(cp.asarray(x, dtype=dtype) for x in (A1, B1, A2, B2)))
    assert got is not None and got.dtype == dtype and got.shape == lead + (m, n)
    ref = A1.astype(dtype).astype(np.float64) @ B1.astype(dtype) + A2.astype(dtype) @ B2.astype(dtype)
    tol = TOL32 if dtype == np.float32 else TOL_ORDER
    assert rel_err(cp.asnumpy(got), ref) < tol
    ops = [cp.asarray(x, dtype=dtype) for x in (A1, B1, A2, B2)]
    if m > 1 and k1 > 1:  # A1 as a transposed view: not C-contiguous
        view = cp.swapaxes(cp.ascontiguousarray(cp.swapaxes(ops[0], -1, -2)), -1, -2)
        assert _fused.matmul_sum(cxp, view, *ops[1:]) is None
    assert _fused.matmul_sum(cxp, ops[0][None], *ops[1:]) is None  # batch shapes differ
