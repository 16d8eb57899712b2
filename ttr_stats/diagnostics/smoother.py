r"""Smoother matrices, degrees of freedom, LOO / GCV / Cp / prequential errors, selection (theory §2).

Every layer of the toolkit except ``linear_attention(normalize="output")`` and the neural memories (TTT-MLP,
Titans, TTT-Linear with layer norm) is linear in its values:
:math:`Y = S V` with a smoother matrix :math:`S` that depends on the queries, the keys and the gates only.
Classical linear-smoother statistics follow from S: the degrees of freedom :math:`\operatorname{tr} S` and
:math:`\operatorname{tr} S^\top S`, the leave-one-out residuals by the shortcut
:math:`(y_i - \hat y_i)/(1 - S_{ii})`, generalised cross-validation and Mallows' :math:`C_p`. A causal layer
also gives an honest criterion for free: the prequential (one-step-ahead) error. :func:`select` tunes one
hyperparameter (temperature, bandwidth, ridge) by any of them.

Conventions: the "set regression" is the layer with ``causal=False`` and queries = keys (every pair is fitted
from the memory after the last step). Values may be vectors; errors are squared Euclidean norms per pair,
:math:`\|v_i - \hat v_i\|^2`, so every criterion here is on the scale of :func:`prequential_error`.
"""

from __future__ import annotations

import functools
import math

import array_api_compat
import numpy as np
from sklearn.base import clone

from .. import _array
from .._validation import check_bool, check_finite
from ..optimizers import IdentityCovariance

__all__ = [
    "smoother_matrix",
    "effective_dof",
    "loo_residuals",
    "gcv",
    "cp",
    "prequential_error",
    "select",
    "SelectionResult",
]

_GATE_NAMES = ("alpha", "log_alpha", "beta", "method")
_CRITERIA = ("loo", "gcv", "prequential")


def _check_linear(layer):
    opt = getattr(layer, "optimizer", None)
    reg = getattr(layer, "regressor", None)
    if getattr(layer, "neural", False) and not reg.linear_in_features:
        raise ValueError(
            f"layer: a {type(reg).__name__} memory trained by {type(opt).__name__} (TTT-MLP, Titans, "
            "TTT-Linear with layer norm) is not linear in the values V: its gradient steps depend on V "
            "through a nonlinear model, so there is no smoother matrix (Y = S V fails)"
        )
    if not getattr(opt, "linear_in_values", True):
        raise ValueError(
            f"layer: {type(opt).__name__} is not linear in the values V (its update multiplies value rows "
            "together), so there is no smoother matrix (Y = S V fails)"
        )
    if isinstance(opt, IdentityCovariance) and opt.normalize == "output":
        raise ValueError(
            "layer: linear_attention(normalize='output') rescales every output to unit norm, so Y is not "
            "linear in the values V and has no smoother matrix (Y = S V fails); use normalize=None or 'sum'"
        )


def _check_gates(gates):
    for name in gates:
        if name == "initial_state":
            raise ValueError(
                "initial_state: a non-zero initial memory makes the output affine, not linear, in V; "
                "the smoother matrix describes the layer started from an empty memory"
            )
        if name not in _GATE_NAMES:
            raise ValueError(f"{name}: unexpected keyword; gates are {', '.join(_GATE_NAMES)}")


def _diag(xp, S):
    return xp.linalg.diagonal(S)


