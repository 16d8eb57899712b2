"""Input checks the output vouches for (``_validation.Deferred.finite(vouchable=True)`` and ``vouch``).

On the deferred path (CuPy) a layer call does not test Q, K and V for finiteness with passes of their own
when its method promises that every non-finite entry of them reaches the output (identity-covariance
layers, ``method="chunked"``, no normalisation, no window): a finite output proves them finite, and the
fused output kernel (``identity/_fused_chunk.py``) reports the output's finiteness as it writes it, so a
good call reads no array twice. Whenever the output is not finite, or another check fails, the waiting
checks run and the error names the argument, exactly as an immediate check would.

What is tested here:

* the promise itself, on the kernels run on the host (``tests/cuda_on_host.py``): a NaN, +inf or -inf at
  any position of q, k or v (first, last, chunk edges, inside a chunk), gated and ungated, makes the
  kernel's flag 1; finite inputs leave it 0; finite inputs that overflow set it too;
* the bookkeeping, with NumPy arrays standing for device arrays (as ``test_deferred_checks.py``): a good
  call launches no check of Q, K, V; the errors and their order are those of immediate checks; the
  method's flag replaces the output's own test; every case where the output cannot vouch (a feature map,
  ``lengths``, ``normalize="sum"``, a window, another method) checks Q, K and V as before;
* on a GPU (skipped without one): bad entries at random positions of CuPy inputs are named, for linear
  attention, Mamba-2 and GLA, and a good call launches no finiteness pass over Q, K, V or the output.
"""

import numpy as np
import pytest
from conftest import _cupy_available, rel_err
from conftest import host_cuda as needs_gxx
from test_deferred_checks import simulated_within
from test_fused_chunk import emulated, operands

import ttr_stats as tt
from ttr_stats import _validation as v
from ttr_stats.methods.identity import _fused_chunk as fc
from ttr_stats.methods.identity import chunked as ich

BAD = [np.nan, np.inf, -np.inf]


# ------------------------------------------------------------------ 1. the kernels keep the promise
def _flag_of(ops, C, need_den, gated):
    flag = np.zeros(1, np.int32)
    got = emulated(*ops, C, need_den, gated, flag)
    return int(flag[0]), got


@needs_gxx
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_bad_entry_anywhere_sets_the_output_kernels_flag(rng, gated, dtype):
    T, dk, dv, C = 37, 7, 5, 8  # a short last chunk (37 = 4 * 8 + 5)
    ops = list(operands(rng, (2,), T, dk, dv, None if gated else 0.0, dtype))
    if not gated:
        ops[3] = np.zeros_like(ops[3])
    flag, got = _flag_of(ops, C, False, gated)
    assert flag == 0 and np.all(np.isfinite(got[0]))
    positions = [0, 7, 8, 20, 31, 32, 36]  # first, chunk edges, inside, the last token
    for which, name in ((0, "q"), (1, "k"), (2, "v")):
        for t in positions:
            for bad in BAD:
                col = int(rng.integers(ops[which].shape[-1]))
                seq = int(rng.integers(2))
                o = [x.copy() for x in ops]
                o[which][seq, t, col] = bad
                flag, got = _flag_of(o, C, False, gated)
                assert flag == 1, (name, t, bad, gated)
                assert not np.all(np.isfinite(got[0])), (name, t, bad)  # and the output shows it


@needs_gxx
def test_a_zero_query_or_key_row_still_carries_an_infinity(rng):
    """0 * inf is NaN: a bad value meeting zeros (a zero query, zero keys, zero values elsewhere) is not
    lost in a product."""
    T, dk, dv, C = 20, 4, 3, 8
    ops = [np.zeros_like(x) for x in operands(rng, (1,), T, dk, dv, 0.0, np.float64, state=False)]
    ops[4] = np.ones_like(ops[4])  # b = 1
    for which in (0, 1, 2):
        o = [x.copy() for x in ops]
        o[which][0, 13, 1] = np.inf
        assert _flag_of(o, C, False, False)[0] == 1, which


@needs_gxx
def test_finite_inputs_that_overflow_set_the_flag(rng):
    ops = list(operands(rng, (1,), 40, 8, 4, 0.0, np.float32, state=False))
    ops[3] = np.zeros_like(ops[3])
    ops[0] = ops[0] * np.float32(1e20)
    ops[2] = ops[2] * np.float32(1e20)
    flag, got = _flag_of(ops, 16, False, False)
    assert not np.all(np.isfinite(got[0])) and flag == 1


