r"""Local polynomial regression: Nadaraya-Watson (p = 0), local linear (p = 1), local quadratic (p = 2) (P§5).

Near the query q the memory is a polynomial in the offset :math:`d = k - q`,
:math:`m(k) \approx a + B z(d)` with :math:`z(d)` the monomials of d of degree 1..p. All coefficients are
fitted jointly by weighted least squares with weights :math:`w_i = \Gamma_{ti}\, s(q, k_i)`, and retrieval
returns the intercept :math:`a = m(q)`:

.. math::

    \min_{a, B} \sum_i w_i \|v_i - a - B z(d_i)\|^2 + \lambda\,\omega\,\|B\|_F^2,\qquad \omega = \sum_i w_i.

The ridge acts on the non-intercept coefficients and is scaled by :math:`\omega` (the Local Linear
Attention convention, Zuo et al. 2025): :math:`\lambda\to\infty` gives Nadaraya-Watson (softmax attention),
:math:`\lambda = 0` reproduces polynomials of degree <= p exactly. Dividing by :math:`\omega` the problem only
sees the normalised weights :math:`\hat w = w/\omega`, so everything is computed from those.

Singular designs (``ridge = 0`` and fewer than p + 1 distinct directions, e.g. t <= d_k for p = 1): the
intercept is eliminated exactly and the coefficients B take the minimum-norm solution of the centred
normal equations (pseudo-inverse); at t = 1 this is the NW value :math:`v_1`.

Cost per query over n pairs: O(n P^2) with :math:`P = \binom{d+p}{p} - 1` coefficients (d for p = 1,
d + d(d+1)/2 for p = 2), plus an O(P^3) solve. Local quadratic attention with d_k = 64 has P = 2144:
use it on small key dimensions.
"""

from __future__ import annotations

import itertools
import math

from .. import _array
from .._validation import check_scalar
from ..similarity import ExpDot, Similarity
from .nonparametric import NonparametricRegressor, normalised_weights

__all__ = ["LocalPolynomial", "n_coefficients"]

#: bytes for the per-query-block intermediates (T_q x n x P arrays are processed in query blocks)
BLOCK_BYTES = 64 * 2**20


def n_coefficients(d, order):
    """Number of non-intercept coefficients of a full polynomial of degree ``order`` in ``d`` variables."""
    return math.comb(d + order, order) - 1


