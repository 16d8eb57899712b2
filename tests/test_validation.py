"""Bad input gets a ValueError that names the argument; nothing is half-computed."""

import numpy as np
import pytest
from conftest import make_qkv

import ttr_stats as tt
from ttr_stats import optimizers as o
from ttr_stats import weights as w


@pytest.fixture
def qkv(rng):
    return make_qkv(rng, T=10, d_k=4, d_v=3)


@pytest.mark.parametrize("name", ["Q", "K", "V"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(qkv, name, bad):
    arrs = dict(zip("QKV", (a.copy() for a in qkv), strict=True))
    arrs[name][1, 3, 0] = bad
    with pytest.raises(ValueError, match=rf"^{name} contains"):
        tt.recipes.linear_attention()(arrs["Q"], arrs["K"], arrs["V"])


@pytest.mark.parametrize(
    "gate,value,match",
    [
        ("alpha", np.nan, "alpha contains NaN"),
        ("alpha", 1.5, r"alpha must lie in \[0, 1\]"),
        ("alpha", -0.1, r"alpha must lie in \[0, 1\]"),
        ("log_alpha", 0.1, "log_alpha must be <= 0"),
        ("log_alpha", -np.inf, "log_alpha contains infinite"),
        ("beta", 0.0, "beta must be > 0"),
        ("beta", -1.0, "beta must be > 0"),
        ("beta", np.inf, "beta contains infinite"),
    ],
)
def test_bad_gates(qkv, gate, value, match):
    g = np.full((2, 10), 0.5)
    g[0, 4] = value
    with pytest.raises(ValueError, match=match):
        tt.recipes.mamba2()(*qkv, **({"alpha": np.full((2, 10), 0.5)} if gate == "beta" else {}), **{gate: g})


def test_alpha_and_log_alpha_together(qkv):
    with pytest.raises(ValueError, match="alpha and log_alpha"):
        tt.recipes.mamba2()(*qkv, alpha=np.full(10, 0.5), log_alpha=np.full(10, -0.1))


def test_data_dependent_weights_need_gates(qkv):
    with pytest.raises(ValueError, match="^alpha: Gated weights are data-dependent"):
        tt.recipes.mamba2()(*qkv)


def test_gate_shapes(qkv):
    with pytest.raises(ValueError, match=r"alpha must have shape \(\.\.\., T\)"):
        tt.recipes.mamba2()(*qkv, alpha=np.full((2, 9), 0.5))
    with pytest.raises(ValueError, match=r"alpha must have shape \(\.\.\., T, d_k\)"):
        tt.recipes.gla()(*qkv, alpha=np.full((2, 10), 0.5))
    with pytest.raises(ValueError, match="beta must have shape"):
        tt.recipes.deltanet()(*qkv, beta=np.full((2, 11), 0.5))
    with pytest.raises(ValueError, match="batch dimensions do not broadcast: Q"):
        tt.recipes.mamba2()(*qkv, alpha=np.full((3, 10), 0.5))


def test_shape_mismatches(qkv):
    Q, K, V = qkv
    with pytest.raises(ValueError, match="^Q and K must share d_k"):
        tt.recipes.linear_attention()(Q[..., :3], K, V)
    with pytest.raises(ValueError, match="^K must have 10 time steps"):
        tt.recipes.linear_attention()(Q, K[..., :9, :], V)
    with pytest.raises(ValueError, match="^V must have the same number of time steps"):
        tt.recipes.linear_attention()(Q, K, V[..., :9, :])
    with pytest.raises(ValueError, match=r"batch dimensions do not broadcast: Q \(2,\), K \(3,\)"):
        tt.recipes.linear_attention()(Q, np.concatenate([K, K[:1]]), np.concatenate([V, V[:1]]))
    with pytest.raises(ValueError, match=r"^Q must have shape \(\.\.\., T, d_k\)"):
        tt.recipes.linear_attention()(Q[0, 0], K, V)
    with pytest.raises(ValueError, match="^K must have 20 time steps"):
        tt.recipes.delta_product(n_householder=2)(Q, K, V)


@pytest.mark.parametrize(
    "layer,match",
    [
        (tt.recipes.least_squares(ridge=-1.0), "^ridge must be >= 0"),
        (tt.recipes.rls(ridge=0.0), "^ridge must be > 0"),
        (tt.recipes.rls(forgetting=1.5), "^forgetting must be <= 1"),
        (tt.recipes.retnet(gamma=1.2), "^gamma must be <= 1"),
        (tt.recipes.deltanet(beta=0.0), "^beta must be > 0"),
        (tt.recipes.batch_gd(steps=0), "^steps must be >= 1"),
        (tt.recipes.batch_gd(steps=1.5), "^steps must be an integer"),
        (tt.recipes.batch_gd(lr=np.nan), "^lr must be finite"),
        (tt.recipes.longhorn(delta=-1), "^delta must be > 0"),
        (tt.recipes.leaky_lms(l2=-0.1), "^l2 must be >= 0"),
        (tt.recipes.linear_attention(normalize="l2"), "^normalize must be None"),
        (tt.TestTimeRegression(w.SlidingWindow(0), optimizer=o.IdentityCovariance()), "^width must be >= 1"),
    ],
)
def test_bad_hyperparameters(qkv, layer, match):
    with pytest.raises(ValueError, match=match):
        layer(*qkv)


def test_unsupported_combinations_raise_at_construction():
    with pytest.raises(ValueError, match="(?s)weights: SlidingWindow.*LMS.*optimizer"):
        tt.TestTimeRegression(w.SlidingWindow(4), optimizer=o.LMS())
    with pytest.raises(ValueError, match="(?s)per-dimension decay.*ClosedForm"):
        tt.TestTimeRegression(w.Gated(per_dimension=True), optimizer=o.ClosedForm())
    with pytest.raises(TypeError, match="optimizer must be"):
        tt.TestTimeRegression(optimizer="rls")


def test_unsupported_method_lists_the_supported_ones(qkv):
    with pytest.raises(ValueError, match="(?s)method='parallel' is not supported by LMS; supported: 'chunked', 'recurrent'"):
        tt.recipes.deltanet()(*qkv, method="parallel")
    with pytest.raises(ValueError, match="method must be one of"):
        tt.recipes.deltanet()(*qkv, method="chunky")


def test_rls_rejects_zero_decay(qkv):
    with pytest.raises(ValueError, match="^alpha: RecursiveLeastSquares divides by the decay"):
        tt.recipes.rls()(*qkv, alpha=np.zeros(10))


def test_sliding_window_takes_no_gates(qkv):
    layer = tt.TestTimeRegression(w.SlidingWindow(3), optimizer=o.ClosedForm(ridge=1.0))
    with pytest.raises(ValueError, match="^alpha: SlidingWindow weights take no decay gates"):
        layer(*qkv, alpha=np.full(10, 0.5))


def test_bad_initial_state(qkv):
    layer = tt.recipes.rls()
    with pytest.raises(ValueError, match="initial_state must be a RLSState"):
        layer(*qkv, initial_state=np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"initial_state.P must have shape \(\.\.\., 4, 4\)"):
        layer(*qkv, initial_state=o.RLSState(np.zeros((3, 4)), np.eye(3)))
    with pytest.raises(ValueError, match="initial_state.M contains NaN"):
        layer(*qkv, initial_state=o.RLSState(np.full((3, 4), np.nan), np.eye(4)))


def test_errors_leave_inputs_and_layer_untouched(qkv):
    Q, K, V = qkv
    copies = [a.copy() for a in qkv]
    layer = tt.recipes.mamba2()
    layer(Q, K, V, alpha=np.full(10, 0.9))
    assert layer.method_ == "parallel"
    with pytest.raises(ValueError):
        layer(Q, K, V, alpha=np.full(10, 1.5), method="recurrent")
    assert layer.method_ == "parallel"  # a failed call records nothing
    for a, c in zip(qkv, copies, strict=True):
        np.testing.assert_array_equal(a, c)


def test_diverging_delta_rule_raises_clearly(rng):
    """beta = 3 with unit keys: the transition I - 3 k k^T has eigenvalue -2, so ||M|| doubles per visit."""
    Q, K, V = make_qkv(rng, batch=(), T=4000, d_k=2, unit=True)
    with pytest.raises(FloatingPointError, match="diverged or overflowed"):
        tt.recipes.deltanet(beta=3.0)(Q, K, V)


def test_mixing_array_libraries_is_a_type_error(qkv):
    xps = pytest.importorskip("array_api_strict")  # a second array library that runs on the CPU
    Q, K, V = qkv
    with pytest.raises(TypeError, match="one array library"):
        tt.recipes.linear_attention()(xps.asarray(Q), K, V)
