"""What a layer call skips when it can, and that skipping changes no answer.

A small call on a GPU is bound by the host's time (validation, array creations, kernel launches), so the
layer avoids work whose result nobody reads or that it made before:

* ``Problem.want_state``: ``layer(...)`` without ``return_state`` tells the method that the final state
  is dropped. Nonparametric methods then skip their final cache (the last log-weights: suffix sums and
  logs over every pair), and the chunked identity family skips the final z where it costs passes of its
  own. With ``return_state=True`` (and in ``memorize``) the state is the one it always was.
* ``Problem.b_constant``: strengths the call fixed without ``beta`` (and without ``lengths`` padding)
  are known constants, so the fused softmax kernel reads cached constant rows instead of ``log(b)``.
* ``_array.constant``: the layer's default gates and strengths are kept on CuPy (a fill is a launch)
  and made fresh everywhere else.
* ``_array.free_device_bytes(max_age=...)``: a driver reading of free device memory is reused for a
  quarter second, and ``_check_device_memory`` reads the driver again whenever a method needs more than
  half of the stale reading, so a stale reading can refuse nothing and admit nothing it should not.
* ``_fused.matmul_sum``: two products into one output without an elementwise add (CuPy, cuBLAS).

Host tests run everywhere; the GPU tests are skipped without a CUDA device.
"""

import numpy as np
import pytest
from conftest import _cupy_available, rel_err

import ttr_stats as tt
from ttr_stats import _array
from ttr_stats.methods.kernel_smoother import _common as ks_common
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot

TOL64 = 1e-12  # float64, the same arithmetic on the same inputs: equal up to a few roundings


def _qkv(rng, T=40, d=5, batch=(2,)):
    return tuple(rng.standard_normal(batch + (T, d)) for _ in range(3))


def softmax_layer(weights=None):
    return tt.TestTimeRegression(weights=weights or tt.weights.Uniform(), regressor=LocalPolynomial(0, ExpDot()))


# ------------------------------------------------------------------------------------ want_state
@pytest.mark.parametrize("method", ["tiled", "parallel", "recurrent"])
def test_a_dropped_state_skips_the_final_cache_and_changes_no_output(rng, monkeypatch, method):
    Q, K, V = _qkv(rng)
    layer = softmax_layer()
    y_ref, state = layer(Q, K, V, method=method, return_state=True)
    calls = []
    real = ks_common.last_log_weights
    monkeypatch.setattr(ks_common, "last_log_weights", lambda xp, P: calls.append(1) or real(xp, P))
    y = layer(Q, K, V, method=method)
    assert calls == []  # the cache's log-weights were not formed
    assert rel_err(y, y_ref) < TOL64
    y2, state2 = layer(Q, K, V, method=method, return_state=True)
    assert calls  # asked for: formed, and the same cache as before
    assert rel_err(y2, y_ref) < TOL64
    for a, b in zip(state, state2, strict=True):
        np.testing.assert_array_equal(a, b)


def test_kernel_ridge_reads_its_cache_even_when_the_state_is_dropped(rng):
    """A non-causal kernel ridge call reads its queries from the final cache: it must form it."""
    Q, K, V = _qkv(rng, T=30)
    layer = tt.recipes.kernel_regression(ridge=0.5)
    for method in ("direct", "parallel", "recurrent"):
        y, state = layer(Q, K, V, causal=False, method=method, return_state=True)
        assert state is not None
        np.testing.assert_array_equal(layer(Q, K, V, causal=False, method=method), y)


@pytest.mark.parametrize(
    "factory", [tt.recipes.linear_attention, tt.recipes.gla, tt.recipes.mamba2, tt.recipes.gated_deltanet]
)
def test_linear_layers_give_the_same_outputs_with_and_without_the_state(rng, factory):
    Q, K, V = _qkv(rng, T=70)
    layer = factory()
    kw = {}
    if factory in (tt.recipes.gla,):
        kw["log_alpha"] = -rng.uniform(0, 0.3, Q.shape)
    elif factory in (tt.recipes.mamba2, tt.recipes.gated_deltanet):
        kw["log_alpha"] = -rng.uniform(0, 0.3, Q.shape[:-1])
    y, state = layer(Q, K, V, method="chunked", return_state=True, **kw)
    np.testing.assert_array_equal(layer(Q, K, V, method="chunked", **kw), y)
    y_rec, s_rec = layer(Q, K, V, method="recurrent", return_state=True, **kw)
    assert rel_err(y, y_rec) < 1e-10
    for a, b in zip(state, s_rec, strict=True):
        assert rel_err(a, b) < 1e-10


