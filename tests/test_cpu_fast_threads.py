"""The host fast paths of issue 14 (CPU): threads over the batch rows, and the in-place NumPy loops.

* ``methods/_host_threads``: a method whose batch rows are split over threads returns the very same bits
  as with one thread (each row gets the same calls on its slice), for the identity chunked host path (no
  decay, scalar decay, denominators, a window), the delta family's chunked host path (DeltaNet, Gated
  DeltaNet, DeltaProduct's two writes a token, a leak; on larger groups of chunks when split) and the exact
  chunked RLS, including its refusals;
* the NumPy in-place chunk loop of the identity family equals the generic host path (float64, 1e-12
  relative: the same sums, the state kept transposed);
* the NumPy in-place RLS loop (``methods/rls/recurrent.py``) equals the generic guarded loop bit for bit:
  outputs, final state and the position a refusal names.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w
from ttr_stats.methods import _host_threads
from ttr_stats.methods.delta import chunked as delta_chunked
from ttr_stats.methods.identity import chunked as ident
from ttr_stats.methods.rls import recurrent as rls_rec


def unit_rows(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def inputs(shape, T, d, seed=0, dv=None):
    rng = np.random.default_rng(seed)
    Q = unit_rows(rng.standard_normal(shape + (T, d)))
    K = unit_rows(rng.standard_normal(shape + (T, d)))
    V = rng.standard_normal(shape + (T, dv or d))
    g = np.log(rng.uniform(0.8, 1.0, shape + (T,)))
    return Q, K, V, g


def same_bits(a, b):
    if isinstance(a, tuple):
        return all(same_bits(x, y) for x, y in zip(a, b, strict=True))
    return np.array_equal(np.asarray(a), np.asarray(b)) and np.asarray(a).dtype == np.asarray(b).dtype


def test_split_rows_covers_every_row_once():
    for rows in range(1, 9):
        for parts in range(1, rows + 1):
            sl = _host_threads.split_rows(rows, parts)
            assert [i for s in sl for i in range(rows)[s]] == list(range(rows))
            sizes = [len(range(rows)[s]) for s in sl]
            assert max(sizes) - min(sizes) <= 1


def test_small_work_runs_in_the_calling_thread(monkeypatch):
    """Below ``min_work`` one share covers every row, in the calling thread (no pool dispatch)."""
    import threading

    monkeypatch.setattr(_host_threads, "_blas_threads", lambda: 4)
    seen = []
    out = _host_threads.run_split(
        lambda sl: seen.append(threading.get_ident()) or sl, 8, work=99, min_work=100
    )
    assert out == [slice(0, 8)] and seen == [threading.get_ident()]
    assert (
        len(_host_threads.run_split(lambda sl: sl, 8, work=100, min_work=100)) == 4
    )  # at the threshold: split


def test_small_layer_calls_stay_in_one_thread(monkeypatch):
    """The layers' own thresholds: a small chunked call does not split, a large one does (faked BLAS
    count, so the test does not depend on the machine's cores)."""
    from ttr_stats.methods.rls import chunked as rls_chunked

    monkeypatch.setattr(_host_threads, "_blas_threads", lambda: 2)
    calls = []
    real = _host_threads.split_rows
    monkeypatch.setattr(
        _host_threads, "split_rows", lambda rows, parts: calls.append(parts) or real(rows, parts)
    )
    Q, K, V, _ = inputs((1, 4), 64, 8)
    tt.recipes.linear_attention()(Q, K, V, method="chunked")
    tt.recipes.rls(ridge=1e-2)(Q, K, V, method="chunked")
    tt.recipes.deltanet()(Q, K, V, method="chunked")
    assert all(p == 1 for p in calls), calls
    monkeypatch.setattr(ident, "THREAD_MIN_WORK", 4 * 64 * 8 * 8)  # exactly this call's work: split
    monkeypatch.setattr(rls_chunked, "THREAD_MIN_WORK", 4 * 64 * 8 * 8)
    monkeypatch.setattr(delta_chunked, "THREAD_MIN_WORK", 4 * 64 * 8 * 16)  # B H T d_k (d_k + d_v)
    calls.clear()
    tt.recipes.linear_attention()(Q, K, V, method="chunked")
    tt.recipes.rls(ridge=1e-2)(Q, K, V, method="chunked")
    tt.recipes.deltanet()(Q, K, V, method="chunked")
    assert calls.count(2) == 3, calls


