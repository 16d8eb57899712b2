"""The fused softmax kernels vouch for the finiteness of Q, K and V (``_fused_nw``'s ``FLAG``).

On CuPy a causal softmax / forgetting / window call through ``method="tiled"`` used to test Q, K and V
with passes of their own, and the output with another, before the one read: the kernel's output alone
could not vouch for its inputs (an infinite query gives a row of -inf logits that reads a finite 0; a
window or a hard reset drops keys from every later row). Both kernel variants now test every entry of
Q, K and V as they read it, and every output as they write it, into one flag; every key / value tile is
read, and tested, by the block whose query tile holds it (causal), or by the first query tile's block
(non-causal). The layer reads that flag with the other verdicts: a good call has no finiteness pass.

What is tested here:

* the promise, on the CUDA source run on the host (``tests/cuda_on_host.py``, v2 and v1): a NaN, +inf or
  -inf at any position of Q, K or V (first, tile edges, inside, the last token; both sequences) sets the
  flag, in every mode (causal, gated with resets that make the kernel stop early, windows narrower than a
  tile with and without sinks, non-causal with T_q != T_k), including a bad key that no later query
  weighs and an infinite query whose output row is finite; finite inputs leave it 0; the flag changes no
  output;
* the bookkeeping, with NumPy arrays standing for device arrays (``test_vouched_checks.simulated``) and
  the host kernel in the fused path: a good call launches no test of Q, K, V or the output; a bad entry is
  named exactly as an immediate check names it; where the kernel does not run (local linear, the array
  path), Q, K and V are tested as before;
* on a GPU (skipped without one): the same, on CuPy arrays and the compiled kernels.
"""

import numpy as np
import pytest
from conftest import _cupy_available, rel_err
from conftest import host_cuda as needs_gxx
from test_fused_nw import _run_host
from test_fused_nw_tiled import operands, run_host_v2
from test_vouched_checks import (
    assert_bad_entries_are_named,
    simulated,  # noqa: F401  (a fixture)
)

import ttr_stats as tt
from ttr_stats import _validation as v
from ttr_stats.methods.kernel_smoother import _fused_nw as F

BAD = [np.nan, np.inf, -np.inf]
MODES = ["causal", "gated -50", "gated window 19 sinks 3", "window 19", "non-causal"]


def _v2(ops, config=None):
    flag = np.zeros(1, np.int32)
    return run_host_v2(ops, config, flag=flag), int(flag[0])


def _v1(ops):
    flag = np.zeros(1, np.int32)
    return _run_host(ops, 2, flag=flag), int(flag[0])  # C = 32 (TM = 2)


# ------------------------------------------------------------------ 1. the kernels keep the promise
@needs_gxx
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_bad_entry_anywhere_sets_the_v2_flag(rng, mode, dtype):
    T = 150  # v2's float32 default tiles: query tiles of 128, key tiles of 64 (three, the last short)
    ops, _ = operands(rng, dtype, T, 7, 5, mode)
    Y0, flag = _v2(ops)
    assert flag == 0 and np.all(np.isfinite(Y0)), mode
    for which in "QKV":
        for t in (0, 63, 64, 127, 128, 149):
            for bad in BAD:
                o = {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in ops.items()}
                o[which][int(rng.integers(2)), t, int(rng.integers(o[which].shape[-1]))] = bad
                Y, flag = _v2(o)
                assert flag == 1, (mode, which, t, bad)


@needs_gxx
@pytest.mark.parametrize("mode", ["gated -50", "window 19 sinks 3", "non-causal"])
def test_a_bad_entry_anywhere_sets_the_v1_flag(rng, mode):
    T = 100  # C = 32: four tiles, the last short
    ops, _ = operands(rng, np.float64, T, 5, 3, mode)
    assert _v1(ops)[1] == 0
    for which in "QKV":
        for t in (0, 31, 32, 99):
            for bad in BAD:
                o = {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in ops.items()}
                o[which][1, t, 0] = bad
                assert _v1(o)[1] == 1, (mode, which, t, bad)


