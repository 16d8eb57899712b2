"""The fused chunk-recurrence kernel (``methods/_fused.py``) against its reference and the loop.

Two layers of trust:

* on the host (always): the call sites of the identity and delta chunked methods, with the kernel
  replaced by :func:`~ttr_stats.methods._fused.state_pass_reference` (a plain loop over chunks), equal the
  recurrent definition; this checks every operand the call sites prepare (decays, the ones column of the
  denominator, the reverse sums of z, the transposed states), independently of CUDA;
* on the host with g++ (``tests/cuda_on_host.py`` runs the CUDA source itself, threads as coroutines):
  both kernels (register-tiled and simple) at several launch geometries equal the reference on odd sizes
  (d in {1, 7, 64, 100, 128}), and the layers through the emulated tiled kernel equal the loop (T not a
  multiple of the chunk); with nvcc the sources compile for sm_90, the tiled one without spills;
* on a GPU (CuPy; skipped without one): both kernels equal the reference on random operands of odd sizes
  (every optional operand, scalar and per-dimension decays, R != C as in DeltaProduct, sizes that are
  not multiples of the block's value columns, more sequences than a grid dimension's 65535), and
  layers run with the kernel equal the same layers without it and the loop.

Tolerances (relative RMS, ``rel_err``): float64 1e-10 (the kernel forms the same products in another
summation order: a few eps times the sums' conditioning, measured ~1e-14); float32 1e-5 (the same at
eps = 6e-8; measured ~1e-6 at T = 1000).
"""

import numpy as np
import pytest
from conftest import _cupy_available, host_cuda, rel_err

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w
from ttr_stats.methods import _fused
from ttr_stats.methods.delta import chunked as dch
from ttr_stats.methods.identity import chunked as ich

TOL64, TOL32 = 1e-10, 1e-5

LAYERS = {  # name -> (factory, gate kind)
    "linear_attention": (tt.recipes.linear_attention, None),
    "la_sum_elu": (lambda: tt.recipes.linear_attention("sum", "elu_plus_one"), None),
    "mamba2": (tt.recipes.mamba2, "scalar"),
    "gla": (tt.recipes.gla, "per_dim"),
    "gla_sum": (
        lambda: tt.TestTimeRegression(
            weights=w.Gated(per_dimension=True), optimizer=o.IdentityCovariance("sum")
        ),
        "per_dim",
    ),
    "window_sum": (
        # a window wider than the chunks (16-64): chunked removes leaving pairs by subtracting a delayed
        # run, whose float32 error grows like eps T / w (1.8e-5 at T = 1000, w = 7 on an H200); narrow
        # windows belong to method="banded" (tests/test_banded.py), which auto picks in float32
        lambda: tt.TestTimeRegression(weights=w.SlidingWindow(100), optimizer=o.IdentityCovariance("sum")),
        None,
    ),
    "deltanet": (tt.recipes.deltanet, None),
    "gated_deltanet": (tt.recipes.gated_deltanet, "scalar"),
    "delta_product3": (lambda: tt.recipes.delta_product(3), "scalar"),
    "leaky_lms": (lambda: tt.recipes.leaky_lms(beta=0.5, l2=0.3), None),
    "longhorn": (tt.recipes.longhorn, None),
}


def inputs(rng, kind, batch, T, d_k, d_v, n=1, dtype=np.float64, log_alpha=None, positive=False):
    """``positive``: nonnegative queries and keys, as the feature maps of sum-normalised layers give, so
    that the denominators q^T z stay away from 0 (signed keys make y / den ill-conditioned: measured
    1.5e-4 float32 relative differences between two summation orders on an H200, rounding amplified by
    near-zero denominators, not a wrong term)."""
    Q = rng.standard_normal(batch + (T, d_k))
    K = rng.standard_normal(batch + (T * n, d_k))
    if positive:
        Q, K = np.abs(Q), np.abs(K)
    K /= np.linalg.norm(K, axis=-1, keepdims=True) + 1e-12  # unit keys: the delta rule is stable at beta <= 1
    V = rng.standard_normal(batch + (T * n, d_v))
    gates = {"beta": rng.uniform(0.2, 1.0, batch + (T * n,))}
    if kind is not None:
        shape = batch + ((T, d_k) if kind == "per_dim" else (T,))
        la = -rng.uniform(0.0, 0.5, shape) if log_alpha is None else np.full(shape, float(log_alpha))
        gates["log_alpha"] = la
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return cast(Q), cast(K), cast(V), {k: cast(v) for k, v in gates.items()}


