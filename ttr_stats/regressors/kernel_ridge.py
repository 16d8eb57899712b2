r"""Kernel ridge regression at test time (P§2):
:math:`m(q) = V^\top (\kappa(K,K) + \lambda I)^{-1}\kappa(K, q)`.

The infinite-feature-map member of the taxonomy (kernel regression, Skyformer, SOFT). With
:math:`\kappa(K, K) \approx I` and :math:`\kappa = \exp(k^\top q/\sqrt d)` it becomes *unnormalised* softmax
attention. Causal evaluation solves the problem on every prefix; the prefix Gram matrices are the leading
blocks of the full one, and so are their Cholesky factors, which is what every method exploits.
"""

from __future__ import annotations

import math

from .. import _array
from .._validation import check_scalar
from ..similarity import sq_distances
from .nonparametric import CacheState, NonparametricRegressor

__all__ = ["KernelRidge", "KERNELS", "kernel_matrix"]

KERNELS = ("rbf", "gaussian", "laplacian", "exp-dot", "polynomial", "linear")


def kernel_matrix(xp, X, Y, kernel, *, gamma=None, degree=3, coef0=1.0):
    r"""Kernel matrix :math:`\kappa(x_i, y_j)` of shape (..., n_x, n_y), scikit-learn's conventions.

    ``rbf``/``gaussian``: :math:`\exp(-\gamma\|x-y\|^2)`; ``laplacian``: :math:`\exp(-\gamma\|x-y\|_1)`;
    ``exp-dot``: :math:`\exp(\gamma x^\top y)` (default :math:`\gamma = d^{-1/2}`, softmax's logits);
    ``polynomial``: :math:`(\gamma x^\top y + c_0)^{\mathrm{degree}}`; ``linear``: :math:`x^\top y`.
    ``gamma=None`` means 1/d except for exp-dot.
    """
    d = X.shape[-1]
    if kernel in ("rbf", "gaussian"):
        g = 1.0 / d if gamma is None else float(gamma)
        return xp.exp(-g * sq_distances(xp, X, Y))
    if kernel == "laplacian":  # L1 distances need the explicit differences: O(n_x n_y d) memory
        g = 1.0 / d if gamma is None else float(gamma)
        return xp.exp(-g * xp.sum(xp.abs(X[..., :, None, :] - Y[..., None, :, :]), axis=-1))
    dot = xp.matmul(X, xp.matrix_transpose(Y))
    if kernel == "exp-dot":
        return xp.exp((1.0 / math.sqrt(d) if gamma is None else float(gamma)) * dot)
    if kernel == "polynomial":
        g = 1.0 / d if gamma is None else float(gamma)
        return (g * dot + float(coef0)) ** int(degree)
    if kernel == "linear":
        return dot
    raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


