"""Deferred input checks (``_validation.Deferred``): a layer call keeps the verdicts of its input checks
on the device and reads them with the output's finiteness, in one transfer (CuPy).

The contract does not change with the deferral: a bad input raises the ``ValueError`` naming it that an
immediate check raises (the first bad one in the checks' order: Q, K, V, then the gates), the call
returns nothing, an exception that the bad input caused downstream is replaced by the input's error, and
a non-finite output from good inputs is a ``FloatingPointError``. On the host the deferral is simulated:
NumPy arrays stand for device arrays (``_fusable``, ``_launch_finite`` patched), and every read of the
verdicts is counted; on a GPU (skipped without one) the same errors come from CuPy inputs.
"""

import dataclasses

import numpy as np
import pytest
from conftest import _cupy_available

import ttr_stats as tt
from ttr_stats import _validation as v


@pytest.fixture
def simulated(monkeypatch):
    """Deferred checks on NumPy, as on CuPy; returns the list of reads (the transfers a call makes)."""
    reads = []
    real_read = v.Deferred._read

    def bind(self, xp, lazy=True):
        self.xp, self.lazy = xp, lazy

    def read(self, extra=None, **kw):
        reads.append(len(self._flags) + (extra is not None))
        return real_read(self, extra, **kw)

    monkeypatch.setattr(v.Deferred, "bind", bind)
    monkeypatch.setattr(v.Deferred, "_read", read)
    monkeypatch.setattr(v, "_fusable", lambda x: isinstance(x, np.ndarray))
    monkeypatch.setattr(
        v, "_launch_finite", lambda arrays: np.array([not np.all(np.isfinite(x)) for x in arrays], np.int32)
    )
    monkeypatch.setattr(v, "_launch_within", simulated_within)
    return reads


def simulated_within(x, lo, hi, lo_open, hi_open):
    """``_validation._launch_within`` on NumPy: the kernel's two verdicts (not finite; outside)."""
    with np.errstate(invalid="ignore"):
        inside = ((x > lo) if lo_open else (x >= lo)) & ((x < hi) if hi_open else (x <= hi))
    return np.array([not np.all(np.isfinite(x)), not np.all(inside)], np.int32)


def _qkv(rng, T=12, d=4):
    return [rng.standard_normal((2, T, d)) for _ in range(3)]


def test_a_good_call_reads_its_verdicts_once_with_the_output(simulated, rng):
    Q, K, V = _qkv(rng)
    layer = tt.recipes.mamba2()
    y = layer(Q, K, V, log_alpha=-rng.uniform(0, 1, (2, 12)), beta=rng.uniform(0.5, 1, (2, 12)))
    ref = layer(Q, K, V, log_alpha=-np.ones((2, 12)), method="recurrent")  # noqa: F841 - a second call
    assert np.all(np.isfinite(y))
    # one read a call: the first call's checks (Q, K, V; log_alpha finite and <= 0; beta finite and > 0)
    # and its output in one transfer, then the second call's
    assert len(simulated) == 2
    assert simulated[0] == 4  # 3 device arrays of verdicts (Q K V, each gate's two in one) plus the output's


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("Q", np.nan, "Q contains NaN"),
        ("K", np.inf, "K contains infinite values"),
        ("V", -np.inf, "V contains infinite values"),
        ("log_alpha", 0.5, "log_alpha must be <= 0, got a maximum of 0.5"),
        ("log_alpha", np.nan, "log_alpha contains NaN"),
        ("beta", -1.0, "beta must be > 0, got a minimum of -1"),
        ("alpha", 1.5, r"alpha must lie in \[0, 1\], got values in \[0.5, 1.5\]"),
    ],
)
@pytest.mark.parametrize("method", ["chunked", "recurrent", "parallel"])
def test_a_bad_input_is_named_as_an_immediate_check_names_it(simulated, rng, where, value, message, method):
    Q, K, V = _qkv(rng)
    gates = {"beta": np.full((2, 12), 0.9)}
    gates["alpha" if where == "alpha" else "log_alpha"] = np.full((2, 12), 0.5 if where == "alpha" else -0.1)
    arrays = {"Q": Q, "K": K, "V": V, **gates}
    arrays[where] = arrays[where].copy()
    arrays[where][1, 7] = value
    layer = tt.recipes.mamba2()
    with pytest.raises(ValueError, match=message):
        layer(arrays["Q"], arrays["K"], arrays["V"], **{k: arrays[k] for k in gates}, method=method)
    assert simulated, "the verdicts were never read"


