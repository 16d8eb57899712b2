r"""Exact and covariance-free solutions of the weighted linear least-squares problem.

:class:`ClosedForm` solves :math:`M_t = S_t (R_t + \rho I)^{-1}` exactly (a Newton step from any start);
:class:`IdentityCovariance` replaces :math:`R_t` by the identity (linear attention and its gated variants).
"""

from __future__ import annotations

import math

from .. import _array
from .._validation import check_scalar
from .base import LinearAttentionState, Optimizer, SufficientStatistics, matvec, outer

__all__ = ["ClosedForm", "IdentityCovariance", "conjugate_gradient"]

#: MesaNet's default number of conjugate-gradient steps (flash-linear-attention ``max_CG_iteration``)
CG_DEFAULT_STEPS = 30


def conjugate_gradient(xp, apply, b, steps):
    r"""``steps`` conjugate-gradient iterations on :math:`A x = b` from :math:`x_0 = 0`, one system per row.

    The iteration of flash-linear-attention's ``mesa_net`` (``naive_mesa_net_CG`` and the Triton chunk
    kernel): :math:`r_0 = p_0 = b`, :math:`\alpha = r^\top r / p^\top A p`, :math:`x \mathrel{+}= \alpha p`,
    :math:`r \mathrel{-}= \alpha A p`, :math:`p = r + (r_{new}^\top r_{new} / r^\top r)\, p`. fla adds
    ``1e-5`` to both denominators (a float32 guard that stalls the iteration once :math:`r^\top r`
    falls to ~1e-5); here a zero denominator gives a zero step instead, so ``steps >= d`` is exact up to
    rounding.

    Parameters
    ----------
    apply : callable
        ``x -> A x`` row-wise for an array ``x`` shaped like ``b`` (A symmetric positive definite).
    b : array of shape (..., d)
        Right-hand sides, one per row.
    steps : int >= 0

    Returns
    -------
    array of shape (..., d)
    """
    dev = _array.device(b)
    zero = xp.zeros((), dtype=b.dtype, device=dev)
    one = xp.ones((), dtype=b.dtype, device=dev)

    def ratio(num, den):  # num / den, 0 where den == 0 (converged or a zero right-hand side)
        ok = den > 0
        return xp.where(ok, num / xp.where(ok, den, one), zero)

    x = xp.zeros_like(b)
    r = b
    p = b
    delta = xp.sum(r * r, axis=-1, keepdims=True)
    for _ in range(int(steps)):
        Ap = apply(p)
        a = ratio(delta, xp.sum(p * Ap, axis=-1, keepdims=True))
        x = x + a * p
        r = r - a * Ap
        new = xp.sum(r * r, axis=-1, keepdims=True)
        p = r + ratio(new, delta) * p
        delta = new
    return x