@needs_gxx
def test_what_the_output_alone_would_miss_is_flagged(rng):
    """An infinite query: its row's logits are all -inf (q.k = -inf for keys of one sign), the row reads a
    finite 0. A NaN key behind a hard reset, or outside every window but its own position's, reaches no
    output but its own row's; a NaN key of strength 0 (its pair never weighs, its logit is -inf)."""
    T, dk = 150, 3
    ops, _ = operands(rng, np.float64, T, dk, 4, "causal")
    ops["K"][...] = np.abs(ops["K"]) + 0.1  # every q.k has q's sign
    o = {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in ops.items()}
    o["Q"][0, 70, :] = -np.inf
    Y, flag = _v2(o)
    assert np.all(np.isfinite(Y[0, 70])) and flag == 1  # the case the output could not vouch for

    ops, _ = operands(rng, np.float64, T, dk, 4, "gated -50")
    ops["g"][:] = 0.0
    ops["g"][:, 100] = -np.inf  # a hard reset at t = 100: no query after it weighs an earlier key
    o = {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in ops.items()}
    o["K"][0, 40, 1] = np.nan
    assert _v2(o)[1] == 1

    ops, _ = operands(rng, np.float64, T, dk, 4, "window 1")  # each query sees only its own key
    o = {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in ops.items()}
    o["V"][1, 90, 2] = np.inf
    assert _v2(o)[1] == 1

    ops, _ = operands(rng, np.float64, T, dk, 4, "gated")
    o = {k: (x.copy() if isinstance(x, np.ndarray) else x) for k, x in ops.items()}
    o["logb"][0, 17] = -np.inf  # strength 0: the pair never weighs
    o["K"][0, 17, 0] = np.nan
    Y, flag = _v2(o)
    assert np.all(np.isfinite(Y)) and flag == 1


@needs_gxx
def test_the_flag_changes_no_output_and_non_causal_shapes_are_covered(rng):
    for mode in ("gated window 19 sinks 3", "causal"):
        ops, _ = operands(rng, np.float32, 200, 7, 20, mode)
        Y, flag = _v2(ops)
        ref = F.fused_nw_reference(np, **{k: (x.astype(np.float64) if isinstance(x, np.ndarray) else x)
                                          for k, x in ops.items()})  # fmt: skip
        assert flag == 0 and rel_err(Y, ref) < 1e-5  # float32: the tiled method's tolerance
    # non-causal, T_q != T_k: the first query tile's block tests every key tile
    ops, _ = operands(rng, np.float64, 70, 4, 3, "non-causal")
    ops["Q"] = rng.standard_normal((2, 5, 4))
    assert _v2(ops)[1] == 0
    for t in (0, 63, 64, 69):
        o = dict(ops, K=ops["K"].copy())
        o["K"][1, t, 3] = np.inf
        assert _v2(o)[1] == 1, t


def test_the_reference_sets_the_flag_as_the_kernel_does(rng):
    ops, _ = operands(rng, np.float64, 70, 4, 3, "gated -50")
    flag = np.zeros(1, np.int32)
    F.fused_nw_reference(np, flag=flag, **ops)
    assert flag[0] == 0
    ops["Q"][0, 5, 0] = np.nan
    F.fused_nw_reference(np, flag=flag, **ops)
    assert flag[0] == 1


# ------------------------------------------------------------------ 2. the layer reads the flag
LAYERS = {
    "softmax": (tt.recipes.softmax_attention, {}),
    "forgetting": (
        lambda: tt.TestTimeRegression(weights=tt.weights.Gated(), regressor=tt.regressors.LocalPolynomial(0)),
        {"log_alpha": "gates"},
    ),
    "window": (lambda: tt.recipes.sliding_window_attention(9), {}),
    "non-causal": (tt.recipes.softmax_attention, {"causal": False}),
}