@needs_gxx
def test_the_denominator_is_flagged_too(rng):
    ops = list(operands(rng, (1,), 30, 6, 4, None, np.float64))
    ops[1][0, 29, 2] = np.nan  # the last key: the last output row and its denominator
    flag, got = _flag_of(ops, 8, True, True)
    assert flag == 1 and np.isnan(got[1][0, 29])


# -------------------------------------------------------------------------- 2. the bookkeeping
@pytest.fixture
def simulated(monkeypatch):
    """Deferred checks on NumPy as on CuPy; returns the list of the arrays each launch tested."""
    launched = []

    def bind(self, xp, lazy=True):
        self.xp, self.lazy = xp, lazy

    def launch(arrays):
        launched.append([a.shape for a in arrays])
        return np.array([not np.all(np.isfinite(x)) for x in arrays], np.int32)

    def within(x, *interval):
        launched.append([x.shape])
        return simulated_within(x, *interval)

    monkeypatch.setattr(v.Deferred, "bind", bind)
    monkeypatch.setattr(v, "_fusable", lambda x: isinstance(x, np.ndarray))
    monkeypatch.setattr(v, "_launch_finite", launch)
    monkeypatch.setattr(v, "_launch_within", within)
    return launched


def _qkv(rng, T=12, dk=4, dv=3):
    return [rng.standard_normal((2, T, d)) for d in (dk, dk, dv)]


def _qkv_launched(launched, T=12, dk=4, dv=3):
    """Whether one launch tested Q, K and V together (the layer's vouchable check)."""
    return [(2, T, dk), (2, T, dk), (2, T, dv)] in launched


def _gates(recipe, rng, T=12, dk=4):
    """Call-time gates of a recipe (unit keys are the caller's business for the delta rule)."""
    if recipe == "linear_attention":
        return {}
    if recipe == "gla":
        return {"log_alpha": -rng.uniform(0, 1, (2, T, dk))}
    kw = {"log_alpha": -rng.uniform(0, 1, (2, T))}
    if recipe == "gated_deltanet":
        kw["beta"] = rng.uniform(0.1, 0.9, (2, T))
    return kw


