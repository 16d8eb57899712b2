r"""The direct method: solve every prefix from the regression definition with the dense weights Gamma.

For the linear class the prefix problem at t has sufficient statistics

.. math:: R_t = \sum_{i\le t} \Gamma_{ti} k_i k_i^\top + c_t R_0, \qquad
          S_t = \sum_{i\le t} \Gamma_{ti} v_i k_i^\top + c_t S_0,

with :math:`c_t = \prod_{j\le t}\alpha_j` decaying the initial state (for RLS, the prior
:math:`R_0 = P_0^{-1} = \rho I`). Each optimizer then finishes in closed form. Memory O(T (T + d^2)).
"""

from __future__ import annotations

from .. import _array
from ..optimizers import (
    BatchGradientDescent,
    ClosedForm,
    IdentityCovariance,
    LinearAttentionState,
    RecursiveLeastSquares,
    RLSState,
    SufficientStatistics,
)
from ..weights import decay_matrix
from .recurrent import initial_state


def _window_mask(xp, T, window, dtype):
    idx = xp.arange(T)
    inside = (idx[:, None] - idx[None, :]) < window
    return xp.astype(inside, dtype)


def per_dimension_decay(xp, P):
    """E[..., t, i, d] = beta_i prod_{j=i+1}^t alpha_{j,d} (masked causal, windowed), shape (..., T, T, d)."""
    E = xp.exp(_array.segsum(xp, xp.moveaxis(P.g, -1, -2)))  # (..., d, T, T)
    E = xp.moveaxis(E, -3, -1)  # (..., T, T, d)
    if P.window is not None and P.window < P.T:
        E = E * _window_mask(xp, P.T, P.window, P.dtype)[..., None]
    return E * P.b[..., None, :, None]


def scalar_decay(xp, P):
    """Gamma[..., t, i] of shape (..., T, T) for scalar decay."""
    return decay_matrix(xp, P.g[..., 0], P.b, P.window)


def initial_decay(xp, P):
    """c_t = prod_{j<=t} alpha_j, shape (..., T, 1) or (..., T, d_k)."""
    return xp.exp(xp.cumulative_sum(P.g, axis=-2))


def _pair_sums(xp, W, A, B):
    r"""``out[..., t] = sum_i W[..., t, i] A_i B_i^T`` for A (..., T, m), B (..., T, n): (..., T, m, n).

    One matmul of W with the flattened outer products (memory O(T m n), no T x T x m x n product).
    """
    T, m, n = A.shape[-2], A.shape[-1], B.shape[-1]
    outer = xp.reshape(A[..., :, :, None] * B[..., :, None, :], A.shape[:-2] + (T, m * n))
    out = xp.matmul(W, outer)
    return xp.reshape(out, out.shape[:-1] + (m, n))


def direct(opt, P):
    """Return ``(Y, final_state)`` by solving each prefix. Y: (*batch, T, d_v)."""
    xp = P.xp
    s0 = initial_state(opt, P)
    c = initial_decay(xp, P)
    q = P.Q[..., None]
    if isinstance(opt, IdentityCovariance):
        if P.g.shape[-1] > 1:
            E = per_dimension_decay(xp, P)  # (..., T, T, d)
            Ed = xp.moveaxis(E, -1, -3)  # (..., d, T, T)
            VK = P.V[..., None, :, :] * xp.moveaxis(P.K, -1, -2)[..., :, :, None]  # (..., d, T, d_v)
            M = xp.moveaxis(xp.matmul(Ed, VK), -3, -1)  # (..., T, d_v, d)
            z = xp.sum(E * P.K[..., None, :, :], axis=-2)
        else:
            W = scalar_decay(xp, P)
            M = _pair_sums(xp, W, P.V, P.K)
            z = xp.matmul(W, P.K)
        M = M + c[..., :, None, :] * s0.M[..., None, :, :]
        z = z + c * s0.z[..., None, :]
        y = xp.matmul(M, q)[..., 0]
        y = opt.finish(xp, y, xp.sum(z * P.Q, axis=-1))
        return y, LinearAttentionState(M[..., -1, :, :], z[..., -1, :]) if P.T else s0

    W = scalar_decay(xp, P)
    R = _pair_sums(xp, W, P.K, P.K)
    S = _pair_sums(xp, W, P.V, P.K)
    c2 = c[..., :, :, None]  # (..., T, 1, 1)
    if isinstance(opt, RecursiveLeastSquares):
        R0 = opt.prior_precision(s0)
        R = R + c2 * R0[..., None, :, :]
        S = S + c2 * xp.matmul(s0.M, R0)[..., None, :, :]
        y = xp.matmul(S, _array.pd_solve(xp, R, q))[..., 0]
        if not P.T:
            return y, s0
        RT, ST = R[..., -1, :, :], S[..., -1, :, :]
        d = P.d_k
        PT = _array.pd_solve(xp, RT, xp.broadcast_to(xp.eye(d, dtype=P.dtype), RT.shape))
        return y, RLSState(xp.matrix_transpose(_array.pd_solve(xp, RT, xp.matrix_transpose(ST))), PT)

    R = R + c2 * s0.R[..., None, :, :]
    S = S + c2 * s0.S[..., None, :, :]
    if isinstance(opt, ClosedForm):
        y = xp.matmul(S, opt.solve(xp, R, q))[..., 0]
    elif isinstance(opt, BatchGradientDescent):
        y = xp.matmul(opt.iterate(xp, R, S), q)[..., 0]
    else:  # pragma: no cover - guarded by Optimizer.methods
        raise NotImplementedError(f"no direct method for {type(opt).__name__}")
    final = SufficientStatistics(R[..., -1, :, :], S[..., -1, :, :]) if P.T else s0
    return y, final