def _pos(name):
    return name.endswith("_sum") or name == "la_sum_elu"


def _n(name):
    return 3 if name == "delta_product3" else 1


# --- 1. the call sites, with the reference in place of the kernel (host) ----------------------------------
@pytest.fixture
def reference_kernel(monkeypatch):
    """Route the device code of both chunked methods through the reference loop on NumPy."""
    monkeypatch.setattr(_fused, "state_pass", _fused.state_pass_reference)
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)
    monkeypatch.setattr(dch, "_on_device", lambda xp, device: True)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(
    ("T", "d_k", "d_v", "chunk"), [(1, 7, 3, None), (63, 1, 7, 10), (65, 7, 1, 16), (130, 100, 7, 64)]
)
def test_call_sites_with_the_reference_kernel_match_the_loop(reference_kernel, rng, name, T, d_k, d_v, chunk):
    factory, kind = LAYERS[name]
    n = _n(name)
    Q, K, V, gates = inputs(rng, kind, (2,), T, d_k, d_v, n, positive=_pos(name))
    layer = factory()
    yc, sc = layer(Q, K, V, method="chunked", chunk_size=chunk, return_state=True, **gates)
    yr, sr = layer(Q, K, V, method="recurrent", return_state=True, **gates)
    assert rel_err(yc, yr) < TOL64, (name, rel_err(yc, yr))
    for f, a, b in zip(sr._fields, sc, sr, strict=True):
        assert rel_err(a, b) < TOL64, (name, f, rel_err(a, b))


@pytest.mark.parametrize("name", ["la_sum_elu", "mamba2", "gla_sum", "window_sum"])
def test_identity_call_site_with_the_intra_reads_apart_matches_the_loop(
    reference_kernel, monkeypatch, rng, name
):
    """FUSE_INTRA_READS False (A v formed apart and added, the benchmark's old path) gives the loop too."""
    monkeypatch.setattr(ich, "FUSE_INTRA_READS", False)
    factory, kind = LAYERS[name]
    Q, K, V, gates = inputs(rng, kind, (2,), 65, 7, 3, positive=_pos(name))
    layer = factory()
    yc = layer(Q, K, V, method="chunked", chunk_size=16, **gates)
    yr = layer(Q, K, V, method="recurrent", **gates)
    assert rel_err(yc, yr) < TOL64, (name, rel_err(yc, yr))


def test_call_sites_chain_through_initial_states(reference_kernel, rng):
    """Two pieces with the first's final state as the second's initial state equal one run (z included)."""
    for name in ("la_sum_elu", "gla_sum", "gated_deltanet"):
        factory, kind = LAYERS[name]
        Q, K, V, gates = inputs(rng, kind, (3,), 70, 5, 4, positive=_pos(name))
        layer = factory()
        full = layer(Q, K, V, method="chunked", chunk_size=16, **gates)
        s = 33
        first = {k: v[..., :s] if v.ndim == 2 else v[..., :s, :] for k, v in gates.items()}
        rest = {k: v[..., s:] if v.ndim == 2 else v[..., s:, :] for k, v in gates.items()}
        _, st = layer(
            Q[..., :s, :], K[..., :s, :], V[..., :s, :], method="chunked", return_state=True, **first
        )
        y2 = layer(Q[..., s:, :], K[..., s:, :], V[..., s:, :], method="chunked", initial_state=st, **rest)
        assert rel_err(y2, full[..., s:, :]) < TOL64, name


