r"""Similarities :math:`s(q, k)` that weight the pairs of a nonparametric regression (P§4).

Every similarity here is used in log space: :meth:`Similarity.log_weights` returns
:math:`\log s(q_t, k_i)` for all pairs, so that softmax-style normalisation subtracts the row maximum
before exponentiating and never overflows or underflows to an all-zero row.

* :class:`ExpDot` -- :math:`s = \exp(\tau\, q^\top k)`, softmax attention's weights.
* :class:`Gaussian` -- :math:`s = \exp(-\|q - k\|^2 / (2h^2))`, the Nadaraya-Watson kernel.

With ``qk_norm=True`` queries and keys are L2-normalised first. On the unit sphere
:math:`\exp(\tau q^\top k) = e^{\tau}\exp(-\|q-k\|^2 \tau / 2)`: softmax attention with QKNorm **is** NW with
a Gaussian kernel of bandwidth :math:`h = \tau^{-1/2}` (:func:`scale_to_bandwidth`).
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np
from sklearn.base import BaseEstimator

from . import _array
from ._validation import check_bool, check_scalar

__all__ = [
    "Similarity",
    "ExpDot",
    "Gaussian",
    "scale_to_bandwidth",
    "bandwidth_to_scale",
    "l2_normalize",
    "sq_distances",
    "l1_distances",
]


def scale_to_bandwidth(scale):
    r"""Gaussian bandwidth equivalent to logit scale :math:`\tau` on unit vectors: :math:`h = \tau^{-1/2}`.

    Examples
    --------
    >>> scale_to_bandwidth(1 / 8.0)   # tau = 1/sqrt(64): the paper's B = 2 sqrt(d) = h^2
    2.8284271247461903
    """
    return scale**-0.5


def bandwidth_to_scale(bandwidth):
    r"""Logit scale equivalent to Gaussian bandwidth ``h`` on unit vectors: :math:`\tau = h^{-2}`."""
    return bandwidth**-2.0


def l2_normalize(xp, x):
    """Rows of ``x`` (..., d) scaled to unit L2 norm; a zero row stays zero."""
    n = xp.linalg.vector_norm(x, axis=-1, keepdims=True)
    return x / xp.where(n > 0, n, xp.ones((), dtype=x.dtype, device=_array.device(x)))


class Similarity(BaseEstimator):
    """Base class: ``log_weights(xp, Q, K)`` -> log s(q_t, k_i) of shape (..., T_q, T_k).

    ``log_weights`` returns a new array that the caller owns: the tiled methods add the log-gates to it
    and exponentiate it in place on NumPy (a subclass must not return an array it keeps, e.g. a cache).
    """

    def _validate(self):
        check_bool("qk_norm", self.qk_norm)

    def prepare(self, xp, x):
        """Transform applied to queries and keys before comparing them (QKNorm)."""
        return l2_normalize(xp, x) if check_bool("qk_norm", self.qk_norm) else x

    def log_weights(self, xp, Q, K):  # pragma: no cover - abstract
        raise NotImplementedError

    def log_weight_pairs(self, xp, q, K):
        """``log s(q, k_i)`` for one query per batch element: q (..., d), K (..., n, d) -> (..., n)."""
        return self.log_weights(xp, q[..., None, :], K)[..., 0, :]


class ExpDot(Similarity):
    r"""Softmax weights :math:`s(q, k) = \exp(\tau\, q^\top k)`.

    Parameters
    ----------
    scale : float > 0 or None
        Logit scale :math:`\tau`; ``None`` means :math:`d_k^{-1/2}` (resolved when called).
    qk_norm : bool
        L2-normalise q and k first (QKNorm), making the weights a Gaussian kernel of the distance.

    Notes
    -----
    Without QKNorm,
    :math:`\exp(\tau k^\top q) = \exp(-\tau\|k - q\|^2/2)\exp(\tau\|k\|^2/2)\exp(\tau\|q\|^2/2)`:
    the query factor cancels in the normalisation, the per-key factor :math:`\exp(\tau\|k\|^2/2)` stays
    (a non-local weight favouring large-norm keys, P§4).
    """

    def __init__(self, scale=None, qk_norm=False):
        self.scale = scale
        self.qk_norm = qk_norm

    def _validate(self):
        super()._validate()
        if self.scale is not None:
            check_scalar("scale", self.scale, low=0.0, low_inclusive=False)

    def resolved_scale(self, d_k):
        if self.scale is not None:
            return float(self.scale)
        if d_k < 1:
            raise ValueError(
                f"Q and K must have d_k >= 1 features for scale=None (tau = d_k^-1/2), got {d_k}"
            )
        return 1.0 / math.sqrt(d_k)

    def log_weights(self, xp, Q, K):
        tau = self.resolved_scale(Q.shape[-1])
        return tau * xp.matmul(Q, xp.matrix_transpose(K))


class Gaussian(Similarity):
    r"""Gaussian kernel :math:`s(q, k) = \exp(-\|q - k\|^2 / (2h^2))`.

    Parameters
    ----------
    bandwidth : float > 0
        :math:`h` (isotropic: the same in every dimension).
    qk_norm : bool
        L2-normalise q and k first.
    """

    def __init__(self, bandwidth=1.0, qk_norm=False):
        self.bandwidth = bandwidth
        self.qk_norm = qk_norm

    def _validate(self):
        super()._validate()
        check_scalar("bandwidth", self.bandwidth, low=0.0, low_inclusive=False)

    def log_weights(self, xp, Q, K):
        h2 = float(self.bandwidth) ** 2
        if array_api_compat.is_numpy_namespace(xp):
            # the factor -1 / (2 h^2) inside the augmented product (:func:`_expansion`): one pass over
            # the (n_q, n_k) result instead of two (clip, divide), the same expansion to rounding
            return _expansion(Q, K, -0.5 / h2)
        d2 = sq_distances(xp, Q, K)
        return -d2 / (2.0 * h2)


def sq_distances(xp, X, Y):
    r"""Squared distances :math:`\|x_i - y_j\|^2` of shape (..., n_x, n_y), by
    :math:`\|x\|^2 + \|y\|^2 - 2x^\top y` (clipped at 0).

    The expansion needs O(n_x n_y) memory instead of the O(n_x n_y d) of the explicit differences. Its
    absolute error is about eps (||x||^2 + ||y||^2), so both are first shifted by the first row of Y
    (distances do not change; for a causal layer that row is the first key, in every query's past, so
    causality stays exact): the error is then eps (||x - y_0||^2 + ||y - y_0||^2), which keeps the digits
    of clustered points far from the origin (two keys 1.3e-8 apart at scale 1e2: a kernel ridge read was
    1.4e-9 off with the plain expansion, at rounding with the shift). A kernel exp(-d^2 / 2h^2) is off by
    at most that error / 2h^2 relative.
    """
    if array_api_compat.is_numpy_namespace(xp):
        return _expansion(X, Y, 1.0)
    if Y.shape[-2] > 0:
        ref = Y[..., :1, :]
        X, Y = X - ref, Y - ref
    xx = xp.sum(X * X, axis=-1)[..., :, None]
    yy = xp.sum(Y * Y, axis=-1)[..., None, :]
    d2 = xx + yy - 2.0 * xp.matmul(X, xp.matrix_transpose(Y))
    return xp.maximum(d2, xp.zeros((), dtype=d2.dtype, device=_array.device(d2)))


def _expansion(X, Y, c):
    """NumPy :func:`sq_distances` times ``c != 0``: ``c ||x - y||^2``, clipped at 0 (from above for
    ``c < 0``), after the same shift by Y's first row.

    One product of the augmented rows ``[x, ||x||^2, 1] . c [-2y, 1, ||y||^2]`` gives the expansion
    (summed in the product's order) with no (n_x, n_y) temporaries: at d = 2 the five elementwise passes
    cost 7x the product itself (n_x = 512, n_y = 2000, one core). ``c = 1`` is :func:`sq_distances`
    itself (the same products); another ``c`` (a Gaussian's ``-1 / (2 h^2)``) scales the three columns of
    Y instead of the (n_x, n_y) result: one more rounding of those columns (relative ``eps``, within the
    expansion's own error; none where c is a power of two) instead of a pass that divides the result
    (4 x 128 by 500 pairs, one core: clip 0.06 ms, divide 0.13 ms).
    """
    if Y.shape[-2] > 0:
        ref = Y[..., :1, :]
        X, Y = X - ref, Y - ref
    xx = np.einsum("...i,...i->...", X, X)[..., None]
    yy = np.einsum("...i,...i->...", Y, Y)[..., None]
    Xa = np.concatenate([X, xx, np.ones_like(xx)], axis=-1)
    if c == 1.0:
        Ya = np.concatenate([-2.0 * Y, np.ones_like(yy), yy], axis=-1)
    else:
        Ya = np.concatenate([(-2.0 * c) * Y, np.full_like(yy, c), c * yy], axis=-1)
    d2 = np.matmul(Xa, np.swapaxes(Ya, -1, -2))
    return np.maximum(d2, 0.0, out=d2) if c > 0 else np.minimum(d2, 0.0, out=d2)


#: bytes of the (n_x, n_y, features) differences :func:`l1_distances` forms at a time
L1_BLOCK_BYTES = 16 * 2**20


def l1_distances(xp, X, Y):
    r"""L1 distances :math:`\|x_i - y_j\|_1` of shape (..., n_x, n_y), without the (n_x, n_y, d)
    difference tensor.

    L1 has no inner-product expansion, so the differences are formed, but a few features at a time: each
    slice's :math:`|x_{il} - y_{jl}|` is summed into the (n_x, n_y) result, with the slice's
    (n_x, n_y, features) differences within :data:`L1_BLOCK_BYTES` (one feature at least). Memory
    O(n_x n_y) plus that block instead of O(n_x n_y d); each difference is formed exactly as the explicit
    tensor would (the same values), only the sum over features is split.
    """
    d = X.shape[-1]
    shape = X.shape[:-2] + (X.shape[-2], Y.shape[-2])
    per_feature = max(1, math.prod(shape)) * (8 if X.dtype == xp.float64 else 4)
    step = max(1, int(L1_BLOCK_BYTES // per_feature))
    out = None
    for a in range(0, d, step):
        b = min(d, a + step)
        part = xp.sum(xp.abs(X[..., :, None, a:b] - Y[..., None, :, a:b]), axis=-1)
        out = part if out is None else out + part
    if out is None:  # no features: every distance is 0
        return xp.zeros(shape, dtype=X.dtype, device=_array.device(X))
    return out