def smoother_matrix(layer, Q, K, *, causal=True, **gates):
    r"""The smoother matrix S with :math:`Y = S V` for a layer that is linear in the values.

    Parameters
    ----------
    layer : TestTimeRegression
        Any layer except ``linear_attention(normalize="output")`` (not linear in V: ``ValueError``).
    Q : array of shape (..., T_q, d_k)
        Queries (with ``causal=True``, T_q = T_k / steps_per_token).
    K : array of shape (..., T_k, d_k)
        Keys.
    causal : bool
        ``True``: row t is the layer's output at step t (memory after step t); ``False``: the set
        regression, every query against all pairs.
    **gates
        ``alpha``, ``log_alpha``, ``beta`` (and ``method``), as in the layer's call.

    Returns
    -------
    S : array of shape (..., T_q, T_k)
        ``layer(Q, K, V, causal=causal, **gates) == S @ V`` for every V of shape (..., T_k, d_v).

    Notes
    -----
    The output is linear in V, so running the layer once with :math:`V = I_{T_k}` (d_v = T_k values, the
    unit vectors :math:`e_i`) reads S column by column: :math:`Y_{tj} = \sum_i S_{ti} (e_i)_j = S_{tj}`.
    This is exact for every layer (no closed form per family), at the cost of one call with d_v = T_k.
    Nadaraya-Watson: :math:`S_{ij} = K_{ij}/\sum_l K_{il}`; local polynomial: rows
    :math:`e_1^\top(Z^\top W Z)^{-1} Z^\top W`; kernel ridge: :math:`\kappa(\kappa + \lambda I)^{-1}`; ridge
    least squares: :math:`K(K^\top K + \lambda I)^{-1}K^\top`.

    References
    ----------
    theory.md §2; Hastie & Tibshirani (1990), *Generalized additive models*, §3.4.

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> from ttr_stats.diagnostics import smoother_matrix
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.standard_normal((3, 16, 4))
    >>> layer = tt.recipes.softmax_attention()
    >>> S = smoother_matrix(layer, Q, K)
    >>> bool(np.allclose(S @ V, layer(Q, K, V), rtol=0, atol=1e-12))
    True
    """
    _check_linear(layer)
    _check_gates(gates)
    xp, a, dtype = _array.as_float_arrays({"Q": Q, "K": K})
    Kx = a["K"]
    if Kx.ndim < 2:
        raise ValueError(f"K must have shape (..., T, d_k), got shape {tuple(Kx.shape)}")
    n = Kx.shape[-2]
    eye = xp.eye(n, dtype=dtype, device=array_api_compat.device(Kx))
    return layer(a["Q"], Kx, eye, causal=causal, **gates)


def effective_dof(S):
    r"""Degrees of freedom of a smoother: :math:`(\operatorname{tr} S, \operatorname{tr} S^\top S)`.

    Parameters
    ----------
    S : array of shape (..., n, n)

    Returns
    -------
    tr_S : array of shape (...)
    tr_StS : array of shape (...)

    Notes
    -----
    :math:`\operatorname{tr} S` is the covariance penalty
    :math:`\sum_i \operatorname{Cov}(\hat y_i, y_i)/\sigma^2` (used by GCV and :math:`C_p`);
    :math:`\operatorname{tr} S^\top S = \sum_{ij} S_{ij}^2` the variance
    :math:`\sum_i \operatorname{Var}\hat y_i/\sigma^2`. For a Gaussian NW kernel in 1-D, interior:
    :math:`\operatorname{tr} S \approx K(0)/h`, :math:`\operatorname{tr} S^\top S \approx R(K)/h`.

    References
    ----------
    theory.md §2; Buja, Hastie & Tibshirani (1989), Linear smoothers and additive models.
    """
    xp, a, _ = _array.as_float_arrays({"S": S})
    S = a["S"]
    if S.ndim < 2 or S.shape[-1] != S.shape[-2]:
        raise ValueError(f"S must have shape (..., n, n), got shape {tuple(S.shape)}")
    return xp.sum(_diag(xp, S), axis=-1), xp.sum(S * S, axis=(-2, -1))


def _set_fit(layer, K, V, gates):
    """S (set regression, Q = K), fitted values S V and the arrays, in the inputs' namespace."""
    xp, K, V = _finite_pairs(K, V)
    if V.ndim < 2:
        raise ValueError(f"V must have shape (..., n, d_v), got shape {tuple(V.shape)}")
    if V.shape[-2] != K.shape[-2]:
        raise ValueError(f"V must have as many pairs as K ({K.shape[-2]}), got {V.shape[-2]}")
    S = smoother_matrix(layer, K, K, causal=False, **gates)
    return xp, S, V, xp.matmul(S, V)


def _finite_pairs(K, V):
    """K and V as arrays of one namespace, refusing NaN / inf (a criterion of NaN values is NaN, and
    :func:`select` would then return its lower bound)."""
    for name, x in (("K", K), ("V", V)):
        if x is None:
            raise TypeError(f"{name} is required: pass an array of shape (..., n, d), not None")
    xp, a, _ = _array.as_float_arrays({"K": K, "V": V})
    for name in ("K", "V"):
        check_finite(xp, name, a[name])
    return xp, a["K"], a["V"]