def test_reference_is_the_recurrence_it_documents(rng):
    """The reference loop on random operands against the formulas written out per chunk."""
    N, R, C, dk, dv = 4, 3, 5, 2, 3
    Qg, A = rng.standard_normal((N, R, dk)), rng.standard_normal((N, R, C))
    U, W = rng.standard_normal((N, C, dv)), rng.standard_normal((N, C, dk))
    Kx, a = rng.standard_normal((N, C, dk)), rng.uniform(0, 1, (N, dk))
    S = rng.standard_normal((dk, dv))
    Y, St = _fused.state_pass_reference(np, Qg, U, Kx, a, S, A=A, W=W)
    for n in range(N):
        D = U[n] - W[n] @ S
        assert np.allclose(Y[n], Qg[n] @ S + A[n] @ D, rtol=1e-13, atol=1e-13)
        S = np.diag(a[n]) @ S + Kx[n].T @ D
    assert np.allclose(St, S, rtol=1e-13, atol=1e-13)


def test_kernel_does_not_apply_off_cupy():
    assert not _fused.applies(np, np.dtype("float64"), 64, 64, 64, 64, True, True)
    assert (
        _fused.state_pass(np, *(np.zeros((1, 1, 1, 1)),) * 3, np.zeros((1, 1, 1)), np.zeros((1, 1))) is None
    )


# --- 2. the kernel on a GPU ------------------------------------------------------------------------------
gpu = pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("lead", "N", "R", "C", "dk", "dv", "per_dim", "has_A", "has_W"),
    [
        ((2, 3), 5, 64, 64, 64, 64, False, True, True),  # Gated DeltaNet's shape
        ((1,), 1, 1, 1, 1, 1, False, False, False),
        ((3,), 7, 7, 7, 7, 33, True, False, False),  # GLA-like, 33 columns: a partial second block
        ((2,), 9, 3, 9, 100, 7, False, True, True),  # DeltaProduct: R reads per C = 3 R writes
        ((70000,), 2, 4, 4, 3, 2, False, True, False),  # more sequences than 65535
    ],
)
@pytest.mark.parametrize(
    "config", [("tiled", 32, 128), ("tiled", 16, 64), ("tiled", 64, 256), ("simple", 0, 0)]
)
def test_kernel_matches_the_reference(
    monkeypatch, config, dtype, lead, N, R, C, dk, dv, per_dim, has_A, has_W
):
    import cupy as cp

    kernel, cols, threads = config
    monkeypatch.setattr(_fused, "KERNEL", kernel)
    if kernel == "tiled":
        monkeypatch.setattr(_fused, "TILED_COLUMNS", cols)
        monkeypatch.setattr(_fused, "TILED_THREADS", threads)
    elif _fused.layout(R, C, dk, dv, has_A, has_W, 8) is None:
        pytest.skip("the simple kernel does not take this many rows")

    rng = np.random.default_rng(0)
    g = lambda *s: cp.asarray(rng.standard_normal(lead + s) / np.sqrt(max(dk, C)), dtype=dtype)  # noqa: E731
    Qg, U, Kx = g(N, R, dk), g(N, C, dv), g(N, C, dk)
    a = cp.asarray(rng.uniform(0.0, 1.0, lead + (N, dk if per_dim else 1)), dtype=dtype)
    S0 = g(dk, dv)
    A = g(N, R, C) if has_A else None
    W = g(N, C, dk) if has_W else None
    got = _fused.state_pass(cp, Qg, U, Kx, a, S0, A=A, W=W)
    assert got is not None
    ref = _fused.state_pass_reference(cp, Qg, U, Kx, a, S0, A=A, W=W)
    tol = TOL32 if dtype == "float32" else TOL64
    for x, y in zip(got, ref, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        assert rel_err(cp.asnumpy(x), cp.asnumpy(y)) < tol


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    ("lead", "N", "C", "dk", "dv", "per_dim", "has_W"),
    [((2, 3), 5, 64, 64, 64, False, True), ((1,), 1, 1, 1, 1, False, False), ((3,), 7, 7, 7, 33, True, False),
     ((2,), 9, 9, 100, 7, False, True), ((70000,), 2, 4, 3, 2, False, True)],
)  # fmt: skip
@pytest.mark.parametrize(
    "config", [("tiled", 32, 128), ("tiled", 16, 64), ("tiled", 64, 256), ("simple", 0, 0)]
)
def test_chunk_states_matches_the_loop_in_every_layout(
    monkeypatch, config, dtype, lead, N, C, dk, dv, per_dim, has_W
):
    """``_fused.chunk_states`` (the recurrence alone, the delta rule's split reads) in each kernel layout
    against the float64 loop: the states before every chunk, the Deltas and the final state."""
    import cupy as cp

    kernel, cols, threads = config
    monkeypatch.setattr(_fused, "STATES_KERNEL", kernel)
    if kernel == "tiled":
        monkeypatch.setattr(_fused, "STATES_COLUMNS", cols)
        monkeypatch.setattr(_fused, "STATES_THREADS", threads)
    rng = np.random.default_rng(3)
    g = lambda *s: (rng.standard_normal(lead + s) / np.sqrt(max(dk, C))).astype(dtype)  # noqa: E731
    U, Kx, S0 = g(N, C, dv), g(N, C, dk), g(dk, dv)
    a = rng.uniform(0.0, 1.0, lead + (N, dk if per_dim else 1)).astype(dtype)
    W = g(N, C, dk) if has_W else None
    got = _fused.chunk_states(
        cp, *(cp.asarray(x) for x in (U, Kx, a, S0)), W=None if W is None else cp.asarray(W)
    )
    assert got is not None
    ref = chunk_states_reference(*(x.astype(np.float64) for x in (U, Kx, a, S0)),
                                 W=None if W is None else W.astype(np.float64))  # fmt: skip
    tol = TOL32 if dtype == "float32" else TOL64
    for x, y in zip(got, ref, strict=True):
        assert x.shape == y.shape and x.dtype == dtype
        assert rel_err(cp.asnumpy(x), y) < tol


