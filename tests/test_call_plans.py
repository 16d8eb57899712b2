"""Call plans (``ttr_stats._plans``): a repeated plain call of one signature skips the layer's set-up.

A plan is a promise: the planned call gives the output of the full call, bit for bit, and every error
the full call would raise (it declines and the full call runs). What is tested here:

* on the host, with NumPy arrays standing for CuPy ones (``_plans.LIBRARIES``, the deferred checks as on
  CuPy, the fused path's ``forward`` the kernel's reference or the CUDA source run on the host): a second
  call of softmax, sliding-window and sink-window attention runs no ``_prepare`` and gives the bits of
  the full path; what changes the answer is never planned over (a component's parameter, a replaced
  component, shapes, dtypes, strides, gates, strengths, ``lengths``, ``return_state``, a Gaussian
  similarity, a configuration holding an array); ``method="auto"`` is planned only where free memory does
  not decide it; a NaN or infinity after a plan is named as the full path names it, and the flag it set
  is not handed out again; an exception inside a launch falls back to the full path; causality;
  plans go with their layer;
* on a GPU (skipped without one): the same promise on CuPy arrays and the compiled kernel.
"""

import gc
import re

import numpy as np
import pytest
from conftest import _cupy_available, rel_err
from conftest import host_cuda as needs_gxx
from test_fused_nw_tiled import run_host_v2
from test_vouched_checks import (
    assert_bad_entries_are_named,
    simulated,  # noqa: F401  (a fixture)
)

import ttr_stats as tt
from ttr_stats import _plans
from ttr_stats.layer import TestTimeRegression
from ttr_stats.methods.kernel_smoother import _fused_nw as F


def _reference_forward(xp, Q, K, V, g, logb, tau, causal, window, gated=True, sinks=0, flag=None, **kw):
    return F.fused_nw_reference(xp, Q, K, V, g, logb, tau, causal, window, gated, sinks, flag=flag)


@pytest.fixture
def planned(simulated, monkeypatch):  # noqa: F811
    """NumPy calls planned as CuPy ones, the fused path on the host (its reference); counts ``_prepare``."""
    monkeypatch.setattr(_plans, "LIBRARIES", ("numpy",))
    monkeypatch.setattr(_plans, "_PLANNABLE", {})
    monkeypatch.setattr(_plans, "_PLANS", type(_plans._PLANS)())
    monkeypatch.setattr(F, "_FREE_FLAGS", {})
    monkeypatch.setattr(F, "_on_device", lambda xp: True)
    monkeypatch.setattr(F, "forward", _reference_forward)
    prepared = []
    real = TestTimeRegression._prepare

    def counted(self, *a, **kw):
        prepared.append(1)
        return real(self, *a, **kw)

    monkeypatch.setattr(TestTimeRegression, "_prepare", counted)
    return prepared


def _full(layer, *args, **kw):
    """The same call through the full path (plans off)."""
    _plans.ENABLED = False
    try:
        return layer(*args, **kw)
    finally:
        _plans.ENABLED = True


def _qkv(rng, shape=(2, 3, 70, 5), dtype=np.float64):
    return [rng.standard_normal(shape).astype(dtype) for _ in range(3)]


LAYERS = {
    "softmax": tt.recipes.softmax_attention,
    "window 9": lambda: tt.recipes.sliding_window_attention(9),
    "sinks": lambda: tt.TestTimeRegression(
        weights=tt.weights.SinkWindow(9, sinks=2), regressor=tt.regressors.LocalPolynomial(0)
    ),
    "scaled": lambda: tt.TestTimeRegression(
        regressor=tt.regressors.LocalPolynomial(0, tt.similarity.ExpDot(scale=np.float32(0.7)))
    ),  # (a NumPy scalar parameter: a value the snapshot compares)
}


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_repeat_runs_its_plan_and_gives_the_full_paths_bits(planned, rng, name, dtype):
    layer = LAYERS[name]()
    y0 = layer(*_qkv(rng, dtype=dtype), method="tiled")
    assert len(planned) == 1 and list(_plans.plans_of(layer).values()) == ["tiled"]
    for _ in range(3):  # new numbers, the same signature: no set-up, the same bits as the full path
        args = _qkv(rng, dtype=dtype)
        del planned[:]
        layer.method_ = None
        y = layer(*args, method="tiled")
        assert planned == [] and layer.method_ == "tiled"
        assert y.dtype == dtype and y.shape == y0.shape
        assert np.array_equal(y, _full(layer, *args, method="tiled"))
    ref = layer(*(x.astype(np.float64) for x in args), method="parallel")
    assert rel_err(y, ref) < (1e-5 if dtype == np.float32 else 1e-10)  # float32 rounding / float64