def loo_residuals(layer, K, V, **gates):
    r"""Leave-one-out residuals :math:`v_i - \hat m^{(-i)}(k_i)` of the set regression, by the shortcut.

    Parameters
    ----------
    layer : TestTimeRegression
    K : array of shape (..., n, d_k)
    V : array of shape (..., n, d_v)
    **gates
        As in the layer's call (``beta`` acts as sample weights).

    Returns
    -------
    array of shape (..., n, d_v)
        :math:`(v_i - \hat v_i)/(1 - S_{ii})` with :math:`\hat V = S V`, S from ``causal=False`` and Q = K.
        A pair the smoother interpolates (:math:`S_{ii} = 1`) gets ``inf`` / ``nan``.

    Notes
    -----
    The shortcut is exact when refitting without pair i equals the full fit with :math:`v_i` replaced by
    its own leave-one-out prediction (the estimator is a weighted fit in which dropping a pair only zeroes
    its weight). That holds for Nadaraya-Watson / softmax attention, local polynomials of any degree with
    ``ridge=0``, kernel ridge, ridge least squares (``least_squares``, ``mesa``) and RLS with
    ``forgetting=1`` (theory §2; agreement to rounding). It is **not** exact for

    * local polynomials with ``ridge > 0``: the penalty :math:`\lambda\omega\|B\|^2` is scaled by
      :math:`\omega = \sum_j w_j`, which loses :math:`w_i` when pair i is dropped (a small difference);
    * position-dependent weights (``ExponentialDecay``, gates, windows) and RLS with ``forgetting < 1``
      (the prior decays by :math:`\gamma^n`): dropping pair i shifts the position of every later pair;
    * online solvers (delta rule / DeltaNet, LMS, NLMS, Longhorn, batch GD with few steps): their memory is
      not the minimiser of a weighted objective, so it is not refit-invariant.

    For those the returned values are the shortcut applied to their S, not brute-force LOO residuals.

    Numerically the shortcut loses about :math:`\epsilon/(1 - S_{ii})` relative accuracy: a smoother that
    (nearly) interpolates, e.g. softmax attention at a large logit scale whose self-weight rounds to 1, gives
    0/0 = NaN although the true LOO residual is finite (use :func:`prequential_error` there).

    References
    ----------
    theory.md §2; Hastie, Tibshirani & Friedman (2009), *Elements of Statistical Learning*, eq. (7.52).
    """
    xp, S, V, Yhat = _set_fit(layer, K, V, gates)
    one = xp.ones((), dtype=S.dtype, device=_array.device(S))
    with _array.quiet_overflow(xp):
        return (V - Yhat) / (one - _diag(xp, S))[..., None]


def _rss(xp, V, Yhat):
    """Mean squared residual norm n^{-1} sum_i ||v_i - vhat_i||^2, shape (...)."""
    R = V - Yhat
    return xp.mean(xp.sum(R * R, axis=-1), axis=-1)


def gcv(layer, K, V, **gates):
    r"""Generalised cross-validation of the set regression.

    Parameters
    ----------
    layer : TestTimeRegression
    K : array of shape (..., n, d_k)
    V : array of shape (..., n, d_v)
    **gates
        As in the layer's call.

    Returns
    -------
    array of shape (...)

    Notes
    -----
    .. math:: \mathrm{GCV} = \frac{n^{-1}\sum_i \|v_i - \hat v_i\|^2}{(1 - \operatorname{tr} S / n)^2},

    the LOO shortcut with every :math:`S_{ii}` replaced by their mean (Craven & Wahba 1979).

    References
    ----------
    theory.md §2.
    """
    xp, S, V, Yhat = _set_fit(layer, K, V, gates)
    n = S.shape[-1]
    trS = xp.sum(_diag(xp, S), axis=-1)
    with _array.quiet_overflow(xp):
        return _rss(xp, V, Yhat) / (1.0 - trS / n) ** 2