@gpu
@pytest.mark.gpu
def test_kernel_refuses_what_does_not_fit_shared_memory():
    import cupy as cp

    assert not _fused.applies(cp, cp.dtype("float64"), 256, 256, 256, 64, True, True)
    assert not _fused.applies(cp, cp.dtype("float16"), 4, 4, 4, 4, False, False)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("split", [True, False])
def test_layers_with_the_kernel_match_without_it_and_the_loop(monkeypatch, rng, name, dtype, split):
    """``split``: the delta rule's reads as batched products after ``chunk_states`` and GLA's states by
    the scan (the defaults), else both inside the state pass."""
    import cupy as cp

    monkeypatch.setattr(dch, "SPLIT_READS", split)
    monkeypatch.setattr(ich, "DEVICE_STATES", "scan" if split else "pass")

    factory, kind = LAYERS[name]
    n = _n(name)
    tol = TOL32 if dtype == np.float32 else TOL64
    for T, dk, dv, chunk in [(1, 7, 3, None), (65, 7, 1, 16), (1000, 100, 7, 64), (300, 64, 64, None)]:
        Q, K, V, gates = inputs(rng, kind, (2,), T, dk, dv, n, dtype, positive=_pos(name))
        put = lambda d: {k: cp.asarray(v) for k, v in d.items()}  # noqa: E731
        layer = factory()
        args = (cp.asarray(Q), cp.asarray(K), cp.asarray(V))
        yf, sf = layer(*args, method="chunked", chunk_size=chunk, return_state=True, **put(gates))
        monkeypatch.setattr(_fused, "ENABLED", False)
        ya, sa = layer(*args, method="chunked", chunk_size=chunk, return_state=True, **put(gates))
        monkeypatch.setattr(_fused, "ENABLED", True)
        yr, sr = layer(Q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), method="recurrent",
                       return_state=True, **{k: v.astype(np.float64) for k, v in gates.items()})  # fmt: skip
        assert rel_err(cp.asnumpy(yf), cp.asnumpy(ya)) < tol, (name, T, "fused vs array form")
        assert rel_err(cp.asnumpy(yf), yr) < tol, (name, T, "fused vs loop")
        for f, a, b in zip(sr._fields, sf, sr, strict=True):
            assert rel_err(cp.asnumpy(a), b) < tol, (name, T, f)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba2", "gla", "gated_deltanet"])
