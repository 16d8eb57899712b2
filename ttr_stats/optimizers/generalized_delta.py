r"""The 2025-26 delta-family layers (issue 13) as regression problems: per-channel decay (KDA, GDN-2),
the diagonal-plus-low-rank transition (DPLR / IPLR, RWKV-7's form), the preconditioned delta rule, and
the reverse (Oja) regression.

Conventions, shared by every class here (and different from flash-linear-attention's, fla):

* the memory is :math:`M \in \mathbb{R}^{d_v\times d_k}` (fla's state ``S`` is :math:`M^\top`, shape
  ``[K, V]``), the read is :math:`y_t = M_t q_t` with **no** query scale (fla multiplies q by
  :math:`d_k^{-1/2}` by default: pass ``Q * d_k**-0.5`` to compare);
* decay gates are **natural-log** ``log_alpha = g <= 0`` (fla's ``g``/``gk``, applied as ``exp(g)``), or
  ``alpha = exp(g)`` in [0, 1]; per-channel gates (``Gated(per_dimension=True)``, shape (..., T, d_k))
  scale the **key** axis: :math:`M \leftarrow M\,\mathrm{Diag}(\alpha_t)`;
* every update is read after the step (``y_t`` sees pair t).

Layers that need more than one key vector per token (GDN-2's erase gate, DPLR's low-rank pair) take them
as extra *rows* interleaved along time, as DeltaProduct does (``steps_per_token`` rows per token; K, V
and ``beta`` have ``T * steps_per_token`` rows, Q has T; :func:`interleave` builds them). The decay gates
stay one per token.

None of these fits the chunked delta method (``methods/delta/chunked.py`` runs scalar decay and the one
key of LMS only): their family, ``"generalized_delta"``, registers the recurrent reference only. KDA and
GDN-2 have a WY/UT chunk form with per-channel decay (fla's ``chunk_kda``/``chunk_gdn2``), DPLR one with
two triangular solves (fla's ``chunk_dplr``); those are future methods of this family.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .. import _array
from .._validation import check_scalar
from .base import MemoryState, Optimizer, matvec, outer

__all__ = [
    "GeneralizedDelta",
    "PerChannelDelta",
    "DecoupledDelta",
    "LowRankTransition",
    "PreconditionedDelta",
    "PreconditionedState",
    "OjaRule",
    "interleave",
]


def interleave(*rows, scalar=False):
    """Interleave per-token arrays along time: rows of shape (..., T, d) give (..., T * len(rows), d);
    with ``scalar=True`` rows of shape (..., T) (``beta``) give (..., T * len(rows)).

    ``interleave(K, B)`` gives GDN-2's key rows ``(k_1, b_1, k_2, b_2, ...)``.
    """
    xp = _array.namespace(rows[0])
    if scalar:
        stacked = xp.stack(rows, axis=-1)
        return xp.reshape(stacked, tuple(stacked.shape[:-2]) + (stacked.shape[-2] * stacked.shape[-1],))
    stacked = xp.stack(rows, axis=-2)
    shape = tuple(stacked.shape)
    return xp.reshape(stacked, shape[:-3] + (shape[-3] * shape[-2], shape[-1]))


def _decay(M, a):
    """``M Diag(a)`` for a scalar gate (a of shape (..., 1)) or a per-channel one (..., d_k)."""
    return M * a[..., None, :]


class GeneralizedDelta(Optimizer):
    """Base of the ``"generalized_delta"`` family: a memory ``M`` (..., d_v, d_k) written one token at a
    time from ``steps_per_token`` rows (:meth:`write`), read as ``y = M q``."""

    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = (
        "Use a smaller step: beta (the recipe's beta= or the call-time beta), keeping beta ||k||^2 < 2; "
        "normalise the keys, or use nlms() / longhorn() (stable for any key scale), or float64."
    )

    State = MemoryState
    family = "generalized_delta"
    beta_role = "step"

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        return MemoryState(xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device))

    def memory(self, state):
        return state.M

    def write(self, state, K, V, a, b):  # pragma: no cover - abstract
        """One token: rows K (..., n, d_k), V (..., n, d_v), decay a (..., 1 or d_k), steps b (..., n)."""
        raise NotImplementedError

    def update(self, state, k, v, a, b):
        """One-row members: the single-pair step of the generic loop (``memorize``); the family's own
        loop calls :meth:`write` with a token's rows together."""
        if int(self.steps_per_token) != 1:
            raise NotImplementedError(
                f"{type(self).__name__} writes a token from {self.steps_per_token} rows together; the "
                "generic one-row loop (memorize) cannot run it: use layer(Q, K, V, return_state=True)"
            )
        return self.write(state, k[..., None, :], v[..., None, :], a, b[..., None])