def test_the_first_bad_input_in_the_checks_order_is_named(simulated, rng):
    Q, K, V = _qkv(rng)
    V[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="V contains NaN"):  # V's check comes before the gates'
        tt.recipes.mamba2()(Q, K, V, log_alpha=np.full((2, 12), 3.0))


def test_what_a_bad_input_breaks_downstream_is_reported_as_the_input(simulated, rng, monkeypatch):
    """A method that fails on the NaN (here: raises) must not hide the input's error."""
    from ttr_stats.methods import registry

    Q, K, V = _qkv(rng)
    layer = tt.recipes.linear_attention()
    m = registry.lookup(layer, "recurrent")

    def broken(layer, P):
        if not np.all(np.isfinite(np.asarray(P.Q))):
            raise np.linalg.LinAlgError("downstream failure")
        raise RuntimeError("a good input's own failure")

    monkeypatch.setattr(type(layer), "_choose", lambda self, method, P: dataclasses.replace(m, run=broken))
    Q[1, 3, 2] = np.nan
    with pytest.raises(ValueError, match="Q contains NaN") as info:
        layer(Q, K, V, method="recurrent")
    assert info.value.__suppress_context__ and info.value.__cause__ is None
    Q[1, 3, 2] = 0.0
    with pytest.raises(RuntimeError, match="a good input's own failure"):  # good inputs: the real error
        layer(Q, K, V, method="recurrent")


def test_a_nonfinite_output_from_good_inputs_is_still_a_floating_point_error(simulated, rng):
    Q, K, V = _qkv(rng)
    with pytest.raises(FloatingPointError, match="non-finite output"):
        tt.recipes.linear_attention()(Q * 1e160, K * 1e160, V * 1e10, method="recurrent")
    assert simulated


def test_input_error_is_handed_out_once(simulated, rng):
    d = v.Deferred()
    d.bind(np)
    d.finite({"A": np.ones(3), "B": np.array([1.0, np.nan])})
    d.when(np.any(np.ones(2) > 0), lambda: ValueError("the range check"))
    err = d.input_error()
    assert isinstance(err, ValueError) and "B contains NaN" in str(err)
    assert d.input_error() is None  # once: a re-raise in an except clause does not repeat it
    assert len(simulated) == 1


def test_eager_checks_off_cupy_raise_at_once(rng):
    """Without the simulation (NumPy): every check runs where it is made."""
    d = v.Deferred(np)
    assert not d.lazy
    with pytest.raises(ValueError, match="X contains infinite values"):
        d.finite({"X": np.array([np.inf])})
    with pytest.raises(ValueError, match="now"):
        d.when(np.bool_(True), lambda: ValueError("now"))
    assert (
        d.input_error() is None and d.outputs_finite(np.ones(2)) and not d.outputs_finite(np.array([np.nan]))
    )


# ---------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("Q", np.nan, "Q contains NaN"),
        ("V", np.inf, "V contains infinite values"),
        ("log_alpha", 0.5, "log_alpha must be <= 0"),
        ("beta", 0.0, "beta must be > 0"),
    ],
)
def test_gpu_bad_inputs_are_named_and_good_ones_match_the_host(rng, where, value, message):
    import cupy

    Q, K, V = _qkv(rng, T=70, d=16)
    gates = {"log_alpha": np.full((2, 70), -0.1), "beta": np.full((2, 70), 0.9)}
    layer = tt.recipes.mamba2()
    dev = {k: cupy.asarray(x) for k, x in {"Q": Q, "K": K, "V": V, **gates}.items()}
    d = v.Deferred(cupy)
    assert d.lazy
    y = layer(dev["Q"], dev["K"], dev["V"], **{k: dev[k] for k in gates}, method="chunked")
    ref = layer(Q, K, V, **gates, method="recurrent")
    assert np.max(np.abs(cupy.asnumpy(y) - ref)) < 1e-10 * max(1.0, np.max(np.abs(ref)))  # float64
    bad = dev[where].copy()
    bad[1, 7] = value
    dev[where] = bad
    with pytest.raises(ValueError, match=message):
        layer(dev["Q"], dev["K"], dev["V"], **{k: dev[k] for k in gates}, method="chunked")