def cp(layer, K, V, sigma2, **gates):
    r"""Mallows' :math:`C_p` of the set regression.

    Parameters
    ----------
    layer : TestTimeRegression
    K : array of shape (..., n, d_k)
    V : array of shape (..., n, d_v)
    sigma2 : float >= 0 or array of shape (...)
        The noise variance :math:`\sigma^2` of each value component.
    **gates
        As in the layer's call.

    Returns
    -------
    array of shape (...)

    Notes
    -----
    .. math:: C_p = n^{-1}\|V - \hat V\|_F^2 + 2\sigma^2 d_v \operatorname{tr} S / n,

    (:math:`d_v = 1`: :math:`n^{-1}\|y - \hat y\|^2 + 2\sigma^2\operatorname{tr} S/n`), an unbiased
    estimate of the in-sample prediction error :math:`n^{-1}E\|V^* - \hat V\|_F^2` (fresh noise :math:`V^*`).

    References
    ----------
    theory.md §2; Mallows (1973).
    """
    xp, S, V, Yhat = _set_fit(layer, K, V, gates)
    if not _array.is_array(sigma2):
        if isinstance(sigma2, bool) or not isinstance(sigma2, (int, float)) or not sigma2 >= 0:
            raise ValueError(f"sigma2 must be a number >= 0, got {sigma2!r}")
        if not math.isfinite(sigma2):
            raise ValueError(f"sigma2 must be finite, got {sigma2!r}")
    elif not bool(xp.all(sigma2 >= 0)):
        raise ValueError("sigma2 must be >= 0 everywhere")
    n, d_v = S.shape[-1], V.shape[-1]
    trS = xp.sum(_diag(xp, S), axis=-1)
    return _rss(xp, V, Yhat) + 2.0 * sigma2 * d_v * trS / n


def _slice_gates(layer, gates):
    """Gates of the first T - 1 steps (drop the last step along each gate's time axis)."""
    out = {}
    for name, g in gates.items():
        if name == "method" or g is None:
            out[name] = g
            continue
        xg = g if _array.is_array(g) else np.asarray(g, dtype=np.float64)
        if xg.ndim == 0:
            out[name] = g
            continue
        per_dim = name in ("alpha", "log_alpha") and layer.weights.per_dimension
        if per_dim and xg.ndim < 2:
            raise ValueError(f"{name} must have shape (..., T, d_k) for per-dimension decay")
        out[name] = xg[..., :-1, :] if per_dim else xg[..., :-1]
    return out


def prequential_error(layer, K, V, **gates):
    r"""One-step-ahead (prequential) squared error of the causal layer at every step.

    Parameters
    ----------
    layer : TestTimeRegression
        One write per token (``steps_per_token == 1``).
    K : array of shape (..., T, d_k)
    V : array of shape (..., T, d_v)
    **gates
        ``alpha``/``log_alpha`` of shape (..., T) (or (..., T, d_k)), ``beta`` of shape (..., T), ``method``.

    Returns
    -------
    array of shape (..., T)
        :math:`e_t = \|v_t - m_{t-1}(k_t)\|^2`, with :math:`m_0 = 0` (the empty memory predicts 0).

    Notes
    -----
    :math:`m_{t-1}` is the memory after step t - 1 (gates of steps 1..t-1 only). One call of the layer on
    the shifted sequence reads all of them: ``layer(K[1:], K[:-1], V[:-1])[t-1] = m_t(k_{t+1})``
    (0-based rows). The average of :math:`e_t` is an honest criterion for the temperature, bandwidth or
    ridge: every prediction is made before its value is seen (Dawid 1984).

    References
    ----------
    theory.md §2 (last item); Dawid (1984), Statistical theory: the prequential approach.
    """
    _check_linear(layer)
    _check_gates(gates)
    if int(layer.optimizer.steps_per_token) != 1:
        raise ValueError(
            "layer: prequential_error needs one write per token; "
            f"{type(layer.optimizer).__name__} makes {layer.optimizer.steps_per_token}"
        )
    xp, K, V = _finite_pairs(K, V)
    for name, x in (("K", K), ("V", V)):
        if x.ndim < 2:
            raise ValueError(f"{name} must have shape (..., T, d), got shape {tuple(x.shape)}")
    if V.shape[-2] != K.shape[-2]:
        raise ValueError(f"V must have as many steps as K ({K.shape[-2]}), got {V.shape[-2]}")
    first = xp.sum(V[..., :1, :] * V[..., :1, :], axis=-1)  # m_0 = 0 predicts 0
    if K.shape[-2] <= 1:
        return first
    pred = layer(K[..., 1:, :], K[..., :-1, :], V[..., :-1, :], **_slice_gates(layer, gates))
    R = V[..., 1:, :] - pred
    rest = xp.sum(R * R, axis=-1)
    batch = rest.shape[:-1]
    first = xp.broadcast_to(first, batch + (1,))
    return xp.concat([first, rest], axis=-1)


