r"""The memory after the last step, without reading: what ``memorize`` (and the estimator's ``fit``) needs.

The recurrent loop computes every intermediate state only to throw it away when nothing is read. For the
families whose state is a weighted sum of the pairs the last state has a closed form in the weights of the
*last* row, :math:`\Gamma_{Ti} = \beta_i \exp(\sum_{j=i+1}^T g_j)\,\mathbb 1[T - i < w \text{ or } i < s]`
(s attention sinks), and the initial
state decays by :math:`c_T = \exp(\sum_{j\le T} g_j)`:

* identity covariance (linear attention, GLA): :math:`M_T = \sum_i \Gamma_{Ti} v_i k_i^\top + M_0 c_T`,
  :math:`z_T = \sum_i \Gamma_{Ti} k_i + c_T z_0` (per-dimension decay: :math:`\Gamma_{Ti}` per key
  dimension);
* least squares and batch GD: the statistics :math:`R_T = K^\top W K + c_T R_0`,
  :math:`S_T = V^\top W K + c_T S_0`, one matmul each;
* recursive least squares: :math:`R_T = c_T R_0 + K^\top W K`, :math:`S_T = c_T M_0 R_0 + V^\top W K`
  (:math:`R_0 = P_0^{-1}`) and the state :math:`(M, P) = (S_T R_T^{-1}, R_T^{-1})` from one solve. It is
  the more accurate of the two: the loop cancels :math:`P_0 = I/\rho` down to :math:`R_T^{-1}` and loses
  up to :math:`\varepsilon \max_i\|k_i\|^2/\rho` (measured 2e-11 at the default :math:`\rho = 10^{-6}`
  with unit keys), the solve :math:`\mathrm{cond}(R_T)\,\varepsilon`. Where :math:`\mathrm{cond}(R_T)`
  is too large for any digit to be right (wind-up under strong decay) the loop runs, as before.

The log-weights are suffix sums of the log-gates (never :math:`e^{+\sum g}`, and a hard reset
:math:`g = -\infty` stays exact). The other families use a registered ``"chunked"`` method where one runs
the layer and its own ``auto`` rule allows it at that size (its author measured it faster than the loop
there, within memory), else the loop; the neural family always uses the loop (it freezes its state on
padding, and has no closed form). Very short sequences also use the loop: a few updates cost less than the
closed form's setup, and they are the definition itself (one-row ``partial_fit`` stays bitwise the same as
writing that row by hand).
"""

from __future__ import annotations

from .. import _array
from ..optimizers import LinearAttentionState, RLSState, SufficientStatistics
from . import registry
from .problem import Problem, initial_state
from .recurrent import loop

__all__ = ["final_state", "last_row_weights", "LOOP_MAX_T"]

#: up to this many written pairs the loop is used (measured on the host, 2 cores, d = 16: one update
#: costs 9 (identity) to 22 us (RLS), a closed form 17 to 115 us (RLS from an initial state inverts P_0);
#: the loop is faster up to T = 2 and slower from T = 4 on)
LOOP_MAX_T = 2

#: the recursive-least-squares closed form is used while cond(R_T) * eps stays below this
RLS_MAX_COND_EPS = 1e-6


def last_row_weights(xp, P: Problem):
    r"""The weights of every pair in the last state and the decay of the initial state.

    Parameters
    ----------
    xp : array namespace
    P : Problem
        One pair per token (``steps_per_token == 1``).

    Returns
    -------
    W : array of shape (*batch, T, 1) or (*batch, T, d_k)
        :math:`\Gamma_{Ti} = \beta_i \exp(\sum_{j>i} g_j)`, zero outside the window (the window of each
        sequence ends at its last valid token when ``P.lengths`` is given, as in the loop, which stops
        downdating there); the first ``P.sinks`` pairs (attention sinks) are inside it always, so the
        state of a sink window layer is that of the sinks plus the window.
    c : array of shape (*batch, 1) or (*batch, d_k)
        :math:`c_T = \exp(\sum_j g_j)`, the decay of the initial state.
    """
    g = P.g
    T = g.shape[-2]
    # suffix[i] = sum_{j >= i} g_j, summed from the end: recent weights (the large ones) add few terms
    suffix = xp.flip(xp.cumulative_sum(xp.flip(g, axis=-2), axis=-2), axis=-2)
    zero = xp.zeros(g.shape[:-2] + (1, g.shape[-1]), dtype=g.dtype, device=P.device)
    after = xp.concat([suffix[..., 1:, :], zero], axis=-2)  # sum_{j > i} g_j
    W = xp.exp(after) * P.b[..., :, None]
    if P.window is not None:
        idx = xp.arange(T, device=P.device)
        end = T if P.lengths is None else P.lengths[..., None]
        keep = idx >= end - P.window  # the last w pairs before the end (later ones have b = 0)
        if P.sinks:  # and the attention sinks, which never leave (weights.SinkWindow)
            keep = keep | (idx < P.sinks)
        W = xp.where(keep[..., None], W, xp.zeros((), dtype=W.dtype, device=_array.device(W)))
    return W, xp.exp(suffix[..., 0, :])