# ------------------------------------------------------------------------------------ b_constant
def test_b_constant_is_known_only_where_the_call_fixed_it(rng):
    Q, K, V = _qkv(rng, T=12)
    layer = softmax_layer()
    P = layer._prepare(Q, K, V, None, None, None, None)
    assert P.b_constant == 1.0 and np.all(P.b == 1.0)
    P = layer._prepare(Q, K, V, None, None, np.full(12, 0.5), None)
    assert P.b_constant is None
    P = layer._prepare(Q, K, V, None, None, None, None, lengths=np.array([12, 7]))
    assert P.b_constant is None and np.all(P.b[1, 7:] == 0)
    dn = tt.recipes.deltanet(beta=0.7)
    P = dn._prepare(Q, K, V, None, None, None, None)
    assert P.b_constant == pytest.approx(0.7) and np.all(P.b == P.b_constant)


def test_the_kernels_constant_operands_equal_the_read_ones(rng, monkeypatch):
    """``_fused_nw.operands`` with ``b_constant`` gives the same ``logb`` and ``g`` as from ``P.b``."""
    from ttr_stats.methods.kernel_smoother import _fused_nw as F

    Q, K, V = _qkv(rng, T=20)
    layer = softmax_layer()
    P = layer._prepare(Q, K, V, None, None, None, None)
    ops = F.operands(np, layer, P)
    ref = F.operands(np, layer, P._replace(b_constant=None))
    for key in ("logb", "g"):
        np.testing.assert_array_equal(np.broadcast_to(ops[key], ref[key].shape), ref[key])


# ------------------------------------------------------------------------------------ constants
def test_constants_are_fresh_off_cupy():
    a = _array.constant(np, (3,), 1.0, np.float64)
    b = _array.constant(np, (3,), 1.0, np.float64)
    assert a is not b and np.all(a == 1.0) and a.dtype == np.float64
    a[0] = 5.0  # a fresh array: writing it cannot reach another call
    assert b[0] == 1.0