class ClosedForm(Optimizer):
    r"""Exact weighted (ridge) least squares on every prefix.

    .. math::

        M_t = \arg\min_M \tfrac12 \sum_{i \le t} \gamma_i^{(t)} \|v_i - M k_i\|^2 + \tfrac{\rho}{2}\|M\|_F^2
            = S_t (R_t + \rho I)^{-1},

    :math:`R_t = \sum_i \gamma_i^{(t)} k_i k_i^\top`, :math:`S_t = \sum_i \gamma_i^{(t)} v_i k_i^\top`.

    Parameters
    ----------
    ridge : float >= 0
        :math:`\rho`. With ``ridge=0`` and a singular :math:`R_t` (``t < d_k``) the minimum-norm solution
        :math:`S_t R_t^{+}` is returned (pseudo-inverse by eigendecomposition; eigenvalues below
        ``100 d eps`` times the largest count as zero).
    solver : {"exact", "cg"}
        ``"exact"`` (default): a factorisation per read. ``"cg"``: ``max_iter`` conjugate-gradient steps on
        :math:`(R_t + \rho I) x = q_t`, as MesaNet reads (Grazzi et al. 2025; flash-linear-attention's
        ``mesa_net`` chunk kernel): start :math:`x_0 = 0`, so one step is the linear-attention read
        :math:`S_t q_t` times a per-token scalar and ``max_iter >= d_k`` steps are exact in exact
        arithmetic. Needs ``ridge > 0``. The read is then nonlinear in ``q`` (there is no memory matrix).
    max_iter : int >= 1, optional
        Conjugate-gradient steps of ``solver="cg"`` (default 30, MesaNet's); only with ``solver="cg"``.

    Notes
    -----
    The ridge prior is fixed: under decay it does not fade, unlike :class:`RecursiveLeastSquares`.
    State: :class:`SufficientStatistics` ``(R, S)``; the recurrent method accumulates them and solves the
    d_k x d_k system at every step, O(T d^3).

    References
    ----------
    Wang, Shi & Fox (2025), §3 (OLS / weighted RLS rows; "one Newton step").
    """

    #: what a user changes when the recursion diverges (the layer's FloatingPointError says it)
    divergence_remedy = "Use a larger ridge ({name}(ridge=...)), float64, or rescale the keys."

    State = SufficientStatistics
    family = "least_squares"
    exact = True

    def __init__(self, ridge=0.0, solver="exact", max_iter=None):
        self.ridge = ridge
        self.solver = solver
        self.max_iter = max_iter

    def _validate(self):
        ridge = check_scalar("ridge", self.ridge, low=0.0)
        if self.solver not in ("exact", "cg"):
            raise ValueError(f"solver must be 'exact' or 'cg', got {self.solver!r}")
        if self.solver == "exact":
            if self.max_iter is not None:
                raise ValueError(
                    f"max_iter={self.max_iter!r} only applies to solver='cg' (the exact solver has no "
                    "iterations); pass solver='cg' or leave max_iter=None"
                )
            return
        if ridge <= 0:
            raise ValueError(
                "solver='cg' needs ridge > 0: conjugate gradients on a singular R_t (ridge = 0, t < d_k) "
                f"do not converge to the minimum-norm solution; got ridge={self.ridge!r}"
            )
        if self.max_iter is not None:
            check_scalar("max_iter", self.max_iter, low=1, integer=True)

    @property
    def cg_steps(self):
        """Conjugate-gradient steps of a read: ``max_iter`` (default 30), ``None`` for the exact solver."""
        if self.solver != "cg":
            return None
        return CG_DEFAULT_STEPS if self.max_iter is None else int(self.max_iter)

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        return SufficientStatistics(
            xp.zeros(tuple(batch_shape) + (d_k, d_k), dtype=dtype, device=device),
            xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),
        )

    def update(self, state, k, v, a, b):
        a2 = a[..., None]  # (..., 1, 1): scalar decay
        bb = b[..., None, None]
        return SufficientStatistics(a2 * state.R + bb * outer(k, k), a2 * state.S + bb * outer(v, k))

    def downdate(self, state, k, v, b):
        bb = b[..., None, None]
        return SufficientStatistics(state.R - bb * outer(k, k), state.S - bb * outer(v, k))

    def solve(self, xp, R, rhs):
        """``(R + ridge I)^{-1} rhs`` (minimum-norm when ridge = 0); R (..., d, d), rhs (..., d, m).

        With ``solver="cg"``: ``cg_steps`` conjugate-gradient steps per column of ``rhs`` (each column is
        its own solve, as each query is in MesaNet).
        """
        steps = self.cg_steps
        if steps is None:
            return _array.ridge_solve(xp, R, rhs, self.ridge)
        rho = float(self.ridge)

        def apply(x):  # x (..., m, d): rows are the vectors; R is symmetric so x R = (R x^T)^T
            return xp.matmul(x, R) + rho * x

        x = conjugate_gradient(xp, apply, xp.matrix_transpose(rhs), steps)
        return xp.matrix_transpose(x)

    def memory(self, state):
        if self.cg_steps is not None:
            raise ValueError(
                "solver='cg' makes the read nonlinear in q (the step lengths depend on q): there is no "
                "memory matrix M; use read(state, q), or solver='exact'"
            )
        xp = _array.namespace(state.R)
        # M = S (R + rho I)^{-1} = ((R + rho I)^{-1} S^T)^T since R is symmetric
        return xp.matrix_transpose(self.solve(xp, state.R, xp.matrix_transpose(state.S)))

    def read(self, state, q):
        xp = _array.namespace(q)
        R = state.R
        if self.cg_steps is None and math.prod(R.shape[:-2]) < math.prod(q.shape[:-1]):
            # more queries than memories (the scikit-learn facade): factor each memory once
            return matvec(xp, self.memory(state), q)
        x = self.solve(xp, R, q[..., None])
        return xp.matmul(state.S, x)[..., 0]


