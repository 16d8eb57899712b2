r"""Log-linear Gated DeltaNet: Fenwick buckets of delta-rule memories, one weight per level.

Definition (the authors' recurrent reference, ``hattention/recurrent.py`` of HanGuo97/log-linear-attention,
``HStruct`` Gated DeltaNet): every bucket memory is carried by Gated DeltaNet's transition
:math:`A_t = \alpha_t(I - \beta_t k_t k_t^\top)` and the token is written to level 0,

.. math:: S^{(\ell)} \leftarrow S^{(\ell)} A_t\ (\text{after the Fenwick merge}),\qquad
          S^{(0)} = \beta_t v_t k_t^\top,\qquad y_t = \sum_\ell \lambda_t^{(\ell)} S_t^{(\ell)} q_t,

i.e. :math:`y_t = \sum_{i\le t}\lambda_t^{(\ell(t,i))}\,\beta_i\,(k_i^\top A_{i+1}\cdots A_t\, q_t)\, v_i`.

Regression reading. Gated DeltaNet's memory is :math:`M_t = \sum_{\ell} S_t^{(\ell)}`: the online LMS
regression of v on k (one gradient step on :math:`\tfrac12\|v_t - M k_t\|^2` from the decayed memory per
token), written as the sum of each pair's write :math:`\beta_i v_i k_i^\top` transported by the later steps
(each later step removes from it the part along :math:`k_j` that the residual correction overwrites). The
log-linear layer reads these transported writes bucket by bucket with weights :math:`\lambda_t^{(\ell)}`
(hierarchical weights on the delta rule's own decomposition of its memory). With every :math:`\lambda = 1`
the buckets sum to :math:`M_t`: Gated DeltaNet exactly (tested). It is NOT the pseudo-value form
:math:`(QK^\top\odot L\odot M^H)\,U` with U the UT-transform values: the two agree only at
:math:`\lambda = 1` (a test shows they differ otherwise).

References
----------
Guo, Yang, Goel, Xing, Dao & Kim (2025), *Log-Linear Attention*, arXiv 2506.04761 (log-linear Gated
DeltaNet); Yang, Kautz & Hatamizadeh (2025), *Gated Delta Networks*.
"""

from __future__ import annotations

from .. import _array
from .base import matvec, outer
from .log_linear import LogLinearAttention, LogLinearState

__all__ = ["LogLinearDelta"]


class LogLinearDelta(LogLinearAttention):
    r"""Fenwick buckets of Gated DeltaNet memories, each carried by the delta transition (log-linear GDN).

    Parameters
    ----------
    levels : int >= 1
        Fenwick levels L (:math:`L \ge \lceil\log_2 T\rceil + 1`, checked).
    level_weights : float, (L,) or (..., T_total, L)
        :math:`\lambda`, as in :class:`~ttr_stats.optimizers.log_linear.LogLinearAttention`.
    beta : float > 0
        Delta step size, overridden by a call-time ``beta``.
    """

    family = "log_linear_delta"

    def __init__(self, levels=16, level_weights=1.0, beta=1.0):
        super().__init__(levels, level_weights)
        self.beta = beta

    def _validate(self):
        from .._validation import check_scalar

        super()._validate()
        check_scalar("beta", self.beta, low=0.0, low_inclusive=False)

    def default_beta(self):
        return float(self.beta)

    def update(self, state, k, v, a, b):
        xp = _array.namespace(k)
        S, tcount = state
        t = int(xp.max(tcount)) if tcount.ndim else int(tcount)  # padded rows are frozen by the loop
        L = S.shape[-3]
        if t >= 1:  # the Fenwick merge of LogLinearAttention
            z = (t & -t).bit_length() - 1
            if z + 1 >= L:
                raise ValueError(
                    f"levels: position {t} needs {z + 2} Fenwick levels, LogLinearDelta has levels = {L}; "
                    "pass levels >= ceil(log2 T) + 1"
                )
            merged = xp.sum(S[..., : z + 2, :, :], axis=-3, keepdims=True)
            S = xp.concat([xp.zeros_like(S[..., : z + 1, :, :]), merged, S[..., z + 2 :, :, :]], axis=-3)
        if a is not None:  # decay before the delta read, as in Gated DeltaNet
            S = S * a[..., None, None, :]
        kk = k[..., None, :]
        Sk = matvec(xp, S, kk)  # (..., L, d_v): each bucket's prediction of v_t
        S = S - b[..., None, None, None] * outer(Sk, kk)  # S (I - beta k k^T)
        S0 = outer(b[..., None] * v, k)[..., None, :, :]
        S = xp.concat([S0, S[..., 1:, :, :]], axis=-3)
        return LogLinearState(S, tcount + 1)
