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
from ..similarity import l1_distances, sq_distances
from .nonparametric import NonparametricRegressor

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
    if d < 1 and gamma is None and kernel != "linear":  # the default gamma is 1/d or d^-1/2
        raise ValueError(
            f"K and Q must have d_k >= 1 features for kernel={kernel!r} with gamma=None, got d_k = {d}"
        )
    if kernel in ("rbf", "gaussian"):
        g = 1.0 / d if gamma is None else float(gamma)
        return xp.exp(-g * sq_distances(xp, X, Y))
    if kernel == "laplacian":  # L1 distances a few features at a time: no (n_x, n_y, d) tensor
        g = 1.0 / d if gamma is None else float(gamma)
        return xp.exp(-g * l1_distances(xp, X, Y))
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
    every prefix solution from masked triangular solves (O(T^3)); ``"blocked"`` grows the factor a block
    of keys at a time and solves each block's queries against the factor up to the block's end (O(T^3)
    with a third of parallel's query work, ``method="auto"`` on causal host calls from T = 256;
    ``docs/derivations/blocked_cholesky.md``). No intercept, like scikit-learn's
    ``KernelRidge``. Uniform weights only: decay would change every prefix system, not just extend it.
    """

    #: input dtypes it runs (Gram solves: NumPy has no half-precision linalg)
    dtypes = ("float32", "float64")

    supports_gates = False
    family = "kernel_ridge"

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
        return self.kern(xp, K, K) + float(self.ridge) * xp.eye(n, dtype=K.dtype, device=_array.device(K))

    def _check_pd(self, xp, L):
        if not bool(xp.all(xp.isfinite(L))):
            raise FloatingPointError(
                f"ridge: the Gram matrix of the {self.kernel!r} kernel plus ridge={self.ridge} is not "
                "numerically positive definite (Cholesky failed); increase ridge"
            )

    def read(self, xp, state, Q):
        """All queries against the cached pairs: :math:`\\kappa(Q, K)(\\kappa(K,K) + \\lambda I)^{-1} V`.

        Pairs of log-weight ``-inf`` (written with strength 0: the padding of ``lengths``) are left out:
        their rows and columns of the Gram system become those of the identity and their values and
        cross-kernel entries 0, so the system is block diagonal and the kept block is solved as if alone
        (replaced with ``where``, so garbage in an excluded pair never enters a sum). No kept pair: 0.
        """
        n = state.K.shape[-2]
        if n == 0:
            return xp.zeros(Q.shape[:-1] + (state.V.shape[-1],), dtype=Q.dtype, device=_array.device(Q))
        keep = state.log_weight > -math.inf  # (..., n)
        zero = xp.zeros((), dtype=state.K.dtype, device=_array.device(state.K))
        both = keep[..., :, None] & keep[..., None, :]
        eye = xp.eye(n, dtype=state.K.dtype, device=_array.device(state.K))
        G = xp.where(both, self._gram(xp, state.K), eye)
        alpha = _array.pd_solve(xp, G, xp.where(keep[..., None], state.V, zero))
        C = xp.where(keep[..., None, :], self.kern(xp, Q, state.K), zero)
        return xp.matmul(C, alpha)