def test_run_split_reraises_and_does_not_nest(monkeypatch):
    monkeypatch.setattr(_host_threads, "_blas_threads", lambda: 2)

    def boom(sl):
        if sl.start:
            raise FloatingPointError("slice")
        return _host_threads.n_threads(4)  # inside a split: one thread (no nested pools)

    with pytest.raises(FloatingPointError, match="slice"):
        _host_threads.run_split(boom, 4)
    assert _host_threads.run_split(lambda sl: _host_threads.n_threads(4), 4) == [1, 1]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "name, kw",
    [
        ("linear_attention", {}),
        ("linear_attention", dict(beta=True)),
        ("mamba2", dict(gates=True)),
        ("retnet", {}),
        ("linear_attention", dict(normalize=True)),
        ("window", dict(window=7)),
    ],
)
def test_identity_chunked_threads_change_no_bit(threads, n, name, kw):
    Q, K, V, g = inputs((2, 3), 70, 7, dv=5)
    if kw.get("normalize"):
        layer = tt.recipes.linear_attention(normalize="sum")
    elif kw.get("window"):
        layer = tt.TestTimeRegression(weights=w.SlidingWindow(kw["window"]), optimizer=o.IdentityCovariance())
    else:
        layer = getattr(tt.recipes, name)()
    call = dict(method="chunked", chunk_size=16, return_state=True)
    if kw.get("gates"):
        call["log_alpha"] = g
    if kw.get("beta"):
        call["beta"] = np.random.default_rng(1).uniform(0.1, 0.9, g.shape)
    one, many = threads(lambda: layer(Q, K, V, **call), n)
    assert same_bits(one[0], many[0]) and same_bits(tuple(one[1]), tuple(many[1]))


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize(
    "name, kw",
    [
        ("deltanet", {}),
        ("gated_deltanet", dict(gates=True)),
        ("deltaproduct", dict(gates=True)),
        ("leaky", dict(gates=True)),
    ],
)
def test_delta_chunked_threads_change_no_bit(threads, monkeypatch, n, name, kw):
    """Split rows (and, split, the larger groups of chunks) give the one-thread bits; T = 70 pads the last
    chunk; the small split budget makes several groups of several chunks."""
    monkeypatch.setattr(delta_chunked, "HOST_SPLIT_GROUP_BYTES", 6 * 16 * 16 * 8 * 3)
    Q, K, V, g = inputs((2, 3), 70, 7, seed=9, dv=5)
    rng = np.random.default_rng(4)
    if name == "leaky":
        layer = tt.TestTimeRegression(weights=w.Gated(), optimizer=o.LeakyLMS(beta=0.5, l2=0.1))
    elif name == "deltaproduct":
        layer = tt.recipes.delta_product(2)
        K = unit_rows(rng.standard_normal((2, 3, 140, 7)))
        V = rng.standard_normal((2, 3, 140, 5))
    else:
        layer = getattr(tt.recipes, name)()
    call = dict(method="chunked", chunk_size=16, return_state=True)
    if kw.get("gates"):
        call["log_alpha"] = g
    call["beta"] = rng.uniform(0.1, 0.9, K.shape[:-1])
    one, many = threads(lambda: layer(Q, K, V, **call), n)
    assert same_bits(one[0], many[0]) and same_bits(tuple(one[1]), tuple(many[1]))


@pytest.mark.parametrize("name", ["linear_attention", "retnet", "mamba2"])
def test_identity_numpy_loop_equals_generic_host_path(monkeypatch, name):
    """The NumPy in-place loop against the generic host loop (the array-API code every host backend
    runs): float64, 1e-12 relative (same sums; the state is kept as M^T, so a product may round apart)."""
    Q, K, V, g = inputs((2,), 100, 9, seed=3, dv=6)
    layer = getattr(tt.recipes, name)()
    call = dict(method="chunked", chunk_size=16, return_state=True)
    if name == "mamba2":
        call["log_alpha"] = g
    y, s = layer(Q, K, V, **call)
    real = ident.array_api_compat
    fake = types.SimpleNamespace(
        is_numpy_namespace=lambda xp: False,
        is_array_api_strict_namespace=real.is_array_api_strict_namespace,
        device=real.device,
    )
    monkeypatch.setattr(ident, "array_api_compat", fake)
    monkeypatch.setattr(ident, "_on_host", lambda xp, dev: True)
    y2, s2 = layer(Q, K, V, **call)
    scale = np.max(np.abs(y2))
    assert np.max(np.abs(y - y2)) <= 1e-12 * scale
    for a, b in zip(s, s2, strict=True):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 1e-12 * max(np.max(np.abs(b)), 1.0)


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("gated", [False, True])
def test_rls_chunked_threads_change_no_bit(threads, n, gated):
    Q, K, V, g = inputs((2, 3), 150, 6, seed=5, dv=4)
    layer = tt.recipes.rls(ridge=1e-2)
    call = dict(method="chunked", chunk_size=16, return_state=True)
    if gated:
        call["log_alpha"] = 0.05 * g
    one, many = threads(lambda: layer(Q, K, V, **call), n)
    assert same_bits(one[0], many[0]) and same_bits(tuple(one[1]), tuple(many[1]))