class _Stepped(GeneralizedDelta):
    """Members with a constant step ``beta`` > 0 (their write strength when the call passes none)."""

    def _validate(self):
        check_scalar("beta", self.beta, low=0.0, low_inclusive=False)

    def default_beta(self):
        return float(self.beta)


class PerChannelDelta(_Stepped):
    r"""KDA (Kimi Delta Attention): the gated delta rule under a diagonal, data-dependent decay.

    .. math:: M' = M_{t-1}\,\mathrm{Diag}(\alpha_t),\qquad
              M_t = M' + \beta_t\,(v_t - M' k_t)\,k_t^\top = M' - \beta_t \nabla\ell_t(M'),
              \quad \ell_t(M) = \tfrac12\|v_t - M k_t\|^2.

    Regression reading: one SGD step per token on the newest pair's squared error, from the warm start
    :math:`M_{t-1}` forgotten *per key coordinate*. Without the erase term (linear attention, GLA) the
    memory would be :math:`\sum_i \beta_i v_i (\gamma_i^{(t)} \odot k_i)^\top` with
    :math:`\gamma_{i,c}^{(t)} = \prod_{j=i+1}^{t}\alpha_{j,c}`: the identity-covariance solution of a
    weighted least squares whose weight on pair i differs per key coordinate c (the loss
    :math:`-\sum_i \beta_i v_i^\top M \mathrm{Diag}(\gamma_i^{(t)}) k_i + \tfrac12\|M\|_F^2`); the delta
    step adds the erase :math:`-\beta_t (M'k_t)k_t^\top`. With scalar gates it is Gated DeltaNet exactly
    (:class:`~ttr_stats.optimizers.LMS` under ``Gated()``).

    Parameters
    ----------
    beta : float > 0
        Step size, overridden by a call-time ``beta`` of shape (..., T). Stable for unit keys when
        ``0 < beta < 2``.

    Notes
    -----
    fla: ``fla.ops.kda.naive.naive_recurrent_kda(q, k, v, g, beta)`` with ``g`` the natural-log per-channel
    decay of shape ``[B, T, H, K]``, state ``[K, V]`` = :math:`M^\top`, ``q`` scaled by
    :math:`d_k^{-1/2}`. fla's ``gate.py`` computes ``g`` from a learned ``A_log`` and a softplus; here
    ``log_alpha`` is that ``g``.

    References
    ----------
    Kimi Team (2025), *Kimi Linear: an expressive, efficient attention architecture*, arXiv 2510.26692
    (KDA); Wang, Shi & Fox (2025), §2 (Gated DeltaNet row).
    """

    def __init__(self, beta=1.0):
        self.beta = beta

    def write(self, state, K, V, a, b):
        xp = _array.namespace(K)
        k, v = K[..., 0, :], V[..., 0, :]
        M = _decay(state.M, a)
        err = v - matvec(xp, M, k)
        return MemoryState(M + b[..., 0, None, None] * outer(err, k))


