r"""Parallax: softmax attention corrected to first order by a probe r (parameterised local linear attention).

With the normalised softmax weights :math:`p_{ti} \propto \Gamma_{ti}\exp(\tau q_t^\top k_i)`, the weighted
means :math:`\bar v = \sum_i p_i v_i`, :math:`\bar k = \sum_i p_i k_i` and a probe :math:`r_t`,

.. math:: y_t = \bar v - \mathrm{Cov}_p(v, k)\, r_t
              = \sum_i p_i\,\big(1 - r_t^\top(k_i - \bar k)\big)\, v_i

(flash-linear-attention's ``o1/d1 (1 + d2/d1) - o2/d1`` with ``s2 = r k^T`` unscaled, rewritten).

Regression view. Local linear attention fits :math:`v \approx a + B(k - q)` under the weights p and reads
the intercept :math:`a = \bar v - B\mu`, :math:`\mu = \bar k - q`, :math:`B = \mathrm{Cov}_p(v,k)\Sigma^{-1}`
(:math:`\Sigma = \mathrm{Cov}_p(k)`). So with :math:`r = \rho = \Sigma^{-1}\mu` Parallax *is* local linear
attention, and in general it is the first-order (in r) expansion of softmax attention at tilted weights
:math:`p_i e^{-r^\top k_i}`: the learned r replaces the solve :math:`\Sigma^{-1}\mu` (weights: softmax x
Gamma; regressor: local linear with a given slope direction; optimizer: none, closed form).

Probe. In Parallax r is a second query stream from the token (``r_proj``); the layer's call carries only q,
so here :math:`r_t = W q_t` with a (learned) matrix ``probe`` W of shape (d_k, d_k) (every ``r_proj`` when
``q_proj`` is invertible), ``"local_linear"`` for :math:`r = (\Sigma + \lambda I)^{-1}\mu` (local linear
attention with ridge :math:`\lambda`), or ``None`` for r = 0 (softmax attention).

References
----------
Parallax, arXiv 2605.29157 (Algorithm 1); flash-linear-attention ``fla/ops/parallax/naive.py``
(``naive_parallax``: ``scale`` multiplies the q-k logits only, default :math:`d^{-1/2}`; layout (B, T, H, D)).
"""

from __future__ import annotations

from .. import _array
from .._validation import check_scalar
from ..similarity import ExpDot, Similarity
from .nonparametric import NonparametricRegressor, normalised_weights

__all__ = ["Parallax"]


class Parallax(NonparametricRegressor):
    r"""Softmax attention with Parallax's first-order probe correction.

    Parameters
    ----------
    probe : None, "local_linear" or array of shape (d_k, d_k)
        How :math:`r_t` is formed (see the module notes).
    similarity : Similarity
        The softmax similarity (default :class:`~ttr_stats.similarity.ExpDot`, :math:`\tau = d_k^{-1/2}`).
    ridge : float >= 0
        :math:`\lambda` of ``probe="local_linear"``.
    """

    family = "parallax"

    def __init__(self, probe=None, similarity=None, ridge=0.0):
        self.probe = probe
        self.similarity = ExpDot() if similarity is None else similarity
        self.ridge = ridge

    def _validate(self):
        check_scalar("ridge", self.ridge, low=0.0)
        if not isinstance(self.similarity, Similarity):
            raise TypeError(f"similarity must be a ttr_stats.similarity.Similarity, got {self.similarity!r}")
        self.similarity._validate()
        if isinstance(self.probe, str) and self.probe != "local_linear":
            raise ValueError(f"probe must be None, 'local_linear' or a (d_k, d_k) array, got {self.probe!r}")

    def log_similarity(self, xp, Q, K):
        return self.similarity.log_weights(xp, Q, K)

    def probe_of(self, xp, Q, mean_k, Sigma):
        """:math:`r_t` of shape (..., T_q, d_k)."""
        if self.probe is None:
            return xp.zeros_like(Q)
        if isinstance(self.probe, str):
            d = Q.shape[-1]
            eye = xp.eye(d, dtype=Q.dtype, device=_array.device(Q))
            mu = (mean_k - Q)[..., None]
            if float(self.ridge) == 0:  # minimum-norm slope where Sigma is singular (t < d_k), as LLA
                return xp.matmul(xp.linalg.pinv(Sigma), mu)[..., 0]
            return xp.linalg.solve(Sigma + float(self.ridge) * eye, mu)[..., 0]
        W = xp.asarray(self.probe, dtype=Q.dtype, device=_array.device(Q))
        if W.shape != (Q.shape[-1], Q.shape[-1]):
            raise ValueError(f"probe must have shape (d_k, d_k) = {(Q.shape[-1],) * 2}, got {tuple(W.shape)}")
        return xp.matmul(Q, xp.matrix_transpose(W))

    def solve(self, xp, Q, K, V, logW):
        p = normalised_weights(xp, logW)  # (..., T_q, T_k)
        kbar = xp.matmul(p, K)
        vbar = xp.matmul(p, V)
        Sigma = None
        if isinstance(self.probe, str):
            kk = xp.matmul(xp.matrix_transpose(K[..., None, :, :] * p[..., :, :, None]), K[..., None, :, :])
            Sigma = kk - kbar[..., :, None] * kbar[..., None, :]
        r = self.probe_of(xp, Q, kbar, Sigma)
        # y = sum_i p_i (1 - r^T (k_i - kbar)) v_i  (centred: no cancellation of the two means)
        c = xp.matmul(r[..., :, None, :], xp.matrix_transpose(K)[..., None, :, :])[..., 0, :]  # r^T k_i
        c = c - xp.sum(r * kbar, axis=-1)[..., None]
        return vbar - xp.matmul(p * c, V)