# ------------------------------------------------------------------------------------ free memory
def test_a_stale_free_memory_reading_is_re_read_near_the_limit(rng, monkeypatch):
    """The check trusts a reading up to a quarter second old only while the method needs at most half
    of it; nearer, the driver is read again and the fresh reading decides."""
    Q, K, V = _qkv(rng, T=50)
    layer = tt.recipes.linear_attention()
    P = layer._prepare(Q, K, V, None, None, None, None)
    m = layer._choose("chunked", P)
    need = m.memory(P)
    reads = []

    def reading(stale, fresh):
        def free(xp, device=None, max_age=0.0):
            reads.append(max_age)
            return stale if max_age > 0 else fresh

        return free

    monkeypatch.setattr(_array, "free_device_bytes", reading(4 * need, 0))
    layer._check_device_memory(P, m)  # plenty in the stale reading: trusted, no fresh read
    assert reads == [_array.DEVICE_MEMORY_TTL]
    reads.clear()
    monkeypatch.setattr(_array, "free_device_bytes", reading(need + need // 2, need // 2))
    with pytest.raises(MemoryError, match="chunked"):
        layer._check_device_memory(P, m)  # near the stale limit: re-read, and the fresh one refuses
    assert reads == [_array.DEVICE_MEMORY_TTL, 0.0]
    reads.clear()
    monkeypatch.setattr(_array, "free_device_bytes", reading(need // 2, 2 * need))
    layer._check_device_memory(P, m)  # stale says no, the fresh reading says yes: admitted
    assert reads == [_array.DEVICE_MEMORY_TTL, 0.0]


# ------------------------------------------------------------------------------------ on a GPU
gpu = pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")


@gpu
@pytest.mark.gpu
def test_cupy_constants_are_kept_per_key_and_bounded():
    import array_api_compat.cupy as cxp
    import cupy as cp

    a = _array.constant(cxp, (5,), 1.0, cp.float32)
    assert _array.constant(cxp, (5,), 1.0, cp.float32) is a
    assert _array.constant(cxp, (5,), 1.0, cp.float64) is not a
    assert _array.constant(cxp, (5,), 0.5, cp.float32) is not a
    for i in range(_array.CONSTANT_CACHE_SIZE + 3):
        _array.constant(cxp, (i + 1,), 2.0, cp.float32)
    assert len(_array._CONSTANTS) <= _array.CONSTANT_CACHE_SIZE
    assert float(cp.max(cp.abs(_array.constant(cxp, (5,), 1.0, cp.float32) - 1.0))) == 0.0


def _libraries():
    """NumPy, and torch / CuPy (a GPU) where they are installed: the arrays device() and namespace() see."""
    import importlib.util

    out = [np.ones(3)]
    if importlib.util.find_spec("torch") is not None:
        import torch

        out += [torch.ones(3), torch.nn.Parameter(torch.ones(3))]
    if _cupy_available():
        import cupy

        out.append(cupy.ones(3))
    return out


def test_device_and_namespace_fast_paths_equal_array_api_compat():
    """``_array.device`` / ``namespace`` look the answer up once per array type for CuPy and torch; it is
    the answer array-api-compat gives, call after call, and mixed libraries are still refused."""
    import array_api_compat

    for x in _libraries():
        for _ in range(2):  # the first call fills the per-type tables, the second reads them
            assert _array.device(x) == array_api_compat.device(x), type(x)
            assert _array.namespace(x) is array_api_compat.array_namespace(x), type(x)
            assert _array.namespace(x, None, 2.0, x) is array_api_compat.array_namespace(x), type(x)
    arrays = _libraries()
    if len(arrays) > 2:
        with pytest.raises(TypeError, match="one array library"):
            _array.namespace(arrays[0], arrays[-1])


def test_broadcast_to_on_the_host_is_the_namespaces_view():
    x = np.arange(3.0)
    assert _array.broadcast_to(np, x, (3,)) is x
    y = _array.broadcast_to(np, x, (2, 3))
    assert y.shape == (2, 3) and np.shares_memory(x, y) and np.array_equal(y[1], x)


@gpu
@pytest.mark.gpu
def test_cupy_broadcast_constants_are_cached_constants_of_the_full_shape(rng):
    """A default gate / strength broadcast over the batch is the cached constant of that shape (same values,
    no view made a call); a large target, or an array that is not a cached constant, stays a view; the
    id registry follows the bounded cache."""
    import array_api_compat.cupy as cxp
    import cupy as cp

    c = _array.constant(cxp, (7, 1), -0.25, cp.float32)
    full = _array.broadcast_to(cxp, c, (2, 3, 7, 1))
    assert full.shape == (2, 3, 7, 1) and full.strides[0] != 0  # a real array, not a stride-0 view
    assert _array.broadcast_to(cxp, c, (2, 3, 7, 1)) is full  # the same cached array next call
    assert float(cp.max(cp.abs(full + 0.25))) == 0.0 and full.dtype == cp.float32
    big = (_array.BROADCAST_CONSTANT_MAX + 1, 7, 1)
    assert _array.broadcast_to(cxp, c, big).strides[0] == 0  # too big to keep: a view
    other = cp.full((7, 1), -0.25, dtype=cp.float32)  # equal values, but not a cached constant
    assert _array.broadcast_to(cxp, other, (2, 3, 7, 1)).strides[0] == 0
    for i in range(_array.CONSTANT_CACHE_SIZE + 3):
        _array.constant(cxp, (i + 1,), 3.0, cp.float32)
    assert len(_array._CONSTANT_OF) <= len(_array._CONSTANTS) <= _array.CONSTANT_CACHE_SIZE
    assert all(x is _array._CONSTANT_OF[id(x)][0] for x in _array._CONSTANTS.values())
    # a layer call with default gates and strengths: the same outputs, call after call
    Q, K, V = _qkv(rng, T=50, d=8)
    L = tt.recipes.retnet()  # a constant decay: a default gate that is not 0
    ref = L(Q, K, V, method="recurrent")
    dQ, dK, dV = (cp.asarray(np.broadcast_to(x, (2, 3) + x.shape[-2:]).copy()) for x in (Q[0], K[0], V[0]))
    for _ in range(3):
        y = cp.asnumpy(L(dQ, dK, dV, method="chunked"))
        assert rel_err(y[1, 2], ref[0]) < 1e-10  # float64


@gpu
@pytest.mark.gpu
def test_free_device_bytes_reuses_a_fresh_reading_only_within_max_age():
    import array_api_compat.cupy as cxp

    f0 = _array.free_device_bytes(cxp)
    assert f0 is not None and f0 > 0
    when = dict(_array._DEVICE_MEMORY)
    _array.free_device_bytes(cxp, max_age=10.0)
    assert _array._DEVICE_MEMORY == when  # reused: the driver was not read
    _array.free_device_bytes(cxp)
    assert all(_array._DEVICE_MEMORY[k][0] >= when[k][0] for k in when)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_softmax_and_linear_layers_with_and_without_the_state(rng, dtype):
    """On CuPy: the cached constants, the zero start of the fused chunked kernels and the skipped final
    cache give the outputs of the NumPy float64 reference, call after call (the cached arrays are not
    written by anything)."""
    import cupy as cp

    tol = 1e-5 if dtype == "float32" else 1e-10
    Q, K, V = _qkv(rng, T=300, d=16)
    for layer, method in ((softmax_layer(), "tiled"), (tt.recipes.linear_attention(), "chunked")):
        ref = layer(Q, K, V, method="recurrent")
        args = [cp.asarray(x, dtype=dtype) for x in (Q, K, V)]
        for _ in range(3):
            y = layer(*args, method=method)
            assert rel_err(cp.asnumpy(y).astype(np.float64), ref) < tol, (type(layer.regressor).__name__, dtype)
        y, state = layer(*args, method=method, return_state=True)
        assert state is not None


def test_delta_zero_start_is_cached_only_for_the_fused_kernels(rng):
    """``delta.chunked._zero_start``: None off CuPy (the array forms may write their state), so the host
    path keeps creating fresh zeros; the outputs and states there are the recurrent method's."""
    from ttr_stats.methods.delta import chunked as dc

    layer = tt.recipes.gated_deltanet()
    Q, K, V = _qkv(rng, T=70, d=8)
    P = layer._prepare(Q, K, V, None, None, None, None)
    assert dc._zero_start(np, P, layer._solver()) is None
    y, s = layer(Q, K, V, method="chunked", return_state=True)
    y_ref, s_ref = layer(Q, K, V, method="recurrent", return_state=True)
    assert rel_err(y, y_ref) < 1e-10 and rel_err(s.M, s_ref.M) < 1e-10  # float64 reference


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_device_gated_deltanet_zero_start_call_after_call(rng, dtype):
    """On CuPy the delta rule's zero initial state is the cached read-only zeros: calls with and without
    ``initial_state`` in any order give the float64 reference (nothing writes the cached zeros)."""
    import cupy as cp

    tol = 1e-5 if dtype == "float32" else 1e-10
    layer = tt.recipes.gated_deltanet()
    Q, K, V = _qkv(rng, T=130, d=16)
    K = K / np.linalg.norm(K, axis=-1, keepdims=True)  # unit keys: the delta rule's stable regime
    y_ref, s_ref = layer(Q, K, V, method="recurrent", return_state=True)
    y2_ref = layer(Q, K, V, method="recurrent", initial_state=s_ref)
    args = [cp.asarray(x, dtype=dtype) for x in (Q, K, V)]
    for _ in range(2):
        y, s = layer(*args, method="chunked", return_state=True)
        assert rel_err(cp.asnumpy(y).astype(np.float64), y_ref) < tol
        assert rel_err(cp.asnumpy(s.M).astype(np.float64), s_ref.M) < tol
        y2 = layer(*args, method="chunked", initial_state=s)
        assert rel_err(cp.asnumpy(y2).astype(np.float64), y2_ref) < 10 * tol  # two runs' rounding


def test_remembered_dtype_names_are_the_computed_ones():
    """``_array.dtype_str`` and ``registry.dtype_name`` remember per dtype object what ``str(dtype)`` and
    the name rule give: NumPy dtypes, scalar types (which compare equal to their dtypes but hash
    differently: each keeps its own text) and an unhashable dtype-like object."""
    from ttr_stats.methods import registry

    for dt in (np.dtype("float32"), np.dtype("float64"), np.float32, np.float64, np.dtype(">f4")):
        for _ in range(2):  # computed, then remembered
            assert _array.dtype_str(dt) == str(dt)
    assert registry.dtype_name(np.dtype("float32")) == "float32" == registry.dtype_name(np.float32)
    assert _array.dtype_str(np.float32) == "<class 'numpy.float32'>"  # not the dtype's "float32"

    class Unhashable:
        __hash__ = None
        name = "float64"

        def __str__(self):
            return "unhashable float64"

    u = Unhashable()
    assert _array.dtype_str(u) == "unhashable float64" and registry.dtype_name(u) == "float64"


def test_remembered_dtype_names_never_compare_libraries():
    """array_api_strict's dtypes hash as NumPy's and warn when compared with them: the remembered names are
    keyed by type as well, so asking for both in any order gives each its own text without a warning."""
    import warnings

    xps = pytest.importorskip("array_api_strict")
    from ttr_stats.methods import registry

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dt, name in ((np.dtype("float64"), "float64"), (xps.float64, "float64"),
                         (np.dtype("float32"), "float32"), (xps.float32, "float32")):  # fmt: skip
            for _ in range(2):  # computed, then remembered
                assert registry.dtype_name(dt) == name and _array.dtype_str(dt) == str(dt)
