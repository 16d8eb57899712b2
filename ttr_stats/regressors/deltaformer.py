r"""DeltaFormer: a delta rule whose memory is a softmax smoother, so the write is corrected by the residual
of a softmax-attention read (fla-core 0.5.2 ``fla/ops/deltaformer``).

The memory after step t is the Nadaraya-Watson smoother of the *corrected* values :math:`u_j` over the
keys, :math:`m_t(x) = \sum_{j\le t} p_{tj}(x)\,u_j` with :math:`p_{tj}(x)\propto\Gamma_{tj}\exp(\tau
x^\top k_j)`. Step t first reads the past memory at the query and writes the residual,

.. math:: u_t = v_t - \beta_t\, m_{t-1}^{(t)}(q_t),\qquad
          m_{t-1}^{(t)}(q_t) = \sum_{j<t} p_{tj}\,u_j \ \ (\text{normalised over } j<t;\ 0 \text{ at } t=1),

then stores :math:`(k_t, u_t)` and reads :math:`y_t = m_t(q_t)` (normalised over :math:`j\le t`).

Regression view. With the linear kernel in place of the softmax this is DeltaNet written over its pairs
(:math:`M_t = \sum_j u_j k_j^\top`, :math:`u_t = \beta_t(v_t - M_{t-1}k_t)`: one LMS step on
:math:`\tfrac12\|v_t - Mk_t\|^2`); DeltaFormer takes the same functional-gradient step in the space of
softmax smoothers -- weights x regressor x optimizer = (softmax similarity x Gamma) x (kernel smoother of
corrected values) x (one delta / LMS step per token, the residual measured at the query). It minimises no
global objective in closed form (each step is one gradient step on
:math:`\tfrac12\|v_t - m(q_t)\|^2` in the smoother's value coordinates), and two conventions of fla's code
are kept: the residual is taken at :math:`q_t` (DeltaNet uses :math:`k_t`), and :math:`\beta_t` scales the
correction, not the write (:math:`u_t = v_t - \beta_t m(q_t)`, so :math:`\beta\to0` is softmax attention).

Conventions. Call-time ``beta`` is :math:`\beta_t` (> 0; fla's default is 1, a sigmoid in its layer);
``alpha`` gates (``Gated`` weights) decay the smoother's weights (fla has none: ``Uniform()``). The scale is
``ExpDot``'s :math:`\tau = d_k^{-1/2}`, fla's fixed ``1/sqrt(D)``. The state is the cache of
:math:`(k_j, u_j)` with its log-weights, so it continues exactly (``carries_state``).

References
----------
Zhong et al. (2025), *Understanding Transformer from the Perspective of Associative Memory* (DeltaFormer),
arXiv 2505.19488; flash-linear-attention ``fla/ops/deltaformer/naive.py``
(``naive_deltaformer_attn``: strict softmax for the write, inclusive for the read; layout (B, T, H, D)).
"""

from __future__ import annotations

from .nonparametric import SimilaritySmoother

__all__ = ["DeltaFormer"]


class DeltaFormer(SimilaritySmoother):
    r"""A softmax smoother of delta-corrected values (module notes).

    Parameters
    ----------
    similarity : Similarity, default ExpDot()
        The softmax similarity (:math:`\tau = d_k^{-1/2}` by default, fla's).
    """

    family = "deltaformer"
    #: the cache holds the corrected values u, not v: a state continues through the family's methods
    carries_state = True
    #: the write reads the memory at the token's query: memorize(K, V) and non-causal calls cannot run it
    writes_with_queries = True