def test_kernel_is_exactly_causal(rng, name):
    """Changing inputs at positions >= s leaves every output before s bit-for-bit unchanged."""
    import cupy as cp

    factory, kind = LAYERS[name]
    Q, K, V, gates = inputs(rng, kind, (2,), 200, 16, 8)
    layer = factory()
    y = cp.asnumpy(layer(cp.asarray(Q), cp.asarray(K), cp.asarray(V), method="chunked",
                         **{k: cp.asarray(v) for k, v in gates.items()}))  # fmt: skip
    for s in (1, 63, 64, 65, 150):
        Q2, K2, V2 = Q.copy(), K.copy(), V.copy()
        Q2[..., s:, :] += 1.0
        K2[..., s:, :] = rng.standard_normal(K2[..., s:, :].shape)
        V2[..., s:, :] *= -3.0
        g2 = {k: v.copy() for k, v in gates.items()}
        for v in g2.values():
            v[:, s:] = v[:, s:] * 0.5
        y2 = cp.asnumpy(layer(cp.asarray(Q2), cp.asarray(K2), cp.asarray(V2), method="chunked",
                              **{k: cp.asarray(v) for k, v in g2.items()}))  # fmt: skip
        assert np.array_equal(y[..., :s, :], y2[..., :s, :]), (name, s)


# --- 3. the CUDA sources run on the host (tests/cuda_on_host.py; g++) -------------------------------------


