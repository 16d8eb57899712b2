r"""The linear function class :math:`m(k) = M \phi(k)`, :math:`M \in \mathbb{R}^{d_v \times d_\phi}`."""

from __future__ import annotations

from sklearn.base import BaseEstimator

__all__ = ["Regressor", "Linear"]


class Regressor(BaseEstimator):
    """Base class of function classes.

    A regressor that is linear in features exposes :meth:`features`; the optimizers of the linear family
    then work on ``features(k)`` and ``features(q)`` in place of the raw keys and queries. Feature maps
    (elu + 1, random features, Taylor) override :meth:`features` and :meth:`n_features`.
    """

    #: whether the class is linear in (possibly mapped) features, so linear-family optimizers apply
    linear_in_features = True

    def _validate(self):
        """Check hyperparameters (called by the layer before computing)."""

    def features(self, xp, x):
        """Feature map phi applied to the last axis of ``x`` of shape (..., d_k). Identity here."""
        return x

    def output_dim(self, d_k: int) -> int:
        """Dimension of ``features`` for keys of dimension ``d_k``."""
        return d_k


class Linear(Regressor):
    r"""Linear memory :math:`m(k) = M k`; retrieval :math:`y_t = M_t q_t` (no implicit query scaling).

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> layer = tt.TestTimeRegression(regressor=tt.regressors.Linear())
    >>> K = np.eye(3)[None].repeat(1, 0); V = np.arange(9.0).reshape(1, 3, 3)
    >>> layer(K, K, V).shape
    (1, 3, 3)
    """

    def __init__(self):
        pass