class LocalPolynomial(NonparametricRegressor):
    r"""Local polynomial regression of degree ``order``, evaluated at the query (the intercept).

    Parameters
    ----------
    order : int >= 0
        0: Nadaraya-Watson (softmax attention with :class:`~ttr_stats.similarity.ExpDot`); 1: local linear;
        2: local quadratic (full quadratic design, cross terms included).
    similarity : Similarity, default ExpDot()
        The kernel :math:`s(q, k)`; its ``qk_norm`` also normalises the design offsets.
    ridge : float >= 0
        :math:`\lambda`, the ridge on the non-intercept coefficients, scaled by :math:`\omega=\sum w`.

    Notes
    -----
    ``"parallel"`` uses the offset-softmax form: with :math:`\hat w` the softmax weights,
    :math:`\bar v = \sum \hat w v`, :math:`\bar z = \sum \hat w z`,
    :math:`B = C_{vz}(C_{zz} + \lambda I)^{-1}` from the :math:`\hat w`-weighted covariances (two-pass,
    centred), :math:`m(q) = \bar v - B\bar z`. ``"direct"`` and ``"recurrent"`` solve the normal equations
    of the explicit design :math:`X = [1, z(d)]` (block elimination of the intercept). The two agree to
    rounding for queries near their keys; far from them the normal equations lose
    :math:`\|d\|^2/\mathrm{spread}^2` digits, the two-pass form does not.

    References
    ----------
    Wang, Shi & Fox (2025), §5; Fan & Gijbels (1996), *Local polynomial modelling*; Zuo et al. (2025),
    Local Linear Attention, arXiv 2510.01450.
    """

    family = "kernel_smoother"

    def __init__(self, order=1, similarity=None, ridge=0.0):
        self.order = order
        self.similarity = ExpDot() if similarity is None else similarity
        self.ridge = ridge

    def _validate(self):
        check_scalar("order", self.order, low=0, integer=True)
        check_scalar("ridge", self.ridge, low=0.0)
        if not isinstance(self.similarity, Similarity):
            raise TypeError(f"similarity must be a ttr_stats.similarity.Similarity, got {self.similarity!r}")
        self.similarity._validate()

    def log_similarity(self, xp, Q, K):
        return self.similarity.log_weights(xp, Q, K)

    # --- design -----------------------------------------------------------------------------------
    def design(self, xp, D):
        """Monomials of degree 1..order of the offsets D (..., d) -> (..., P), degree-major order."""
        order = int(self.order)
        d = D.shape[-1]
        if order == 1:
            return D
        cols = []
        for r in range(1, order + 1):
            for idx in itertools.combinations_with_replacement(range(d), r):
                c = D[..., idx[0]]
                for j in idx[1:]:
                    c = c * D[..., j]
                cols.append(c)
        return xp.stack(cols, axis=-1)

    def _blocks(self, Tq, n, P, itemsize, batch=1, budget=BLOCK_BYTES):
        per_query = max(1, batch * n * (P + 1) * itemsize * 3)
        size = max(1, budget // per_query)
        return [(s, min(Tq, s + size)) for s in range(0, Tq, size)] or [(0, 0)]

    def _blockwise(self, xp, fn, Q, K, V, logW):
        order = int(self.order)
        if order == 0:
            return xp.matmul(normalised_weights(xp, logW), V)
        Tq, n, d = Q.shape[-2], K.shape[-2], K.shape[-1]
        P = n_coefficients(d, order)
        itemsize = 8 if Q.dtype == xp.float64 else 4
        batch = math.prod(logW.shape[:-2])
        free = _array.free_device_bytes(xp)  # on a GPU, blocks of up to 1/8 of free memory
        budget = max(BLOCK_BYTES, free // 8) if free is not None else BLOCK_BYTES
        out = [
            fn(xp, Q[..., a:b, :], K, V, logW[..., a:b, :])
            for a, b in self._blocks(Tq, n, P, itemsize, batch, budget)
            if b > a
        ]
        if not out:
            return xp.zeros(logW.shape[:-1] + (V.shape[-1],), dtype=V.dtype)
        return xp.concat(out, axis=-2) if len(out) > 1 else out[0]

    def _coef_solve(self, xp, C, rhs):
        return _array.ridge_solve(xp, C, rhs, self.ridge)

    # --- the definition: normal equations of the explicit design ------------------------------------
    def solve(self, xp, Q, K, V, logW):
        return self._blockwise(xp, self._normal_equations, Q, K, V, logW)

    def _normal_equations(self, xp, Q, K, V, logW):
        W = normalised_weights(xp, logW)  # (..., q, n); omega = 1 after normalising
        Z = self.design(xp, K[..., None, :, :] - Q[..., :, None, :])  # (..., q, n, P)
        X = xp.concat([xp.ones(Z.shape[:-1] + (1,), dtype=Z.dtype), Z], axis=-1)
        # X^T W X and X^T W V as batched matmuls (an einsum may materialise (..., q, n, P, P) on some
        # libraries)
        XtW = xp.matrix_transpose(X * W[..., None])  # (..., q, P+1, n)
        A = xp.matmul(XtW, X)
        Bv = xp.matmul(XtW, V[..., None, :, :])
        # A11 = sum of the normalised weights: 1, or 0 for a query with no pair of positive weight (an
        # empty cache, a length-0 sequence); that query reads 0, like Nadaraya-Watson's all-zero weights
        some = A[..., 0, 0] > 0
        A11 = xp.where(some, A[..., 0, 0], xp.ones((), dtype=A.dtype))
        A12 = A[..., 0, 1:]
        # eliminate the intercept: Schur complement of A11 (the centred normal equations)
        S = A[..., 1:, 1:] - A12[..., :, None] * A12[..., None, :] / A11[..., None, None]
        rhs = Bv[..., 1:, :] - A12[..., :, None] * Bv[..., 0:1, :] / A11[..., None, None]
        coef = self._coef_solve(xp, S, rhs)  # (..., q, P, d_v)
        y = (Bv[..., 0, :] - xp.matmul(A12[..., None, :], coef)[..., 0, :]) / A11[..., None]
        return xp.where(some[..., None], y, xp.zeros((), dtype=y.dtype))

    # --- the fast form: offset softmax, centred two-pass moments -------------------------------------
    def parallel(self, xp, Q, K, V, logW):
        return self._blockwise(xp, self._offset_softmax, Q, K, V, logW)

    def _centred(self, xp, Q, K, logW):
        W = normalised_weights(xp, logW)
        if int(self.order) == 1:
            kbar = xp.matmul(W, K)  # the offsets' mean is kbar - q; centred offsets are k - kbar
            zbar = kbar - Q
            Zc = K[..., None, :, :] - kbar[..., :, None, :]
        else:
            Z = self.design(xp, K[..., None, :, :] - Q[..., :, None, :])
            zbar = xp.matmul(W[..., None, :], Z)[..., 0, :]
            Zc = Z - zbar[..., :, None, :]
        ZcW_t = xp.matrix_transpose(Zc * W[..., None])  # (..., q, P, n)
        C = xp.matmul(ZcW_t, Zc)  # the W-weighted covariance, (..., q, P, P)
        return W, zbar, Zc, C, ZcW_t

    def _offset_softmax(self, xp, Q, K, V, logW):
        W, zbar, Zc, C, ZcW_t = self._centred(xp, Q, K, logW)
        vbar = xp.matmul(W, V)
        Cvz_t = xp.matmul(ZcW_t, V[..., None, :, :])  # C_vz^T, (..., q, P, d_v)
        B_t = self._coef_solve(xp, C, Cvz_t)
        return vbar - xp.matmul(zbar[..., None, :], B_t)[..., 0, :]

    # --- the equivalent kernel (smoother rows) -------------------------------------------------------
    def equivalent_kernel(self, xp, Q, K, logW):
        r"""Weights :math:`\ell_{ti}` with :math:`m(q_t) = \sum_i \ell_{ti} v_i` (the smoother matrix rows).

        :math:`\ell_i = \hat w_i\,(1 - (z_i - \bar z)^\top (C_{zz} + \lambda I)^{-1}\bar z)`; for p = 0 the
        softmax weights. Rows sum to 1 (the estimator reproduces constants).

        Returns
        -------
        array of shape (..., T_q, n)
        """
        if int(self.order) == 0:
            return normalised_weights(xp, logW)
        W, zbar, Zc, C, _ = self._centred(xp, Q, K, logW)
        rho = self._coef_solve(xp, C, zbar[..., None])  # (..., q, P, 1)
        return W * (1.0 - xp.matmul(Zc, rho)[..., 0])