_CT = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def emulated_state_pass(xp, Qg, U, Kx, a, S0t, A=None, W=None, kernel="tiled", columns=None, threads=None):
    """:func:`_fused.state_pass` on NumPy with the CUDA source run on the host: the same flattening and
    :func:`_fused.layout` (so the launch geometry is the card's), the kernel executed by g++."""
    import cuda_on_host

    lead = Qg.shape[:-3]
    N, R, dk = Qg.shape[-3:]
    C, dv = U.shape[-2], U.shape[-1]
    dt = np.dtype(Qg.dtype)
    if N == 0:
        return None
    lay = _fused.layout(R, C, dk, dv, A is not None, W is not None, dt.itemsize, kernel, columns, threads)
    assert lay is not None, (R, C, dk, dv)
    name, BV, nthreads, smem = lay
    T = _CT[dt]
    src = _fused._SOURCE if name == "state_pass" else _fused._TILED_SOURCE
    kern = cuda_on_host.compile_kernel(src, f"{name}<{T}>", _signature(T))
    BH = int(np.prod(lead))
    da = a.shape[-1]
    flat = lambda x, tail: np.ascontiguousarray(
        np.broadcast_to(x, lead + tail).reshape((BH,) + tail), dtype=dt
    )  # noqa: E731
    Qf, Uf, Kf = flat(Qg, (N, R, dk)), flat(U, (N, C, dv)), flat(Kx, (N, C, dk))
    af, Sf = flat(a, (N, da)), flat(S0t, (dk, dv))
    Af = flat(A, (N, R, C)) if A is not None else Uf
    Wf = flat(W, (N, C, dk)) if W is not None else Uf
    Y = np.full((BH, N, R, dv), np.nan, dtype=dt)  # NaN: an output no thread writes shows
    St = np.full((BH, dk, dv), np.nan, dtype=dt)
    kern((BH, -(-dv // BV)), (nthreads,), smem, Qf, Af, Wf, Uf, Kf, af, Sf, Y, St,
         N, R, C, dk, dv, da, BV, int(A is not None), int(W is not None), Y, St, 0)  # fmt: skip
    return Y.reshape(lead + (N, R, dv)), St.reshape(lead + (dk, dv))


def _signature(T):
    """The parameter types of both state-pass kernels."""
    return [f"const {T}*"] * 7 + [f"{T}*"] * 2 + ["int"] * 9 + [f"{T}*"] * 2 + ["int"]


def emulated_chunk_states(xp, U, Kx, a, S0t, W=None, kernel="simple", columns=None, threads=None):
    """:func:`_fused.chunk_states` on NumPy with the kernel run on the host (its keep mode: no reads,
    every chunk's Delta and starting state stored); ``kernel``, ``columns``, ``threads`` as
    ``_fused.layout`` takes them."""
    import cuda_on_host

    lead = U.shape[:-3]
    N, C, dv = U.shape[-3:]
    dk = Kx.shape[-1]
    dt = np.dtype(U.dtype)
    if N == 0:
        return None
    lay = _fused.layout(0, C, dk, dv, False, W is not None, dt.itemsize, kernel, columns, threads)
    assert lay is not None, (C, dk, dv, kernel)
    name, BV, nthreads, smem = lay
    T = _CT[dt]
    src = _fused._SOURCE if name == "state_pass" else _fused._TILED_SOURCE
    kern = cuda_on_host.compile_kernel(src, f"{name}<{T}>", _signature(T))
    BH = int(np.prod(lead))
    da = a.shape[-1]
    flat = lambda x, tail: np.ascontiguousarray(
        np.broadcast_to(x, lead + tail).reshape((BH,) + tail), dtype=dt
    )  # noqa: E731
    Uf, Kf, af, Sf = flat(U, (N, C, dv)), flat(Kx, (N, C, dk)), flat(a, (N, da)), flat(S0t, (dk, dv))
    Wf = flat(W, (N, C, dk)) if W is not None else Uf
    St = np.full((BH, dk, dv), np.nan, dtype=dt)
    S = np.full((BH, N, dk, dv), np.nan, dtype=dt)  # NaN: an entry no thread writes shows
    D = np.full((BH, N, C, dv), np.nan, dtype=dt)
    kern((BH, -(-dv // BV)), (nthreads,), smem, Uf, Uf, Wf, Uf, Kf, af, Sf, Uf, St,
         N, 0, C, dk, dv, da, BV, 0, int(W is not None), D, S, 1)  # fmt: skip
    return S.reshape(lead + (N, dk, dv)), D.reshape(lead + (N, C, dv)), St.reshape(lead + (dk, dv))


def chunk_states_reference(U, Kx, a, S0t, W=None):
    """float64 loop: the states before every chunk, the Deltas and the final state."""
    lead, N = U.shape[:-3], U.shape[-3]
    St = np.broadcast_to(S0t, lead + S0t.shape[-2:]).astype(np.float64)
    Ss, Ds = [], []
    for n in range(N):
        D = U[..., n, :, :] - (W[..., n, :, :] @ St if W is not None else 0)
        Ss.append(St)
        Ds.append(D)
        St = a[..., n, :][..., :, None] * St + np.swapaxes(Kx[..., n, :, :], -1, -2) @ D
    return np.stack(Ss, -3), np.stack(Ds, -3), St


@host_cuda
@pytest.mark.parametrize(
    ("kernel", "columns", "threads"),
    [("simple", None, None), ("tiled", None, None), ("tiled", 16, 64), ("tiled", 64, 256), ("tiled", 8, 32)],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "N", "C", "dk", "dv", "per_dim", "has_W"),
    [((2,), 3, 32, 64, 64, False, True), ((1,), 1, 1, 1, 1, False, False), ((3,), 4, 7, 7, 33, True, False),
     ((1,), 2, 64, 64, 100, False, True), ((2,), 5, 9, 100, 7, False, True)],
)  # fmt: skip
def test_chunk_states_on_the_host_matches_the_loop(
    kernel, columns, threads, dtype, lead, N, C, dk, dv, per_dim, has_W
):
    rng = np.random.default_rng(2)
    g = lambda *s: (rng.standard_normal(lead + s) / np.sqrt(max(dk, C))).astype(dtype)  # noqa: E731
    U, Kx, S0 = g(N, C, dv), g(N, C, dk), g(dk, dv)
    a = rng.uniform(0.0, 1.0, lead + (N, dk if per_dim else 1)).astype(dtype)
    W = g(N, C, dk) if has_W else None
    ref = chunk_states_reference(*(x.astype(np.float64) for x in (U, Kx, a, S0)),
                                 W=None if W is None else W.astype(np.float64))  # fmt: skip
    if _fused.layout(0, C, dk, dv, False, has_W, 8, kernel, columns, threads) is None:
        pytest.skip("this layout does not take this many rows")
    got = emulated_chunk_states(np, U, Kx, a, S0, W=W, kernel=kernel, columns=columns, threads=threads)
    tol = TOL32 if dtype == np.float32 else TOL64
    for x, y in zip(got, ref, strict=True):
        assert x.shape == y.shape and x.dtype == dtype
        assert rel_err(x, y) < tol, rel_err(x, y)


@host_cuda
@pytest.mark.parametrize("kernel", ["tiled", "simple"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("lead", "N", "R", "C", "dk", "dv", "per_dim", "has_A", "has_W"),
    [
        ((2,), 3, 32, 32, 64, 64, False, True, True),  # Gated DeltaNet's shape at chunk 32
        ((1,), 1, 1, 1, 1, 1, False, False, False),
        ((3,), 4, 7, 7, 7, 33, True, False, False),  # GLA-like, 33 columns: a partial second block
        ((2,), 3, 3, 9, 100, 7, False, True, True),  # DeltaProduct: R reads per C = 3 R writes
        ((1,), 2, 5, 5, 128, 128, True, False, False),
        ((1,), 2, 64, 64, 64, 100, False, True, True),
    ],
)
def test_cuda_source_on_the_host_matches_the_reference(
    kernel, dtype, lead, N, R, C, dk, dv, per_dim, has_A, has_W
):
    rng = np.random.default_rng(1)
    g = lambda *s: (rng.standard_normal(lead + s) / np.sqrt(max(dk, C))).astype(dtype)  # noqa: E731
    Qg, U, Kx, S0 = g(N, R, dk), g(N, C, dv), g(N, C, dk), g(dk, dv)
    a = rng.uniform(0.0, 1.0, lead + (N, dk if per_dim else 1)).astype(dtype)
    A = g(N, R, C) if has_A else None
    W = g(N, C, dk) if has_W else None
    if kernel == "simple" and _fused.layout(R, C, dk, dv, has_A, has_W, 8, "simple") is None:
        pytest.skip("the simple kernel does not take this many rows")
    f64 = lambda x: None if x is None else x.astype(np.float64)  # noqa: E731
    ref = _fused.state_pass_reference(np, *(f64(x) for x in (Qg, U, Kx, a, S0)), A=f64(A), W=f64(W))
    tol = TOL32 if dtype == np.float32 else TOL64
    configs = [(None, None)] if kernel == "simple" else [(None, None), (16, 64), (64, 256), (8, 32)]
    for cols, thr in configs:
        got = emulated_state_pass(np, Qg, U, Kx, a, S0, A=A, W=W, kernel=kernel, columns=cols, threads=thr)
        for x, y in zip(got, ref, strict=True):
            assert x.shape == y.shape and x.dtype == dtype
            assert rel_err(x, y) < tol, (cols, thr, rel_err(x, y))


@host_cuda
@pytest.mark.parametrize("name", ["linear_attention", "la_sum_elu", "mamba2", "gla", "gated_deltanet",
                                  "delta_product3", "window_sum"])  # fmt: skip
@pytest.mark.parametrize(
    ("T", "d_k", "d_v", "chunk"), [(1, 1, 1, None), (65, 7, 100, 16), (70, 128, 7, 32), (40, 64, 64, 32)]
)
@pytest.mark.parametrize("split", [False, True])
def test_layers_through_the_emulated_kernel_match_the_loop(monkeypatch, rng, name, T, d_k, d_v, chunk, split):
    """The call sites on their device paths with the tiled kernel (run on the host) in place of the
    card's: every operand, the launch geometry and the kernel together equal the recurrent loop. With
    ``split`` the delta rule's kernel forms the recurrence alone (``chunk_states``, emulated) and the
    reads are batched products."""
    monkeypatch.setattr(_fused, "state_pass", emulated_state_pass)
    monkeypatch.setattr(dch, "SPLIT_READS", split)
    if split:
        monkeypatch.setattr(_fused, "chunk_states", emulated_chunk_states)
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)
    monkeypatch.setattr(dch, "_on_device", lambda xp, device: True)
    factory, kind = LAYERS[name]
    n = _n(name)
    Q, K, V, gates = inputs(rng, kind, (2,), T, d_k, d_v, n, positive=_pos(name))
    layer = factory()
    yc, sc = layer(Q, K, V, method="chunked", chunk_size=chunk, return_state=True, **gates)
    yr, sr = layer(Q, K, V, method="recurrent", return_state=True, **gates)
    assert rel_err(yc, yr) < TOL64, (name, rel_err(yc, yr))
    for f, a, b in zip(sr._fields, sc, sr, strict=True):
        assert rel_err(a, b) < TOL64, (name, f, rel_err(a, b))


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc not found")
def test_sources_compile_with_nvcc(tmp_path):
    """Both kernels compile for sm_90 with nothing spilled to local memory (ptxas -v) in the tiled one."""
    import subprocess

    sig = "(" + ", ".join(_signature("{t}")) + ")"
    body = _fused._SOURCE + _fused._TILED_SOURCE
    body += "".join(
        f"\ntemplate __global__ void {k}<{t}>{sig.format(t=t)};"
        for k in ("state_pass", "state_pass_tiled")
        for t in ("float", "double")
    )
    path = tmp_path / "state_pass.cu"
    path.write_text(body)
    res = subprocess.run(["nvcc", "-std=c++17", "-arch=sm_90", "-c", str(path), "-o", str(tmp_path / "sp.o"), "-Xptxas", "-v"],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    blocks = [
        b for b in res.stderr.split("Compiling entry function")[1:] if "state_pass_tiled" in b.split("\n")[0]
    ]
    assert len(blocks) == 2, res.stderr[-3000:]
    for b in blocks:  # the accumulators stay in registers: no stack frame, nothing spilled
        assert "0 bytes stack frame, 0 bytes spill stores" in b, b


def test_compiled_kernels_are_kept_per_device_source_and_name(monkeypatch):
    """``_fused.compiled`` compiles a (source, name, options) once per device and hands the same function
    out again; another device, name or source compiles anew (a CuPy stand-in records the compilations)."""
    import sys
    import types

    from ttr_stats.methods import _fused as FU

    made, current = [], [0]

    class Module:
        def __init__(self, code, options, name_expressions):
            made.append((current[0], code, tuple(name_expressions), options))

        def get_function(self, name):
            return ("function", current[0], name, len(made))

    cupy = types.SimpleNamespace(
        RawModule=Module,
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDevice=lambda: current[0])),
    )
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    monkeypatch.setattr(FU, "_COMPILED", {})
    a = FU.compiled("src", "k<float>")
    assert FU.compiled("src", "k<float>") is a and len(made) == 1
    assert FU.compiled("src", "k<double>") != a and len(made) == 2
    assert FU.compiled("other", "k<float>") != a and len(made) == 3
    current[0] = 1
    b = FU.compiled("src", "k<float>")
    assert b[1] == 1 and len(made) == 4  # the other device's own copy
    assert made[0] == (0, "src", ("k<float>",), ("-std=c++17",))


def test_allow_shared_opts_in_once_per_function_and_size():
    """``_fused.allow_shared``: the driver call (the attribute's setter) is made the first time a function
    needs more than 48 KiB and again only for a larger size; a new function object is never taken for an
    old one, even where the old one is gone (the table holds the functions it has seen)."""
    from ttr_stats.methods import _fused as FU

    class Fn:
        def __init__(self):
            self.sets = []

        @property
        def max_dynamic_shared_size_bytes(self):
            return self.sets[-1] if self.sets else 0

        @max_dynamic_shared_size_bytes.setter
        def max_dynamic_shared_size_bytes(self, v):
            self.sets.append(v)

    f = Fn()
    FU.allow_shared(f, 40 * 1024)  # under the default limit: no opt-in
    FU.allow_shared(f, 70_000)
    FU.allow_shared(f, 70_000)
    FU.allow_shared(f, 60_000)
    FU.allow_shared(f, 90_000)
    assert f.sets == [70_000, 90_000]
    for _ in range(50):  # short-lived functions: each new one opts in itself
        g = Fn()
        FU.allow_shared(g, 70_000)
        assert g.sets == [70_000]
