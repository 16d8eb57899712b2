"""Distances without the (n_x, n_y, d) difference tensor (issue 10): squared Euclidean by the shifted
``|x|^2 + |y|^2 - 2 x.y`` expansion (``sq_distances``) and L1 a few features at a time
(``l1_distances``, the Laplacian kernel's).

Tolerances: L1 sums the same |x - y| values as the explicit tensor, split over feature blocks: the
rounding of a sum of d non-negative terms, <= d eps relative (1e-13 asserted for d <= 100).
"""

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics.pairwise import laplacian_kernel

from ttr_stats import similarity
from ttr_stats.regressors.kernel_ridge import kernel_matrix


def explicit_l1(X, Y):
    return np.abs(X[..., :, None, :] - Y[..., None, :, :]).sum(-1)


@pytest.mark.parametrize("d", [1, 7, 100])
@pytest.mark.parametrize("block_bytes", [1, 10_000, None])
def test_l1_equals_the_explicit_differences(rng, d, block_bytes, monkeypatch):
    if block_bytes is not None:  # 1 byte: one feature per step; 10 kB: a few; None: the default (all)
        monkeypatch.setattr(similarity, "L1_BLOCK_BYTES", block_bytes)
    X, Y = rng.standard_normal((2, 3, 40, d)) * [[[1.0]], [[1e3]], [[1e-3]]]
    got = similarity.l1_distances(np, X, Y[..., :33, :])
    ref = explicit_l1(X, Y[..., :33, :])
    assert got.shape == (3, 40, 33)
    assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()


def test_l1_edge_shapes(rng):
    X = rng.standard_normal((5, 0))
    assert np.array_equal(similarity.l1_distances(np, X, X), np.zeros((5, 5)))
    Y = rng.standard_normal((0, 3))
    assert similarity.l1_distances(np, rng.standard_normal((4, 3)), Y).shape == (4, 0)


def test_laplacian_kernel_equals_sklearn(rng):
    X, Y = rng.standard_normal((2, 50, 6))
    got = kernel_matrix(np, X, Y, "laplacian", gamma=0.3)
    assert np.abs(got - laplacian_kernel(X, Y, gamma=0.3)).max() < 1e-14  # entries <= 1, a few eps


@pytest.mark.parametrize("fn", ["l1_distances", "sq_distances"])
def test_peak_memory_is_not_the_difference_tensor(rng, fn):
    """n = 1000 points in d = 64: the difference tensor would be 512 MB; the peak stays below a tenth."""
    X = rng.standard_normal((1000, 64))
    getattr(similarity, fn)(np, X[:8], X[:8])  # imports first
    tracemalloc.start()
    getattr(similarity, fn)(np, X, X)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1000 * 1000 * 64 * 8 / 10, peak / 2**20
