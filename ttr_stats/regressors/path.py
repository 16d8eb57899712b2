r"""PaTH attention: softmax attention whose keys are carried to the query's position by data-dependent
Householder-like transforms (Yang et al. 2025).

With :math:`H_s = I - \beta_s w_s w_s^\top` (one per token; fla's ``w`` and ``beta``) and the cumulative
transform :math:`P_{ti} = H_t H_{t-1}\cdots H_{i+1}` (:math:`P_{tt} = I`), the output is

.. math:: y_t = \sum_{i\le t} p_{ti} v_i,\qquad
          p_{ti} \propto \Gamma_{ti}\,\beta^{\mathrm{w}}_i\,\exp\!\big(\tau\, q_t^\top P_{ti} k_i\big).

Regression view. At every step t the layer solves the Nadaraya-Watson (local constant) problem
:math:`\min_a \sum_{i\le t}\Gamma_{ti}\exp(\tau\,q_t^\top k^{(t)}_i)\,\|v_i - a\|^2` whose keys are
*transported* to position t, :math:`k^{(t)}_i = P_{ti}k_i = H_t k^{(t-1)}_i`: weights x regressor x
optimizer = (softmax similarity with position-dependent keys) x (local constant) x (closed form). The
memory is the cache of transported keys, values and log-weights; each step applies :math:`H_t` to every
cached key (a rank-one update, :math:`O(t\,d)`) before appending :math:`(k_t, v_t)` -- so, unlike plain
softmax attention, the state is not the raw pairs, and a carried state continues exactly
(``carries_state``). With every :math:`\beta = 0` the transforms are identities: softmax attention.

Conventions. ``w`` and ``w_beta`` reach the layer as per-token inputs,
``layer(Q, K, V, inputs={"w": W, "w_beta": b})`` with W of shape (..., T, d_k) and b of shape (..., T)
(PaTH normalises w and takes :math:`\beta\in(0, 2)`, where every :math:`H_s` is orthogonal or a
contraction; any finite values are computed as given). The transforms act on the regressor's prepared keys
(after QKNorm when the similarity has it). fla's forgetting gate ``g`` (natural log) is added to the
logits *before* the scale: fla's ``(q^T P k + G_t - G_i) * scale`` is ``log_alpha = scale * g`` here
(our decay multiplies the weights, it is not scaled). fla's layout is (B, T, H, D); ours (B, H, T, D).

References
----------
Yang et al. (2025), *PaTH Attention: Position Encoding via Accumulating
Householder Transformations*, arXiv 2505.16381; flash-linear-attention ``fla/ops/path_attn/naive.py``
(``naive_path_attn``, the UT form of the products per chunk).
"""

from __future__ import annotations

from .nonparametric import SimilaritySmoother

__all__ = ["PaTH", "householder"]


def householder(xp, X, w, beta):
    r"""Apply :math:`H = I - \beta w w^\top` to the rows of X: ``X - beta (X w) w^T``.

    X (..., n, d), w (..., d), beta (...): every row of X transformed by its batch element's H.
    """
    proj = xp.matmul(X, w[..., :, None])  # (..., n, 1)
    return X - beta[..., None, None] * proj * w[..., None, :]


class PaTH(SimilaritySmoother):
    r"""Nadaraya-Watson with PaTH's transported keys (module notes).

    Parameters
    ----------
    similarity : Similarity, default ExpDot()
        The softmax similarity (:math:`\tau = d_k^{-1/2}` by default, fla's default scale).
    """

    family = "path"
    #: per-token inputs the layer's call must carry (``inputs={...}``): name -> "d_k" (rows) / None (scalars)
    token_inputs = {"w": "d_k", "w_beta": None}
    #: the cache holds transported keys, not the raw pairs: a carried state continues through the family's
    #: methods (memorize() runs the reference, initial_state is a CacheState)
    carries_state = True
