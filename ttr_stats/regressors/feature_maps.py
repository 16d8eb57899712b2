r"""Feature maps :math:`\phi` for the linear class :math:`m(k) = M\phi(k)` (feature-map linear attention,
P§2).

With ``normalize="sum"`` linear attention on :math:`\phi` is Nadaraya-Watson with the kernel
:math:`\phi(q)^\top\phi(k)`; random features make that kernel an unbiased estimate of a Gaussian
(:func:`random_fourier`) or softmax (:func:`positive_random`, Performer's FAVOR+) kernel.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _array
from .._validation import check_scalar
from .linear import Regressor

__all__ = ["FeatureMap", "FEATURE_MAPS"]

FEATURE_MAPS = ("elu_plus_one", "relu", "taylor", "random_fourier", "positive_random")


class FeatureMap(Regressor):
    r"""Linear memory on mapped keys and queries: :math:`y_t = M_t\phi(q_t)`,
    :math:`M_t = \sum v\phi(k)^\top`.

    Parameters
    ----------
    phi : {"elu_plus_one", "relu", "taylor", "random_fourier", "positive_random"}
        * ``elu_plus_one``: :math:`\mathrm{elu}(x) + 1` (Katharopoulos et al. 2020), d features.
        * ``relu``: :math:`\max(x, 0)`, d features.
        * ``taylor``: :math:`[1, \sqrt{\tau} x, \tau\, x\otimes x/\sqrt 2]` so that
          :math:`\phi(q)^\top\phi(k) = 1 + \tau q^\top k + (\tau q^\top k)^2/2`, the second-order Taylor
          expansion of :math:`\exp(\tau q^\top k)` (Based), 1 + d + d^2 features.
        * ``random_fourier``: :math:`\sqrt{2/D}\cos(Wx + b)`, :math:`W\sim N(0, h^{-2}I)`,
          :math:`b\sim U[0, 2\pi]`: :math:`E\,\phi(q)^\top\phi(k) = \exp(-\|q-k\|^2/(2h^2))` (Rahimi & Recht).
        * ``positive_random``: :math:`D^{-1/2}\exp(W\tilde x - \|\tilde x\|^2/2)`,
          :math:`\tilde x = \sqrt\tau x`, :math:`W\sim N(0, I)`:
          :math:`E\,\phi(q)^\top\phi(k) = \exp(\tau q^\top k)` with positive features (FAVOR+).
    n_features : int, default 256
        D, for the random maps.
    scale : float or None
        :math:`\tau` for ``taylor`` and ``positive_random``; ``None`` means :math:`d_k^{-1/2}`.
    bandwidth : float
        h for ``random_fourier``.
    seed : int
        Seeds the random projection: the same seed and sizes give the same features.
    """

    def __init__(self, phi="elu_plus_one", n_features=256, scale=None, bandwidth=1.0, seed=0):
        self.phi = phi
        self.n_features = n_features
        self.scale = scale
        self.bandwidth = bandwidth
        self.seed = seed

    def _validate(self):
        if self.phi not in FEATURE_MAPS:
            raise ValueError(f"phi must be one of {FEATURE_MAPS}, got {self.phi!r}")
        check_scalar("n_features", self.n_features, low=1, integer=True)
        if self.scale is not None:
            check_scalar("scale", self.scale, low=0.0, low_inclusive=False)
        check_scalar("bandwidth", self.bandwidth, low=0.0, low_inclusive=False)
        check_scalar("seed", self.seed, low=0, integer=True)

    def output_dim(self, d_k):
        if self.phi in ("elu_plus_one", "relu"):
            return d_k
        if self.phi == "taylor":
            return 1 + d_k + d_k * d_k
        return int(self.n_features)

    def _resolved_scale(self, d):
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(d)

    def projection(self, d_k):
        """The random matrix W (n_features, d_k) (and offsets b) as float64 NumPy arrays, from ``seed``."""
        rng = np.random.default_rng(int(self.seed))
        W = rng.standard_normal((int(self.n_features), d_k))
        b = rng.uniform(0.0, 2.0 * math.pi, int(self.n_features))
        return W, b

    def features(self, xp, x):
        self._validate()
        d = x.shape[-1]
        if self.phi == "elu_plus_one":
            zero = xp.zeros((), dtype=x.dtype, device=_array.device(x))
            return xp.where(x > 0, x + 1.0, xp.exp(xp.minimum(x, zero)))
        if self.phi == "relu":
            return xp.maximum(x, xp.zeros((), dtype=x.dtype, device=_array.device(x)))
        if self.phi == "taylor":
            tau = self._resolved_scale(d)
            outer = (x[..., :, None] * x[..., None, :]) * (tau / math.sqrt(2.0))
            ones = xp.ones(x.shape[:-1] + (1,), dtype=x.dtype, device=_array.device(x))
            return xp.concat([ones, math.sqrt(tau) * x, xp.reshape(outer, x.shape[:-1] + (d * d,))], axis=-1)
        W, b = self.projection(d)
        W = xp.asarray(W, dtype=x.dtype, device=_array.device(x))
        D = int(self.n_features)
        if self.phi == "random_fourier":
            proj = xp.matmul(x, xp.matrix_transpose(W)) / float(self.bandwidth)
            return math.sqrt(2.0 / D) * xp.cos(proj + xp.asarray(b, dtype=x.dtype, device=_array.device(x)))
        return xp.exp(self.log_features(xp, x))

    def log_features(self, xp, x):
        r"""``log phi(x)`` of ``positive_random``: :math:`W\tilde x - \|\tilde x\|^2/2 - \log(D)/2`."""
        self._validate()
        if self.phi != "positive_random":
            raise ValueError(f"phi: log_features exists for 'positive_random' only, got {self.phi!r}")
        d = x.shape[-1]
        W = xp.asarray(self.projection(d)[0], dtype=x.dtype, device=_array.device(x))
        xt = math.sqrt(self._resolved_scale(d)) * x
        sq = 0.5 * xp.sum(xt * xt, axis=-1, keepdims=True)
        return xp.matmul(xt, xp.matrix_transpose(W)) - sq - 0.5 * math.log(int(self.n_features))

    def normalized_pair_features(self, xp, Q, K):
        r"""Features of queries and keys for a read that is invariant to a positive factor per query
        (``normalize="sum"`` / ``"output"``: Performer).

        ``positive_random`` features underflow at large logit scales (``exp`` of :math:`-\tau\|x\|^2/2`):
        at :math:`\tau = 100` the products :math:`\phi(q)^\top\phi(k)` of 7% of the rows were exactly 0,
        at 1e4 every row. The query features are computed in log space with a per-row shift (the row
        maximum is subtracted before ``exp``), which cancels in the normalisation; the key features cannot
        be shifted per row (that would reweight the keys), so where a key's largest feature is below
        ``tiny / eps`` of the dtype (its features are lost to underflow) this raises ``FloatingPointError``
        instead of returning a finite wrong answer.
        """
        if self.phi != "positive_random":
            return self.features(xp, Q), self.features(xp, K)
        lq = self.log_features(xp, Q)
        lq = lq - xp.max(lq, axis=-1, keepdims=True)  # largest query feature = 1: cancels in the ratio
        lk = self.log_features(xp, K)
        if math.prod(lk.shape):
            info = xp.finfo(lk.dtype)
            floor = math.log(float(info.smallest_normal) / float(info.eps))
            worst = float(xp.min(xp.max(lk, axis=-1)))
            if worst < floor:
                tau = self._resolved_scale(K.shape[-1])
                wider = "" if lk.dtype == xp.float64 else "float64, "
                raise FloatingPointError(
                    f"scale: the positive random features of some keys underflow in {lk.dtype} "
                    f"(largest log-feature {worst:.4g} < {floor:.4g} at tau = {tau:g}; log phi(k) is about "
                    "-tau ||k||^2 / 2); use a smaller scale (or smaller keys), "
                    f"{wider}or softmax_attention(scale) for the exact softmax weights"
                )
        return xp.exp(lq), xp.exp(lk)
