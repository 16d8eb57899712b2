"""The generic recurrent loop: the definition of every parametric test-time regression layer.

For t = 1..T: decay the state by alpha_t, write (k_t, v_t) with strength beta_t (``steps_per_token``
pairs for DeltaProduct), remove the pair that leaves a sliding window (unless it is one of the first
``P.sinks``: attention sinks stay), then read y_t = read(state, q_t).
Vectorised over batch dims, a Python loop over t. Registered as the reference (``"recurrent"``) of every
parametric family; every other method is tested against it.
"""

from __future__ import annotations

from ._dense import state_bytes
from .problem import Problem, initial_state
from .registry import register

__all__ = ["recurrent", "loop"]


def loop(opt, P: Problem, *, read=True):
    """Run the generic loop with the pure functions of ``opt``. Returns ``(Y, final_state)``; ``Y`` is None
    when ``read`` is False. Y has shape (*batch_shape, T, d_v).

    With ``P.lengths`` the state is frozen after each sequence's last valid token (so the final state is
    the state after ``lengths`` tokens, whatever the optimizer does with a padded step).
    """
    xp = P.xp
    n = P.steps_per_token
    # an optimizer that declares ``skips_unit_decay`` gets a = None when no gate of the call decays
    # (one check here; the identity family then skips a pass over the state each step)
    unit = getattr(opt, "skips_unit_decay", False) and P.T > 0 and not bool(xp.any(P.g != 0))
    a_all = None if unit else xp.exp(P.g)
    one = None if unit else xp.ones(P.batch_shape + (P.g.shape[-1],), dtype=P.dtype, device=P.device)
    state = initial_state(opt, P)
    ys = []
    for t in range(P.T):
        before = state
        for j in range(n):
            i = t * n + j
            a = one if (j or unit) else a_all[..., t, :]
            state = opt.update(state, P.K[..., i, :], P.V[..., i, :], a, P.b[..., i])
            if P.window is not None and i - P.window >= P.sinks:  # attention sinks never leave
                o = i - P.window  # the pair leaving the window [i - w + 1, i]
                k_o, b_o = P.K[..., o, :], P.b[..., o]
                if not unit:  # its weight now: b_o prod_{j=o+1}^{i} alpha_j (one pair per token here)
                    d = xp.exp(xp.sum(P.g[..., o + 1 : i + 1, :], axis=-2))
                    if d.shape[-1] == 1:
                        b_o = b_o * d[..., 0]
                    else:  # per-dimension decay: the pair's key has decayed coordinate-wise
                        k_o = k_o * d
                state = opt.downdate(state, k_o, P.V[..., o, :], b_o)
        if P.lengths is not None:
            valid = t < P.lengths
            state = type(state)(
                *(
                    xp.where(xp.reshape(valid, valid.shape + (1,) * (new.ndim - valid.ndim)), new, old)
                    for new, old in zip(state, before, strict=True)
                )
            )
        if read:
            ys.append(opt.read(state, P.Q[..., t, :]))
    if not read:
        return None, state
    if ys:
        Y = xp.stack(ys, axis=-2)
    else:
        Y = xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device)
    return Y, state


def recurrent(layer, P: Problem):
    """The ``"recurrent"`` method: :func:`loop` on the layer's (bound) optimizer."""
    return loop(layer._solver(), P)


_COMMON = dict(
    run=recurrent, memory=state_bytes, reference=True, rank=90, summary="the generic loop (definition)"
)
_FULL = ("float32", "float64")  # a solve a step: NumPy has no half-precision linalg
register("recurrent", "identity", window=True, sinks=True, per_dimension=True, **_COMMON)
register("recurrent", "least_squares", window=True, sinks=True, dtypes=_FULL, **_COMMON)
register("recurrent", "batch_gd", window=True, sinks=True, **_COMMON)
# rls: methods/rls/recurrent.py (this loop in float64, with a condition guard)
register("recurrent", "delta", multi_write=True, **_COMMON)
register("recurrent", "neural", **_COMMON)