class DecoupledDelta(GeneralizedDelta):
    r"""GDN-2 (Gated DeltaNet 2): decoupled, channel-wise erase and write gates.

    .. math:: M' = M_{t-1}\,\mathrm{Diag}(\alpha_t),\qquad
              M_t = M' + (w_t \odot v_t - M'(b_t \odot k_t))\,k_t^\top

    with an erase gate :math:`b_t \in \mathbb{R}^{d_k}` on the key axis and a write gate
    :math:`w_t \in \mathbb{R}^{d_v}` on the value axis (:math:`b_t = w_t = \beta_t\mathbf 1` is KDA).

    Regression reading: the gated value :math:`w_t\odot v_t` is regressed on the erase key
    :math:`\tilde k_t = b_t \odot k_t`, one preconditioned SGD step from :math:`M'`:
    :math:`M_t = M' - \nabla\ell_t(M')\,\mathrm{Diag}(b_t)^{-1}`,
    :math:`\ell_t(M) = \tfrac12\|w_t\odot v_t - M\tilde k_t\|^2` (for :math:`b_t > 0`; since
    :math:`\tilde k_t^\top\mathrm{Diag}(b_t)^{-1} = k_t^\top` the update itself is defined for any
    :math:`b_t`). The preconditioner undoes the erase gate on the write side: a coordinate with
    :math:`b_{t,c} = 0` is written without being erased.

    Rows: two per token (``steps_per_token = 2``). K rows ``(k_t, b_t)``, V rows ``(v_t, w_t)``, ``beta``
    rows ``(beta_b, beta_w)`` scale the two gates (default 1): :math:`b_t = \beta_{b,t}K_{2t+1}`,
    :math:`w_t = \beta_{w,t}V_{2t+1}`. Build them with ``interleave(K, B)``, ``interleave(V, W)``.

    Notes
    -----
    fla: ``fla.ops.gdn2.naive.naive_recurrent_gdn2(q, k, v, g, b, w)``, state ``[K, V]`` =
    :math:`M^\top`, natural-log per-channel ``g``, ``q`` scaled by :math:`d_k^{-1/2}`.

    References
    ----------
    flash-linear-attention ``fla/ops/gdn2`` (GDN-2, 2026); Yang, Kautz & Hatamizadeh (2025), *Gated Delta
    Networks*, ICLR (the scalar-gate ancestor).
    """

    #: the write gate w_t rides in V (its second row a token), so the output is not linear in V
    linear_in_values = False

    steps_per_token = 2

    def write(self, state, K, V, a, b):
        xp = _array.namespace(K)
        k, v = K[..., 0, :], V[..., 0, :]
        erase = b[..., 0, None] * K[..., 1, :]
        gate = b[..., 1, None] * V[..., 1, :]
        M = _decay(state.M, a)
        return MemoryState(M + outer(gate * v - matvec(xp, M, erase * k), k))


class LowRankTransition(GeneralizedDelta):
    r"""The diagonal-plus-low-rank transition (DPLR; IPLR with no decay): RWKV-7's form.

    .. math:: M_t = M_{t-1}\big(\mathrm{Diag}(\alpha_t) + a_t b_t^\top\big) + v_t k_t^\top

    (the low-rank term acts on the *undecayed* :math:`M_{t-1}`). RWKV-7 sets :math:`a_t = -\hat\kappa_t`
    (the unit "removal" key) and :math:`b_t = \eta_t\odot\hat\kappa_t` (per-channel in-context learning
    rates :math:`\eta_t\in[0,1]^{d_k}`). Then

    .. math:: M_t = M_{t-1}\mathrm{Diag}(\alpha_t) - \nabla\ell_t(M_{t-1})\,\mathrm{Diag}(\eta_t),\qquad
              \ell_t(M) = \tfrac12\|M\hat\kappa_t\|^2 - v_t^\top M (k_t \oslash \eta_t),

    a **preconditioned SGD step** (diagonal preconditioner :math:`\mathrm{Diag}(\eta_t)`, step 1) with the
    decay *decoupled* from the gradient (AdamW-style: the error is read from :math:`M_{t-1}`, not from the
    decayed memory as in Gated DeltaNet/KDA). When the written key is :math:`k_t = \eta_t\odot\hat\kappa_t`
    the loss is the delta rule's :math:`\tfrac12\|v_t - M\hat\kappa_t\|^2` up to a constant; RWKV-7's
    replacement key :math:`\tilde k_t = k_t\odot(1 + (\eta_t - 1)\xi)` interpolates between the two.
    General :math:`(a_t, b_t)` is a gradient step only when :math:`b_t = -P a_t` with :math:`P` diagonal
    and non-negative; otherwise DPLR is a linear recurrence without a per-token objective.

    Rows: three per token (``steps_per_token = 3``). K rows ``(k_t, a_t, b_t)``; V rows
    ``(v_t, _, _)`` (only the first is read: DPLR writes one value per token, the two placeholders are
    there because every interleaved row carries a value); ``beta`` rows ``(beta_v, beta_a, beta_b)``
    scale :math:`v_t k_t^\top`, :math:`a_t` and :math:`b_t` (default 1).

    Notes
    -----
    fla: ``fla.ops.generalized_delta_rule.dplr.naive.dplr_recurrence(q, k, v, alpha, beta, gk)`` with
    tensors ``[B, H, T, D]``, its ``alpha``/``beta`` are our :math:`a_t, b_t`, ``gk`` the natural-log
    per-channel decay, state ``[K, V]`` = :math:`M^\top`, ``q`` always scaled by :math:`d_k^{-1/2}`;
    ``iplr_recurrence`` is the same without ``gk``. fla's ``fla.ops.rwkv7`` calls the DPLR kernels with
    ``a = -kk``, ``b = kk * a``.

    References
    ----------
    Peng et al. (2025), *RWKV-7 "Goose" with expressive dynamic state evolution*, arXiv 2503.14456;
    Yang et al. (2024), *Parallelizing linear transformers with the delta rule*, NeurIPS (the generalised
    Householder / DPLR form).
    """

    steps_per_token = 3

    def write(self, state, K, V, a, b):
        xp = _array.namespace(K)
        k, v = K[..., 0, :], V[..., 0, :]
        lo = b[..., 1, None] * K[..., 1, :]
        hi = b[..., 2, None] * K[..., 2, :]
        M = state.M
        return MemoryState(_decay(M, a) + outer(matvec(xp, M, lo), hi) + b[..., 0, None, None] * outer(v, k))