def _identity(opt, xp, P, W, c):
    WK = W * P.K
    M = xp.matmul(xp.matrix_transpose(P.V), WK)
    z = xp.sum(WK, axis=-2)
    if P.state0 is not None:
        M = M + P.state0.M * c[..., None, :]
        z = z + P.state0.z * c
    return LinearAttentionState(M, z)


def _symmetric(xp, A):
    return 0.5 * (A + xp.matrix_transpose(A))


def _statistics(opt, xp, P, W, c):
    WK = W * P.K
    R = _symmetric(xp, xp.matmul(xp.matrix_transpose(WK), P.K))  # the loop's R is exactly symmetric
    S = xp.matmul(xp.matrix_transpose(P.V), WK)
    if P.state0 is not None:
        c2 = c[..., None]
        R = R + c2 * P.state0.R
        S = S + c2 * P.state0.S
    return SufficientStatistics(R, S)


def _is_linalg_error(exc):
    return any(cls.__name__ in ("LinAlgError", "_LinAlgError") for cls in type(exc).__mro__)


def _rls(opt, xp, P, W, c):
    d = P.d_k
    WK = W * P.K
    eye = xp.eye(d, dtype=P.dtype, device=P.device)
    R = _symmetric(xp, xp.matmul(xp.matrix_transpose(WK), P.K))
    S = xp.matmul(xp.matrix_transpose(P.V), WK)
    c2 = c[..., None]
    if P.state0 is None:  # P_0 = I / ridge, M_0 = 0
        R = R + (c2 * float(opt.ridge)) * eye
    else:
        R0 = _symmetric(xp, _array.pd_solve(xp, P.state0.P, xp.broadcast_to(eye, P.state0.P.shape)))
        R = R + c2 * R0
        S = S + c2 * xp.matmul(P.state0.M, R0)
    # one factorisation for both: [P, M^T] = R^{-1} [I, S^T]
    rhs = xp.concat([xp.broadcast_to(eye, R.shape), xp.matrix_transpose(S)], axis=-1)
    try:
        X = _array.pd_solve(xp, R, rhs)
    except Exception as exc:  # a singular R (wind-up): let the definition decide (finite or overflow)
        if _is_linalg_error(exc):
            return None
        raise
    if not bool(xp.all(xp.isfinite(X))):
        return None
    P_T = _symmetric(xp, X[..., :d])
    # cond_inf(R) = ||R|| ||R^{-1}|| (max row sums, d x d: free). Past 1 / (eps * RLS_MAX_COND_EPS) no
    # digit of the state is meaningful (wind-up under strong decay, theory §5.2); the loop then decides,
    # as before: it overflows and the layer raises its FloatingPointError, or returns its own state.
    norm = lambda A: xp.max(xp.sum(xp.abs(A), axis=-1), axis=-1)  # noqa: E731
    eps = float(xp.finfo(P.dtype).eps)
    if float(xp.max(norm(R) * norm(P_T))) * eps > RLS_MAX_COND_EPS:
        return None
    return RLSState(xp.matrix_transpose(X[..., d:]), P_T)


#: family -> closed form ``(opt, xp, P, W, c) -> state or None`` (None: fall back to the loop)
CLOSED_FORMS = {
    "identity": _identity,
    "least_squares": _statistics,
    "batch_gd": _statistics,
    "rls": _rls,
}


def _chunked(layer, P):
    """The registered ``"chunked"`` method that runs ``layer`` and that its own ``auto`` rule allows at
    this size (where it measured itself faster than the loop, within memory), or None."""
    for m in registry.supported(layer):
        if m.name == "chunked":
            return m if m.auto(P, _array.free_device_bytes(P.xp, P.device)) else None
    return None


def final_state(layer, P: Problem):
    """The state after the last step of ``P``: the recurrent loop's final state, to rounding.

    Parameters
    ----------
    layer : TestTimeRegression
        A parametric layer (linear or neural).
    P : Problem
        The prepared call (its queries are never read).

    Returns
    -------
    state : the optimizer's state type, batch shape ``P.batch_shape``
    """
    xp = P.xp
    family = registry.family_of(layer)
    n_pairs = P.K.shape[-2]
    if n_pairs == 0:
        return initial_state(layer._solver(), P)
    if family == "generalized_delta":  # a token from several rows together: the family's own loop
        return registry.reference(family).run(layer, P)[1]
    closed = CLOSED_FORMS.get(family)
    if n_pairs > LOOP_MAX_T and closed is not None and P.steps_per_token == 1:
        W, c = last_row_weights(xp, P)
        state = closed(layer.optimizer, xp, P, W, c)
        if state is not None:
            return state
    elif n_pairs > LOOP_MAX_T and family != "neural":
        m = _chunked(layer, P)
        if m is not None:
            return m.run(layer, P)[1]
    return loop(layer._solver(), P, read=False)[1]