# --------------------------------------------------------------------------------------------------------
# selection
def _criterion_value(layer, K, V, criterion, gates):
    """The scalar criterion (mean over batch dims) of one layer, as a Python float (inf if non-finite)."""
    if criterion == "prequential":
        e = prequential_error(layer, K, V, **gates)
        xp = _array.namespace(e)
        val = xp.mean(e)
    elif criterion == "gcv":
        g = gcv(layer, K, V, **gates)
        val = _array.namespace(g).mean(g)
    else:
        r = loo_residuals(layer, K, V, **gates)
        xp = _array.namespace(r)
        val = xp.mean(xp.sum(r * r, axis=-1))
    val = float(val)
    return val if math.isfinite(val) else math.inf


class SelectionResult:
    """The outcome of :func:`select` (statsmodels style: attributes plus lazy properties).

    Attributes
    ----------
    value : float
        The chosen parameter value (inside ``bounds``).
    criterion : float
        The criterion at ``value``.
    criterion_name : {"loo", "gcv", "prequential"}
    param : str
        The nested parameter name.
    bounds : tuple of float
    log : bool
        Whether the search ran in log space.
    """

    def __init__(self, base_layer, param, criterion_name, evaluations, bounds, log):
        self._base = base_layer
        self._evals = dict(evaluations)
        self.param = param
        self.criterion_name = criterion_name
        self.bounds = tuple(bounds)
        self.log = log
        self.value, self.criterion = min(self._evals.items(), key=lambda kv: (kv[1], kv[0]))

    @functools.cached_property
    def path(self):
        """Array of shape (m, 2): every evaluated ``(value, criterion)`` pair, sorted by value."""
        return np.array(sorted(self._evals.items()), dtype=np.float64).reshape(-1, 2)

    @functools.cached_property
    def layer(self):
        """A clone of the input layer with ``param`` set to :attr:`value` (the input is untouched)."""
        out = clone(self._base)
        out.set_params(**{self.param: self.value})
        return out

    @property
    def n_evaluations(self):
        """How many distinct values were evaluated."""
        return len(self._evals)

    def plot(self, ax=None, **kwargs):
        """Criterion against the parameter, the choice marked; returns the matplotlib Axes.

        ``ax`` defaults to a new :class:`matplotlib.figure.Figure`'s axes; ``kwargs`` go to ``ax.plot``.
        """
        if ax is None:
            from matplotlib.figure import Figure

            ax = Figure(figsize=(5, 3.5), layout="constrained").subplots()
        p = self.path
        finite = np.isfinite(p[:, 1])
        line = ax.plot(p[finite, 0], p[finite, 1], marker=".", label=self.criterion_name, **kwargs)[0]
        ax.plot([self.value], [self.criterion], marker="*", markersize=12, color=line.get_color())
        ax.axvline(self.value, color=line.get_color(), linewidth=0.6, linestyle=":")
        if self.log:
            ax.set_xscale("log")
        ax.set_xlabel(self.param)
        ax.set_ylabel(f"{self.criterion_name} criterion")
        return ax

    def __repr__(self):
        return (
            f"SelectionResult(param={self.param!r}, value={self.value:.6g}, "
            f"criterion={self.criterion_name!r}, "
            f"criterion_value={self.criterion:.6g}, n_evaluations={self.n_evaluations}, "
            f"bounds={self.bounds})"
        )


def _check_bounds(layer, param, bounds, log):
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bounds must be a pair (lo, hi) of numbers, got {bounds!r}") from exc
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo < hi:
        raise ValueError(f"bounds must satisfy lo < hi (finite), got {bounds!r}")
    if log and not lo > 0:
        raise ValueError(
            f"bounds must satisfy 0 < lo < hi for the positive parameter {param!r} (searched in log space), "
            f"got {bounds!r}"
        )
    for v in (lo, hi):  # the endpoints must be valid values of the parameter
        probe = clone(layer)
        probe.set_params(**{param: v})
        try:
            probe.weights._validate()
            probe.regressor._validate()
            probe.optimizer._validate()
        except ValueError as exc:
            raise ValueError(f"bounds: {v!r} is not a valid {param}: {exc}") from exc
    return lo, hi


