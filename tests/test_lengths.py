"""``lengths=`` beyond the registry-wide suite (tests/test_registry.py): the pieces its fixes rely on.

* A non-causal call of a nonparametric layer reads every query from the final memory: its T_q queries are
  not tokens, so ``lengths`` removes padded *pairs* only and must not zero outputs by query index.
* RLS's update with write strength b = 0 (a padded step) is an exact no-op, bit for bit, also for a
  nonzero key (the gain is b P k / (gamma + b k^T P k), never gamma / b).
* Reads of a cache ignore pairs of log-weight -inf, whatever garbage they hold; a cache with no kept pair
  reads 0.
"""

import numpy as np
import pytest

import ttr_stats as tt

NONPARAMETRIC = ["kernel_regression", "softmax_attention", "local_linear_attention"]


def _unit(rng, shape):
    x = rng.standard_normal(shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("name", NONPARAMETRIC)
def test_non_causal_lengths_drop_pairs_not_queries(name, rng):
    layer = getattr(tt.recipes, name)()
    K, Q = _unit(rng, (2, 10, 4)), _unit(rng, (2, 13, 4))
    V = rng.standard_normal((2, 10, 3))
    for method in layer.supported_methods:
        Y = layer(Q, K, V, causal=False, lengths=np.array([10, 4]), method=method)
        alone = layer(Q[1], K[1, :4], V[1, :4], causal=False, method=method)
        # 1e-12 relative: the same 4 pairs; the 6 excluded ones enter as exact zeros (replaced with
        # where), so only BLAS blocking of the longer reductions differs (measured ~1e-15)
        err = np.linalg.norm(Y[1] - alone) / np.linalg.norm(alone)
        assert err < 1e-12, (name, method, err)
        # no query is padding in a non-causal call: the ones past the length read the memory too
        assert np.all(np.abs(Y[1, 4:]) > 0), (name, method)


def test_rls_update_with_zero_strength_is_an_exact_no_op(rng):
    opt = tt.optimizers.RecursiveLeastSquares(ridge=1e-2)
    state = opt.init(np, (3,), 5, 2, np.float64)
    for _ in range(6):
        k, v = rng.standard_normal((3, 5)), rng.standard_normal((3, 2))
        state = opt.update(state, k, v, np.full((3, 1), 0.9), np.full(3, 0.7))
    with np.errstate(all="raise"):  # no division by zero on the way
        for k in (np.zeros((3, 5)), 1e3 * rng.standard_normal((3, 5))):
            after = opt.update(state, k, rng.standard_normal((3, 2)), np.ones((3, 1)), np.zeros(3))
            for field, a, b in zip(state._fields, after, state, strict=True):
                assert np.array_equal(a, b), field  # exact: g = 0, P symmetric already


@pytest.mark.parametrize("name", NONPARAMETRIC)
def test_reads_leave_out_pairs_of_log_weight_minus_inf(name, rng):
    layer = getattr(tt.recipes, name)()
    K, V = _unit(rng, (6, 4)), rng.standard_normal((6, 3))
    own = layer.memorize(K[:4], V[:4])
    # two extra pairs of garbage (huge finite keys and values) with log-weight -inf
    Kx = np.concatenate([own.K, 1e300 * np.ones((2, 4))])
    Vx = np.concatenate([own.V, -1e300 * np.ones((2, 3))])
    lw = np.concatenate([own.log_weight, [-np.inf, -np.inf]])
    padded = type(own)(Kx, Vx, lw)
    probe = _unit(rng, (5, 4))
    with np.errstate(over="ignore", invalid="ignore"):  # the garbage overflows where it is replaced
        got = layer.read(padded, probe)
        none = layer.read(type(own)(Kx, Vx, np.full(6, -np.inf)), probe)
    ref = layer.read(own, probe)
    # 1e-12 relative, as above: the kept pairs alone, the excluded ones as exact zeros
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-12, name
    assert np.array_equal(none, np.zeros_like(none)), name  # no kept pair: the empty memory's 0


def _windowed_layers():
    w, o = tt.weights, tt.optimizers
    return {
        "linear-window": tt.TestTimeRegression(weights=w.SlidingWindow(5), optimizer=o.IdentityCovariance()),
        "linear-window-sum": tt.TestTimeRegression(
            weights=w.SlidingWindow(5), optimizer=o.IdentityCovariance("sum")
        ),
        "gated-window": tt.TestTimeRegression(weights=w.GatedWindow(5, alpha=None),
                                              optimizer=o.IdentityCovariance()),  # fmt: skip
        "least-squares-window": tt.TestTimeRegression(weights=w.SlidingWindow(5),
                                                      optimizer=o.ClosedForm(ridge=1.0)),  # fmt: skip
    }


@pytest.mark.parametrize("name", list(_windowed_layers()))
def test_windowed_final_state_is_the_state_after_the_valid_tokens(name, rng):
    """Under a sliding window the padded steps are identities for the state's contents but would still
    move the window: the final state after T padded steps must be the state after ``lengths`` tokens
    (before the fix the dense and chunked forms returned a window emptied by the padding: M = 0), for
    every method, equal to each sequence run alone. 1e-12 relative: the same <= 5 pairs summed (or one
    ridge solve of a 4 x 4 system with ridge 1) in the same or another order."""
    layer = _windowed_layers()[name]
    T, lengths = 30, (30, 12, 20, 3)
    B = len(lengths)
    Q, K, V = (_unit(rng, (B, T, 4)) for _ in range(3))
    gates = {}
    if name == "gated-window":
        gates["log_alpha"] = -rng.uniform(0.0, 0.5, (B, T))
    for method in layer.supported_methods:
        Y, state = layer(Q, K, V, method=method, lengths=np.array(lengths), return_state=True, **gates)
        for i, L in enumerate(lengths):
            own_gates = {k: v[i, :L] for k, v in gates.items()}
            y, own = layer(Q[i, :L], K[i, :L], V[i, :L], method=method, return_state=True, **own_gates)
            assert np.max(np.abs(Y[i, :L] - y)) < 1e-12 * max(1.0, np.max(np.abs(y))), (method, i)
            assert np.all(Y[i, L:] == 0), (method, i)
            for field, a, b in zip(own._fields, state, own, strict=True):
                a = np.asarray(a)[i]
                assert np.max(np.abs(a - b)) <= 1e-12 * max(1.0, np.max(np.abs(b))), (method, i, field)
