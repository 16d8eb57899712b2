r"""Exact and covariance-free solutions of the weighted linear least-squares problem.

:class:`ClosedForm` solves :math:`M_t = S_t (R_t + \rho I)^{-1}` exactly (a Newton step from any start);
:class:`IdentityCovariance` replaces :math:`R_t` by the identity (linear attention and its gated variants).
"""

from __future__ import annotations

import math

from .. import _array
from .._validation import check_scalar
from .base import LinearAttentionState, Optimizer, SufficientStatistics, matvec, outer

__all__ = ["ClosedForm", "IdentityCovariance"]


class ClosedForm(Optimizer):
    r"""Exact weighted (ridge) least squares on every prefix.

    .. math::

        M_t = \arg\min_M \tfrac12 \sum_{i \le t} \gamma_i^{(t)} \|v_i - M k_i\|^2 + \tfrac{\rho}{2}\|M\|_F^2
            = S_t (R_t + \rho I)^{-1},

    :math:`R_t = \sum_i \gamma_i^{(t)} k_i k_i^\top`, :math:`S_t = \sum_i \gamma_i^{(t)} v_i k_i^\top`.

    Parameters
    ----------
    ridge : float >= 0
        :math:`\rho`. With ``ridge=0`` and a singular :math:`R_t` (``t < d_k``) the minimum-norm solution
        :math:`S_t R_t^{+}` is returned (pseudo-inverse by eigendecomposition; eigenvalues below
        ``100 d eps`` times the largest count as zero).

    Notes
    -----
    The ridge prior is fixed: under decay it does not fade, unlike :class:`RecursiveLeastSquares`.
    State: :class:`SufficientStatistics` ``(R, S)``; the recurrent method accumulates them and solves the
    d_k x d_k system at every step, O(T d^3).

    References
    ----------
    Wang, Shi & Fox (2025), §3 (OLS / weighted RLS rows; "one Newton step").
    """

    State = SufficientStatistics
    family = "least_squares"
    exact = True

    def __init__(self, ridge=0.0):
        self.ridge = ridge

    def _validate(self):
        check_scalar("ridge", self.ridge, low=0.0)

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        return SufficientStatistics(
            xp.zeros(tuple(batch_shape) + (d_k, d_k), dtype=dtype, device=device),
            xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),
        )

    def update(self, state, k, v, a, b):
        a2 = a[..., None]  # (..., 1, 1): scalar decay
        bb = b[..., None, None]
        return SufficientStatistics(a2 * state.R + bb * outer(k, k), a2 * state.S + bb * outer(v, k))

    def downdate(self, state, k, v, b):
        bb = b[..., None, None]
        return SufficientStatistics(state.R - bb * outer(k, k), state.S - bb * outer(v, k))

    def solve(self, xp, R, rhs):
        """``(R + ridge I)^{-1} rhs`` (minimum-norm when ridge = 0); R (..., d, d), rhs (..., d, m)."""
        return _array.ridge_solve(xp, R, rhs, self.ridge)

    def memory(self, state):
        xp = _array.namespace(state.R)
        # M = S (R + rho I)^{-1} = ((R + rho I)^{-1} S^T)^T since R is symmetric
        return xp.matrix_transpose(self.solve(xp, state.R, xp.matrix_transpose(state.S)))

    def read(self, state, q):
        xp = _array.namespace(q)
        R = state.R
        if math.prod(R.shape[:-2]) < math.prod(q.shape[:-1]):
            # more queries than memories (the scikit-learn facade): factor each memory once
            return matvec(xp, self.memory(state), q)
        x = self.solve(xp, R, q[..., None])
        return xp.matmul(state.S, x)[..., 0]


class IdentityCovariance(Optimizer):
    r"""The linear-attention approximation :math:`K^\top \Gamma K \approx I`.

    .. math:: M_t = \alpha_t M_{t-1} + \beta_t v_t k_t^\top,\qquad y_t = M_t q_t

    (per-dimension decay: :math:`M_t = M_{t-1}\mathrm{Diag}(\alpha_t) + \beta_t v_t k_t^\top`).
    Equals one batch gradient-descent step from 0 with step 1.

    Parameters
    ----------
    normalize : {None, "sum", "output"}
        ``"sum"`` divides by :math:`q_t^\top z_t`, :math:`z_t = \sum_i \gamma_i^{(t)} k_i`: Nadaraya-Watson
        with the linear kernel :math:`q^\top k` (meaningful for positive features; where the denominator
        is exactly 0 the output is 0). ``"output"`` rescales :math:`y_t` to unit norm (the output
        normalisation of the paper's Figure 2; a zero output stays 0).

    References
    ----------
    Wang, Shi & Fox (2025), §2 (linear attention, gated linear attention rows) and §3.
    """

    State = LinearAttentionState
    family = "identity"

    def __init__(self, normalize=None):
        self.normalize = normalize

    def _validate(self):
        if self.normalize not in (None, "sum", "output"):
            raise ValueError(f"normalize must be None, 'sum' or 'output', got {self.normalize!r}")

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        return LinearAttentionState(
            xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),
            xp.zeros(tuple(batch_shape) + (d_k,), dtype=dtype, device=device),
        )

    def update(self, state, k, v, a, b):
        bb = b[..., None]
        return LinearAttentionState(
            state.M * a[..., None, :] + bb[..., None] * outer(v, k), state.z * a + bb * k
        )

    def downdate(self, state, k, v, b):
        bb = b[..., None]
        return LinearAttentionState(state.M - bb[..., None] * outer(v, k), state.z - bb * k)

    def memory(self, state):
        if self.normalize is not None:
            raise ValueError(
                f"normalize={self.normalize!r} makes the read nonlinear in q: there is no memory matrix M; "
                "use read(state, q)"
            )
        return state.M

    def read(self, state, q):
        xp = _array.namespace(q)
        y = matvec(xp, state.M, q)
        return self.finish(xp, y, xp.sum(state.z * q, axis=-1))

    def finish(self, xp, y, denom):
        """Apply the normalisation to raw outputs ``y`` (..., d_v) given ``denom = q^T z`` (...)."""
        zero = xp.zeros((), dtype=y.dtype)
        if self.normalize == "sum":
            ok = denom != 0
            safe = xp.where(ok, denom, xp.ones((), dtype=y.dtype))
            return xp.where(ok[..., None], y / safe[..., None], zero)
        if self.normalize == "output":
            n = xp.linalg.vector_norm(y, axis=-1, keepdims=True)
            ok = n > 0
            return xp.where(ok, y / xp.where(ok, n, xp.ones((), dtype=y.dtype)), zero)
        return y
