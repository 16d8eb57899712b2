r"""The linear function class :math:`m(k) = M \phi(k)`, :math:`M \in \mathbb{R}^{d_v \times d_\phi}`."""

from __future__ import annotations

from sklearn.base import BaseEstimator

from . import _neural as nn

__all__ = ["Regressor", "Linear"]


class Regressor(BaseEstimator):
    """Base class of function classes.

    A regressor that is linear in features exposes :meth:`features`; the optimizers of the linear family
    then work on ``features(k)`` and ``features(q)`` in place of the raw keys and queries. Feature maps
    (elu + 1, random features, Taylor) override :meth:`features` and :meth:`n_features`.
    """

    #: whether the class is linear in (possibly mapped) features, so linear-family optimizers apply
    linear_in_features = True
    #: whether the regressor keeps every pair (its state is a ``CacheState``)
    nonparametric = False

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

    With ``layer_norm=True`` it is TTT-Linear's reconstruction head :math:`m(k) = \mathrm{LN}(M k + b)`
    (layer normalisation over the value axis, no gain or bias: those are outer-loop parameters in TTT and
    stay fixed at test time). That class is no longer linear in its parameters: it is trained by the
    gradient optimizers (:class:`~ttr_stats.optimizers.MiniBatchGD`, :class:`~ttr_stats.optimizers.Momentum`)
    only. Without it, those optimizers train :math:`M` by the same gradient as the delta rule.

    Parameters
    ----------
    layer_norm : bool, default False

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> layer = tt.TestTimeRegression(regressor=tt.regressors.Linear())
    >>> K = np.eye(3)[None].repeat(1, 0); V = np.arange(9.0).reshape(1, 3, 3)
    >>> layer(K, K, V).shape
    (1, 3, 3)

    References
    ----------
    Sun et al. (2024), *Learning to (learn at test time)*, arXiv 2407.04620 (TTT-Linear).
    """

    def __init__(self, layer_norm=False):
        self.layer_norm = layer_norm

    @property
    def dtypes(self):
        """Input dtypes it runs: all, but not half precision with the layer norm (measured: TTT-Linear in
        float16 was O(1) off float64; the normalised error has no digits left)."""
        return ("float32", "float64") if self.layer_norm else None

    def _validate(self):
        if not isinstance(self.layer_norm, bool):
            raise ValueError(f"layer_norm must be True or False, got {self.layer_norm!r}")

    @property
    def linear_in_features(self):
        return not self.layer_norm

    # --- the parametric interface used by the gradient optimizers -----------------------------------
    def param_names(self):
        """Names of the parameters, in the order of :meth:`init_params`."""
        return ("M", "b") if self.layer_norm else ("M",)

    def init_params(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        """Zero memory (and bias): with ``layer_norm=False`` the gradient optimizers start as DeltaNet."""
        z = xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device)
        if not self.layer_norm:
            return (z,)
        return (z, xp.zeros(tuple(batch_shape) + (d_v,), dtype=dtype, device=device))

    def predict(self, xp, params, q):
        """:math:`m(q)` for q of shape (..., d_k) broadcasting against the parameters' batch dims."""
        o = nn.matvec(xp, params[0], q)
        if not self.layer_norm:
            return o
        return nn.layer_norm(xp, o + params[1])[0]

    def loss_grad(self, xp, params, k, v):
        r"""Loss :math:`\tfrac12\|m(k) - v\|^2` of shape (...) and its gradient, one array per parameter."""
        o = nn.matvec(xp, params[0], k)
        if not self.layer_norm:
            e = o - v
            return 0.5 * xp.sum(e * e, axis=-1), (nn.outer(e, k),)
        x_hat, r = nn.layer_norm(xp, o + params[1])
        e = x_hat - v
        d_o = nn.layer_norm_backward(xp, e, x_hat, r)
        return 0.5 * xp.sum(e * e, axis=-1), (nn.outer(d_o, k), d_o)
