"""Every layer, method and the facade on every array namespace: NumPy, array_api_strict (CPU, catches
calls outside the standard) and CuPy (skipped without a GPU). Array type in = array type out, and the
numbers equal NumPy's.

Tolerances: float64 1e-11 relative -- the same algorithm on another linear-algebra library (LAPACK vs
cuSOLVER/cuBLAS) differs by cond * eps ~ 1e-13 on these well-conditioned inputs, and the singular local
designs cut their pseudo-inverse at 100 P eps, so 1e-11 leaves margin; float32 5e-5 relative -- eps 6e-8
times the same conditioning and the T-step accumulation (measured ~1e-6).
"""


import numpy as np
import pytest
from conftest import rel_err

import ttr_stats as tt
from ttr_stats import _array


def _case(info, rng, dtype=np.float64, B=2, T=14, d=4, d_v=3):
    layer = info.factory()
    n = layer.optimizer.steps_per_token
    Q = rng.standard_normal((B, T, d))
    K = rng.standard_normal((B, T * n, d))
    V = rng.standard_normal((B, T * n, d_v))
    Q /= np.linalg.norm(Q, axis=-1, keepdims=True)
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    gates = {}
    if info.name == "mamba2":
        gates = {"alpha": rng.uniform(0.5, 1, (B, T))}
    if info.name == "gla":
        gates = {"alpha": rng.uniform(0.5, 1, (B, T, d))}
    if info.name in ("rls", "least_squares"):
        layer.set_params(optimizer__ridge=1e-2)
    if info.name in ("local_linear_attention", "local_polynomial_attention"):
        layer.set_params(regressor__ridge=1e-2)
    cast = lambda a: a.astype(dtype)  # noqa: E731
    return layer, cast(Q), cast(K), cast(V), {k: cast(v) for k, v in gates.items()}


@pytest.mark.parametrize("info", tt.recipes.registry(), ids=lambda r: r.name)
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-11), (np.float32, 5e-5)], ids=["f64", "f32"])
def test_every_recipe_and_method_matches_numpy(backend, info, dtype, tol, rng):
    layer, Q, K, V, gates = _case(info, rng, dtype)
    for m in layer.supported_methods:
        ref, ref_state = layer(Q, K, V, method=m, return_state=True, **gates)
        out, state = layer(
            backend.put(Q), backend.put(K), backend.put(V), method=m, return_state=True,
            **{k: backend.put(v) for k, v in gates.items()},
        )
        assert backend.is_native(out), (m, type(out))
        assert out.dtype == backend.put(Q).dtype
        assert rel_err(backend.get(out), ref) < tol, m
        for a, b in zip(state, ref_state, strict=True):
            assert backend.is_native(a)
            assert rel_err(backend.get(a), b) < tol * 10, m  # states accumulate T steps: 10x margin


@pytest.mark.parametrize(
    "make",
    [
        lambda: tt.recipes.rls(ridge=1e-3),
        lambda: tt.recipes.deltanet(beta=0.1),
        lambda: tt.recipes.mesa(ridge=1.0),
        lambda: tt.recipes.local_linear_attention(ridge=0.1),
        lambda: tt.recipes.kernel_regression(),
    ],
    ids=["rls", "deltanet", "mesa", "local_linear", "kernel_ridge"],
)
def test_facade_keeps_the_array_library(backend, make, rng):
    X = rng.standard_normal((40, 4))
    y = X @ rng.standard_normal((4, 2)) + 0.1 * rng.standard_normal((40, 2))
    ref = tt.TestTimeRegressor(make()).fit(X, y)
    est = tt.TestTimeRegressor(make()).fit(backend.put(X), backend.put(y))
    pred = est.predict(backend.put(X[:7]))
    assert backend.is_native(pred)
    assert rel_err(backend.get(pred), ref.predict(X[:7])) < 1e-11
    # partial_fit continues the same memory
    inc = tt.TestTimeRegressor(make())
    inc.partial_fit(backend.put(X[:15]), backend.put(y[:15]))
    inc.partial_fit(backend.put(X[15:]), backend.put(y[15:]))
    assert rel_err(backend.get(inc.predict(backend.put(X[:7]))), ref.predict(X[:7])) < 1e-10
    if not est.layer_.nonparametric:
        assert backend.is_native(est.coef_)


def test_facade_device_validation_errors(backend, rng):
    if backend.name == "numpy":
        pytest.skip("NumPy goes through scikit-learn's validate_data (tested in test_estimator.py)")
    X = rng.standard_normal((10, 3))
    est = tt.TestTimeRegressor(tt.recipes.rls())
    with pytest.raises(ValueError, match="0 sample"):
        est.fit(backend.put(X[:0]), backend.put(X[:0, 0]))
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="^X contains NaN"):
        est.fit(backend.put(bad), backend.put(X[:, 0]))
    est.fit(backend.put(X), backend.put(X[:, 0]))
    with pytest.raises(ValueError, match="X has 2 features"):
        est.predict(backend.put(X[:, :2]))


def test_mixing_libraries_is_a_type_error(backend, rng):
    if backend.name == "numpy":
        pytest.skip("needs a second library")
    Q = rng.standard_normal((5, 3))
    with pytest.raises(TypeError, match="one array library"):
        tt.recipes.linear_attention()(backend.put(Q), Q, Q)


def test_weights_matrix_on_backend(backend, rng):
    a = rng.uniform(0, 1, (2, 6))
    G = tt.weights.Gated().matrix(6, alpha=backend.put(a))
    assert backend.is_native(G)
    np.testing.assert_allclose(backend.get(G), tt.weights.Gated().matrix(6, alpha=a), rtol=1e-14)


def test_dense_method_that_cannot_fit_fails_early_with_advice(rng, monkeypatch):
    """A device with too little free memory: MemoryError naming the batch and a cheaper method."""
    monkeypatch.setattr(_array, "free_device_bytes", lambda xp, device=None, **kw: 1000)  # 1 kB free
    Q = rng.standard_normal((3, 64, 8))
    layer = tt.recipes.linear_attention()
    with pytest.raises(MemoryError, match=r"(?s)method='parallel' needs about .* GiB.*split the batch.*method='recurrent'"):
        layer(Q, Q, Q, method="parallel")
    Y = layer(Q, Q, Q, method="recurrent")  # the loop's state fits: no check
    assert Y.shape == (3, 64, 8)


def test_show_config_reports_backends(capsys):
    info = tt.show_config()
    out = capsys.readouterr().out
    for key in ("numpy", "scipy", "sklearn", "array_api_compat", "cupy", "cuda_devices"):
        assert key in info and key in out
    assert info["numpy"] == np.__version__


def test_cli_info_and_recipes(capsys):
    from ttr_stats.cli import main

    assert main(["info"]) == 0
    assert "array_api_compat" in capsys.readouterr().out
    assert main(["recipes"]) == 0
    assert "`local_linear_attention()`" in capsys.readouterr().out
