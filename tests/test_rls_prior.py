"""A singular prior covariance (``initial_state``'s P) is refused by name in every RLS method, not passed
on as the linear-algebra library's own error (NumPy here; torch's and CuPy's carry the same name)."""

import numpy as np
import pytest

import ttr_stats as tt
from ttr_stats.optimizers import RLSState


@pytest.mark.parametrize("method", ["chunked", "recurrent", "direct"])
def test_a_singular_prior_covariance_names_initial_state(method):
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 37, 5)) for _ in range(3))
    s = RLSState(np.zeros((2, 5, 5)), np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match=r"initial_state: its P \(the prior covariance P_0\) is singular"):
        tt.recipes.rls(ridge=1.0)(Q, K, V, method=method, initial_state=s)


@pytest.mark.parametrize("method", ["chunked", "recurrent", "direct"])
def test_a_numerically_singular_prior_is_refused(method):
    """Rank one: LAPACK's solve finds a tiny pivot, not a zero one, so the prior precision is finite and
    huge; every method then refuses its prefix systems (FloatingPointError) rather than answer."""
    rng = np.random.default_rng(0)
    Q, K, V = (rng.standard_normal((2, 37, 5)) for _ in range(3))
    u = rng.standard_normal((2, 5, 1))
    s = RLSState(np.zeros((2, 5, 5)), u @ np.swapaxes(u, -1, -2))
    with pytest.raises((ValueError, FloatingPointError), match="singular"):
        tt.recipes.rls(ridge=1.0)(Q, K, V, method=method, initial_state=s)


def test_a_definite_prior_still_runs_and_the_methods_agree():
    rng = np.random.default_rng(1)
    Q, K, V = (rng.standard_normal((2, 37, 5)) for _ in range(3))
    A = rng.standard_normal((5, 5))
    s = RLSState(np.zeros((2, 5, 5)), np.broadcast_to(A @ A.T + np.eye(5), (2, 5, 5)).copy())
    layer = tt.recipes.rls(ridge=1.0)
    ref = layer(Q, K, V, method="recurrent", initial_state=s)
    got = layer(Q, K, V, method="chunked", initial_state=s)
    # float64, cond(P_0) ~ 30: the chunked and recurrent forms agree to ~1e-12; 1e-10 relative as elsewhere
    assert np.max(np.abs(got - ref)) <= 1e-10 * np.max(np.abs(ref))