def test_rls_chunked_threads_refuse_with_the_same_message(threads):
    """A refusal in one slice reruns the whole batch: the error names the same first position."""
    Q, K, V, g = inputs((4,), 60, 6, seed=7)
    g = np.full_like(g, -0.1)
    g[2] = -8.0  # one strongly decayed row: wind-up, refused
    layer = tt.recipes.rls(ridge=1e-6)

    def call():
        with pytest.raises(FloatingPointError) as info:
            layer(Q, K, V, method="chunked", log_alpha=g)
        return str(info.value)

    one, many = threads(call, 2)
    assert one == many


def generic_rls(monkeypatch, fn):
    monkeypatch.setattr(rls_rec, "_fast_applies", lambda *a: False)
    try:
        return fn()
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize(
    "ridge, log_alpha, shape, d, dv",
    [
        (1e-2, None, (2, 3), 6, 4),
        (1e-6, None, (3,), 8, 8),
        (1e-2, -0.02, (2,), 5, 3),
        (1.0, -0.3, (1,), 4, 7),
    ],
)
def test_rls_numpy_loop_equals_generic_loop_bit_for_bit(monkeypatch, ridge, log_alpha, shape, d, dv):
    Q, K, V, g = inputs(shape, 90, d, seed=11, dv=dv)
    layer = tt.recipes.rls(ridge=ridge)
    call = dict(method="recurrent", return_state=True)
    if log_alpha is not None:
        call["log_alpha"] = log_alpha * np.random.default_rng(2).uniform(0.5, 1.5, g.shape)
    assert rls_rec._fast_applies(np, layer._solver(), _problem_probe(layer, Q, K, V, call))
    fast = layer(Q, K, V, **call)
    slow = generic_rls(monkeypatch, lambda: layer(Q, K, V, **call))
    assert same_bits(fast[0], slow[0]) and same_bits(tuple(fast[1]), tuple(slow[1]))


def _problem_probe(layer, Q, K, V, call):
    """A stand-in Problem with the fields ``_fast_applies`` reads (NumPy float64, no lengths/window)."""
    return types.SimpleNamespace(
        dtype=np.float64, T=Q.shape[-2], lengths=None, window=None, steps_per_token=1
    )


@pytest.mark.parametrize("log_alpha", [-3.0, -50.0])
def test_rls_numpy_loop_refuses_where_the_generic_loop_does(monkeypatch, log_alpha):
    Q, K, V, g = inputs((2,), 40, 6, seed=13)
    layer = tt.recipes.rls(ridge=1e-6)

    def call():
        with pytest.raises(FloatingPointError) as info:
            layer(Q, K, V, method="recurrent", log_alpha=np.full_like(g, log_alpha))
        return str(info.value)

    fast = call()
    slow = generic_rls(monkeypatch, call)
    assert fast == slow


def test_a_forked_child_gets_its_own_pool(monkeypatch):
    """The pool's threads do not survive a fork: a child that splits must not wait on them forever."""
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    monkeypatch.setattr(_host_threads, "_blas_threads", lambda: 2)
    assert _host_threads.run_split(lambda sl: sl.start, 4) == [0, 2]  # the parent's pool exists now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        res = pool.apply_async(_split_in_child)
        assert res.get(timeout=60) == [0, 2]


def _split_in_child():
    _host_threads._blas_threads = lambda: 2
    return _host_threads.run_split(lambda sl: sl.start, 4)