def _forgetting():
    return tt.TestTimeRegression(weights=tt.weights.Gated(), regressor=tt.regressors.LocalPolynomial(0))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_forgetting_attention_plans_its_gates_as_the_calls_inputs(planned, rng, dtype):
    layer = _forgetting()
    shape = (2, 3, 70, 5)

    def gates():
        la = -rng.uniform(0, 0.5, shape[:-1]).astype(dtype)
        la[..., 7] = -40.0  # (a near-reset inside the sequence)
        return la

    layer(*_qkv(rng, shape, dtype), method="tiled", log_alpha=gates())
    assert list(_plans.plans_of(layer).values()) == ["tiled"]
    for _ in range(2):
        args, la = _qkv(rng, shape, dtype), gates()
        del planned[:]
        y = layer(*args, method="tiled", log_alpha=la)
        assert planned == []
        assert np.array_equal(y, _full(layer, *args, method="tiled", log_alpha=la))
    ref = layer(*(x.astype(np.float64) for x in args), method="parallel", log_alpha=la.astype(np.float64))
    assert rel_err(y, ref) < (1e-5 if dtype == np.float32 else 1e-10)  # float32 rounding / float64
    # bad gates after the plan: the full call's errors, and the plan goes on
    for bad, match in ((0.5, "log_alpha must be <= 0"), (np.nan, "log_alpha contains NaN"),
                       (-np.inf, "log_alpha contains infinite")):  # fmt: skip
        la2 = la.copy()
        la2[1, 2, 33] = bad
        with pytest.raises(ValueError, match=match):
            layer(*args, method="tiled", log_alpha=la2)
    del planned[:]
    layer(*args, method="tiled", log_alpha=la)
    assert planned == []


def test_gates_that_reach_the_kernel_transformed_are_not_planned(planned, rng):
    shape = (2, 3, 70, 5)
    Q, K, V = _qkv(rng, shape)
    la = -rng.uniform(0, 0.5, shape[:-1])
    cases = {
        "alpha": (_forgetting(), {"alpha": np.exp(la)}),  # (a log of the call's alpha: not its input)
        "broadcast gates": (_forgetting(), {"log_alpha": la[0, 0]}),
        "float32 gates, float64 Q": (_forgetting(), {"log_alpha": la.astype(np.float32)}),
        "strided gates": (_forgetting(), {"log_alpha": np.asfortranarray(la)}),
    }
    for name, (layer, kw) in cases.items():
        for _ in range(2):
            del planned[:]
            y = layer(Q, K, V, method="tiled", **kw)
            assert planned == [1], name
        assert list(_plans.plans_of(layer).values()) in ([None], []), name
        assert rel_err(y, layer(Q, K, V, method="parallel", **kw)) < 1e-10, name


def test_a_constant_decay_is_planned_with_its_gates(planned, rng):
    layer = tt.TestTimeRegression(
        weights=tt.weights.ExponentialDecay(0.8), regressor=tt.regressors.LocalPolynomial(0)
    )
    layer(*_qkv(rng), method="tiled")
    args = _qkv(rng)
    del planned[:]
    y = layer(*args, method="tiled")
    assert planned == [] and np.array_equal(y, _full(layer, *args, method="tiled"))
    assert rel_err(y, layer(*args, method="parallel")) < 1e-10
    layer.weights.gamma = 0.5  # a changed decay: the full path, with the new gates
    del planned[:]
    y = layer(*args, method="tiled")
    assert planned == [1] and rel_err(y, layer(*args, method="parallel")) < 1e-10


def _set_scale(layer):
    layer.regressor.similarity.scale = 0.3


def _new_weights(layer):
    layer.weights = tt.weights.SlidingWindow(5)


def _set_params(layer):
    layer.set_params(regressor=tt.regressors.LocalPolynomial(0, tt.similarity.ExpDot(qk_norm=True)))


