"""get_params / set_params / clone with nested names, and readable reprs, for layers and components."""

import numpy as np
import pytest
from conftest import make_qkv, rel_err
from sklearn.base import clone

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w


def test_nested_params_of_a_layer():
    layer = tt.TestTimeRegression(w.ExponentialDecay(0.95), tt.regressors.Linear(), o.ClosedForm(ridge=1e-2))
    p = layer.get_params()
    assert p["weights__gamma"] == 0.95 and p["optimizer__ridge"] == 1e-2
    layer.set_params(optimizer__ridge=0.5, weights__gamma=0.5)
    assert layer.optimizer.ridge == 0.5 and layer.weights.gamma == 0.5


@pytest.mark.parametrize("info", tt.recipes.registry(), ids=lambda r: r.name)
def test_clone_gives_an_equal_independent_layer(info, rng):
    layer = info.factory()
    twin = clone(layer)
    assert twin is not layer and twin.optimizer is not layer.optimizer
    assert repr(twin) == repr(layer)
    assert twin.get_params(deep=True).keys() == layer.get_params(deep=True).keys()
    # every optimizer hyperparameter is visible under optimizer__ for sweeps
    for name in type(layer.optimizer)().get_params():
        assert f"optimizer__{name}" in layer.get_params()


def test_set_params_changes_the_computation(rng):
    Q, K, V = make_qkv(rng, T=12)
    layer = tt.recipes.least_squares(ridge=1e-3)
    a = layer(Q, K, V)
    layer.set_params(optimizer__ridge=10.0)
    b = layer(Q, K, V)
    assert rel_err(a, b) > 0.1
    np.testing.assert_allclose(b, tt.recipes.least_squares(ridge=10.0)(Q, K, V), rtol=1e-14)


def test_set_params_to_an_invalid_value_fails_at_call(rng):
    layer = tt.recipes.least_squares()
    layer.set_params(optimizer__ridge=-1)
    with pytest.raises(ValueError, match="^ridge must be >= 0"):
        layer(*make_qkv(rng, T=4))


def test_readable_repr():
    flat = lambda x: " ".join(repr(x).split())
    assert flat(tt.recipes.gated_deltanet(alpha=0.9, beta=0.5)) == (
        "TestTimeRegression(optimizer=LMS(beta=0.5), regressor=Linear(), weights=Gated(alpha=0.9))"
    )
    assert flat(tt.recipes.rls(ridge=1e-3)) == (
        "TestTimeRegression(optimizer=RecursiveLeastSquares(ridge=0.001), regressor=Linear(), weights=Uniform())"
    )


def test_components_swap_by_set_params(rng):
    Q, K, V = make_qkv(rng, T=10)
    layer = tt.recipes.linear_attention()
    layer.set_params(optimizer=o.ClosedForm(ridge=0.1))
    np.testing.assert_allclose(layer(Q, K, V), tt.recipes.least_squares(ridge=0.1)(Q, K, V), rtol=1e-14)