class PreconditionedState(NamedTuple):
    """The memory ``M`` (..., d_v, d_k) and the running diagonal key second moment ``A`` (..., d_k)."""

    M: object
    A: object


class PreconditionedDelta(_Stepped):
    r"""The preconditioned (gated) delta rule: a delta step scaled by a diagonal curvature estimate.

    .. math:: A_t = \lambda A_{t-1} + \omega\,k_t\odot k_t,\qquad p_t = \pi(A_t),\qquad
              M' = \alpha_t M_{t-1},\qquad M_t = M' + \beta_t (v_t - M'k_t)(p_t\odot k_t)^\top
              = M' - \beta_t\nabla\ell_t(M')\,\mathrm{Diag}(p_t),

    :math:`\ell_t(M) = \tfrac12\|v_t - Mk_t\|^2`. :math:`A_t` is the diagonal of the (λ-weighted) key
    covariance :math:`R_t = \sum_i \lambda^{t-i}\omega k_ik_i^\top`, the Hessian of
    :math:`\sum_i \tfrac12\lambda^{t-i}\omega\|v_i - Mk_i\|^2`; RLS preconditions with :math:`R_t^{-1}`,
    the delta rule with :math:`I`, this rule with a function of its diagonal (Jacobi):

    * ``preconditioner="inverse"``: :math:`p = 1/(\rho + A_t)`, the inverse diagonal with a prior
      :math:`\rho` = ``ridge`` (as RLS's :math:`P_0 = I/\rho`);
    * ``preconditioner="squash"`` (fla's ATK): :math:`p = x^{-s}`,
      :math:`s = r/(1+|r|)`, :math:`r = \log(A_t + \epsilon) - c`: a bounded (between :math:`1/x` and
      :math:`x`) decreasing function of :math:`\log A_t`, ``x`` = ``power``, ``c`` = ``center``.

    Parameters
    ----------
    beta : float > 0
        Step (call-time ``beta`` overrides).
    moment_decay : float in (0, 1]
        :math:`\lambda` (fla's ``exp(g_atk)``, a constant here).
    moment_weight : float > 0
        :math:`\omega` (fla's ``beta_atk``, a constant here).
    preconditioner : {"squash", "inverse"}
    power, center, eps : float
        The squash's :math:`x > 1`, :math:`c` and :math:`\epsilon` (fla's defaults 1.5, -0.2, 1e-6).
    ridge : float > 0
        The inverse's prior :math:`\rho` (keeps :math:`p_t\odot k_t` bounded by :math:`k/\rho`).

    Notes
    -----
    fla (main branch, not in fla-core 0.5.2): ``fla.ops.precond_gated_delta_rule.naive`` with scalar
    gates ``g`` (natural log), L2-normalised q and k and ``q`` scaled by :math:`d_k^{-1/2}`.

    References
    ----------
    flash-linear-attention ``fla/ops/precond_gated_delta_rule`` (2026); Wang, Shi & Fox (2025), §3 (the
    preconditioner spectrum from identity (LMS) to :math:`R_t^{-1}` (RLS)).
    """

    State = PreconditionedState

    def __init__(self, beta=1.0, moment_decay=1.0, moment_weight=1.0, preconditioner="squash",
                 power=1.5, center=-0.2, eps=1e-6, ridge=1.0):  # fmt: skip
        self.beta = beta
        self.moment_decay = moment_decay
        self.moment_weight = moment_weight
        self.preconditioner = preconditioner
        self.power = power
        self.center = center
        self.eps = eps
        self.ridge = ridge

    def _validate(self):
        super()._validate()
        check_scalar("moment_decay", self.moment_decay, low=0.0, high=1.0, low_inclusive=False)
        check_scalar("moment_weight", self.moment_weight, low=0.0, low_inclusive=False)
        if self.preconditioner not in ("squash", "inverse"):
            raise ValueError(
                f"preconditioner must be 'squash' (fla's ATK) or 'inverse' (1/(ridge + A)), got "
                f"{self.preconditioner!r}"
            )
        check_scalar("power", self.power, low=1.0, low_inclusive=False)
        check_scalar("center", self.center)
        check_scalar("eps", self.eps, low=0.0, low_inclusive=False)
        check_scalar("ridge", self.ridge, low=0.0, low_inclusive=False)

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        shape = tuple(batch_shape)
        return PreconditionedState(
            xp.zeros(shape + (d_v, d_k), dtype=dtype, device=device),
            xp.zeros(shape + (d_k,), dtype=dtype, device=device),
        )

    def precondition(self, xp, A):
        """:math:`p = \\pi(A)` of shape (..., d_k)."""
        if self.preconditioner == "inverse":
            return 1.0 / (float(self.ridge) + A)
        r = xp.log(A + float(self.eps)) - float(self.center)
        s = r / (1.0 + xp.abs(r))
        return xp.exp(-math.log(float(self.power)) * s)

    def write(self, state, K, V, a, b):
        xp = _array.namespace(K)
        k, v = K[..., 0, :], V[..., 0, :]
        A = float(self.moment_decay) * state.A + float(self.moment_weight) * k * k
        p = self.precondition(xp, A)
        M = _decay(state.M, a)
        err = v - matvec(xp, M, k)
        return PreconditionedState(M + b[..., 0, None, None] * outer(err, p * k), A)