@pytest.mark.parametrize("change", [_set_scale, _new_weights, _set_params])
def test_a_changed_configuration_is_never_planned_over(planned, rng, change):
    layer = tt.recipes.softmax_attention()
    for _ in range(2):
        layer(*_qkv(rng), method="tiled")
    change(layer)
    args = _qkv(rng)
    del planned[:]
    y = layer(*args, method="tiled")
    assert planned == [1]  # the full path
    assert np.array_equal(y, _full(layer, *args, method="tiled"))
    assert rel_err(y, layer(*args, method="parallel")) < 1e-10


def test_other_signatures_and_arguments_take_the_full_path(planned, rng):
    layer = tt.recipes.softmax_attention()
    Q, K, V = _qkv(rng)
    layer(Q, K, V, method="tiled")
    T = Q.shape[-2]
    calls = {
        "another T": lambda: layer(*_qkv(rng, (2, 3, 71, 5)), method="tiled"),
        "another dtype": lambda: layer(*_qkv(rng, dtype=np.float32)[:2], V, method="tiled"),
        "strided": lambda: layer(Q[..., ::2, :], K[..., ::2, :], V[..., ::2, :], method="tiled"),
        "another method": lambda: layer(Q, K, V, method="parallel"),
        "beta": lambda: layer(Q, K, V, method="tiled", beta=np.full(T, 0.5)),
        "lengths": lambda: layer(Q, K, V, method="tiled", lengths=np.full((2, 3), T - 5)),
        "return_state": lambda: layer(Q, K, V, method="tiled", return_state=True)[0],
        "non-causal": lambda: layer(Q, K, V, method="tiled", causal=False),
    }
    for name, call in calls.items():
        del planned[:]
        call()
        assert planned == [1], name
    with pytest.raises(Exception) as planned_error:  # an unhashable method: the full call's own error
        layer(Q, K, V, method=["tiled"])
    _plans.ENABLED = False
    try:
        with pytest.raises(type(planned_error.value), match=re.escape(str(planned_error.value))):
            layer(Q, K, V, method=["tiled"])
    finally:
        _plans.ENABLED = True
    assert not isinstance(planned_error.value, TypeError) or "unhashable" not in str(planned_error.value)
    la = -rng.uniform(0, 0.5, Q.shape[:-1])
    del planned[:]
    layer(Q, K, V, method="tiled", log_alpha=la)  # (gates: another signature than the ungated plan's)
    assert planned == [1]


def test_layers_whose_operands_are_not_q_k_v_alone_leave_no_launch(planned, rng):
    gauss = tt.TestTimeRegression(regressor=tt.regressors.LocalPolynomial(0, tt.similarity.Gaussian(2.0)))
    qkn = tt.TestTimeRegression(
        regressor=tt.regressors.LocalPolynomial(0, tt.similarity.ExpDot(qk_norm=True))
    )
    for layer in (gauss, qkn):
        args = _qkv(rng)
        for _ in range(2):
            del planned[:]
            y = layer(*args, method="tiled")
            assert planned == [1]
        assert list(_plans.plans_of(layer).values()) in ([None], [])
        assert rel_err(y, layer(*args, method="parallel")) < 1e-10


def test_strided_operands_of_the_plans_shape_leave_no_launch(planned, rng):
    """K and V as views of wider arrays: the shapes of a contiguous call, other strides. The full path
    copies them; a launch, which passes pointers, is never made for them."""
    layer = tt.recipes.softmax_attention()
    Q = rng.standard_normal((2, 3, 70, 5))
    K, V = (rng.standard_normal((2, 3, 70, 9))[..., :5] for _ in range(2))
    assert not K.flags.c_contiguous
    for _ in range(2):
        del planned[:]
        y = layer(Q, K, V, method="tiled")
        assert planned == [1]
    assert list(_plans.plans_of(layer).values()) == [None]
    assert rel_err(y, layer(Q, K, V, method="parallel")) < 1e-10  # float64


def test_a_configuration_holding_an_array_is_not_planned(planned, rng):
    layer = tt.recipes.softmax_attention()
    layer.regressor.similarity.extra_ = np.ones(3)  # (not a parameter: what snapshot() cannot compare)
    assert _plans.snapshot(layer) is None
    for _ in range(2):
        del planned[:]
        layer(*_qkv(rng), method="tiled")
        assert planned == [1]


