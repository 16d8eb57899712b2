"""Dense weights for the dense methods (direct, parallel): built here, from the per-position log-gates, and
only by the methods that need them."""

from __future__ import annotations

from .. import _array
from ..weights import decay_matrix


def window_mask(xp, T, window, dtype):
    """``mask[t, i] = 1[t - i < window]`` of shape (T, T)."""
    idx = xp.arange(T)
    inside = (idx[:, None] - idx[None, :]) < window
    return xp.astype(inside, dtype)


def per_dimension_decay(xp, P):
    """E[..., t, i, d] = beta_i prod_{j=i+1}^t alpha_{j,d} (masked causal, windowed), shape (..., T, T, d)."""
    E = xp.exp(_array.segsum(xp, xp.moveaxis(P.g, -1, -2)))  # (..., d, T, T)
    E = xp.moveaxis(E, -3, -1)  # (..., T, T, d)
    if P.window is not None and P.window < P.T:
        E = E * window_mask(xp, P.T, P.window, P.dtype)[..., None]
    return E * P.b[..., None, :, None]


def scalar_decay(xp, P):
    """Gamma[..., t, i] of shape (..., T, T) for scalar decay."""
    return decay_matrix(xp, P.g[..., 0], P.b, P.window)


def initial_decay(xp, P):
    """c_t = prod_{j<=t} alpha_j, shape (..., T, 1) or (..., T, d_k)."""
    return xp.exp(xp.cumulative_sum(P.g, axis=-2))


def pair_sums(xp, W, A, B):
    r"""``out[..., t] = sum_i W[..., t, i] A_i B_i^T`` for A (..., T, m), B (..., T, n): (..., T, m, n).

    One matmul of W with the flattened outer products (memory O(T m n), no T x T x m x n product).
    """
    T, m, n = A.shape[-2], A.shape[-1], B.shape[-1]
    outer = xp.reshape(A[..., :, :, None] * B[..., :, None, :], A.shape[:-2] + (T, m * n))
    out = xp.matmul(W, outer)
    return xp.reshape(out, out.shape[:-1] + (m, n))


def parallel_bytes(P):
    """The T x T parallel form: the weights, the scores and a copy (per-dimension: one per d_k)."""
    per_dim = P.g.shape[-1] if P.g is not None else 1
    return P.n_batch * P.T * P.T * (per_dim + 2) * P.itemsize


def direct_bytes(P):
    """The direct prefix solve: the weights and the per-prefix statistics, O(T (T + d^2))."""
    per_dim = P.g.shape[-1] if P.g is not None else 1
    T, dk, dv = P.T, P.d_k, P.d_v
    return P.n_batch * T * (T * (per_dim + 1) + dk * dk + 2 * dv * dk) * P.itemsize


def state_bytes(P):
    """A loop's working set: a few copies of the state."""
    return P.n_batch * (P.d_k * P.d_k + P.d_v * P.d_k) * 4 * P.itemsize