class OjaRule(_Stepped):
    r"""The gated Oja rule: the *reverse* regression, keys on values, read through the adjoint.

    With :math:`W = M^\top \in \mathbb{R}^{d_k\times d_v}` predicting keys from values,

    .. math:: W' = \alpha_t W_{t-1},\qquad W_t = W' + \beta_t (k_t - W' v_t)\,v_t^\top
              = W' - \beta_t\nabla\ell_t(W'),\quad \ell_t(W) = \tfrac12\|k_t - W v_t\|^2,

    and the read is the adjoint :math:`y_t = W_t^\top q_t = M_t q_t`. In the memory layout:
    :math:`M_t = M' + \beta_t v_t (k_t - M'^\top v_t)^\top`. Oja's rule (with :math:`k = Wv`'s role
    swapped) is the Hebbian step with this self-normalising correction; stable when
    :math:`\beta_t\|v_t\|^2 < 2`.

    Parameters
    ----------
    beta : float > 0
        Step (call-time ``beta`` overrides). The default 0.1 keeps values of norm up to about 4 stable.

    Notes
    -----
    fla: ``fla.ops.gated_oja_rule.fused_recurrent_gated_oja_rule`` (a Triton kernel; fla-core 0.5.2 has
    no naive reference): state ``[K, V]`` = :math:`M^\top`, decay ``gv`` per **value** channel
    (natural log), ``q`` scaled by :math:`d_k^{-1/2}`. Here the decay is a scalar per token: a per-value-
    channel gate would need ``alpha`` of shape (..., T, d_v), which the layer's weights do not pass.

    References
    ----------
    Oja (1982), *A simplified neuron model as a principal component analyzer*, J. Math. Biol.;
    flash-linear-attention ``fla/ops/gated_oja_rule`` (2026).
    """

    #: keys regressed on values: the step M' v_t v_t^T is quadratic in V, so no smoother matrix exists
    linear_in_values = False

    def __init__(self, beta=0.1):
        self.beta = beta

    def write(self, state, K, V, a, b):
        xp = _array.namespace(K)
        k, v = K[..., 0, :], V[..., 0, :]
        M = _decay(state.M, a)
        recon = matvec(xp, xp.matrix_transpose(M), v)  # W' v, the key predicted from the value
        return MemoryState(M + b[..., 0, None, None] * outer(v, k - recon))