RECIPES = ["linear_attention", "mamba2", "gla", "gated_deltanet"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_good_chunked_call_never_tests_q_k_v(simulated, rng, recipe):
    Q, K, V = _qkv(rng)
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    layer = getattr(tt.recipes, recipe)()
    kw = _gates(recipe, rng)
    y = layer(Q, K, V, method="chunked", **kw)
    assert not _qkv_launched(simulated), simulated
    assert [(2, 12, 3)] in simulated  # the output's own test (no fused kernel on the host)
    assert rel_err(y, layer(Q, K, V, method="recurrent", **kw)) < 1e-10  # float64


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("where", ["Q", "K", "V"])
def test_bad_entries_are_named_after_the_output_fails(simulated, rng, recipe, where):
    layer = getattr(tt.recipes, recipe)()
    kw = _gates(recipe, rng)
    for t in (0, 5, 11):
        for bad in BAD:
            arrays = dict(zip("QKV", _qkv(rng), strict=True))
            arrays["K"] /= np.linalg.norm(arrays["K"], axis=-1, keepdims=True)
            arrays[where][1, t, 0] = bad
            kind = "NaN" if np.isnan(bad) else "infinite values"
            with pytest.raises(ValueError, match=f"{where} contains {kind}"):
                layer(arrays["Q"], arrays["K"], arrays["V"], method="chunked", **kw)


def test_the_checks_order_is_kept_when_a_gate_fails_too(simulated, rng):
    """Q is checked before the gates: a bad Q and a bad log_alpha name Q, though Q's check waited."""
    Q, K, V = _qkv(rng)
    Q[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="Q contains NaN"):
        tt.recipes.mamba2()(Q, K, V, log_alpha=np.full((2, 12), 3.0), method="chunked")
    with pytest.raises(ValueError, match="log_alpha must be <= 0"):  # Q good: the gate's error
        tt.recipes.mamba2()(np.ones_like(Q), K, V, log_alpha=np.full((2, 12), 3.0), method="chunked")


def test_a_good_call_whose_output_overflows_is_a_floating_point_error(simulated, rng):
    Q, K, V = _qkv(rng)
    with pytest.raises(FloatingPointError, match="non-finite output"):
        tt.recipes.linear_attention()(Q * 1e160, K * 1e160, V * 1e10, method="chunked")
    assert _qkv_launched(simulated)  # the output failed: Q, K and V were tested before the verdict


@pytest.mark.parametrize(
    "case",
    ["lengths", "feature_map", "normalize_sum", "window", "recurrent", "parallel"],
)
def test_where_the_output_cannot_vouch_q_k_v_are_tested(simulated, rng, case):
    Q, K, V = _qkv(rng)
    call = {"method": "chunked"}
    layer = tt.recipes.linear_attention()
    if case == "lengths":
        call["lengths"] = np.array([12, 9])
    elif case == "feature_map":
        layer = tt.recipes.performer(n_features=8) if hasattr(tt.recipes, "performer") else None
        if layer is None:
            pytest.skip("no feature-map recipe")
    elif case == "normalize_sum":
        layer = tt.TestTimeRegression(optimizer=tt.optimizers.IdentityCovariance("sum"))
        Q, K = np.abs(Q), np.abs(K)
    elif case == "window":
        layer = tt.TestTimeRegression(weights=tt.weights.SlidingWindow(5), optimizer=tt.optimizers.IdentityCovariance())
    else:
        call["method"] = case
    layer(Q, K, V, **call)
    assert _qkv_launched(simulated), (case, simulated)


def test_a_nan_in_the_padding_is_still_refused(simulated, rng):
    """With lengths the padding is zeroed before the method: the output cannot see a NaN there, so the
    inputs are tested as they are (the behaviour of immediate checks)."""
    Q, K, V = _qkv(rng)
    K[1, 10, 0] = np.nan
    with pytest.raises(ValueError, match="K contains NaN"):
        tt.recipes.linear_attention()(Q, K, V, method="chunked", lengths=np.array([12, 9]))


def test_the_methods_flag_replaces_the_outputs_test(simulated, rng, monkeypatch):
    """The fused path's flag (here: emulated forward, the kernels on the host) is the output's verdict:
    no launch tests the output, and a NaN input is still named."""
    pytest.importorskip("ctypes")
    from conftest import _gxx

    if not _gxx():
        pytest.skip("g++ not found (tests/cuda_on_host.py needs it)")

    def forward(xp, Q, K, V, g, b, M0, z0, C, need_den, gated=True, flag=None):
        return emulated(*(np.asarray(x) for x in (Q, K, V, g, b, M0, z0)), C, need_den, gated, flag)

    monkeypatch.setattr(fc, "forward", forward)
    monkeypatch.setattr(ich, "_on_host", lambda xp, device: False)
    Q, K, V = _qkv(rng, T=40, dk=7, dv=5)
    layer = tt.recipes.linear_attention()
    y = layer(Q, K, V, method="chunked", chunk_size=16)
    assert simulated == [], simulated  # neither Q, K, V nor the output had a pass of its own
    assert rel_err(y, layer(Q, K, V, method="recurrent")) < 1e-10  # float64
    V[0, 39, 4] = -np.inf
    with pytest.raises(ValueError, match="V contains infinite values"):
        layer(Q, K, V, method="chunked", chunk_size=16)


def test_deferred_vouch_unit(simulated):
    """The object itself: a vouch for another array than the output read is no vouch."""
    d = v.Deferred()
    d.bind(np)
    d.finite({"A": np.array([1.0, np.nan])}, vouchable=True)
    d.vouch(np.ones(2))  # a vouch for some other array
    with pytest.raises(ValueError, match="A contains NaN"):
        d.outputs_finite(np.ones(2))
    d = v.Deferred()
    d.bind(np)
    d.finite({"A": np.array([1.0, 2.0])}, vouchable=True)
    Y = np.ones(3)
    d.vouch(Y)
    assert d.outputs_finite(Y) and simulated[-1] == [(3,)]  # only Y was tested
    d = v.Deferred()
    d.bind(np)
    d.finite({"A": np.array([1.0, np.nan])}, vouchable=True)
    assert isinstance(d.input_error(), ValueError)  # an exception path tests what waited


def test_a_range_check_is_launched_at_the_read_in_its_place(simulated, rng):
    """``finite_within`` on the deferred path launches its pass when the verdicts are read, after the
    call's kernels (its host time then overlaps them), and its verdicts keep their place in the order."""
    d = v.Deferred()
    d.bind(np)
    gate = -rng.uniform(0, 1, (2, 7))
    d.finite({"A": np.ones(3)})
    d.finite_within("log_alpha", gate, hi=0.0, error=lambda: ValueError("log_alpha must be <= 0"))
    assert simulated == [[(3,)]]  # A's pass only: the gate's waits for the read
    assert d.outputs_finite(np.ones(4))
    assert simulated == [[(3,)], [(2, 7)], [(4,)]]  # at the read: the gate's pass, then the output's
    d = v.Deferred()
    d.bind(np)
    d.finite_within("log_alpha", np.abs(gate), hi=0.0, error=lambda: ValueError("log_alpha must be <= 0"))
    d.finite({"B": np.array([np.nan])})
    with pytest.raises(ValueError, match="log_alpha must be <= 0"):  # the earlier check's error first
        d.outputs_finite(np.ones(4))
    Q, K, V = _qkv(rng)
    with pytest.raises(ValueError, match="log_alpha must be <= 0"):  # through a layer call
        tt.recipes.mamba2()(Q, K, V, log_alpha=np.full((2, 12), 0.5), method="chunked")


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("recipe", ["linear_attention", "mamba2", "gla", "gated_deltanet"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_bad_entries_at_random_positions_are_named(rng, recipe, dtype, monkeypatch):
    import cupy

    B, H, T, d = 2, 3, 200, 16
    layer = getattr(tt.recipes, recipe)()
    arrays = {n: rng.standard_normal((B, H, T, d)).astype(dtype) for n in "QKV"}
    kw = {}
    if recipe == "gated_deltanet":  # unit keys, beta < 2: a stable delta rule
        arrays["K"] /= np.linalg.norm(arrays["K"], axis=-1, keepdims=True)
        kw = {"beta": rng.uniform(0.1, 0.9, (B, H, T)).astype(dtype)}
    if recipe in ("mamba2", "gated_deltanet"):
        kw["log_alpha"] = -rng.uniform(0, 0.3, (B, H, T)).astype(dtype)
    elif recipe == "gla":
        kw = {"log_alpha": -rng.uniform(0, 0.3, (B, H, T, d)).astype(dtype)}
    dev = {n: cupy.asarray(x) for n, x in arrays.items()}
    dkw = {n: cupy.asarray(x) for n, x in kw.items()}
    launched = []
    real = v._launch_finite
    monkeypatch.setattr(v, "_launch_finite", lambda a: launched.append([x.shape for x in a]) or real(a))
    y = layer(dev["Q"], dev["K"], dev["V"], method="chunked", **dkw)
    assert [(B, H, T, d)] * 3 not in launched, launched  # Q, K, V vouched for by the output
    if recipe in ("linear_attention", "mamba2"):
        assert [(B, H, T, d)] not in launched, launched  # the fused kernel's flag: no pass over Y
    ref = layer(*(arrays[n].astype(np.float64) for n in "QKV"), method="recurrent",
                **{n: x.astype(np.float64) for n, x in kw.items()})  # fmt: skip
    assert rel_err(cupy.asnumpy(y), ref) < (1e-5 if dtype == np.float32 else 1e-10)
    assert_bad_entries_are_named(rng, layer, dev, "chunked", dkw)


def assert_bad_entries_are_named(rng, layer, dev, method, kw, n=12):
    """A NaN, +inf or -inf at ``n`` random positions of the device arrays ``dev`` (Q, K, V) is named."""
    for _ in range(n):
        where = "QKV"[int(rng.integers(3))]
        bad = BAD[int(rng.integers(3))]
        idx = tuple(int(rng.integers(s)) for s in dev[where].shape)
        x = dev[where].copy()
        x[idx] = bad
        args = {**dev, where: x}
        kind = "NaN" if np.isnan(bad) else "infinite values"
        with pytest.raises(ValueError, match=f"{where} contains {kind}"):
            layer(args["Q"], args["K"], args["V"], method=method, **kw)


@pytest.mark.parametrize("recipe", RECIPES)
def test_a_strided_output_still_vouches(simulated, rng, recipe, monkeypatch):
    """T not a multiple of the chunk: the output is a strided view of the padded result, which the
    one-pass kernel does not take (``_fusable``: C-contiguous only); it is tested by array operations in
    the same read, and Q, K, V still need no pass of their own."""
    monkeypatch.setattr(v, "_fusable", lambda x: isinstance(x, np.ndarray) and x.flags.c_contiguous)
    T = 70
    Q, K, V = _qkv(rng, T=T)
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    layer = getattr(tt.recipes, recipe)()
    kw = _gates(recipe, rng, T=T)
    y, st = layer(Q, K, V, method="chunked", chunk_size=32, return_state=True, **kw)
    assert not y.flags.c_contiguous  # (the case this test is about)
    assert not _qkv_launched(simulated, T=T), simulated
    assert rel_err(y, layer(Q, K, V, method="recurrent", **kw)) < 1e-10  # float64
    V[1, 69, 2] = np.nan
    with pytest.raises(ValueError, match="V contains NaN"):
        layer(Q, K, V, method="chunked", chunk_size=32, **kw)
