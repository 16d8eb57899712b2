r"""``TestTimeRegression``: a sequence layer as weights x regressor x optimizer."""

from __future__ import annotations

import math

from sklearn.base import BaseEstimator

from . import _array
from ._gates import check_beta, resolve_log_alpha
from ._validation import check_finite
from .methods import AUTO_MEMORY_BUDGET, METHODS, Problem, estimate_bytes, support_table
from .optimizers import ClosedForm, Optimizer
from .regressors import Linear, Regressor
from .weights import Uniform, Weights

__all__ = ["TestTimeRegression"]

_METHOD_NAMES = ("auto", "recurrent", "direct", "parallel")


def broadcast_shapes(named):
    """Broadcast batch shapes given as ``{name: shape}``; the error names every argument."""
    out = ()
    for shape in named.values():
        n = max(len(out), len(shape))
        a = (1,) * (n - len(out)) + tuple(out)
        b = (1,) * (n - len(shape)) + tuple(shape)
        res = []
        for x, y in zip(a, b, strict=True):
            if x != y and x != 1 and y != 1:
                desc = ", ".join(f"{k} {tuple(v)}" for k, v in named.items())
                raise ValueError(f"batch dimensions do not broadcast: {desc}")
            res.append(max(x, y) if x != 1 else y)
        out = tuple(res)
    return out


