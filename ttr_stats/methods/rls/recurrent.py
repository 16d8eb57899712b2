r"""The recurrent method of recursive least squares: the generic loop, in float64, with a condition guard.

The loop runs :meth:`RecursiveLeastSquares.update <ttr_stats.optimizers.RecursiveLeastSquares.update>`
(Sherman-Morrison) step by step, as for every parametric family, with two additions that make it right or
loud:

* **float64 throughout.** Float32 (and float16) inputs are computed in float64 and the outputs and final
  state cast back. From the default :math:`P_0 = 10^6 I` a float32 state cannot resolve the first d_k
  updates (cond :math:`\sim 10^7 > 1/\epsilon_{32}`): a float32 loop was 1.4e-3 (T = 4096) and 3.4e-3
  (T = 16384) of max |y| away from float64; in float64 it is the input rounding only (tests:
  test_rls_reliability).
* **A condition guard.** Beside the state the loop carries the precision :math:`R_t = \gamma_t R_{t-1} +
  \beta_t k_t k_t^\top` (:math:`R_0 = P_0^{-1}`, no cancellation: a sum of nonnegative terms) and the
  estimate :math:`\hat\kappa_t = \|R_t\|_F \|P_t\|_F` (at most d_k times cond_2). The Sherman-Morrison
  update subtracts terms of size :math:`\|P_{t-1}\|` and, under decay, divides the result by
  :math:`\gamma_t`, which amplifies that rounding by :math:`1/\gamma_t`. Measured against exact
  (rational-arithmetic) weighted least squares on 54 sequences (d_k = 3, 5, 8; log alpha -0.5 to -9;
  ridge 1e-6, 1e-2, 1): the output error relative to max |V| was at most
  :math:`4.4 \max_{s\le t} \hat\kappa_s \epsilon / \gamma_s`, and without decay (where P only shrinks)
  below :math:`10^{-2}\,\hat\kappa\epsilon`. The method raises ``FloatingPointError`` (naming the gate and
  the remedy) when :math:`\hat\kappa_t \epsilon / \gamma_t` exceeds :data:`DECAY_LIMIT` (some log-decay
  < 0) or :math:`\hat\kappa_t \epsilon` exceeds :data:`NO_DECAY_LIMIT` (no decay), or the state stops
  being finite.

On NumPy (float64, no ``lengths``) the same loop runs in place (:func:`_numpy_loop`): the very same
update and guard arithmetic, bit for bit, into one scratch buffer, with the guard's precision formed every
:data:`BLOCK` steps and its norm and trace read exactly in between (:class:`_Precision`); every step is
still checked (B = 1, H = 16, T = 1024, d = 64: 1.5x a plain 10-line NumPy RLS loop, from 2.8x).

Guarantee: a returned output is within about 5e-5 of max |V| of the exact weighted least squares solution
(the largest error measured under the limits was 1e-7; at the default ridge without decay, 1e-9). Strong
decay is refused: at ridge 1e-6 and d_k = 6, from about log alpha = -2 on (the exact answer needs cond(R_t)
~ e^{|log alpha| (d_k - 1)}); before this guard the loop returned 0.50 of max |V| wrong at log alpha = -7
and 118 at -10 without an error. The chunked method is exact further (to cond(R_t) ~ 4.5e12).
"""

from __future__ import annotations

import math

import array_api_compat
import numpy as np

from ... import _array
from ..._gates import check_decay_representable
from ..least_squares._prefix import singular_error
from ..problem import initial_state
from ..recurrent import loop
from ..registry import register
from .chunked import REMEDY

#: refuse when kappa_hat * eps / gamma_t exceeds this and some log-decay is < 0 (measured: output error
#: <= 4.4 times the running maximum of kappa_hat * eps / gamma_t)
DECAY_LIMIT = 1e-5
#: ... and without decay (P only shrinks; measured error <= 1e-2 kappa_hat eps): the chunked methods' limit
NO_DECAY_LIMIT = 1e-3
#: refuse when |tr(R_t P_t) / d - 1| exceeds this (P_t has drifted from the inverse of R_t). Measured:
#: 1.6e-6 at most at ridge 1e-10 where the outputs still match statsmodels' recursive least squares; 1.8e-2,
#: 1 and 3e4 where the loop returned 1.9e-3, 1.41 and 4.6e-4 of max |V| wrong (tests/test_never_wrong.py)
TRACE_LIMIT = 1e-5


