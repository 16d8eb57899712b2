"""The optimizer protocol: pure ``init`` / ``update`` / ``read`` functions over a named state.

An optimizer says how the test-time regression is (approximately) solved. In the style of optax it is a
small object with pure functions; its state is a ``NamedTuple`` whose fields diagnostics read by name
(``RLSState(M, P)``). The generic recurrent loop in :mod:`ttr_stats.methods.recurrent` calls, per step t,

* ``update(state, k, v, a, b)`` with the decay factor ``a = alpha_t`` (shape (..., 1), or (..., d_k) for
  per-dimension decay) applied to the state *before* the new pair is written, and the write strength or
  step size ``b = beta_t`` (shape (...));
* ``read(state, q)`` after the update (the current pair is memorised before it is read).
"""

from __future__ import annotations

from typing import NamedTuple

from sklearn.base import BaseEstimator

from .._validation import check_finite

__all__ = [
    "Optimizer",
    "MemoryState",
    "LinearAttentionState",
    "SufficientStatistics",
    "RLSState",
    "matvec",
    "outer",
]


class MemoryState(NamedTuple):
    """State of the delta-rule family: the memory matrix ``M`` of shape (..., d_v, d_k)."""

    M: object


class LinearAttentionState(NamedTuple):
    """State of the identity-covariance family: ``M = sum gamma v k^T`` (..., d_v, d_k) and the
    normaliser ``z = sum gamma k`` (..., d_k) used by sum-normalised linear attention."""

    M: object
    z: object


class SufficientStatistics(NamedTuple):
    r"""Weighted sufficient statistics :math:`R = \sum \gamma k k^\top` (..., d_k, d_k) and
    :math:`S = \sum \gamma v k^\top` (..., d_v, d_k) of the least-squares problem."""

    R: object
    S: object


class RLSState(NamedTuple):
    r"""Recursive least squares: the memory ``M`` (..., d_v, d_k) and ``P`` (..., d_k, d_k), the inverse of
    the (prior-regularised) weighted key covariance :math:`R_t`."""

    M: object
    P: object


def matvec(xp, A, x):
    """``A @ x`` over the last axes: A (..., m, n), x (..., n) -> (..., m), batch dims broadcast."""
    return xp.matmul(A, x[..., None])[..., 0]


def outer(a, b):
    """Batched outer product a (..., m), b (..., n) -> (..., m, n)."""
    return a[..., :, None] * b[..., None, :]


class Optimizer(BaseEstimator):
    """Base class. Subclasses set the class attributes below and implement the pure functions."""

    #: the state type
    State = MemoryState
    #: the family of methods that compute this optimizer (``ttr_stats.methods.registry``)
    family = None
    #: what a user changes when the recursion diverges, named in the layer's FloatingPointError
    #: (``{name}``: the class name); the families override it with their own step or ridge
    divergence_remedy = "Use float64, or rescale the keys and values."
    #: whether the outputs are linear in the values V (a smoother matrix Y = S V exists)
    linear_in_values = True
    #: whether the optimizer solves the weighted regression exactly (the direct method is its definition)
    exact = False
    #: whether ``beta`` multiplies the sample weight ("weight") or is a step size ("step")
    beta_role = "weight"
    #: whether decay gates must be strictly positive (the state is divided by alpha)
    needs_positive_decay = False

    #: number of (k, v) pairs written per query (DeltaProduct writes several)
    steps_per_token = 1

    def _validate(self):
        """Check hyperparameters (called by the layer before computing)."""

    def default_beta(self):
        """Constant write strength / step size used when the call passes no ``beta`` (None means 1)."""
        return None

    def log_forgetting(self) -> float:
        """Extra per-step log-decay owned by the optimizer (RLS forgetting factor); 0 for none."""
        return 0.0

    def bind(self, regressor):
        """The object whose ``init`` / ``update`` / ``read`` the methods run on ``regressor``'s features.

        The linear family works on features and is its own; gradient optimizers over a regressor's
        parameters return a bound copy (:class:`~ttr_stats.optimizers.neural.BoundOptimizer`).
        """
        return self

    # --- the pure functions -------------------------------------------------------------------------
    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def update(self, state, k, v, a, b):  # pragma: no cover - abstract
        raise NotImplementedError

    def downdate(self, state, k, v, b):
        """Remove a pair written earlier with strength ``b`` (sliding windows)."""
        raise NotImplementedError(f"{type(self).__name__} does not support sliding windows")

    def memory(self, state):  # pragma: no cover - abstract
        """The linear memory ``M`` of shape (..., d_v, d_k) that the state represents."""
        raise NotImplementedError

    def read(self, state, q):
        """Retrieval ``y = M q``; q of shape (..., d_k) broadcasts against the state's batch dims."""
        xp = _xp(q)
        return matvec(xp, self.memory(state), q)

    # --- state checking ------------------------------------------------------------------------------
    def check_state(self, xp, state, batch_shape, d_k, d_v, dtype, name="initial_state"):
        """Validate a user-given state and broadcast it to ``batch_shape``; returns a new state."""
        template = self.init(xp, (), d_k, d_v, dtype)
        if not isinstance(state, self.State):
            if len(self.State._fields) == 1 and hasattr(state, "shape"):
                state = self.State(state)
            else:
                raise ValueError(
                    f"{name} must be a {self.State.__name__}{self.State._fields} for {type(self).__name__}, "
                    f"got {type(state).__name__}"
                )
        fields = []
        for field, value, ref in zip(self.State._fields, state, template, strict=True):
            value = xp.asarray(value)
            if value.ndim < ref.ndim or tuple(value.shape[value.ndim - ref.ndim :]) != tuple(ref.shape):
                raise ValueError(
                    f"{name}.{field} must have shape (..., {', '.join(map(str, ref.shape))}), "
                    f"got {tuple(value.shape)}"
                )
            check_finite(xp, f"{name}.{field}", value)
            value = xp.astype(value, dtype)
            try:
                value = xp.broadcast_to(value, tuple(batch_shape) + tuple(ref.shape))
            except ValueError as exc:
                raise ValueError(
                    f"{name}.{field} has batch shape {tuple(value.shape[: value.ndim - ref.ndim])}, "
                    f"which does not broadcast to the inputs' batch shape {tuple(batch_shape)}"
                ) from exc
            fields.append(xp.asarray(value, copy=True))
        return self.State(*fields)


def _xp(x):
    from .._array import namespace

    return namespace(x)
