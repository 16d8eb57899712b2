"""``TestTimeRegressor``: a test-time regression layer as a scikit-learn estimator.

``fit(X, y)`` memorises the sequence of pairs (keys X, values y) in order, exactly as the causal layer
does, and keeps the final memory; ``predict(X)`` evaluates that memory at queries without writing;
``partial_fit(X, y)`` continues the sequence (each row one recurrent step).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.utils.validation import check_is_fitted, validate_data

from .layer import TestTimeRegression

__all__ = ["TestTimeRegressor"]


class TestTimeRegressor(RegressorMixin, BaseEstimator):
    """Scikit-learn facade over a :class:`~ttr_stats.TestTimeRegression` layer.

    Parameters
    ----------
    layer : TestTimeRegression, default None
        The layer whose memory is fitted; ``None`` means ``recipes.least_squares()`` (exact
        minimum-norm least squares, the same fit as ``LinearRegression(fit_intercept=False)``).

    Attributes
    ----------
    layer_ : TestTimeRegression
        The fitted clone of ``layer``.
    state_ : NamedTuple
        The memory after the last written pair (the optimizer's state type, e.g. ``RLSState(M, P)``).
    n_features_in_ : int
        d_k.
    n_outputs_ : int
        d_v.
    coef_ : ndarray of shape (d_v, d_k), or (d_k,) for a 1-D target
        The linear memory M, when the layer reads linearly (scikit-learn's ``coef_`` convention).

    Notes
    -----
    Row order matters: the rows of ``X`` are the time steps. For order-independent layers
    (least squares, linear attention) the fit is the usual batch regression; for online optimizers
    (delta rule, RLS with forgetting) it is the memory after the last step.

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 4)); y = X @ np.arange(1.0, 5.0)
    >>> est = tt.TestTimeRegressor(tt.recipes.rls(ridge=1e-8)).fit(X, y)
    >>> np.round(est.coef_, 6)
    array([1., 2., 3., 4.])
    """

    __test__ = False  # not a pytest test class

    def __init__(self, layer=None):
        self.layer = layer

    def _make_layer(self):
        if self.layer is None:
            from .recipes import least_squares

            return least_squares()
        if not isinstance(self.layer, TestTimeRegression):
            raise TypeError(f"layer must be a TestTimeRegression, got {type(self.layer).__name__}")
        return clone(self.layer)

    def _validate_device(self, X, y=None, *, reset):
        """Checks for arrays of another library (CuPy): what validate_data checks, without moving them."""
        from . import _array
        from ._validation import check_finite

        xp, a, _ = _array.as_float_arrays({"X": X, "y": y})
        X, y = a["X"], a["y"]
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got {X.ndim}D array instead")
        if X.shape[0] < 1:
            raise ValueError(
                f"Found array with 0 sample(s) (shape={tuple(X.shape)}) while a minimum of 1 is required."
            )
        check_finite(xp, "X", X)
        if y is not None:
            if y.ndim not in (1, 2) or y.shape[0] != X.shape[0]:
                raise ValueError(
                    f"y must have shape (n,) or (n, d_v) with n = {X.shape[0]}, got {tuple(y.shape)}"
                )
            check_finite(xp, "y", y)
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input"
            )
        return xp, X, y

    def _write(self, X, y, gates, *, reset):
        from ._array import is_array

        if is_array(X) and not isinstance(X, np.ndarray):
            xp, X, y = self._validate_device(X, y, reset=reset)
        else:
            X, y = validate_data(
                self,
                X,
                y,
                reset=reset,
                multi_output=True,
                y_numeric=True,
                dtype=[np.float64, np.float32],
            )
            y = np.asarray(y, dtype=X.dtype)
        single = y.ndim == 1
        V = y[:, None] if single else y
        if reset:
            self.layer_ = self._make_layer()
            initial = None
        else:
            if single != self._single_output or V.shape[1] != self.n_outputs_:
                raise ValueError(
                    f"y must have {self.n_outputs_} output(s) as in the first call, got shape {y.shape}"
                )
            initial = self.state_
        state = self.layer_.memorize(X, V, initial_state=initial, **gates)
        self.state_ = state
        self._single_output = single
        self.n_outputs_ = V.shape[1]
        return self

    def fit(self, X, y, *, alpha=None, log_alpha=None, beta=None):
        """Memorise the sequence of pairs ``(X[t], y[t])``, t = 0..n-1, from an empty memory.

        Parameters
        ----------
        X : array-like of shape (n, d_k)
            Keys, in time order.
        y : array-like of shape (n,) or (n, d_v)
            Values.
        alpha, log_alpha, beta : array-like of shape (n,), optional
            Call-time gates, as for the layer.

        Returns
        -------
        self
        """
        return self._write(X, y, dict(alpha=alpha, log_alpha=log_alpha, beta=beta), reset=True)

    def partial_fit(self, X, y, *, alpha=None, log_alpha=None, beta=None):
        """Continue the sequence with the rows of ``X``, ``y`` (each row one recurrent step)."""
        first = not hasattr(self, "state_")
        return self._write(X, y, dict(alpha=alpha, log_alpha=log_alpha, beta=beta), reset=first)

    def predict(self, X):
        """Evaluate the fitted memory at the queries ``X`` (no writes).

        Parameters
        ----------
        X : array-like of shape (n, d_k)

        Returns
        -------
        ndarray of shape (n,) or (n, d_v)
        """
        from ._array import is_array

        check_is_fitted(self, "state_")
        if is_array(X) and not isinstance(X, np.ndarray):
            _, X, _ = self._validate_device(X, reset=False)
        else:
            X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Y = self.layer_.read(self.state_, X)
        return Y[:, 0] if self._single_output else Y

    @property
    def coef_(self):
        check_is_fitted(self, "state_")
        if self.layer_.nonparametric:
            raise AttributeError(
                f"coef_: a {type(self.layer_.regressor).__name__} layer keeps every pair (state_ is a "
                "CacheState), it has no coefficient matrix"
            )
        try:
            M = self.layer_.optimizer.memory(self.state_)
        except ValueError as exc:  # e.g. sum-normalised linear attention: the read is nonlinear in q
            raise AttributeError(f"coef_: {exc}") from exc
        return M[0, ...] if self._single_output else M

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags
