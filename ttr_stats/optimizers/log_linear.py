r"""Log-linear attention: a Fenwick tree of linear-attention memories, one weight per level.

The weights column of the taxonomy made hierarchical: the pair :math:`(k_i, v_i)` counts at time t with

.. math:: \gamma_i^{(t)} = \lambda_t^{(\ell(t, i))}\, \beta_i \prod_{j=i+1}^{t}\alpha_j,\qquad
          \ell(t, i) = \begin{cases} 0 & i = t\\ \mathrm{bitlength}(t \oplus i) & i < t\end{cases}

(positions 0-based), i.e. the past is cut into the Fenwick-tree buckets of t -- level 0 is the token itself,
level :math:`\ell \ge 1` the :math:`2^{\ell-1}` keys that share t's bits above :math:`\ell - 1` and have bit
:math:`\ell - 1` clear -- and each bucket gets its own (per-query) weight :math:`\lambda_t^{(\ell)}`.
The regression is still linear attention's (identity covariance): :math:`y_t = \sum_i \gamma_i^{(t)}
(q_t^\top k_i) v_i = \sum_\ell \lambda_t^{(\ell)} S_t^{(\ell)} q_t`, the minimiser of one batch-GD step from 0
on :math:`\tfrac12\sum_i \gamma_i^{(t)}\|v_i - M k_i\|^2`. ``Uniform`` weights give log-linear linear
attention, ``Gated`` weights log-linear Mamba-2.

Recurrence (the state is the L bucket memories and the step count t): before writing token t (t >= 1) with
:math:`z = \mathrm{tz}(t)` trailing zero bits, merge :math:`S^{(z+1)} \leftarrow \sum_{\ell\le z+1}
S^{(\ell)}`, clear :math:`S^{(1..z)}`, decay every bucket by :math:`\alpha_t` and set
:math:`S^{(0)} = \beta_t v_t k_t^\top`. O(log T) memories of :math:`d_v\times d_k`.

References
----------
Guo, Yang, Goel, Xing, Dao & Kim (2025), *Log-Linear Attention*, arXiv 2506.04761 (eq. 5-7, the Fenwick
partition). flash-linear-attention ``fla/ops/log_linear_attn/naive.py`` (``naive_log_linear_attn``: the same
:math:`H_{ti}`, no query scaling, ``g`` is :math:`\log\alpha`, ``level_scales`` is :math:`\lambda`,
layout (B, T, H, .) against ours (B, H, T, .)).
"""

from __future__ import annotations

from typing import NamedTuple

from .. import _array
from .base import Optimizer, matvec, outer

__all__ = ["LogLinearAttention", "LogLinearState", "fenwick_level"]


class LogLinearState(NamedTuple):
    """The L bucket memories ``S`` (..., L, d_v, d_k) and ``t`` (...,), the number of tokens written."""

    S: object
    t: object


def fenwick_level(t, i):
    """The Fenwick level of key i for query t (0-based, i <= t): 0 for i = t, else bitlength(t xor i)."""
    return 0 if i == t else int(t ^ i).bit_length()


class LogLinearAttention(Optimizer):
    r"""Linear attention over the Fenwick buckets of the past, weighted per level (log-linear attention).

    Parameters
    ----------
    levels : int >= 1
        Number of buckets L; a sequence of T tokens needs :math:`L \ge \lceil\log_2 T\rceil + 1` (checked).
    level_weights : float, array of shape (L,) or array of shape (..., T_total, L)
        :math:`\lambda`. A scalar or (L,) is a constant per level; the data-dependent form (one row per
        absolute position, read at the state's step count, so a continued call indexes on) is what
        log-linear attention learns from the token. The layer's call cannot carry it, so it is this
        hyperparameter (``set_params(optimizer__level_weights=...)`` before the call).

    Notes
    -----
    With every :math:`\lambda = 1` the buckets add up to the whole past: plain linear attention (Mamba-2
    under ``Gated`` weights), which a test checks.
    """

    State = LogLinearState
    family = "log_linear"

    def __init__(self, levels=16, level_weights=1.0):
        self.levels = levels
        self.level_weights = level_weights

    def _validate(self):
        from .._validation import check_scalar

        check_scalar("levels", self.levels, low=1, integer=True)

    def lam(self, xp, t, batch_shape, dtype, device=None):
        """:math:`\\lambda_t` of shape (..., L) at absolute (0-based) position t (python int)."""
        L = int(self.levels)
        lw = self.level_weights
        if isinstance(lw, (int, float)):
            return xp.full(tuple(batch_shape) + (L,), float(lw), dtype=dtype, device=device)
        lw = xp.asarray(lw, dtype=dtype, device=device)
        if lw.ndim == 1:
            if lw.shape[0] != L:
                raise ValueError(f"level_weights must have L = levels = {L} entries, got {lw.shape[0]}")
            return xp.broadcast_to(lw, tuple(batch_shape) + (L,))
        if lw.shape[-1] != L or t >= lw.shape[-2]:
            raise ValueError(
                f"level_weights of shape (..., T, L) must have L = {L} and a row for position {t}; "
                f"got shape {tuple(lw.shape)}"
            )
        return xp.broadcast_to(lw[..., t, :], tuple(batch_shape) + (L,))

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        L = int(self.levels)
        return LogLinearState(
            xp.zeros(tuple(batch_shape) + (L, d_v, d_k), dtype=dtype, device=device),
            xp.zeros(tuple(batch_shape), dtype=dtype, device=device),
        )

    def update(self, state, k, v, a, b):
        xp = _array.namespace(k)
        S, tcount = state
        t = int(xp.max(tcount)) if tcount.ndim else int(tcount)  # padded rows are frozen by the loop
        L = S.shape[-3]
        if t >= 1:
            z = (t & -t).bit_length() - 1  # trailing zeros of t
            if z + 1 >= L:
                raise ValueError(
                    f"levels: position {t} needs {z + 2} Fenwick levels, LogLinearAttention has "
                    f"levels = {L}; pass levels >= ceil(log2 T) + 1"
                )
            merged = xp.sum(S[..., : z + 2, :, :], axis=-3, keepdims=True)
            zeros = xp.zeros_like(S[..., : z + 1, :, :])
            S = xp.concat([zeros, merged, S[..., z + 2 :, :, :]], axis=-3)
        if a is not None:
            S = S * a[..., None, None, :]
        S0 = outer(b[..., None] * v, k)[..., None, :, :]
        S = xp.concat([S0, S[..., 1:, :, :]], axis=-3)
        return LogLinearState(S, tcount + 1)

    def memory(self, state):
        raise ValueError(
            "LogLinearAttention reads each bucket with its own weight lambda_t: the memory depends on the "
            "query's position; use read(state, q)"
        )

    def read(self, state, q):
        xp = _array.namespace(q)
        S, tcount = state
        t = (int(xp.max(tcount)) if tcount.ndim else int(tcount)) - 1
        lam = self.lam(xp, max(t, 0), S.shape[:-3], S.dtype, device=_array.device(S))
        M = xp.sum(lam[..., :, None, None] * S, axis=-3)
        return matvec(xp, M, q)
