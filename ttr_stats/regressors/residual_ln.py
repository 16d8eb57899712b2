r"""flash-linear-attention's Titans memory head: a linear memory read through a fixed-gain layer norm with a
residual on the key, :math:`m_M(k) = k + \gamma\odot\mathrm{LN}(Mk) + b`.

Regression view (fla-core 0.5.2 ``fla/ops/titans/naive.py``). fla's per-token loss is
:math:`\ell_t(M) = \|\gamma\odot\mathrm{LN}(Mk_t) + b - (v_t - k_t)\|^2`: the "reconstruction target
:math:`v - k`" is the residual form of :math:`\tfrac12\|v_t - m_M(k_t)\|^2` with the predictor above (a
factor 2 aside, which fla's update ``- 2 theta k^T v_new`` carries: fla's :math:`\theta_t` is our step
:math:`\beta_t / 2`). :math:`\gamma` and :math:`b` (fla's ``w`` and ``b``, one vector per head) are outer-loop
parameters: fixed at test time, only :math:`M` is trained. So the objective is TTT-Linear's residual,
layer-normed head with a gain and no trainable bias, and it is a coherent regression; two lines of fla's
code depart from it, and ``fla_quirks=True`` reproduces them (tests/test_titans_fla.py checks both ways):

1. **The step is not the gradient of that loss.** fla computes ``v_new = D * grad - grad.sum(-1) / (rstd
   * D) - km_hat * (grad * km_hat).sum(-1) / (rstd * D)`` with ``grad`` :math:`= g = \gamma\odot e`,
   ``rstd`` :math:`=\sigma` (the standard deviation of :math:`Mk`, fla's name notwithstanding): by operator
   precedence the first term is not divided by :math:`\sigma D`. The layer norm's vector-Jacobian product
   (the commented-out line just above it in fla) is
   :math:`\sigma^{-1}(g - \bar g - \hat x\,\overline{g\hat x})`; fla's direction is
   :math:`D g - \sigma^{-1}(\bar g + \hat x\,\overline{g\hat x})` (bars: means over the D features), which
   is no function's gradient in general (its Jacobian is not symmetric).
2. **The read is not the trained predictor.** fla reads :math:`z + \gamma\odot\mathrm{LN}(z) + b` with
   :math:`z = Mq` (the residual on the memory's output) where the loss trains
   :math:`k + \gamma\odot\mathrm{LN}(Mk) + b` (the residual on the input); this class reads
   :math:`m_M(q) = q + \gamma\odot\mathrm{LN}(Mq) + b`.

Layouts: fla's state is :math:`M^\top` (``k @ M``), shape ``[D_k, D_v]``; ours is M (d_v, d_k). The layer
norm's epsilon is fla's default ``eps = 1e-6`` (inside the square root, as here).
"""

from __future__ import annotations

from . import _neural as nn
from .linear import Regressor

__all__ = ["ResidualLayerNorm"]


class ResidualLayerNorm(Regressor):
    r"""A linear memory behind a fixed-gain layer norm with a key residual,
    :math:`m_M(k) = k + \gamma\odot\mathrm{LN}(Mk) + b`.

    Trained by the gradient optimizers (fla's Titans:
    :class:`~ttr_stats.optimizers.titans.MiniBatchMomentum`) on :math:`\tfrac12\|v - m_M(k)\|^2`; needs
    :math:`d_v = d_k`.

    Parameters
    ----------
    gain : float or array of shape (..., d_k)
        :math:`\gamma` (fla's ``w``), fixed; broadcasts against the batch dims ((H, D): one per head when
        the batch is (B, H)).
    bias : float or array of shape (..., d_k)
        :math:`b`, fixed.
    fla_quirks : bool, default False
        Reproduce fla-core 0.5.2's step direction and read (module notes); not a regression objective.
    """

    linear_in_features = False

    def __init__(self, gain=1.0, bias=0.0, fla_quirks=False):
        self.gain = gain
        self.bias = bias
        self.fla_quirks = fla_quirks

    @property
    def dtypes(self):
        """float32 and float64 only (a layer norm in float16 keeps no digits; see ``Linear``)."""
        return ("float32", "float64")

    def _validate(self):
        if not isinstance(self.fla_quirks, bool):
            raise ValueError(f"fla_quirks must be True or False, got {self.fla_quirks!r}")

    def param_names(self):
        return ("M",)

    def init_params(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        """Zero memory (fla's default initial state)."""
        if d_v != d_k:
            raise ValueError(
                "V: ResidualLayerNorm adds the key to the prediction, so d_v must equal d_k; got "
                f"d_k = {d_k}, d_v = {d_v}"
            )
        return (xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),)

    def _affine(self, xp, like):
        from .. import _array

        dev = _array.device(like)
        gain = xp.asarray(self.gain, dtype=like.dtype, device=dev)
        bias = xp.asarray(self.bias, dtype=like.dtype, device=dev)
        return gain, bias

    def predict(self, xp, params, q):
        """:math:`m_M(q)`; with ``fla_quirks`` :math:`z + \\gamma\\odot LN(z) + b`, :math:`z = Mq`."""
        z = nn.matvec(xp, params[0], q)
        gain, bias = self._affine(xp, z)
        x_hat, _ = nn.layer_norm(xp, z)
        return (z if self.fla_quirks else q) + gain * x_hat + bias

    def loss_grad(self, xp, params, k, v):
        r"""Loss :math:`\tfrac12\|m_M(k) - v\|^2` and its gradient :math:`(\partial z)\,k^\top`, with
        :math:`\partial z` the layer norm's vector-Jacobian product of :math:`\gamma\odot e` (fla's
        direction with ``fla_quirks``, module notes)."""
        z = nn.matvec(xp, params[0], k)
        gain, bias = self._affine(xp, z)
        x_hat, r = nn.layer_norm(xp, z)  # r = 1 / sigma
        e = k + gain * x_hat + bias - v
        g = gain * e
        if self.fla_quirks:
            D = z.shape[-1]
            mean_g = xp.mean(g, axis=-1, keepdims=True)
            mean_gx = xp.mean(g * x_hat, axis=-1, keepdims=True)
            d_z = D * g - r * (mean_g + x_hat * mean_gx)  # fla: D*grad - (sum + x_hat*proj)/(rstd*D)
        else:
            d_z = nn.layer_norm_backward(xp, g, x_hat, r)
        return 0.5 * xp.sum(e * e, axis=-1), (nn.outer(d_z, k),)
