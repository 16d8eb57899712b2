r"""Float32 local polynomials (p >= 1) are computed in float64 and read back in float32 (issue 10).

Why: the centred moment matrix :math:`C = \sum_i \hat w_i Z_i Z_i^\top` squares the condition number of the
weighted design :math:`\hat W^{1/2} Z`. In float32 its small eigenvalues are known only to about
``P * eps32 * lambda_max`` and the pseudo-inverse (``ridge = 0``) cuts them at ``100 P eps32 = 1.9e-4``
relative (P = 16), i.e. wherever the design's condition number exceeds ~70, whereas float64 keeps them
to a condition number of ~5e6. Float32 and float64 then solve problems of different numerical rank: the
measured O(1) differences (0.9996 relative at d_k = 16 before t = 2 d_k with uniform weights, up to 1.8
after t > 2 d_k under a Gaussian similarity whose weights sit on a few keys, 0.14 for keys at offset 1e3
under exp-dot, where the float32 logits ``q.k ~ 1e6`` are themselves rounded by 0.06). The centring was
not the cause (it is already around each query's reference pair: the same errors appear with a perfectly
centred design), nor the order of the accumulation.

The fix is the usual mixed-precision one: the logits, weights, moments and solves of a float32 call are
those of float64 on the float32 inputs (the product of two float32 numbers is exact in float64), and the
output is rounded to float32 once. The float32 output is then the float64 answer on the same (rounded)
inputs to within one float32 rounding, in every regime, ill-conditioned ones included; a QR of the
weighted design in float32 would resolve conditions to ~1e6 only and would still make different rank
decisions than float64. Cost: float64 arithmetic (about 2x float32 on a CPU; on an H100/H200 float64
matrix products run at the float32 SIMT rate).
"""

from __future__ import annotations


def widened(reg, P):
    """``P`` with its arrays in the regressor's work dtype (float64 for a float32 local polynomial of
    order >= 1), or ``P`` itself when that is its dtype."""
    xp = P.xp
    work = reg.work_dtype(xp, P.dtype) if hasattr(reg, "work_dtype") else P.dtype
    if work == P.dtype:
        return P

    def cast(x):
        return None if x is None else xp.astype(x, work)

    return P._replace(Q=cast(P.Q), K=cast(P.K), V=cast(P.V), g=cast(P.g), b=cast(P.b), dtype=work)


def narrowed(xp, Y, P):
    """The output ``Y`` in the call's dtype ``P.dtype``."""
    return Y if Y.dtype == P.dtype else xp.astype(Y, P.dtype)