class _Guarded:
    """The optimizer's pure functions, plus the precision R_t and the running worst condition estimate.

    The loop calls ``update`` once per token (RLS writes one pair a token and has no window), so the
    estimate and the first position it crossed the limit are carried here, as arrays of the batch shape (no
    host synchronisation inside the loop).
    """

    def __init__(self, opt, xp, R0, decayed):
        self.opt, self.xp, self.R, self.t, self.decayed = opt, xp, R0, 0, decayed
        limit = DECAY_LIMIT if decayed else NO_DECAY_LIMIT
        self.limit_sq = limit * limit
        self.first = None  # first token (1-based) whose estimate crossed the limit, T + 1 if none

    #: passes the loop's a = None (no decay in the call) on to the optimizer
    skips_unit_decay = True

    def update(self, state, k, v, a, b):
        xp = self.xp
        new = self.opt.update(state, k, v, a, b)
        bk = b[..., None] * k
        write = bk[..., :, None] * k[..., None, :]
        self.R = self.R + write if a is None else a[..., 0, None, None] * self.R + write
        # (||R||_F ||P||_F eps / gamma)^2 > limit^2 (gamma = 1 without decay), or not finite (NaN compares
        # False); the squares save two square roots a step. A non-finite M shows in the outputs, which
        # recurrent() checks once after the loop.
        eps = float(xp.finfo(new.P.dtype).eps)
        est = _sq(xp, self.R) * _sq(xp, new.P) * (eps * eps)
        if a is not None and self.decayed:
            est = est / (a[..., 0] * a[..., 0])
        # P must stay the inverse of R: tr(R P) = d exactly (one pass, P symmetric). Large writes against
        # a small gamma or a large P cancel P's update to nothing (P = 0 exactly with log alpha = -50 at
        # the delta edge), which the norm estimate alone reads as well conditioned
        d = self.R.shape[-1]
        flat = self.R.shape[:-2] + (d * d,)
        drift = xp.abs(xp.vecdot(xp.reshape(self.R, flat), xp.reshape(new.P, flat)) - d) / d
        ok = (est <= self.limit_sq) & (drift <= TRACE_LIMIT)
        self.t += 1
        bad = xp.where(
            ok, xp.asarray(0, device=_array.device(k)), xp.asarray(self.t, device=_array.device(k))
        )
        self.first = bad if self.first is None else xp.where(self.first == 0, bad, self.first)
        return new

    def read(self, state, q):
        return self.opt.read(state, q)


def _sq(xp, X):
    """Squared Frobenius norms over the last two axes, in one pass (no X * X temporary)."""
    flat = xp.reshape(X, X.shape[:-2] + (X.shape[-2] * X.shape[-1],))
    return xp.vecdot(flat, flat)