@pytest.fixture
def host_kernel(monkeypatch):
    """The fused path of ``method="tiled"`` on NumPy with the v2 CUDA source run on the host."""
    calls = []

    def forward(xp, flag=None, **ops):
        calls.append(flag is not None)
        f = np.zeros(1, np.int32) if flag is None else flag
        return run_host_v2(ops, flag=f)

    monkeypatch.setattr(F, "_on_device", lambda xp: True)
    monkeypatch.setattr(F, "forward", forward)
    return calls


def _call(name, rng, Q, K, V):
    make, kw = LAYERS[name]
    kw = dict(kw)
    if kw.get("log_alpha") == "gates":
        kw["log_alpha"] = -rng.uniform(0, 0.5, Q.shape[:-1])
    return make(), kw


def _qkv(rng, T=40, d=5):
    return [rng.standard_normal((2, T, d)) for _ in range(3)]


@needs_gxx
@pytest.mark.parametrize("name", list(LAYERS))
def test_a_good_tiled_call_tests_nothing_twice(simulated, host_kernel, rng, name):  # noqa: F811
    Q, K, V = _qkv(rng)
    layer, kw = _call(name, rng, Q, K, V)
    y = layer(Q, K, V, method="tiled", **kw)
    assert host_kernel == [True]  # the fused path ran, with a flag
    tested = [s for launch in simulated for s in launch]
    assert (2, 40, 5) not in tested, simulated  # neither Q, K, V nor the output had a pass of its own
    assert rel_err(y, layer(Q, K, V, method="parallel", **kw)) < 1e-10  # float64


@needs_gxx
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("where", ["Q", "K", "V"])
def test_bad_entries_are_named(simulated, host_kernel, rng, name, where):  # noqa: F811
    for t in (0, 17, 39):
        for bad in BAD:
            arrays = dict(zip("QKV", _qkv(rng), strict=True))
            arrays[where][1, t, 2] = bad
            layer, kw = _call(name, rng, *arrays.values())
            kind = "NaN" if np.isnan(bad) else "infinite values"
            with pytest.raises(ValueError, match=f"{where} contains {kind}"):
                layer(arrays["Q"], arrays["K"], arrays["V"], method="tiled", **kw)


@needs_gxx
def test_an_infinite_query_with_a_finite_row_is_still_named(simulated, host_kernel, rng):  # noqa: F811
    Q, K, V = _qkv(rng)
    K = np.abs(K) + 0.1
    Q[0, 20, :] = -np.inf
    with pytest.raises(ValueError, match="Q contains infinite values"):
        tt.recipes.softmax_attention()(Q, K, V, method="tiled")


def test_without_the_kernel_q_k_v_are_tested(simulated, rng):  # noqa: F811
    """No fused kernel on the host (``_on_device`` false): the array path does not vouch."""
    Q, K, V = _qkv(rng)
    tt.recipes.softmax_attention()(Q, K, V, method="tiled")
    assert [(2, 40, 5)] * 3 in simulated, simulated


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_a_good_call_launches_no_test_and_bad_entries_are_named(rng, name, dtype, monkeypatch):
    import cupy

    B, H, T, d = 2, 3, 300, 16
    arrays = {n: (rng.standard_normal((B, H, T, d)) * 0.5).astype(dtype) for n in "QKV"}
    layer, kw = _call(name, rng, *arrays.values())
    dev = {n: cupy.asarray(x) for n, x in arrays.items()}
    dkw = {k: cupy.asarray(x.astype(dtype)) if isinstance(x, np.ndarray) else x for k, x in kw.items()}
    launched = []
    real = v._launch_finite
    monkeypatch.setattr(v, "_launch_finite", lambda a: launched.append([x.shape for x in a]) or real(a))
    y = layer(dev["Q"], dev["K"], dev["V"], method="tiled", **dkw)
    assert not [s for launch in launched for s in launch if s == (B, H, T, d)], launched
    ref = layer(*(arrays[n].astype(np.float64) for n in "QKV"), method="parallel", **kw)
    assert rel_err(cupy.asnumpy(y), ref) < (1e-5 if dtype == np.float32 else 1e-10)
    assert_bad_entries_are_named(rng, layer, dev, "tiled", dkw)
