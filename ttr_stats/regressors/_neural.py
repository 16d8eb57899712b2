r"""Array-namespace building blocks of the neural regressors: activations with their derivatives, layer
normalisation forward / backward, batched products. No autograd: every gradient is written out by hand and
checked against central finite differences in ``tests/test_neural.py``."""

from __future__ import annotations

import math

from .. import _array

__all__ = ["ACTIVATIONS", "activation", "layer_norm", "layer_norm_backward", "matvec", "rmatvec", "outer"]

#: the epsilon of layer normalisation (TTT's value)
LN_EPS = 1e-6

_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu(xp, x):
    # the tanh approximation (TTT's and GPT-2's GELU); the exact form needs erf, outside the array API
    u = _GELU_C * (x + 0.044715 * x**3)
    t = xp.tanh(u)
    f = 0.5 * x * (1.0 + t)
    df = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return f, df


def _silu(xp, x):
    s = 0.5 * (1.0 + xp.tanh(0.5 * x))  # the logistic function without exp overflow
    return x * s, s * (1.0 + x * (1.0 - s))


def _relu(xp, x):
    pos = x > 0
    zero = xp.zeros((), dtype=x.dtype, device=_array.device(x))
    return xp.where(pos, x, zero), xp.astype(pos, x.dtype)


def _tanh(xp, x):
    t = xp.tanh(x)
    return t, 1.0 - t * t


ACTIVATIONS = {"gelu": _gelu, "silu": _silu, "relu": _relu, "tanh": _tanh}


def activation(xp, name, x):
    """``(f(x), f'(x))`` for the activation ``name``, elementwise."""
    return ACTIVATIONS[name](xp, x)


def layer_norm(xp, x):
    """Normalise the last axis to zero mean and unit variance (no gain/bias): returns ``(x_hat, 1/sigma)``."""
    mu = xp.mean(x, axis=-1, keepdims=True)
    xc = x - mu
    r = 1.0 / xp.sqrt(xp.mean(xc * xc, axis=-1, keepdims=True) + LN_EPS)
    return xc * r, r


def layer_norm_backward(xp, g, x_hat, r):
    r"""Vector-Jacobian product of :func:`layer_norm`:
    :math:`\partial x = r\,(g - \bar g - \hat x\,\overline{g\hat x})` (bars: means over the last axis)."""
    return r * (g - xp.mean(g, axis=-1, keepdims=True) - x_hat * xp.mean(g * x_hat, axis=-1, keepdims=True))


def matvec(xp, A, x):
    """``A @ x``: A (..., m, n), x (..., n) -> (..., m)."""
    return xp.matmul(A, x[..., None])[..., 0]


def rmatvec(xp, A, y):
    """``A^T @ y``: A (..., m, n), y (..., m) -> (..., n)."""
    return xp.matmul(y[..., None, :], A)[..., 0, :]


def outer(a, b):
    """a (..., m), b (..., n) -> (..., m, n)."""
    return a[..., :, None] * b[..., None, :]