class TestTimeRegression(BaseEstimator):
    r"""A causal sequence layer defined by the test-time regression it solves.

    At every step t the layer memorises by regression and retrieves by evaluation:

    .. math::

        m_t = \arg\min_{m\in\mathcal M} \tfrac12 \sum_{i\le t} \gamma_i^{(t)} \|v_i - m(k_i)\|^2,
        \qquad y_t = m_t(q_t),

    where the **weights** give :math:`\gamma_i^{(t)}`, the **regressor** the function class
    :math:`\mathcal M` and the **optimizer** how the problem is (approximately) solved.

    Parameters
    ----------
    weights : Weights, default Uniform()
    regressor : Regressor, default Linear()
    optimizer : Optimizer, default ClosedForm()

    Attributes
    ----------
    method_ : str
        The method used by the last call (what ``method="auto"`` chose).

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.standard_normal((3, 2, 32, 8))
    >>> layer = tt.TestTimeRegression(tt.weights.ExponentialDecay(0.95),
    ...                               tt.regressors.Linear(),
    ...                               tt.optimizers.RecursiveLeastSquares(ridge=1e-2))
    >>> Y = layer(Q, K, V)
    >>> Y.shape, layer.method_
    ((2, 32, 8), 'recurrent')

    References
    ----------
    Wang, Shi & Fox (2025), *Test-time regression: a unifying framework for designing sequence models with
    associative memory*, arXiv 2501.12352.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, weights=None, regressor=None, optimizer=None):
        self.weights = Uniform() if weights is None else weights
        self.regressor = Linear() if regressor is None else regressor
        self.optimizer = ClosedForm() if optimizer is None else optimizer
        self._check_components()

    # ------------------------------------------------------------------------------------------------
    def _check_components(self):
        w, r, o = self.weights, self.regressor, self.optimizer
        if not isinstance(w, Weights):
            raise TypeError(f"weights must be a ttr_stats.weights.Weights, got {type(w).__name__}")
        if not isinstance(r, Regressor):
            raise TypeError(f"regressor must be a ttr_stats.regressors.Regressor, got {type(r).__name__}")
        if not isinstance(o, Optimizer):
            raise TypeError(f"optimizer must be a ttr_stats.optimizers.Optimizer, got {type(o).__name__}")
        if not r.linear_in_features:
            raise ValueError(f"{type(r).__name__} is not linear in features; {type(o).__name__} needs one")
        if w.window is not None and not o.supports_window:
            raise ValueError(
                f"weights: {type(w).__name__} needs an optimizer with additive statistics; "
                f"{type(o).__name__} has none.\n{support_table()}"
            )
        if w.per_dimension and not o.supports_per_dimension:
            raise ValueError(
                f"weights: per-dimension decay is not a scalar-weighted regression; only "
                f"IdentityCovariance supports it, not {type(o).__name__}.\n{support_table()}"
            )

    @property
    def supported_methods(self):
        """Methods this layer supports, in the order ``method="auto"`` prefers them."""
        return tuple(self.optimizer.methods)

    # ------------------------------------------------------------------------------------------------
    def _prepare(self, Q, K, V, alpha, log_alpha, beta, initial_state):
        self._check_components()
        self.weights._validate()
        self.optimizer._validate()
        opt = self.optimizer
        xp, a, dtype = _array.as_float_arrays(
            {"Q": Q, "K": K, "V": V, "alpha": alpha, "log_alpha": log_alpha, "beta": beta}
        )
        Q, K, V = a["Q"], a["K"], a["V"]
        for name, x, last in (("Q", Q, "d_k"), ("K", K, "d_k"), ("V", V, "d_v")):
            if x.ndim < 2:
                raise ValueError(f"{name} must have shape (..., T, {last}), got shape {tuple(x.shape)}")
        for name, x in (("Q", Q), ("K", K), ("V", V)):
            check_finite(xp, name, x)
        T, d_k = Q.shape[-2], Q.shape[-1]
        if K.shape[-1] != d_k:
            raise ValueError(f"Q and K must share d_k: Q has d_k = {d_k}, K has d_k = {K.shape[-1]}")
        n_sub = int(opt.steps_per_token)
        T_k = K.shape[-2]
        if T_k != n_sub * T:
            extra = f" ({n_sub} writes per query)" if n_sub > 1 else ""
            raise ValueError(f"K must have {n_sub * T} time steps{extra} to match Q's T = {T}, got {T_k}")
        if V.shape[-2] != T_k:
            raise ValueError(f"V must have the same number of time steps as K ({T_k}), got {V.shape[-2]}")
        d_v = V.shape[-1]
        d_f = self.regressor.n_features(d_k)

        la = resolve_log_alpha(xp, a["alpha"], a["log_alpha"])
        gate_name = "alpha" if a["alpha"] is not None else "log_alpha"
        if la is not None and la.ndim == 0:
            la = xp.broadcast_to(la, (T, d_f) if self.weights.per_dimension else (T,))
        g = self.weights.resolve(xp, la, T=T, d_k=d_f, dtype=dtype)
        lf = opt.log_forgetting()
        if lf:
            g = g + lf
        if opt.needs_positive_decay and bool(xp.any(g == -math.inf)):
            raise ValueError(f"{gate_name}: {type(opt).__name__} divides by the decay; alpha must be > 0")

        b = check_beta(xp, a["beta"])
        if b is None:
            const = opt.default_beta()
            b = xp.full((T_k,), 1.0 if const is None else const, dtype=dtype)
        elif b.ndim == 0:
            b = xp.broadcast_to(b, (T_k,))
        elif b.shape[-1] != T_k:
            raise ValueError(
                f"beta must have shape (..., {T_k}) (one value per written pair), got {tuple(b.shape)}"
            )

        batch = broadcast_shapes(
            {
                "Q": Q.shape[:-2],
                "K": K.shape[:-2],
                "V": V.shape[:-2],
                gate_name: g.shape[:-2],
                "beta": b.shape[:-1],
            }
        )
        Q = xp.broadcast_to(Q, batch + Q.shape[-2:])
        K = xp.broadcast_to(K, batch + K.shape[-2:])
        V = xp.broadcast_to(V, batch + V.shape[-2:])
        g = xp.broadcast_to(g, batch + g.shape[-2:])
        b = xp.broadcast_to(b, batch + b.shape[-1:])
        Qf = self.regressor.features(xp, Q)
        Kf = self.regressor.features(xp, K)
        state0 = None
        if initial_state is not None:
            state0 = opt.check_state(xp, initial_state, batch, d_f, d_v, dtype)
        return Problem(xp, Qf, Kf, V, g, b, self.weights.window, state0, batch, T, d_f, d_v, dtype, n_sub)

    def _choose(self, method, P):
        opt = self.optimizer
        if method not in _METHOD_NAMES:
            raise ValueError(f"method must be one of {_METHOD_NAMES}, got {method!r}")
        if method == "auto":
            for m in opt.methods:
                if m == "recurrent" or estimate_bytes(m, P) <= AUTO_MEMORY_BUDGET:
                    return m
            return "recurrent"
        if method not in opt.methods:
            raise ValueError(
                f"method={method!r} is not supported by {type(opt).__name__}; supported: "
                f"{', '.join(map(repr, opt.methods))}\n{support_table()}"
            )
        return method

    def _check_output(self, xp, Y, what="output"):
        if math.prod(Y.shape) and not bool(xp.all(xp.isfinite(Y))):
            raise FloatingPointError(
                f"{type(self.optimizer).__name__} produced a non-finite {what} from finite inputs: the "
                "recursion diverged or overflowed (e.g. a delta-rule step beyond 2/||k||^2, or RLS wind-up "
                "under strong decay, theory §5). Use float64, a smaller step, or ClosedForm with a ridge."
            )

    # ------------------------------------------------------------------------------------------------
    def __call__(
        self,
        Q,
        K,
        V,
        *,
        alpha=None,
        log_alpha=None,
        beta=None,
        method="auto",
        initial_state=None,
        return_state=False,
    ):
        """Run the layer causally.

        Parameters
        ----------
        Q : array of shape (..., T, d_k)
            Queries.
        K : array of shape (..., T, d_k)
            Keys (``T * steps_per_token`` rows for DeltaProduct).
        V : array of shape (..., T, d_v)
            Values (as many rows as K).
        alpha : array of shape (..., T) or (..., T, d_k), optional
            Decay gates in [0, 1] (per-dimension with ``Gated(per_dimension=True)``); override the
            weights' constant. A scalar is broadcast over time.
        log_alpha : array, optional
            ``log(alpha) <= 0``, the stable alternative; pass at most one of alpha and log_alpha.
        beta : array of shape (..., T), optional
            Write strengths (sample weights for exact/identity-covariance optimizers) or step sizes
            (delta-rule family), > 0; override the optimizer's constant.
        method : {"auto", "recurrent", "direct", "parallel"}
            See :attr:`supported_methods`; ``"auto"`` records its choice in ``method_``.
        initial_state : optimizer state, optional
            The state before step 1 (a ``NamedTuple`` of the optimizer's state type), broadcast over
            batch dims.
        return_state : bool
            Also return the final state.

        Returns
        -------
        Y : array of shape (..., T, d_v)
            ``Y[..., t, :] = m_t(q_t)``, read after step t's update. Same array library as the inputs.
        state : optimizer state
            Only with ``return_state=True``.
        """
        P = self._prepare(Q, K, V, alpha, log_alpha, beta, initial_state)
        m = self._choose(method, P)
        with _array.quiet_overflow(P.xp):  # overflow is reported below as one clear error
            Y, state = METHODS[m](self.optimizer, P)
        self._check_output(P.xp, Y)
        self.method_ = m
        return (Y, state) if return_state else Y

    def memorize(self, K, V, *, alpha=None, log_alpha=None, beta=None, initial_state=None):
        """Write a whole sequence into the memory and return the final state (no reads).

        Parameters
        ----------
        K : array of shape (..., T, d_k)
        V : array of shape (..., T, d_v)
        alpha, log_alpha, beta, initial_state
            As in :meth:`__call__`.

        Returns
        -------
        state : optimizer state after step T
        """
        xp, a, _ = _array.as_float_arrays({"K": K})
        Kx = a["K"]
        if Kx.ndim < 2:
            raise ValueError(f"K must have shape (..., T, d_k), got shape {tuple(Kx.shape)}")
        n_sub = int(self.optimizer.steps_per_token)
        T = Kx.shape[-2] // n_sub
        Q = Kx[..., ::n_sub, :][..., :T, :]  # placeholder queries: never read
        P = self._prepare(Q, K, V, alpha, log_alpha, beta, initial_state)
        with _array.quiet_overflow(P.xp):
            _, state = METHODS["recurrent"](self.optimizer, P, read=False)
        for field in state:
            self._check_output(P.xp, field, what="state")
        return state

    def read(self, state, Q):
        """Evaluate the memory ``state`` at queries ``Q`` without writing.

        Parameters
        ----------
        state : optimizer state with batch dims ``batch``
        Q : array of shape (..., d_k)
            Batch dims broadcast against the state's (e.g. many queries against one memory).

        Returns
        -------
        array of shape (..., d_v)
        """
        xp, a, _ = _array.as_float_arrays({"Q": Q})
        Q = a["Q"]
        check_finite(xp, "Q", Q)
        return self.optimizer.read(state, self.regressor.features(xp, Q))
