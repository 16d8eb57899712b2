"""Half precision: every recipe and method either runs float16 inputs (elementwise updates and matmuls:
within float16's rounding of float64) or refuses them up front with a TypeError that names the dtype and
the remedy; never a raw linear-algebra error, a misleading "singular" message or a silent upcast.

Tolerance for the ones that run: 2e-2 of max |y| against float64 on the same (float16-rounded) inputs.
float16 has eps = 9.8e-4; over T = 20 steps of sums of O(1) terms the measured worst was 2e-3; 2e-2
leaves an order of magnitude and still catches any wrong term (an O(1) error).
"""

import numpy as np
import pytest

import ttr_stats as tt

# several rows a token (DeltaProduct, GDN-2, RWKV-7) need T n keys: their steps are the same updates
RECIPES = [r for r in tt.recipes.registry() if int(getattr(r.optimizer, "steps_per_token", 1)) == 1]


def _gates(layer, shape):
    if type(layer.weights).__name__ != "Gated":
        return {}
    return {"alpha": np.full(shape + ((4,) if layer.weights.per_dimension else ()), 0.9)}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_float16_runs_or_is_refused_clearly(recipe):
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 20, 4)) for _ in range(3))
    K /= np.linalg.norm(K, axis=-1, keepdims=True)
    Q16, K16, V16 = (x.astype(np.float16) for x in (Q, K, V))
    layer = recipe.factory()
    g = _gates(layer, (2, 20))
    for method in ("auto", *layer.supported_methods):
        try:
            y = layer(Q16, K16, V16, method=method, **{k: v.astype(np.float16) for k, v in g.items()})
        except TypeError as exc:
            msg = str(exc)
            assert "float16" in msg and "float32" in msg and "astype" in msg, (recipe.name, method, msg)
            continue
        assert y.dtype == np.float16, (recipe.name, method, y.dtype)
        ref = layer(*(x.astype(np.float64) for x in (Q16, K16, V16)), method=method, **g)
        err = np.max(np.abs(y.astype(np.float64) - ref)) / np.max(np.abs(ref))
        assert err < 2e-2, (recipe.name, method, err)


def test_the_refusal_points_to_a_method_that_runs_half():
    rng = np.random.default_rng(1)
    Q, K, V = (rng.standard_normal((10, 3)).astype(np.float16) for _ in range(3))
    with pytest.raises(TypeError, match=r"^method='chunked' computes in float32 or float64; these inputs are "
                       r"float16: .*method='recurrent', which runs float16"):  # fmt: skip
        tt.recipes.rls()(Q, K, V, method="chunked")
    with pytest.raises(TypeError, match=r"^LocalPolynomial computes in float32 or float64; these inputs are "
                       r"float16"):  # fmt: skip
        tt.recipes.local_linear_attention()(Q, K, V)
    y = tt.recipes.rls()(Q, K, V)  # auto: the loop, computed in float64 and cast back
    assert y.dtype == np.float16 and np.all(np.isfinite(y))
