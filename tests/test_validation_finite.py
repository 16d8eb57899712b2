"""The finiteness checks of ``_validation`` (one fused pass per array and one sync on CuPy).

The contract: a non-finite input raises ``ValueError`` naming the first offending argument in the order
given and saying whether it holds NaN or infinite values; empty arrays and ``None`` pass. On the host the
plain ``all(isfinite(x))`` test runs; on a GPU (skipped without CuPy and a device, before importing cupy)
the one-pass kernel must give the same verdict at every position of the array (the grid-stride loop's
first and last elements, a partial last block), for both dtypes, and fall back for the layouts and dtypes
it does not handle.
"""

import numpy as np
import pytest
from conftest import _cupy_available

import ttr_stats as tt
from ttr_stats import _validation as v


def _xp(name):
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp, np.asarray
    import array_api_compat.cupy as xp
    import cupy

    return xp, cupy.asarray


BACKENDS = [
    "numpy",
    pytest.param(
        "cupy", marks=[pytest.mark.gpu, pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")]
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_first_nonfinite_argument_is_named(backend, dtype):
    xp, put = _xp(backend)
    good = put(np.ones((3, 5), dtype=dtype))
    v.check_finite_all(xp, {"Q": good, "K": good, "V": good, "beta": None, "e": put(np.ones((0, 4), dtype))})
    for bad_name in ("Q", "K", "V"):
        for val, kind in ((np.nan, "NaN"), (np.inf, "infinite values"), (-np.inf, "infinite values")):
            arrays = {n: put(np.ones((3, 5), dtype=dtype)) for n in ("Q", "K", "V")}
            a = np.ones((3, 5), dtype=dtype)
            a[2, 4] = val
            arrays[bad_name] = put(a)
            with pytest.raises(ValueError, match=rf"^{bad_name} contains {kind}; every entry must be finite"):
                v.check_finite_all(xp, arrays)
            with pytest.raises(ValueError, match=rf"^{bad_name} contains {kind}"):
                v.check_finite(xp, bad_name, arrays[bad_name])
            assert not v.all_finite(xp, arrays[bad_name])
    # two bad arguments: the first in the given order is named
    a = np.ones((3, 5), dtype=dtype)
    a[0, 0] = np.nan
    with pytest.raises(ValueError, match="^K contains"):
        v.check_finite_all(xp, {"Q": good, "K": put(a), "V": put(a)})
    assert v.all_finite(xp, good) and v.all_finite(xp, put(np.ones((0,), dtype)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_layer_names_the_nonfinite_input(backend):
    xp, put = _xp(backend)
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 9, 4)) for _ in range(3))
    layer = tt.recipes.mamba2()
    la = -rng.uniform(0, 1, (2, 9))
    for name in ("Q", "K", "V", "log_alpha"):
        args = {"Q": Q.copy(), "K": K.copy(), "V": V.copy(), "log_alpha": la.copy()}
        args[name][1, -1] = np.inf
        with pytest.raises(ValueError, match=rf"^{name} contains infinite values"):
            layer(**{k: put(a) for k, a in args.items()})


gpu = pytest.mark.skipif(not _cupy_available(), reason="no CUDA device")


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_check_finds_one_bad_entry_anywhere(dtype):
    """One NaN or inf at the first, a middle and the last position of arrays of odd sizes (more elements
    than the grid's threads, so the grid-stride loop runs several rounds, and a partial block)."""
    import array_api_compat.cupy as xp
    import cupy

    for n in (1, 255, 257, 3 * 2**20 + 7):
        for pos in (0, n // 2, n - 1):
            for val in (np.nan, np.inf, -np.inf):
                x = cupy.zeros(n, dtype=dtype)
                x[pos] = val
                assert v._finite_flags(xp, [x]) == [False], (n, pos, val)
        assert v._finite_flags(xp, [cupy.zeros(n, dtype=dtype)]) == [True]


@gpu
@pytest.mark.gpu
def test_fused_check_falls_back_where_it_does_not_apply(monkeypatch):
    """Strided views and float16 are left to the plain test (flag None), with the same verdicts; and the
    plain test (FUSED_FINITE False) gives the fused one's verdicts."""
    import array_api_compat.cupy as xp
    import cupy

    a = cupy.ones((64, 64), dtype=cupy.float32)
    a[3, 6] = cupy.nan  # an even column: inside the strided view a[:, ::2] (column 7 was not: H200 run)
    view, half = a[:, ::2], a.astype(cupy.float16)
    assert v._finite_flags(xp, [view, half, a]) == [None, None, False]
    for x in (view, half):
        with pytest.raises(ValueError, match="^x contains NaN"):
            v.check_finite(xp, "x", x)
    assert v.all_finite(xp, a[:, 8:]) and not v.all_finite(xp, half)
    monkeypatch.setattr(v, "FUSED_FINITE", False)
    assert v._finite_flags(xp, [a]) == [None]
    with pytest.raises(ValueError, match="^x contains NaN"):
        v.check_finite(xp, "x", a)
