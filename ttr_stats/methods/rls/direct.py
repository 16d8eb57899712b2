r"""The direct method of recursive least squares: the closed form RLS computes, on every prefix.

.. math:: y_t = S_t (R_t)^{-1} q_t,\qquad R_t = \sum_{i\le t}\Gamma_{ti} k_i k_i^\top + c_t R_0,\quad
          S_t = \sum_{i\le t}\Gamma_{ti} v_i k_i^\top + c_t M_0 R_0,

with the prior precision :math:`R_0 = P_0^{-1}` decaying with the forgetting factor
(:math:`c_t = \prod_{j\le t}\gamma_j`). Memory O(T (T + d^2)).

Computed in float64 (float32 inputs too, cast back at the end), each :math:`R_t` inverted by Cholesky.
Guarantee: a returned output solves a prefix system with :math:`\|R_t\|_F \|R_t^{-1}\|_F\,\epsilon \le`
:data:`COND_LIMIT` (1e-6 under decay; 1e-3 without, where a large cond(R_t) comes from a small ridge and
the excited directions stay accurate). Otherwise, as under
strong decay, where the prior and the old pairs fade faster than the keys excite every direction, it raises
``FloatingPointError`` naming the gate and the remedy (before: a raw ``numpy.linalg.LinAlgError`` from
log alpha = -20 on, and 0.64 of max |V| wrong at -5 without an error).
"""

from __future__ import annotations

from ..._gates import check_decay_representable
from ...optimizers import RLSState
from .._dense import direct_bytes, initial_decay, pair_sums, scalar_decay
from ..least_squares._prefix import Singular, pd_inverse, singular_error
from ..problem import initial_state
from ..registry import register
from .chunked import REMEDY

#: refuse a prefix system whose condition estimate times eps exceeds this, under decay (kept 6 digits)
COND_LIMIT = 1e-6
#: ... and without decay, where the large cond(R_t) comes from the prior (ridge small next to |k|^2) and the
#: solve stays accurate in the directions the keys excite (the loop's and chunked method's limit)
NO_DECAY_LIMIT = 1e-3


def direct(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v)."""
    opt = layer.optimizer
    xp = P.xp
    wd = xp.float64
    check_decay_representable(xp, P.g, type(opt).__name__, dtype=wd)
    up = lambda x: x if x.dtype == wd else xp.astype(x, wd)  # noqa: E731
    back = lambda x: x if x.dtype == P.dtype else xp.astype(x, P.dtype)  # noqa: E731
    s0 = initial_state(opt, P)
    if not P.T:
        return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device), s0
    P64 = P._replace(K=up(P.K), V=up(P.V), g=up(P.g), b=up(P.b), dtype=wd)
    W = scalar_decay(xp, P64)
    c2 = initial_decay(xp, P64)[..., :, :, None]
    M0 = up(s0.M)
    R0 = opt.prior_precision(RLSState(M0, up(s0.P)))
    R = pair_sums(xp, W, P64.K, P64.K) + c2 * R0[..., None, :, :]
    R = 0.5 * (R + xp.matrix_transpose(R))
    S = pair_sums(xp, W, P64.V, P64.K) + c2 * xp.matmul(M0, R0)[..., None, :, :]
    try:
        Pinv, cond = pd_inverse(xp, R)  # (..., T, d, d), (..., T)
    except Singular as exc:
        raise singular_error(layer, _first_singular(xp, R), exc.detail, REMEDY) from None
    decayed = bool(xp.any(P.g != 0))
    limit = COND_LIMIT if decayed else NO_DECAY_LIMIT
    ill = ~(cond * float(xp.finfo(wd).eps) <= limit)  # NaN included
    if bool(xp.any(ill)):
        t = int(xp.min(xp.where(ill, xp.arange(P.T, device=P.device), xp.asarray(P.T, device=P.device))))
        detail = f"||R_t||_F ||R_t^-1||_F eps > {limit:g}"
        if decayed:
            raise singular_error(layer, t, detail, REMEDY)
        raise FloatingPointError(
            f"{type(opt).__name__}: the prefix system R_t near t = {t} is numerically singular ({detail}): "
            f"the prior I / ridge (ridge={getattr(opt, 'ridge', None)!r}) is too large next to the keys, and "
            "its solution would be a finite wrong number. Use a larger ridge or rescale the keys."
        )
    y = xp.matmul(S, xp.matmul(Pinv, up(P.Q)[..., None]))[..., 0]
    PT = Pinv[..., -1, :, :]
    return back(y), RLSState(back(xp.matmul(S[..., -1, :, :], PT)), back(PT))


def _first_singular(xp, R):
    """The first prefix whose system does not factor (the error path only)."""
    from ..least_squares._prefix import cholesky

    for t in range(R.shape[-3]):
        try:
            cholesky(xp, R[..., t, :, :])
        except Singular:
            return t
    return R.shape[-3]


register(
    "direct",
    "rls",
    run=direct,
    memory=direct_bytes,
    rank=95,  # never chosen by auto: the loop is exact and O(T d^2)
    summary="the closed form RLS computes, solved per prefix (float64, refuses ill-conditioned prefixes)",
    dtypes=("float32", "float64"),  # factorisations: NumPy has no half-precision linalg
)