def test_an_array_the_kernel_skips_keeps_the_argument_order(simulated, rng, monkeypatch):
    """A layout the one-pass kernel does not take (here: not C-contiguous) is checked at once; the
    arguments of that check keep their order, so a bad Q is still named before a bad, strided K."""
    monkeypatch.setattr(v, "_fusable", lambda x: isinstance(x, np.ndarray) and x.flags.c_contiguous)
    Q, K, V = _qkv(rng)
    Q[0, 2, 1] = np.nan
    K = np.asfortranarray(K)
    K[1, 3, 0] = np.inf
    with pytest.raises(ValueError, match="Q contains NaN"):
        tt.recipes.linear_attention()(Q, K, V, method="recurrent")


# --------------------------------------------------- a gate's finiteness and range in one pass
@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize(
    ("gate", "value", "message"),
    [
        ("beta", 0.0, "beta must be > 0, got a minimum of 0"),  # the open end
        ("beta", 1e-300, None),
        ("beta", np.inf, "beta contains infinite values"),  # finiteness is named before the range
        ("log_alpha", 0.0, None),  # the closed end
        ("log_alpha", -np.inf, "log_alpha contains infinite values"),
        ("log_alpha", 1e-12, "log_alpha must be <= 0"),
        ("alpha", 0.0, None),
        ("alpha", 1.0, None),
        ("alpha", -1e-12, r"alpha must lie in \[0, 1\]"),
        ("alpha", np.nan, "alpha contains NaN"),
    ],
)
def test_gate_checks_at_their_ends(request, rng, lazy, gate, value, message):
    """``Deferred.finite_within`` (one pass on CuPy for both verdicts): the same errors at the ends of each
    gate's interval as two separate checks give, deferred (simulated) or at once."""
    if lazy:
        request.getfixturevalue("simulated")
    Q, K, V = _qkv(rng)
    x = np.full((2, 12), {"beta": 0.5, "log_alpha": -0.1, "alpha": 0.5}[gate])
    x[1, 4] = value
    kw = {gate: x}
    if gate != "beta":
        kw["beta"] = np.full((2, 12), 0.5)
    else:  # (mamba2's weights are data-dependent: a gate is needed)
        kw["log_alpha"] = np.full((2, 12), -0.1)
    layer = tt.recipes.mamba2()
    if message is None:
        y = layer(Q, K, V, method="chunked", **kw)
        assert np.all(np.isfinite(y))
    else:
        with pytest.raises(ValueError, match=message):
            layer(Q, K, V, method="chunked", **kw)


@pytest.mark.gpu
@pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_within_kernel_matches_numpy(rng, dtype):
    import cupy

    intervals = [(-np.inf, 0.0, False, False), (0.0, np.inf, True, False), (0.0, 1.0, False, False),
                 (-1.0, 1.0, True, True)]  # fmt: skip
    for n in (1, 255, 257, 100_000):
        for lo, hi, lo_open, hi_open in intervals:
            for val in (None, lo, hi, np.nan, np.inf, -np.inf, 0.5 * (max(lo, -2) + min(hi, 2))):
                x = rng.uniform(max(lo, -2.0), min(hi, 2.0), n).astype(dtype)
                if val is not None:
                    x[int(rng.integers(n))] = val
                got = v._launch_within(cupy.asarray(x), lo, hi, lo_open, hi_open).get()
                ref = simulated_within(x, lo, hi, lo_open, hi_open)
                assert list(got) == list(ref), (n, lo, hi, lo_open, hi_open, val)