class KernelRidge(NonparametricRegressor):
    r"""Kernel ridge regression on every prefix (uniform weights).

    Parameters
    ----------
    kernel : {"rbf", "gaussian", "laplacian", "exp-dot", "polynomial", "linear"}
    ridge : float > 0
        :math:`\lambda` (scikit-learn's ``alpha``); positive so the prefix systems are definite.
    gamma, degree, coef0
        Kernel parameters, as in :func:`sklearn.metrics.pairwise.pairwise_kernels`.

    Notes
    -----
    Methods: ``"recurrent"`` grows the Cholesky factor of :math:`\kappa_t + \lambda I` by one row a step
    (O(t^2) per step: :math:`\ell = L_{t-1}^{-1}\kappa(K_{<t}, k_t)`,
    :math:`L_{tt} = (\kappa(k_t,k_t) + \lambda - \|\ell\|^2)^{1/2}`); ``"direct"`` solves each prefix system
    afresh (O(T^4) in all: the definition); ``"parallel"`` factors the full Gram matrix once and obtains
    every prefix solution from masked triangular solves (O(T^3)). No intercept, like scikit-learn's
    ``KernelRidge``. Uniform weights only: decay would change every prefix system, not just extend it.
    """

    supports_gates = False
    supports_window = False

    def __init__(self, kernel="rbf", ridge=1e-3, gamma=None, degree=3, coef0=1.0):
        self.kernel = kernel
        self.ridge = ridge
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0

    def _validate(self):
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {self.kernel!r}")
        check_scalar("ridge", self.ridge, low=0.0, low_inclusive=False)
        if self.gamma is not None:
            check_scalar("gamma", self.gamma, low=0.0, low_inclusive=False)
        check_scalar("degree", self.degree, low=1, integer=True)
        check_scalar("coef0", self.coef0)

    def kern(self, xp, X, Y):
        return kernel_matrix(xp, X, Y, self.kernel, gamma=self.gamma, degree=self.degree, coef0=self.coef0)

    def _gram(self, xp, K):
        n = K.shape[-2]
        return self.kern(xp, K, K) + float(self.ridge) * xp.eye(n, dtype=K.dtype)

    def _check_pd(self, xp, L):
        if not bool(xp.all(xp.isfinite(L))):
            raise FloatingPointError(
                f"ridge: the Gram matrix of the {self.kernel!r} kernel plus ridge={self.ridge} is not "
                "numerically positive definite (Cholesky failed); increase ridge"
            )

    def run(self, method, P, *, causal=True):
        xp = P.xp
        if not causal:
            Y = self.read(xp, CacheState(P.K, P.V, None), P.Q)
        elif method == "parallel":
            Y = self._parallel(xp, P)
        elif method == "direct":
            Y = self._direct(xp, P)
        else:
            Y = self._recurrent(xp, P)
        return Y, CacheState(P.K, P.V, xp.zeros(P.K.shape[:-1], dtype=P.dtype))

    def _parallel(self, xp, P):
        T = P.T
        if T == 0:
            return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype)
        with _array.quiet_overflow(xp):
            L = _array.cholesky(xp, self._gram(xp, P.K))
        self._check_pd(xp, L)
        Z = _array.solve_triangular(xp, L, P.V)  # L^{-1} V: its first t rows are L_t^{-1} V_t
        idx = xp.arange(T)
        causal = idx[:, None] <= idx[None, :]  # [i, t]: pair i is visible to query t
        zero = xp.zeros((), dtype=P.dtype)
        C = xp.where(causal, self.kern(xp, P.K, P.Q), zero)  # column t = kappa(K, q_t), rows i <= t
        U = xp.where(causal, _array.solve_triangular(xp, L, C), zero)
        return xp.matmul(xp.matrix_transpose(U), Z)

    def _direct(self, xp, P):
        G = self._gram(xp, P.K)
        ys = []
        for t in range(P.T):
            Gt = G[..., : t + 1, : t + 1]
            alpha = _array.pd_solve(xp, Gt, P.V[..., : t + 1, :])
            c = self.kern(xp, P.Q[..., t : t + 1, :], P.K[..., : t + 1, :])  # (..., 1, t+1)
            ys.append(xp.matmul(c, alpha)[..., 0, :])
        if not ys:
            return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype)
        return xp.stack(ys, axis=-2)

    def _recurrent(self, xp, P):
        T, lam = P.T, float(self.ridge)
        L = xp.zeros(P.batch_shape + (T, T), dtype=P.dtype)
        Z = xp.zeros(P.batch_shape + (T, P.d_v), dtype=P.dtype)
        ys = []
        for t in range(T):
            k = P.K[..., t : t + 1, :]
            ktt = self.kern(xp, k, k)[..., 0, 0] + lam
            if t:
                c = self.kern(xp, P.K[..., :t, :], k)  # (..., t, 1)
                ell = _array.solve_triangular(xp, L[..., :t, :t], c)[..., 0]
                d2 = ktt - xp.sum(ell * ell, axis=-1)
                L[..., t, :t] = ell
                zt = P.V[..., t, :] - xp.matmul(ell[..., None, :], Z[..., :t, :])[..., 0, :]
            else:
                d2 = ktt
                zt = P.V[..., t, :]
            if not bool(xp.all(d2 > 0)):
                self._check_pd(xp, xp.asarray(math.nan))
            diag = xp.sqrt(d2)
            L[..., t, t] = diag
            Z[..., t, :] = zt / diag[..., None]
            u = _array.solve_triangular(
                xp, L[..., : t + 1, : t + 1], self.kern(xp, P.K[..., : t + 1, :], P.Q[..., t : t + 1, :])
            )
            ys.append(xp.matmul(xp.matrix_transpose(u), Z[..., : t + 1, :])[..., 0, :])
        if not ys:
            return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype)
        return xp.stack(ys, axis=-2)

    def read(self, xp, state, Q):
        """All queries against all cached pairs: :math:`\\kappa(Q, K)(\\kappa(K,K) + \\lambda I)^{-1} V`."""
        if state.K.shape[-2] == 0:
            return xp.zeros(Q.shape[:-1] + (state.V.shape[-1],), dtype=Q.dtype)
        alpha = _array.pd_solve(xp, self._gram(xp, state.K), state.V)
        return xp.matmul(self.kern(xp, Q, state.K), alpha)
