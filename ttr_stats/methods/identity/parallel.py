r"""The parallel (T x T masked) form of the identity-covariance family.

.. math:: Y = (Q K^\top \circ \Gamma) V + c \circ (Q M_0^\top),\qquad
          \Gamma_{ti} = \beta_i \prod_{j=i+1}^t \alpha_j

(per-dimension decay: :math:`A_{ti} = \sum_d q_{td} k_{id} \beta_i \prod_{j=i+1}^t \alpha_{jd}`).
The decays are exponentiated segment sums of log-gates, so no factor :math:`e^{+\sum g}` is ever formed
and strong decay cannot overflow. Memory O(T^2).
"""

from __future__ import annotations

from ...optimizers import LinearAttentionState
from .._dense import initial_decay, parallel_bytes, per_dimension_decay, scalar_decay
from .._rules import parallel_rule
from ..problem import initial_state
from ..registry import register

#: most elements of one (..., T, T, d_k) per-dimension decay tensor: CuPy's kernels index some
#: intermediates with 32-bit integers (seen on an H200: wrong GLA outputs at B = 8, H = 16, T = 1024,
#: d = 64, 2^33 elements), so the batch is run in slices that keep each under 2^31
MAX_ELEMENTS = 2**31 - 1


def parallel(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v).

    Per-dimension decay builds a (..., T, T, d_k) tensor; past :data:`MAX_ELEMENTS` the batch runs in
    slices (each sequence alone must fit, else a ``MemoryError`` names ``method="chunked"``).
    """
    if P.g.shape[-1] > 1 and P.n_batch * P.T * P.T * P.d_k > MAX_ELEMENTS:
        return in_slices(_parallel, "parallel", P.T * P.T * P.d_k, layer, P)
    return _parallel(layer, P)


def in_slices(run, name, per_seq, layer, P):
    """``run(layer, P)`` over slices of the flattened batch whose intermediates (``per_seq`` elements a
    sequence) stay under :data:`MAX_ELEMENTS`."""
    xp = P.xp
    if per_seq > MAX_ELEMENTS:
        raise MemoryError(
            f"method={name!r} with per-dimension decay needs a T x T x d_k = {P.T} x {P.T} x {P.d_k} "
            f"tensor per sequence ({per_seq} elements, over 2^31 - 1); use method='chunked' (O(T d) memory)"
        )
    n, bs = P.n_batch, P.batch_shape
    s0 = initial_state(layer.optimizer, P)

    def flat(x, tail):
        return xp.reshape(xp.broadcast_to(x, bs + tail), (n,) + tail)

    Q, K, V = flat(P.Q, P.Q.shape[-2:]), flat(P.K, P.K.shape[-2:]), flat(P.V, P.V.shape[-2:])
    g, b = flat(P.g, P.g.shape[-2:]), flat(P.b, P.b.shape[-1:])
    M0, z0 = flat(s0.M, (P.d_v, P.d_k)), flat(s0.z, (P.d_k,))
    lengths = None if P.lengths is None else flat(P.lengths, ())
    step = max(1, MAX_ELEMENTS // per_seq)
    ys, Ms, zs = [], [], []
    for a in range(0, n, step):
        sl = slice(a, min(n, a + step))
        Ps = P._replace(
            Q=Q[sl], K=K[sl], V=V[sl], g=g[sl], b=b[sl], batch_shape=(sl.stop - a,),
            state0=LinearAttentionState(M0[sl], z0[sl]), lengths=None if lengths is None else lengths[sl],
        )  # fmt: skip
        y, st = run(layer, Ps)
        ys.append(y)
        Ms.append(st.M)
        zs.append(st.z)
    Y = xp.reshape(xp.concat(ys, axis=0), bs + (P.T, P.d_v))
    M = xp.reshape(xp.concat(Ms, axis=0), bs + (P.d_v, P.d_k))
    z = xp.reshape(xp.concat(zs, axis=0), bs + (P.d_k,))
    return Y, LinearAttentionState(M, z)


def _parallel(layer, P):
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    c = initial_decay(xp, P)
    if P.g.shape[-1] > 1:
        E = per_dimension_decay(xp, P)  # (..., T, T, d)
        A = xp.sum(P.Q[..., :, None, :] * P.K[..., None, :, :] * E, axis=-1)
        last = E[..., -1, :, :] if P.T else None
    else:
        W = scalar_decay(xp, P)
        A = xp.matmul(P.Q, xp.matrix_transpose(P.K)) * W
        # the scalar weights of the last row, repeated over d_k
        last = xp.broadcast_to(W[..., -1, :, None], P.K.shape) if P.T else None
    Qc = P.Q * c
    y = xp.matmul(A, P.V) + xp.matmul(Qc, xp.matrix_transpose(s0.M))
    denom = xp.sum(A, axis=-1) + xp.sum(Qc * s0.z[..., None, :], axis=-1)
    y = opt.finish(xp, y, denom)
    if not P.T:
        return y, s0
    cT = c[..., -1, :]
    M = xp.matmul(xp.matrix_transpose(P.V), last * P.K) + s0.M * cT[..., None, :]
    z = xp.sum(last * P.K, axis=-2) + s0.z * cT
    return y, LinearAttentionState(M, z)


register(
    "parallel",
    "identity",
    run=parallel,
    memory=parallel_bytes,
    auto=parallel_rule(parallel_bytes),
    rank=10,
    window=True,
    per_dimension=True,
    summary="(Q K^T o Gamma) V, O(T^2) memory",
)