def recurrent(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v), in the input dtype."""
    xp = P.xp
    opt = layer._solver()
    wd = xp.float64
    check_decay_representable(xp, P.g, type(opt).__name__, dtype=wd)
    P64 = _upcast(xp, P, opt, wd)
    s0 = initial_state(opt, P64)
    decayed = bool(xp.any(P.g != 0)) if P.T else False
    # the update keeps a symmetric P exactly symmetric: symmetrise the start once (a user's P_0 may not be),
    # before R_0 = P_0^{-1} is formed from it (the guard checks tr(R_t P_t) = d)
    s0 = type(s0)(s0.M, 0.5 * (s0.P + xp.matrix_transpose(s0.P)))
    R0 = opt.prior_precision(s0)
    R0 = xp.broadcast_to(R0, P.batch_shape + (P.d_k, P.d_k))
    if _fast_applies(xp, opt, P64):
        Y, state, first = _numpy_loop(opt, P64, s0, R0, decayed)
    else:
        guard = _Guarded(opt, xp, R0, decayed)
        Y, state = loop(guard, P64._replace(state0=s0))
        first = guard.first
    if first is not None and bool(xp.any(first != 0)):
        t = int(xp.min(xp.where(first == 0, P.T + 1, first))) - 1
        raise _refusal(layer, t, decayed)
    if P.T and not bool(xp.all(xp.isfinite(Y))):  # a non-finite M: the first output it reached
        rows = xp.all(xp.isfinite(Y), axis=-1)
        rows = xp.reshape(rows, (-1, P.T)) if rows.ndim != 1 else rows[None, :]
        t = int(xp.min(xp.where(rows, P.T, xp.arange(P.T, device=P.device))))
        raise _refusal(layer, t, decayed)
    back = lambda x: x if x.dtype == P.dtype else xp.astype(x, P.dtype)  # noqa: E731
    return back(Y), type(state)(*(back(f) for f in state))


def _fast_applies(xp, opt, P):
    """Whether :func:`_numpy_loop` computes this call: NumPy float64 arrays, the optimizer's own update,
    read and memory (not a subclass's), one pair a token, no window and no ``lengths``."""
    from ...optimizers import RecursiveLeastSquares
    from ...optimizers.base import Optimizer

    cls = type(opt)
    return (
        array_api_compat.is_numpy_namespace(xp)
        and P.dtype == np.float64
        and P.T > 0
        and P.lengths is None
        and P.window is None
        and P.steps_per_token == 1
        and cls.update is RecursiveLeastSquares.update
        and cls.memory is RecursiveLeastSquares.memory
        and cls.read is Optimizer.read
    )


def _numpy_loop(opt, P, s0, R0, decayed):
    """The guarded loop of :class:`_Guarded` for NumPy arrays, the same arithmetic in place.

    Every step does what ``RecursiveLeastSquares.update`` and :meth:`_Guarded.update` do, in the same
    order and with the same roundings (tests check the outputs, the final state and the refusals bit for
    bit against the generic loop), but into one preallocated buffer: the outer products by ``einsum``
    (2x faster than a broadcast multiply, the same products), the updates in place (no fresh d x d arrays
    a step). The guard is not thinned: every step reads its computed P_t (||P_t||^2, <R_c, P_t> and the
    block's k_i^T P_t k_i), keeps the reads per token, and the estimate, the trace drift and the first
    failing position are computed once after the loop, on whole (T, L) arrays, by the same elementwise
    operations in the same order, so the same bits as doing it per step (B = 1, H = 16, T = 4096, d = 64,
    2 CPU cores: 0.91-0.95 s a call against 1.01 s per step; a plain NumPy loop 0.64 s).
    Returns ``(Y, state, first)`` as the generic path's ``(Y, state, guard.first)``.
    """
    lead, T, dk, dv = P.batch_shape, P.T, P.d_k, P.d_v
    L = math.prod(lead)
    Kf = np.reshape(P.K, (L, T, dk))
    Vf = np.reshape(P.V, (L, T, dv))
    Qf = np.reshape(P.Q, (L, T, dk))
    bf = np.reshape(np.broadcast_to(P.b, lead + (T,)), (L, T))
    M = np.array(np.reshape(np.broadcast_to(s0.M, lead + (dv, dk)), (L, dv, dk)), order="C")
    Pm = np.array(np.reshape(np.broadcast_to(s0.P, lead + (dk, dk)), (L, dk, dk)), order="C")
    R = np.array(np.reshape(np.broadcast_to(R0, lead + (dk, dk)), (L, dk, dk)), order="C")
    a_all = None if not decayed else np.reshape(np.exp(np.broadcast_to(P.g, lead + (T, 1))), (L, T))
    Y = np.empty((L, T, dv))
    # one scratch d x d buffer for the three outer products: M, P, R and it are the whole working set
    # (2 MB at 16 heads and d = 64, an L2 cache; a buffer each made the loop ~15% slower)
    buf = np.empty((L, max(dv, dk), dk))
    bufM, bufD = buf[:, :dv, :], buf[:, :dk, :]
    # the guard's per-step reads of the computed P_t, kept per token (T, L); its arithmetic (the estimate,
    # the trace and the drift) runs once after the loop, on whole arrays, with the same roundings
    nP2, RcP, quad = np.empty((T, L)), np.empty((T, L)), np.empty((T, L))
    Pf = np.reshape(Pm, (L, dk * dk))
    prec = _Precision(
        R, Kf, bf, None if a_all is None else np.reshape(np.broadcast_to(P.g, lead + (T, 1)), (L, T))
    )
    for t in range(T):
        k, v, b = Kf[:, t], Vf[:, t], bf[:, t]
        # RecursiveLeastSquares.update, then Optimizer.read (each state array is updated and read while
        # it is in cache)
        Pk = np.matmul(Pm, k[:, :, None])[..., 0]
        kPk = np.sum(k * Pk, axis=-1)
        if a_all is None:
            s = b / (kPk * b + 1.0)
        else:
            a = a_all[:, t]
            s = b / (kPk * b + a)
        r = v - np.matmul(M, k[:, :, None])[..., 0]
        M += np.einsum("li,lj->lij", r, s[:, None] * Pk, out=bufM)
        Y[:, t] = np.matmul(M, Qf[:, t][:, :, None])[..., 0]
        # s (Pk_i Pk_j): the product of the two, then by s, as the update's s * outer(Pk, Pk)
        np.einsum("li,lj->lij", Pk, Pk, out=bufD)
        bufD *= s[:, None, None]
        Pm -= bufD
        if a_all is not None:
            Pm /= a[:, None, None]
        # _Guarded.update's reads of P_t: ||P_t||^2, <R_c, P_t> and the block's k_i^T P_t k_i (_Precision)
        j = t - prec.start
        if j == prec.k:
            prec.advance()
            j = 0
        np.vecdot(Pf, Pf, out=nP2[t])
        prec.at(j, Pm, Pf, RcP[t], quad[t])
    eps2 = float(np.finfo(np.float64).eps) ** 2
    # est = ||R_t||^2 ||P_t||^2 eps^2 (/ a_t^2), tr(R_t P_t) = Gamma_j <R_c, P_t> + sum_i w_ji k_i^T P_t k_i
    est = prec.nR2 * nP2 * eps2
    if a_all is not None:
        aT = np.ascontiguousarray(a_all.T)
        est = est / (aT * aT)
    drift = np.abs(prec.gam * RcP + quad - dk) / dk
    limit = DECAY_LIMIT if decayed else NO_DECAY_LIMIT
    ok = (est <= limit * limit) & (drift <= TRACE_LIMIT)  # NaN compares False: refused
    bad = ~ok
    first = np.where(np.any(bad, axis=0), np.argmax(bad, axis=0) + 1, 0)
    state = type(s0)(np.reshape(M, lead + (dv, dk)), np.reshape(Pm, lead + (dk, dk)))
    return np.reshape(Y, lead + (T, dv)), state, np.reshape(first, lead)


#: steps between two materialisations of the guard's precision R_t in the NumPy loop
BLOCK = 8


class _Precision:
    r"""The guard's precision :math:`R_t = a_t R_{t-1} + b_t k_t k_t^\top` in blocks of :data:`BLOCK` steps.

    The loop needs :math:`\|R_t\|_F^2` and :math:`\mathrm{tr}(R_t P_t)` at every step, not R_t itself.
    Within a block that starts from :math:`R_c`, with :math:`\Gamma_j = \prod_{m\le j} a_m` and
    :math:`w_{ji} = b_i \prod_{i<m\le j} a_m` (``i <= j``), :math:`R_{c+j} = \Gamma_j R_c + D_j`,
    :math:`D_j = \sum_{i\le j} w_{ji} k_i k_i^\top`, so that

    .. math:: \|R_{c+j}\|_F^2 = \Gamma_j^2 \|R_c\|_F^2 + 2\Gamma_j \sum_i w_{ji}\, k_i^\top R_c k_i
              + \sum_{i,i'} w_{ji} w_{ji'} (k_i^\top k_{i'})^2,\qquad
              \mathrm{tr}(R_{c+j} P) = \Gamma_j \langle R_c, P\rangle + \sum_i w_{ji}\, k_i^\top P k_i

    (every term of the first a sum of nonnegative terms: no cancellation). The norms come from a few
    (BLOCK, BLOCK) products per block; the trace reads the step's computed P_t itself (the drift must see
    what the update did to P, rounding included): one pass over P_t and R_c and a (BLOCK, d) product a
    step, where the explicit update of R (an outer product, an add and a norm) cost about a sixth of the
    loop. R is formed once per block, :math:`R_{c+B} = \Gamma R_c + K^\top \mathrm{diag}(w) K`.
    The values are those of the explicit R_t up to rounding (relative 1e-15 against limits of 1e-3 and
    1e-5), and every step is checked: the guard is as strong as before.
    """

    def __init__(self, R, Kf, bf, gf):
        self.R, self.Kf, self.bf, self.gf = R, Kf, bf, gf
        L, self.T = Kf.shape[:2]
        #: (T, L): ||R_t||_F^2 and Gamma_j (the decay from the block's start) of every step
        self.nR2, self.gam = np.empty((self.T, L)), np.empty((self.T, L))
        self.start, self.k = 0, 0
        self._block(0)

    def _block(self, c):
        k = min(BLOCK, self.T - c)
        Kb = self.Kf[:, c : c + k]  # (L, k, d)
        bb = self.bf[:, c : c + k]
        L = Kb.shape[0]
        if self.gf is None:
            S = np.zeros((L, k))
        else:
            S = np.cumsum(self.gf[:, c : c + k], axis=-1)
        tri = np.tri(k, dtype=bool)
        W = np.exp(np.where(tri, S[:, :, None] - S[:, None, :], -np.inf)) * bb[:, None, :]  # (L, k, k)
        gam = np.exp(S)
        Rf = np.reshape(self.R, (L, -1))
        r = np.vecdot(np.matmul(Kb, self.R), Kb)  # k_i^T R_c k_i
        G2 = np.square(np.matmul(Kb, np.swapaxes(Kb, -1, -2)))
        nR2 = (
            gam * gam * np.vecdot(Rf, Rf)[:, None]
            + 2.0 * gam * np.vecdot(W, r[:, None, :])
            + np.einsum("lji,lim,ljm->lj", W, G2, W)
        )
        self.nR2[c : c + k] = nR2.T
        self.gam[c : c + k] = gam.T
        self.Kb, self.W, self.gam_last, self.Rf = Kb, W, gam[:, -1], Rf
        self.X = np.empty(Kb.shape)
        self.start, self.k = c, k

    def advance(self):
        """Form R after the block (Gamma R_c + K^T diag(w_last) K) and start the next block."""
        Kb, w = self.Kb, self.W[:, -1, :]
        D = np.matmul(np.swapaxes(Kb, -1, -2), w[:, :, None] * Kb)
        # Gamma = exp(0) = 1 exactly without decay: R + D is Gamma R + D to the bit
        self.R = (self.R if self.gf is None else self.gam_last[:, None, None] * self.R) + D
        self._block(self.start + self.k)

    def at(self, j, Pm, Pf, RcP, quad):
        """Write ``<R_c, P_t>`` into ``RcP`` and ``sum_i w_ji k_i^T P_t k_i`` into ``quad`` (shape (L,)) for
        step j of the block and the step's computed P_t (so that tr(R_t P_t) = Gamma_j RcP + quad)."""
        Kj = self.Kb[:, : j + 1]  # the block's pairs so far (w_ji = 0 for i > j)
        X = np.matmul(Kj, Pm, out=self.X[:, : j + 1])
        np.vecdot(self.W[:, j, : j + 1], np.vecdot(X, Kj), out=quad)
        np.vecdot(self.Rf, Pf, out=RcP)


def _refusal(layer, t, decayed):
    """The FloatingPointError of a loop whose condition estimate crossed its limit at token t."""
    if decayed:
        detail = (
            f"||R_t||_F ||P_t||_F eps / alpha_t > {DECAY_LIMIT:g}, |tr(R_t P_t) / d - 1| > {TRACE_LIMIT:g}, "
            "or a non-finite state"
        )
        return singular_error(layer, t, detail, REMEDY)
    ridge = getattr(layer.optimizer, "ridge", None)
    return FloatingPointError(
        f"{type(layer.optimizer).__name__}: the precision R_t near t = {t} is numerically singular "
        f"(||R_t||_F ||P_t||_F eps > {NO_DECAY_LIMIT:g}, |tr(R_t P_t) / d - 1| > {TRACE_LIMIT:g}, or a "
        f"non-finite state): the prior P_0 = I / ridge "
        f"(ridge={ridge!r}) is too large next to the keys for the Sherman-Morrison update to keep 3 digits, "
        "and its output would be a finite wrong number. Use a larger ridge or rescale the keys."
    )


def _upcast(xp, P, opt, wd):
    """The problem with every floating array in float64 (a no-op for float64 inputs)."""
    if P.dtype == wd:
        return P
    up = lambda x: None if x is None else xp.astype(x, wd)  # noqa: E731
    state0 = None if P.state0 is None else type(P.state0)(*(up(f) for f in P.state0))
    return P._replace(Q=up(P.Q), K=up(P.K), V=up(P.V), g=up(P.g), b=up(P.b), state0=state0, dtype=wd)


register(
    "recurrent",
    "rls",
    run=recurrent,
    memory=lambda P: 2 * P.n_batch * (2 * P.d_k * P.d_k + P.d_v * P.d_k) * 4 * 8,
    reference=True,
    rank=90,
    summary="the generic loop (definition), in float64 with a condition guard",
)
