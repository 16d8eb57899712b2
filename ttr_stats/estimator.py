"""``TestTimeRegressor``: a test-time regression layer as a scikit-learn estimator.

``fit(X, y)`` memorises the sequence of pairs (keys X, values y) in order, exactly as the causal layer
does, and keeps the final memory; ``predict(X)`` evaluates that memory at queries without writing;
``partial_fit(X, y)`` continues the sequence (each row one recurrent step).
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted, validate_data

from .layer import TestTimeRegression
from .optimizers.gradient import DeltaRule

__all__ = ["TestTimeRegressor"]


#: the sum of every entry (``np.add.reduce(x, None)``: ``x.sum()`` without its Python-level dispatch)
_total = np.add.reduce


def _c_order(state):
    """The state with its NumPy fields C-contiguous (other libraries' fields unchanged).

    BLAS sums a matrix-vector product in an order that depends on the memory layout, so a state stored as
    a strided view (the closed form's ``M`` is a transposed slice) would make the next one-row update
    differ in the last bit from the general path, which copies the state first. One layout for every
    stored state keeps the two paths bit-identical; for d x d fields the copy is free.
    """
    if all(not isinstance(f, np.ndarray) or f.flags.c_contiguous for f in state):
        return state
    return type(state)(*(np.ascontiguousarray(f) if isinstance(f, np.ndarray) else f for f in state))


@functools.lru_cache(maxsize=64)
def _constant_gates(log_decay, log_forgetting, beta, width, dtype):
    """The decay factor ``a`` (width,) and write strength ``b`` (0-d) of one step with constant gates,
    computed as the layer computes them (``exp(log_decay + log_forgetting)``, ``beta`` or 1); None when
    the weights have no constant (the call must pass gates). Cached: a one-row ``partial_fit`` would
    otherwise spend a fifth of its time building them; ``a`` is read-only, since it is shared."""
    if log_decay is None:
        return None
    g = np.full((1, width), log_decay, dtype=dtype)
    if log_forgetting:
        g = g + log_forgetting
    a = np.exp(g)[0]
    a.flags.writeable = False
    return a, np.full((1,), 1.0 if beta is None else beta, dtype=dtype)[0]  # a scalar, as the loop's b_t


@functools.lru_cache(maxsize=8)
def _norm_range(dtype):
    """(low, high) for row norms of this dtype: below ``low`` the squares lose digits (they underflow
    past the smallest normal number), above ``high`` (per |entry|, with d entries) they may overflow."""
    fi = np.finfo(dtype)
    return math.sqrt(float(fi.smallest_normal) / float(fi.eps)), math.sqrt(float(fi.max)) / 2.0


def _unit_rows(xp, X):
    """The rows of ``X`` (n, d) scaled to unit L2 norm; a zero row stays zero.

    ``X / ||X||_row`` with the norm summed directly (NumPy: ``np.linalg.norm(X, axis=1)``, bit for bit),
    which is exact to rounding while the squares stay in the normal range; rows whose sum of squares
    overflows or underflows (entries beyond ~1e154 or below ~1e-146 in float64) are first divided by their
    largest |entry|, so that a finite nonzero row always becomes a unit row, never 0 or NaN.
    """
    if math.prod(X.shape) == 0:
        return X
    if xp is np:  # the common case without errstate or a second pass (a one-row partial_fit calls it)
        low, high = _norm_range(X.dtype)
        if float(np.max(np.abs(X))) * math.sqrt(X.shape[-1]) < high:
            n = np.sqrt(np.add.reduce(X * X, axis=-1, keepdims=True))
            if float(np.min(n)) >= low:
                return X / n
    with np.errstate(over="ignore", under="ignore"):  # an overflowing or underflowing norm is redone
        n = xp.linalg.vector_norm(X, axis=-1, keepdims=True)
    fi = xp.finfo(X.dtype)
    low = math.sqrt(float(fi.smallest_normal) / float(fi.eps))
    s = xp.max(xp.abs(X), axis=-1, keepdims=True)
    bad = (s > 0) & (~xp.isfinite(n) | (n < low))
    if bool(xp.any(bad)):
        Xs = X / xp.where(bad, s, xp.ones_like(s))
        n = xp.where(bad, xp.linalg.vector_norm(Xs, axis=-1, keepdims=True), n)
        X = Xs
    return X / xp.where(n > 0, n, xp.ones_like(n))


def _check_normalize_keys(value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"normalize_keys must be True or False, got {value!r} ({type(value).__name__}); pass a bool"
        )
    return bool(value)


def _warn_if_unstable(layer, X, beta=None, *, k=None, stacklevel=4):
    """A ``ConvergenceWarning`` when a delta-rule step on these rows (NumPy, as the layer sees them)
    expands the memory.

    The delta rule's step ``M (I - eta k k^T)`` multiplies the error along ``k`` by ``1 - eta ||k||^2``:
    beyond ``eta ||k||^2 = 2`` it grows, geometrically over the rows, to a finite but meaningless memory
    (or an overflow, which the layer reports as a ``FloatingPointError``). Steps that adapt to ``||k||``
    (``nlms``, ``longhorn``) never warn. A warning, not an error: the recursion is computed as asked.
    Overflow in ``||k||^2`` (keys beyond ~1e154) is an infinite gain; callers silence its warning.
    ``k``: the features of ``X`` when the caller has them (the one-row update).
    """
    opt = layer.optimizer
    if not isinstance(opt, DeltaRule) or opt.steps_per_token != 1:
        return
    if k is None:
        k = layer.regressor.features(np, X)
    k2 = np.add.reduce(k * k, axis=-1)
    b = opt.default_beta() if beta is None else np.asarray(beta, dtype=k.dtype)
    gain = opt.step_size(np, b, k) * k2
    worst = float(np.max(gain))
    if not worst > 2.0:
        return
    top = float(np.max(k2))
    bound = f"{2.0 / top:.3g}" if math.isfinite(top) else "2 / inf: the squares of these keys overflow"
    warnings.warn(
        f"the delta-rule step is unstable on these rows: step * ||k||^2 reaches {worst:.3g} > 2 (row "
        f"{int(np.argmax(gain))}), so the memory diverges and its predictions mean nothing; pass "
        "normalize_keys=True to TestTimeRegressor (unit keys: stable for 0 < beta < 2), or a step beta < "
        f"{bound} (2 / max ||k||^2), or use nlms() / longhorn()",
        ConvergenceWarning,
        stacklevel=stacklevel,
    )


class TestTimeRegressor(RegressorMixin, BaseEstimator):
    """Scikit-learn facade over a :class:`~ttr_stats.TestTimeRegression` layer.

    Parameters
    ----------
    layer : TestTimeRegression, default None
        The layer whose memory is fitted; ``None`` means ``recipes.least_squares()`` (exact
        minimum-norm least squares, the same fit as ``LinearRegression(fit_intercept=False)``).
    normalize_keys : bool, default False
        Scale every row of ``X`` to unit L2 norm (a zero row stays zero) before the layer sees it, in
        ``fit``, ``partial_fit`` and ``predict`` alike: the keys written and the queries read are unit
        vectors, as DeltaNet normalises its keys and queries in practice. The estimator then fits ``y``
        on ``X / ||X||_row`` (exactly as normalising ``X`` by hand would), a model of the direction of each
        row, not its length. Use it for the delta-rule family (``deltanet``, ``gated_deltanet``,
        ``leaky_lms``, ``delta_product``) on raw features: a step ``beta`` is stable only while
        ``0 < beta ||k||^2 < 2``, so ``deltanet()`` (beta = 1) diverges on unnormalised features with
        ``||k||^2 > 2`` (standardised data with more than two columns already), while on unit keys every
        step with ``0 < beta < 2`` is a contraction, whatever the scale of the data. (The alternative is a
        step below ``2 / max ||k||^2``, or ``nlms()`` / ``longhorn()``, whose steps adapt to ``||k||``.)
        The value at the first ``fit`` (or first ``partial_fit``) holds until the next ``fit``.

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

    A ``fit`` or ``partial_fit`` that raises leaves the estimator exactly as it was: the input is
    validated and the new memory computed into locals, and the attributes (``layer_``, ``state_``,
    ``n_features_in_``, ``feature_names_in_``, ``n_outputs_``) are assigned together only at the end.

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

    def __init__(self, layer=None, normalize_keys=False):
        self.layer = layer
        self.normalize_keys = normalize_keys

    def _make_layer(self):
        if self.layer is None:
            from .recipes import least_squares

            return least_squares()
        if not isinstance(self.layer, TestTimeRegression):
            raise TypeError(f"layer must be a TestTimeRegression, got {type(self.layer).__name__}")
        return clone(self.layer)

    def _validate_device(self, X, y=None, *, reset):
        """Checks for arrays of another library (CuPy): what validate_data checks, without moving them.
        Assigns nothing (with ``reset`` the caller records ``X.shape[1]``)."""
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
        if not reset and X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {type(self).__name__} is expecting {self.n_features_in_} "
                "features as input"
            )
        return xp, X, y

    def _write(self, X, y, gates, *, reset):
        """Validate, compute the new memory into locals, then assign every attribute at once: a call that
        raises (bad input, a diverging recursion, a wrong layer) leaves the estimator as it was."""
        from ._array import is_array

        if reset:
            normalize = _check_normalize_keys(self.normalize_keys)
            # validate_data(reset=True) records n_features_in_ / feature_names_in_ on the estimator it is
            # given: a scratch copy, whose record is taken over only once the fit has succeeded
            target = type(self)(**self.get_params(deep=False))
        else:
            normalize = getattr(self, "_normalize_keys", False)
            target = self
        if is_array(X) and not isinstance(X, np.ndarray):
            xp, X, y = self._validate_device(X, y, reset=reset)
            if reset:
                target.n_features_in_ = X.shape[1]
        else:
            xp = np
            X, y = validate_data(
                target,
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
            layer = self._make_layer()
            initial = None
        else:
            if single != self._single_output or V.shape[1] != self.n_outputs_:
                raise ValueError(
                    f"y must have {self.n_outputs_} output(s) as in the first call, got shape {y.shape}"
                )
            layer = self.layer_
            initial = self.state_
        if normalize:
            X = _unit_rows(xp, X)
        if xp is np:
            with np.errstate(over="ignore", invalid="ignore"):
                _warn_if_unstable(layer, X, gates.get("beta"))
        state = _c_order(layer.memorize(X, V, initial_state=initial, **gates))
        # nothing below raises: the estimator changes here, all at once
        if reset:
            self.layer_ = layer
            self.n_features_in_ = target.n_features_in_
            if hasattr(target, "feature_names_in_"):
                self.feature_names_in_ = target.feature_names_in_
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
            self._normalize_keys = normalize
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
        """Continue the sequence with the rows of ``X``, ``y`` (each row one recurrent step).

        Parameters
        ----------
        X : array-like of shape (n, d_k)
            Keys of the next n steps.
        y : array-like of shape (n,) or (n, d_v)
            Values, with the outputs of the first call.
        alpha, log_alpha, beta : array-like of shape (n,), optional
            Call-time gates, as for the layer.

        Returns
        -------
        self

        Notes
        -----
        On a fitted linear-family estimator, NumPy rows of the fitted dtype take a lean path (the same
        state as the general one, which still runs, and raises its errors, for anything else): one row
        without gates is one ``optimizer.update``; several rows, or gates, one ``memorize`` from the
        current state (the closed form of the last state where the family has one). With sliding-window
        weights the rows of earlier calls are never removed (the state does not keep them; the loop
        does not downdate an initial state either).
        """
        gates = (
            None
            if alpha is None and log_alpha is None and beta is None
            else dict(alpha=alpha, log_alpha=log_alpha, beta=beta)
        )
        if hasattr(self, "state_"):
            # overflow in the checks' sums or a diverging update is detected and sent to the general path,
            # which raises its own error: no NumPy warnings on the way
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                if self._lean_write(X, y, gates):
                    return self
        first = not hasattr(self, "state_")
        return self._write(X, y, gates or {}, reset=first)

    def _lean_write(self, X, y, gates):
        """Write the rows without the general validation (``gates``: a dict of call-time gates, or None);
        False (nothing changed) when the call needs the general path: another library or dtype, a data
        frame, any invalid input (so that the general path raises its own error), a nonparametric or
        neural layer, or several writes per token."""
        layer = self.layer_
        if type(X) is not np.ndarray or type(y) is not np.ndarray or hasattr(self, "feature_names_in_"):
            return False
        if layer.nonparametric or layer.neural or layer.optimizer.steps_per_token != 1:
            return False
        state = self.state_
        dtype = state[0].dtype
        if X.ndim != 2 or X.dtype != dtype or y.dtype != dtype or X.shape[1] != self.n_features_in_:
            return False
        n = X.shape[0]
        single = self._single_output
        if n < 1 or y.ndim != (1 if single else 2) or y.shape[0] != n:
            return False
        if not single and y.shape[1] != self.n_outputs_:
            return False
        # a finite sum means finite entries; an overflowing sum only sends the call to the general path
        if not math.isfinite(_total(X, None) + _total(y, None)):
            return False
        V = y[:, None] if single else y
        if getattr(self, "_normalize_keys", False):
            X = _unit_rows(np, X)
        if n > 1 or gates is not None:
            _warn_if_unstable(layer, X, None if gates is None else gates.get("beta"))
            # what the general path does after validate_data (which returns these arrays unchanged)
            self.state_ = _c_order(layer.memorize(X, V, initial_state=state, **(gates or {})))
            return True
        new = self._write_row(layer, state, X, V)
        if new is None:
            return False
        self.state_ = _c_order(new)
        return True

    @staticmethod
    def _write_row(layer, state, X, V):
        """One ``update`` with the constant gates, as the loop does it; None where the general path must
        run (gates the call must pass, a zero decay RLS would divide by, a state that is not finite)."""
        opt = layer.optimizer
        width = layer.regressor.output_dim(X.shape[1]) if layer.weights.per_dimension else 1
        gates = _constant_gates(
            layer.weights.constant_log_decay(), opt.log_forgetting(), opt.default_beta(), width, X.dtype
        )
        if gates is None or (opt.needs_positive_decay and gates[0][0] == 0):
            return None
        a, b = gates
        k = layer.regressor.features(np, X)
        _warn_if_unstable(layer, X, b, k=k, stacklevel=5)
        if getattr(opt, "skips_unit_decay", False) and bool(np.all(a == 1)):
            a = None  # no decay: the optimizer skips that pass, as the loop lets it (bit-identical)
        new = opt.update(state, k[0], V[0], a, b)
        # a finite sum means finite entries; an overflowing sum only sends the call to the general path
        if not math.isfinite(sum([_total(field, None) for field in new])):
            return None
        return new

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
            xp, X, _ = self._validate_device(X, reset=False)
        else:
            xp = np
            X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        if getattr(self, "_normalize_keys", False):  # False: fitted before the parameter existed
            X = _unit_rows(xp, X)
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
