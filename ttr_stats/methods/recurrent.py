"""The generic recurrent loop: the definition of every test-time regression layer.

For t = 1..T: decay the state by alpha_t, write (k_t, v_t) with strength beta_t, remove the pair that
leaves a sliding window, then read y_t = read(state, q_t). Vectorised over batch dims, a Python loop over t.
"""

from __future__ import annotations

from typing import NamedTuple


class Problem(NamedTuple):
    """A validated call, ready for a method.

    Attributes
    ----------
    Q : array of shape (*batch_shape, T, d_k)
        Queries after the regressor's feature map.
    K : array of shape (*batch_shape, T * n_sub, d_k)
    V : array of shape (*batch_shape, T * n_sub, d_v)
    g : array of shape (*batch_shape, T, 1) or (*batch_shape, T, d_k)
        Per-token log-decay (weights' decay plus the optimizer's forgetting factor).
    b : array of shape (*batch_shape, T * n_sub)
        Write strengths / step sizes.
    window : int or None
    state0 : optimizer state or None
    """

    xp: object
    Q: object
    K: object
    V: object
    g: object
    b: object
    window: object
    state0: object
    batch_shape: tuple
    T: int
    d_k: int
    d_v: int
    dtype: object
    n_sub: int


def initial_state(opt, P: Problem):
    if P.state0 is not None:
        return P.state0
    return opt.init(P.xp, P.batch_shape, P.d_k, P.d_v, P.dtype)


def recurrent(opt, P: Problem, *, read=True):
    """Run the generic loop. Returns ``(Y, final_state)``; ``Y`` is None when ``read`` is False.

    Y has shape (*batch_shape, T, d_v).
    """
    xp = P.xp
    a_all = xp.exp(P.g)
    one = xp.ones(P.batch_shape + (P.g.shape[-1],), dtype=P.dtype)
    state = initial_state(opt, P)
    ys = []
    for t in range(P.T):
        for j in range(P.n_sub):
            i = t * P.n_sub + j
            a = a_all[..., t, :] if j == 0 else one
            state = opt.update(state, P.K[..., i, :], P.V[..., i, :], a, P.b[..., i])
            if P.window is not None and i >= P.window:
                o = i - P.window  # the pair leaving the window [i - w + 1, i]
                state = opt.downdate(state, P.K[..., o, :], P.V[..., o, :], P.b[..., o])
        if read:
            ys.append(opt.read(state, P.Q[..., t, :]))
    if not read:
        return None, state
    if ys:
        Y = xp.stack(ys, axis=-2)
    else:
        Y = xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype)
    return Y, state