def test_auto_is_planned_only_where_free_memory_does_not_choose(planned, rng, monkeypatch):
    from ttr_stats.methods import registry

    layer = tt.recipes.softmax_attention()
    small = _qkv(rng, (2, 3, 70, 5))  # T < AUTO_MIN_T: the dense form (no plan to leave)
    long = _qkv(rng, (1, 1, 300, 5))  # T >= AUTO_MIN_T: tiled whatever memory is free
    for _ in range(2):
        layer(*small)
        layer(*long)
    kinds = {k[2]: v for k, v in _plans.plans_of(layer).items()}
    assert kinds == {(1, 1, 300, 5): "tiled"}, kinds
    del planned[:]
    y = layer(*long)
    assert planned == [] and layer.method_ == "tiled"
    assert np.array_equal(y, _full(layer, *long))
    # an auto whose choice moves with free memory (tiled with little, parallel with plenty) leaves none
    real = registry.choose_auto

    def by_memory(layer, P, free):
        name = "tiled" if free is None or free < 1 << 40 else "parallel"
        return registry.lookup(layer, name)

    monkeypatch.setattr(registry, "choose_auto", by_memory)
    other = tt.recipes.softmax_attention()
    for _ in range(2):
        del planned[:]
        y = other(*small)
        assert planned == [1] and other.method_ == "tiled"
    assert list(_plans.plans_of(other).values()) == [None]
    monkeypatch.setattr(registry, "choose_auto", real)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # (the host reference meets the NaN)
def test_a_bad_entry_after_a_plan_is_named_and_its_flag_is_not_reused(planned, rng):
    layer = tt.recipes.softmax_attention()
    args = dict(zip("QKV", _qkv(rng), strict=True))
    layer(*args.values(), method="tiled")
    layer(*args.values(), method="tiled")
    pool = F._FREE_FLAGS["cpu"]
    assert len(pool) == 1 and pool[0][0] == 0
    assert_bad_entries_are_named(rng, layer, args, "tiled", {}, n=12)
    assert all(int(f[0]) == 0 for f in F._FREE_FLAGS["cpu"])  # only flags read back as 0 come back
    del planned[:]
    y = layer(*args.values(), method="tiled")  # and the plan still runs good calls
    assert planned == [] and np.array_equal(y, _full(layer, *args.values(), method="tiled"))


def test_an_exception_in_a_launch_falls_back_to_the_full_path(planned, rng, monkeypatch):
    layer = tt.recipes.softmax_attention()
    layer(*_qkv(rng), method="tiled")

    def broken(xp, dev):
        raise MemoryError("out of memory (a stand-in)")

    monkeypatch.setattr(F, "_take_flag", broken)
    args = _qkv(rng)
    del planned[:]
    y = layer(*args, method="tiled")
    assert planned == [1] and np.array_equal(y, _full(layer, *args, method="tiled"))


def test_switches_turn_the_plan_off(planned, rng, monkeypatch):
    layer = tt.recipes.softmax_attention()
    args = _qkv(rng)
    layer(*args, method="tiled")
    for module, name in ((F, "VOUCH"), (F, "ENABLED"), (_plans, "ENABLED")):
        monkeypatch.setattr(module, name, False)
        del planned[:]
        layer(*args, method="tiled")
        assert planned == [1], name
        monkeypatch.setattr(module, name, True)


def test_a_planned_call_is_causal(planned, rng):
    layer = tt.recipes.softmax_attention()
    Q, K, V = _qkv(rng)
    y = layer(Q, K, V, method="tiled")
    for s in (0, 1, 33, 69):
        Q2, K2, V2 = (x.copy() for x in (Q, K, V))
        for x in (Q2, K2, V2):
            x[..., s:, :] = rng.standard_normal(x[..., s:, :].shape) * 10
        del planned[:]
        y2 = layer(Q2, K2, V2, method="tiled")
        assert planned == []
        assert np.array_equal(y2[..., :s, :], y[..., :s, :]), s


def test_plans_go_with_their_layer_and_are_bounded(planned, rng, monkeypatch):
    monkeypatch.setattr(_plans, "MAX_PLANS", 3)
    layer = tt.recipes.softmax_attention()
    for T in (10, 11, 12, 13, 14):
        layer(*_qkv(rng, (1, 1, T, 4)), method="tiled")
    assert [k[2][2] for k in _plans.plans_of(layer)] == [12, 13, 14]  # the newest three
    n = len(_plans._PLANS)
    del layer
    gc.collect()
    assert len(_plans._PLANS) == n - 1