class IdentityCovariance(Optimizer):
    r"""The linear-attention approximation :math:`K^\top \Gamma K \approx I`.

    .. math:: M_t = \alpha_t M_{t-1} + \beta_t v_t k_t^\top,\qquad y_t = M_t q_t

    (per-dimension decay: :math:`M_t = M_{t-1}\mathrm{Diag}(\alpha_t) + \beta_t v_t k_t^\top`).
    Equals one batch gradient-descent step from 0 with step 1.

    Parameters
    ----------
    normalize : {None, "sum", "output"}
        ``"sum"`` divides by :math:`q_t^\top z_t`, :math:`z_t = \sum_i \gamma_i^{(t)} k_i`: Nadaraya-Watson
        with the linear kernel :math:`q^\top k` (meaningful for positive features; where the denominator
        is exactly 0 the output is 0). ``"output"`` rescales :math:`y_t` to unit norm (the output
        normalisation of the paper's Figure 2; a zero output stays 0).

    References
    ----------
    Wang, Shi & Fox (2025), §2 (linear attention, gated linear attention rows) and §3.
    """

    State = LinearAttentionState
    family = "identity"

    def __init__(self, normalize=None):
        self.normalize = normalize

    def _validate(self):
        if self.normalize not in (None, "sum", "output"):
            raise ValueError(f"normalize must be None, 'sum' or 'output', got {self.normalize!r}")

    def init(self, xp, batch_shape, d_k, d_v, dtype, device=None):
        return LinearAttentionState(
            xp.zeros(tuple(batch_shape) + (d_v, d_k), dtype=dtype, device=device),
            xp.zeros(tuple(batch_shape) + (d_k,), dtype=dtype, device=device),
        )

    #: the generic loop may pass ``a=None`` when every gate of the call is 1 (no decay: skips a pass)
    skips_unit_decay = True

    def update(self, state, k, v, a, b):
        bb = b[..., None]
        write = outer(bb * v, k)  # b folded into v: one (d_v, d_k) product, not two
        if a is None:  # no decay anywhere in the call (the loop checked): M * 1 is M exactly
            return LinearAttentionState(state.M + write, state.z + bb * k)
        return LinearAttentionState(state.M * a[..., None, :] + write, state.z * a + bb * k)

    def downdate(self, state, k, v, b):
        bb = b[..., None]
        return LinearAttentionState(state.M - bb[..., None] * outer(v, k), state.z - bb * k)

    def memory(self, state):
        if self.normalize is not None:
            raise ValueError(
                f"normalize={self.normalize!r} makes the read nonlinear in q: there is no memory matrix M; "
                "use read(state, q)"
            )
        return state.M

    def read(self, state, q):
        xp = _array.namespace(q)
        y = matvec(xp, state.M, q)
        if self.normalize is None:  # finish reads the denominator only when normalising
            return y
        return self.finish(xp, y, xp.sum(state.z * q, axis=-1))

    def finish(self, xp, y, denom):
        """Apply the normalisation to raw outputs ``y`` (..., d_v) given ``denom = q^T z`` (...; read only
        with ``normalize="sum"``, None allowed otherwise)."""
        if self.normalize is None:
            return y
        zero = xp.zeros((), dtype=y.dtype, device=_array.device(y))
        if self.normalize == "sum":
            ok = denom != 0
            safe = xp.where(ok, denom, xp.ones((), dtype=y.dtype, device=_array.device(y)))
            return xp.where(ok[..., None], y / safe[..., None], zero)
        if self.normalize == "output":
            n = xp.linalg.vector_norm(y, axis=-1, keepdims=True)
            ok = n > 0
            return xp.where(ok, y / xp.where(ok, n, zero + 1), zero)
        return y
