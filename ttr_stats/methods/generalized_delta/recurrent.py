"""The ``"recurrent"`` reference of the generalized-delta family: one :meth:`write` per token.

For t = 1..T the optimizer reads the token's ``steps_per_token`` rows of K, V and b together (GDN-2's
erase and write gates, DPLR's low-rank pair) and its decay gate ``alpha_t`` (scalar or per key channel),
then y_t = M_t q_t. With ``P.lengths`` the state is frozen after each sequence's last valid token, as in
the generic loop (:func:`ttr_stats.methods.recurrent.loop`).
"""

from __future__ import annotations

from .._dense import state_bytes
from ..problem import Problem, initial_state
from ..registry import register

__all__ = ["recurrent"]


def recurrent(layer, P: Problem):
    opt = layer._solver()
    xp, n = P.xp, P.steps_per_token
    a_all = xp.exp(P.g)
    K = xp.reshape(P.K, P.batch_shape + (P.T, n, P.d_k))
    V = xp.reshape(P.V, P.batch_shape + (P.T, n, P.d_v))
    b = xp.reshape(P.b, P.batch_shape + (P.T, n))
    state = initial_state(opt, P)
    ys = []
    for t in range(P.T):
        new = opt.write(state, K[..., t, :, :], V[..., t, :, :], a_all[..., t, :], b[..., t, :])
        if P.lengths is not None:
            valid = t < P.lengths
            new = type(state)(
                *(
                    xp.where(xp.reshape(valid, valid.shape + (1,) * (f.ndim - valid.ndim)), f, old)
                    for f, old in zip(new, state, strict=True)
                )
            )
        state = new
        ys.append(opt.read(state, P.Q[..., t, :]))
    if ys:
        Y = xp.stack(ys, axis=-2)
    else:
        Y = xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device)
    return Y, state


register(
    "recurrent", "generalized_delta", run=recurrent, memory=state_bytes, reference=True, rank=90,
    per_dimension=True, multi_write=True, summary="one write per token from its rows (definition)",
)  # fmt: skip