def test_a_plan_keeps_no_array_of_the_call_that_made_it(planned, rng):
    import weakref

    layer = tt.recipes.softmax_attention()
    Q, K, V = _qkv(rng)
    layer(Q, K, V, method="tiled")
    assert list(_plans.plans_of(layer).values()) == ["tiled"]
    refs = [weakref.ref(x) for x in (Q, K, V)]
    del Q, K, V
    gc.collect()
    assert [r() for r in refs] == [None] * 3  # the first call's inputs are not held by its plan
    del planned[:]
    layer(*_qkv(rng), method="tiled")
    assert planned == []


@needs_gxx
def test_the_plan_runs_the_cuda_source_on_the_host_with_the_full_paths_bits(planned, rng, monkeypatch):
    def forward(xp, flag=None, **ops):
        return run_host_v2(ops, flag=flag)

    monkeypatch.setattr(F, "forward", forward)
    layer = tt.recipes.sliding_window_attention(19)
    layer(*_qkv(rng, (1, 2, 150, 8), np.float32), method="tiled")
    args = _qkv(rng, (1, 2, 150, 8), np.float32)
    del planned[:]
    y = layer(*args, method="tiled")
    assert planned == [] and np.array_equal(y, _full(layer, *args, method="tiled"))
    assert_bad_entries_are_named(rng, layer, dict(zip("QKV", args, strict=True)), "tiled", {}, n=3)


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_a_repeat_runs_its_plan_with_the_full_paths_bits(rng, name, dtype, monkeypatch):
    import cupy

    prepared = []
    real = TestTimeRegression._prepare
    monkeypatch.setattr(
        TestTimeRegression, "_prepare", lambda self, *a, **kw: prepared.append(1) or real(self, *a, **kw)
    )
    layer = LAYERS[name]()
    shape = (2, 3, 300, 16)
    layer(*(cupy.asarray(x) for x in _qkv(rng, shape, dtype)), method="tiled")
    assert list(_plans.plans_of(layer).values()) == ["tiled"]
    host = _qkv(rng, shape, dtype)
    dev = [cupy.asarray(x) for x in host]
    del prepared[:]
    y = layer(*dev, method="tiled")
    assert prepared == [] and layer.method_ == "tiled"
    assert bool(cupy.array_equal(y, _full(layer, *dev, method="tiled")))
    ref = layer(*(x.astype(np.float64) for x in host), method="parallel")
    assert rel_err(cupy.asnumpy(y), ref) < (1e-5 if dtype == np.float32 else 1e-10)
    assert_bad_entries_are_named(rng, layer, dict(zip("QKV", dev, strict=True)), "tiled", {}, n=6)
    del prepared[:]
    layer(*dev, method="tiled")
    assert prepared == []  # the plan outlives the bad calls


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_forgetting_attention_plans_its_gates(rng, dtype, monkeypatch):
    import cupy

    prepared = []
    real = TestTimeRegression._prepare
    monkeypatch.setattr(
        TestTimeRegression, "_prepare", lambda self, *a, **kw: prepared.append(1) or real(self, *a, **kw)
    )
    layer = _forgetting()
    shape = (2, 3, 300, 16)

    def gates():
        return cupy.asarray(-rng.uniform(0, 0.5, shape[:-1]).astype(dtype))

    layer(*(cupy.asarray(x) for x in _qkv(rng, shape, dtype)), method="tiled", log_alpha=gates())
    assert list(_plans.plans_of(layer).values()) == ["tiled"]
    host = _qkv(rng, shape, dtype)
    dev, la = [cupy.asarray(x) for x in host], gates()
    del prepared[:]
    y = layer(*dev, method="tiled", log_alpha=la)
    assert prepared == []
    assert bool(cupy.array_equal(y, _full(layer, *dev, method="tiled", log_alpha=la)))
    ref = layer(
        *(x.astype(np.float64) for x in host),
        method="parallel",
        log_alpha=cupy.asnumpy(la).astype(np.float64),
    )
    assert rel_err(cupy.asnumpy(y), ref) < (1e-5 if dtype == np.float32 else 1e-10)
    assert_bad_entries_are_named(
        rng, layer, dict(zip("QKV", dev, strict=True)), "tiled", {"log_alpha": la}, n=4
    )
    la2 = la.copy()
    la2[0, 1, 5] = 0.5
    with pytest.raises(ValueError, match="log_alpha must be <= 0"):
        layer(*dev, method="tiled", log_alpha=la2)
    del prepared[:]
    layer(*dev, method="tiled", log_alpha=la)
    assert prepared == []