def select(
    layer,
    K,
    V,
    param,
    criterion="loo",
    bounds=None,
    n_grid=16,
    *,
    log=True,
    refine=True,
    xatol=1e-3,
    **gates,
):
    r"""Choose one hyperparameter of a layer by LOO, GCV or the prequential error.

    Parameters
    ----------
    layer : TestTimeRegression
        Not modified (the search runs on clones).
    K : array of shape (..., n, d_k)
    V : array of shape (..., n, d_v)
    param : str
        A nested parameter name: ``"regressor__similarity__bandwidth"``, ``"regressor__similarity__scale"``,
        ``"regressor__ridge"``, ``"optimizer__ridge"``, ...
    criterion : {"loo", "gcv", "prequential"}
        ``"loo"`` and ``"gcv"`` score the set regression (``causal=False``), ``"prequential"`` the causal
        layer's one-step-ahead error. Each is averaged over pairs and batch dims (one shared value).
    bounds : (lo, hi)
        The search interval; ``0 < lo < hi`` for a positive parameter (``log=True``). The result never
        leaves it.
    n_grid : int >= 2
        Points of the initial grid (log-spaced when ``log``).
    log : bool
        Search in log space (positive parameters: scale, bandwidth, ridge).
    refine : bool
        Refine the best grid point by :func:`scipy.optimize.minimize_scalar` (``method="bounded"``) between
        its grid neighbours.
    xatol : float
        Absolute tolerance of the refinement (in log space when ``log``).
    **gates
        As in the layer's call.

    Returns
    -------
    SelectionResult
        ``.value``, ``.criterion``, ``.path`` (evaluated pairs, sorted), ``.layer`` (a clone set to the
        value), ``.plot(ax=None)``.

    Notes
    -----
    A grid first (criteria of smoothing parameters are often multimodal or flat at the ends), then a bounded
    Brent search in the bracket around the grid minimiser. Values where the layer fails numerically
    (``FloatingPointError``, e.g. a kernel-ridge Cholesky with a tiny ridge) score ``inf``.

    References
    ----------
    theory.md §2.

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> from ttr_stats.diagnostics import select
    >>> rng = np.random.default_rng(0)
    >>> K = rng.uniform(size=(100, 1))
    >>> V = np.sin(6 * K) + 0.2 * rng.standard_normal((100, 1))
    >>> layer = tt.TestTimeRegression(
    ...     regressor=tt.regressors.LocalPolynomial(0, tt.similarity.Gaussian(0.1)))
    >>> res = select(layer, K, V, "regressor__similarity__bandwidth", "gcv", bounds=(0.01, 1.0))
    >>> 0.01 <= res.value <= 1.0
    True
    """
    from scipy.optimize import minimize_scalar

    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    if not isinstance(param, str) or param not in layer.get_params(deep=True):
        raise ValueError(
            f"param must be a nested parameter name of the layer (see get_params()), got {param!r}"
        )
    if bounds is None:
        raise ValueError("bounds: give the search interval (lo, hi)")
    if isinstance(n_grid, bool) or not isinstance(n_grid, int) or n_grid < 2:
        raise ValueError(f"n_grid must be an integer >= 2, got {n_grid!r}")
    _check_gates(gates)
    _check_linear(layer)
    log, refine = check_bool("log", log), check_bool("refine", refine)
    _finite_pairs(K, V)
    base = clone(layer)
    lo, hi = _check_bounds(base, param, bounds, log)
    to_x = (lambda v: math.log(v)) if log else (lambda v: v)  # noqa: E731
    from_x = (lambda x: math.exp(x)) if log else (lambda x: x)  # noqa: E731

    evals = {}
    work = clone(base)

    def score(value):
        value = min(max(float(value), lo), hi)  # never outside the bounds, even by rounding
        if value not in evals:
            work.set_params(**{param: value})
            try:
                evals[value] = _criterion_value(work, K, V, criterion, gates)
            except FloatingPointError:
                evals[value] = math.inf
        return evals[value]

    xs = np.linspace(to_x(lo), to_x(hi), n_grid)
    grid = [lo] + [from_x(x) for x in xs[1:-1]] + [hi]  # exact endpoints
    crit = [score(v) for v in grid]
    if not any(math.isfinite(c) for c in crit):
        # argmin of all-inf is the lower bound: a finite-looking answer that nothing supports
        raise FloatingPointError(
            f"criterion={criterion!r} is not finite at any of the {n_grid} grid values of {param} in "
            f"[{lo:g}, {hi:g}] (the layer fails or interpolates there); change bounds, or use "
            "criterion='prequential', which stays finite where the LOO shortcut divides by 1 - S_ii = 0"
        )
    i = int(np.argmin(crit))
    if refine and math.isfinite(crit[i]):
        a, b = to_x(grid[max(i - 1, 0)]), to_x(grid[min(i + 1, n_grid - 1)])
        minimize_scalar(lambda x: score(from_x(x)), bounds=(a, b), method="bounded", options={"xatol": xatol})
    return SelectionResult(base, param, criterion, evals, (lo, hi), log)
