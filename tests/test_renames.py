"""One name per concept: renamed arguments keep their old public spelling with a FutureWarning and the same
result (exact equality: the same numbers reach the same code)."""

import numpy as np
import pytest
from conftest import make_qkv

import ttr_stats as tt


def test_leaky_lms_l2_is_the_old_decay(rng):
    Q, K, V = make_qkv(rng, T=12, d_k=3, d_v=2, unit=True)
    new = tt.recipes.leaky_lms(beta=0.5, l2=0.2)(Q, K, V)
    with pytest.warns(FutureWarning, match="decay= is renamed l2="):
        old = tt.recipes.leaky_lms(beta=0.5, decay=0.2)(Q, K, V)
    assert np.array_equal(new, old)
    with pytest.warns(FutureWarning, match="decay= is renamed l2="):  # the value travels as l2 from here on
        layer = tt.recipes.leaky_lms(decay=-0.1)
    assert layer.optimizer.get_params() == {"beta": 1.0, "l2": -0.1}
    with pytest.raises(ValueError, match="^l2 must be >= 0"):
        layer(Q, K, V)
    with pytest.raises(ValueError, match="^l2 must be >= 0"):
        tt.recipes.leaky_lms(l2=-0.1)(Q, K, V)


def test_ttt_batch_size_is_the_old_mini_batch(rng):
    Q, K, V = make_qkv(rng, T=10, d_k=3, d_v=3)
    new = tt.recipes.ttt_linear(lr=0.3, batch_size=4)(Q, K, V)
    with pytest.warns(FutureWarning, match="mini_batch= is renamed batch_size="):
        old = tt.recipes.ttt_linear(lr=0.3, mini_batch=4)(Q, K, V)
    assert np.array_equal(new, old)
    with pytest.warns(FutureWarning), pytest.raises(ValueError, match="^mini_batch must be >= 1"):
        tt.recipes.ttt_mlp(mini_batch=0)
    with pytest.raises(ValueError, match="^batch_size must be >= 1"):
        tt.recipes.ttt_mlp(batch_size=0)


def test_titans_weight_decay_is_the_old_decay(rng):
    Q, K, V = make_qkv(rng, T=8, d_k=3, d_v=3, unit=True)
    new = tt.recipes.titans(weight_decay=0.05, hidden=5)(Q, K, V)
    with pytest.warns(FutureWarning, match="decay= is renamed weight_decay="):
        old = tt.recipes.titans(decay=0.05, hidden=5)(Q, K, V)
    assert np.array_equal(new, old)
