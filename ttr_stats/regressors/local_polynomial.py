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

Singular designs (``ridge = 0`` and fewer than p + 1 distinct directions, e.g. t <= d_k for p = 1, or
coincident keys): the intercept is eliminated exactly and the coefficients B take the minimum-norm solution
of the centred normal equations (pseudo-inverse, eigenvalues below ``100 P eps`` times the largest
dropped); at t = 1, or on copies of one key, this is the NW value.

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
    Every method computes the same centred moments (:meth:`_centred`): with :math:`\hat w` the softmax
    weights, :math:`\bar v = \sum \hat w v`, :math:`\bar z = \sum \hat w z`,
    :math:`B = (C_{zz} + \lambda I)^{+} C_{zv}` from the :math:`\hat w`-weighted covariances, centred around
    each query's pair of largest weight so that every rounding is relative to the spread of the keys,
    :math:`m(q) = \bar v - B^\top\bar z`. ``"parallel"`` and ``"direct"`` do it for all queries at once,
    ``"recurrent"`` one query at a time on the growing cache. Coincident keys give a zero covariance and
    the Nadaraya-Watson value exactly; the numerical rank (ridge 0) is that of ``psd_solve``.

    References
    ----------
    Wang, Shi & Fox (2025), §5; Fan & Gijbels (1996), *Local polynomial modelling*; Zuo et al. (2025),
    Local Linear Attention, arXiv 2510.01450.
    """

    #: input dtypes it runs (eigendecompositions of the moment matrices: NumPy has no half-precision linalg)
    dtypes = ("float32", "float64")

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

    def work_dtype(self, xp, dtype):
        """The dtype the moments are accumulated and solved in: float64 for float32 inputs when
        ``order >= 1`` (see :func:`widened`), the input dtype otherwise."""
        return xp.float64 if int(self.order) >= 1 and dtype == xp.float32 else dtype

    def _blockwise(self, xp, fn, Q, K, V, logW):
        order = int(self.order)
        if order == 0:
            return xp.matmul(normalised_weights(xp, logW), V)
        if self.work_dtype(xp, Q.dtype) != Q.dtype:  # float32: the moments in float64, read back in float32
            Q64, K64, V64, L64 = (xp.astype(x, xp.float64) for x in (Q, K, V, logW))
            return xp.astype(self._blockwise(xp, fn, Q64, K64, V64, L64), Q.dtype)
        Tq, n, d = Q.shape[-2], K.shape[-2], K.shape[-1]
        P = n_coefficients(d, order)
        itemsize = 8 if Q.dtype == xp.float64 else 4
        batch = math.prod(logW.shape[:-2])
        free = _array.free_device_bytes(xp, _array.device(Q))  # on a GPU, blocks of up to 1/8 of free memory
        budget = max(BLOCK_BYTES, free // 8) if free is not None else BLOCK_BYTES
        out = [
            fn(xp, Q[..., a:b, :], K, V, logW[..., a:b, :])
            for a, b in self._blocks(Tq, n, P + V.shape[-1], itemsize, batch, budget)  # + the centred values
            if b > a
        ]
        if not out:
            return xp.zeros(logW.shape[:-1] + (V.shape[-1],), dtype=V.dtype)
        return xp.concat(out, axis=-2) if len(out) > 1 else out[0]

    def _coef_solve(self, xp, C, rhs):
        return _array.ridge_solve(xp, C, rhs, self.ridge)

    # --- the centred design, with rounding relative to the data -----------------------------------------
    def design_difference(self, xp, R, E):
        r""":math:`z(R + E) - z(R)`, offsets ``R`` (..., 1, d), differences ``E`` (..., n, d) -> (..., n, P).

        Each monomial difference is the telescoping sum
        :math:`\prod_l (r + e)_{j_l} - \prod_l r_{j_l} = \sum_m \prod_{l<m} (r + e)_{j_l}\, e_{j_m}
        \prod_{l>m} r_{j_l}`, so its rounding is relative to ``E`` (the spread of the keys), not to the
        offsets: ``E = 0`` gives exactly 0, and keys 1e-10 apart keep all their digits.
        """
        if int(self.order) == 1:
            return E
        D = R + E
        cols = []
        for r in range(1, int(self.order) + 1):
            for idx in itertools.combinations_with_replacement(range(E.shape[-1]), r):
                col = None
                for m in range(r):
                    term = E[..., idx[m]]
                    for j in idx[:m]:
                        term = D[..., j] * term
                    for j in idx[m + 1 :]:
                        term = term * R[..., j]
                    col = term if col is None else col + term
                cols.append(col)
        return xp.stack(cols, axis=-1)

    def _centred(self, xp, Q, K, logW):
        r"""Normalised weights, the mean design :math:`\bar z` (..., q, P), the centred design
        :math:`Z - \bar z` (..., q, n, P) and the one-hot rows of the reference pairs (..., q, n), computed
        around each query's reference pair.

        The reference pair r of a query is its pair of largest weight (the first one on ties); the design
        is written as :math:`z(d_r + e_i)` with :math:`e_i = k_i - k_r` (exact when keys are close) and
        :math:`d_r = k_r - q`, the weighted mean of :math:`z(d_r + e_i) - z(d_r)` is taken, and the
        centred design is the difference of the two. Every rounding is then relative to the spread of the
        keys: coincident keys give a centred design of exact zeros (a zero covariance, slope 0, the
        Nadaraya-Watson value), keys 1e-10 apart keep their digits, and a peaked softmax (logit scale 1e4)
        keeps the tiny weighted offsets of its dominant pair. (Centring at ``W @ K`` instead leaves a
        rounding residue of ``eps |k|`` in every row, which the pseudo-inverse read as a direction of
        spread: -9.2e15 instead of 1.1667 on four copies of one key.)
        """
        W = normalised_weights(xp, logW)
        n = K.shape[-2]
        if n == 0:
            H = W
        else:
            mx = xp.max(logW, axis=-1, keepdims=True)
            top = logW == mx
            first = top & (xp.cumulative_sum(xp.astype(top, xp.int32), axis=-1) == 1)
            # a row with no pair of positive weight has no reference (it reads 0, like Nadaraya-Watson)
            H = xp.astype(first & (mx > -math.inf), K.dtype)
        kref = xp.matmul(H, K)  # a one-hot product: the reference key, exactly
        E = K[..., None, :, :] - kref[..., :, None, :]  # (..., q, n, d)
        R = kref - Q  # the reference pair's offset
        dZ = self.design_difference(xp, R[..., None, :], E)  # (..., q, n, P)
        dbar = xp.matmul(W[..., None, :], dZ)[..., 0, :]
        zbar = (R if int(self.order) == 1 else self.design(xp, R)) + dbar
        return W, zbar, dZ - dbar[..., None, :], H

    # --- the definition: the centred weighted normal equations -----------------------------------------
    def solve(self, xp, Q, K, V, logW):
        return self._blockwise(xp, self._centred_moments, Q, K, V, logW)

    def _centred_moments(self, xp, Q, K, V, logW):
        r"""The intercept eliminated exactly by centring, :math:`B = (C_{zz} + \lambda I)^{+} C_{zv}`.

        The covariances are sums of per-pair products of the centred design and of the values centred at
        the reference pair's value (:math:`v_i - v_r`), so each is accurate relative to its own terms: a
        slope of values near 13 over keys 1e-10 apart keeps its digits (with uncentred values the
        cross-moment cancels 1e-9-sized terms to 1e-20 and the extrapolated answer lost 6e-5). The solve is
        the pseudo-inverse on the numerical rank (``psd_solve``: eigenvalues above ``100 P eps`` times the
        largest), or a definite solve for ``ridge > 0``. The explicit normal equations of
        :math:`[1, z(k - q)]` that this replaces cancel terms of size :math:`\|k - q\|^2` in the Schur
        complement and read rounding as spread.
        """
        W, zbar, Zc, H = self._centred(xp, Q, K, logW)
        vref = xp.matmul(H, V)  # the reference pair's value, exactly
        dV = V[..., None, :, :] - vref[..., :, None, :]  # (..., q, n, d_v)
        vbar = vref + xp.matmul(W[..., None, :], dV)[..., 0, :]
        ZcW_t = xp.matrix_transpose(Zc * W[..., None])  # (..., q, P, n)
        C = xp.matmul(ZcW_t, Zc)  # the W-weighted covariance, (..., q, P, P)
        Czv = xp.matmul(ZcW_t, dV)  # (..., q, P, d_v)
        B = self._coef_solve(xp, C, Czv)
        return vbar - xp.matmul(zbar[..., None, :], B)[..., 0, :]

    # --- the fast form ---------------------------------------------------------------------------------
    def parallel(self, xp, Q, K, V, logW):
        """The dense form of ``"parallel"``: the same centred moments for every query at once, in query
        blocks (the stable form is also the fast one: O(n P^2) per query and one P x P eigh)."""
        return self._blockwise(xp, self._centred_moments, Q, K, V, logW)

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
        if self.work_dtype(xp, Q.dtype) != Q.dtype:  # float32: in float64 (see ``widened``)
            Q64, K64, L64 = (xp.astype(x, xp.float64) for x in (Q, K, logW))
            return xp.astype(self.equivalent_kernel(xp, Q64, K64, L64), Q.dtype)
        W, zbar, Zc, _ = self._centred(xp, Q, K, logW)
        C = xp.matmul(xp.matrix_transpose(Zc * W[..., None]), Zc)
        rho = self._coef_solve(xp, C, zbar[..., None])  # (..., q, P, 1)
        return W * (1.0 - xp.matmul(Zc, rho)[..., 0])
