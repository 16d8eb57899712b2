r"""Bias and variance of local polynomial attention: seeded Monte Carlo and its asymptotic theory.

Model (theory §1): :math:`Y = m(X) + \sigma\varepsilon`, :math:`X \sim f` in :math:`\mathbb R^d`; the
estimator at a query :math:`x_0` is a layer read with ``causal=False`` over the n pairs
:math:`(k_i, v_i) = (X_i, Y_i)` -- by default :class:`~ttr_stats.regressors.LocalPolynomial` of degree p with
the Gaussian similarity of bandwidth h (p = 0: Nadaraya-Watson / softmax attention, 1: local linear,
2: local quadratic).

* :func:`monte_carlo` -- bias, variance and MSE by simulation, every replication a batch entry of one
  array computation (no Python loop over replications), on any array namespace.
* :func:`theory` -- the asymptotic bias and variance at an interior point (any d for p <= 1, d = 1 for
  every p) and at a 1-D boundary, from the target's derivatives and the design density.
* :func:`optimal_bandwidth` -- the AMSE-optimal bandwidth :math:`h^*`.

References
----------
theory.md §1; Ruppert & Wand (1994), *Multivariate locally weighted least squares regression*, Ann. Statist.
22; Fan & Gijbels (1996), *Local polynomial modelling and its applications*, §3.2.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from .. import _array

__all__ = ["monte_carlo", "theory", "optimal_bandwidth", "AsymptoticMSE", "DESIGNS", "design_density"]

#: default memory budget of one batched computation (bytes); replications are chunked to stay below it
CHUNK_BYTES = 2**30

_SQRT_2PI = math.sqrt(2.0 * math.pi)


# ------------------------------------------------------------------------------------------------------
# designs
def _phi(x):
    return np.exp(-0.5 * np.asarray(x, dtype=np.float64) ** 2) / _SQRT_2PI


#: the built-in designs: U[0, 1]^d, Beta(2, 2)^d, N(0, I) (densities in :func:`design_density`)
DESIGNS = ("uniform", "beta22", "normal")


def _sample_design(name, rng, size, d):
    shape = tuple(size) + (d,)
    if name == "uniform":
        return rng.random(shape)
    if name == "beta22":
        return rng.beta(2.0, 2.0, shape)
    return rng.standard_normal(shape)


def design_density(name, x):
    r"""Density :math:`f(x)` and gradient :math:`\nabla f(x)` of a named design (product over coordinates).

    Parameters
    ----------
    name : {"uniform", "beta22", "normal"}
        U[0, 1]^d, Beta(2, 2)^d (:math:`f = \prod 6x_j(1-x_j)`), N(0, I).
    x : array of shape (d,)
        The point; for "uniform" on the boundary of [0, 1]^d the one-sided density 1 is returned (what
        the boundary theory uses).

    Returns
    -------
    f : float
    grad : ndarray of shape (d,)
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if name == "uniform":
        inside = bool(np.all((x >= 0) & (x <= 1)))
        return (1.0 if inside else 0.0), np.zeros_like(x)
    if name == "beta22":
        g = np.where((x >= 0) & (x <= 1), 6.0 * x * (1.0 - x), 0.0)
        dg = np.where((x >= 0) & (x <= 1), 6.0 * (1.0 - 2.0 * x), 0.0)
    elif name == "normal":
        g, dg = _phi(x), -x * _phi(x)
    else:
        raise ValueError(f"design must be a callable or one of {DESIGNS}, got {name!r}")
    f = float(np.prod(g))
    grad = np.array([dg[j] * np.prod(np.delete(g, j)) for j in range(len(x))])
    return f, grad


# ------------------------------------------------------------------------------------------------------
# kernels: one-sided moments mu_j(c) = int_{-c}^inf u^j K(u) du and G_j(c) = int_{-c}^inf u^j K(u)^2 du
def _gauss_moment(j, c):
    """int_{-c}^inf u^j phi(u) du by the recurrence mu_j = (-c)^(j-1) phi(c) + (j - 1) mu_{j-2}."""
    from scipy.special import ndtr

    if math.isinf(c):
        return 0.0 if j % 2 else float(math.prod(range(j - 1, 0, -2)))
    mu = [float(ndtr(c)), float(_phi(c))]
    for k in range(2, j + 1):
        mu.append((-c) ** (k - 1) * float(_phi(c)) + (k - 1) * mu[k - 2])
    return mu[j]


def _gauss_sq_moment(j, c):
    # phi(u)^2 = phi(sqrt(2) u) / sqrt(2 pi); substitute v = sqrt(2) u
    return _gauss_moment(j, math.sqrt(2.0) * c) * 2.0 ** (-(j + 1) / 2) / _SQRT_2PI


def _epan_moment(j, c):
    a = -min(c, 1.0)
    return 0.75 * ((1 - a ** (j + 1)) / (j + 1) - (1 - a ** (j + 3)) / (j + 3))


def _epan_sq_moment(j, c):
    a = -min(c, 1.0)
    p = lambda k: (1 - a ** (k + 1)) / (k + 1)  # noqa: E731
    return 9.0 / 16.0 * (p(j) - 2 * p(j + 2) + p(j + 4))


_KERNELS = {
    "gaussian": (_gauss_moment, _gauss_sq_moment),
    "epanechnikov": (_epan_moment, _epan_sq_moment),
}


# ------------------------------------------------------------------------------------------------------
# numerical derivatives (the convenience path of theory)
def _eval_scalar(fn, x):
    y = np.asarray(fn(np.asarray(x, dtype=np.float64)), dtype=np.float64)
    return y.reshape(y.shape[: x.ndim - 1]) if y.ndim >= x.ndim else y


def _derivs_1d(fn, x0, k_max, scale=None):
    """m^(k)(x0), k = 1..k_max, by fourth-order central differences with step eps^(1/(k+4)) max(1, |x0|)."""
    stencils = {  # offsets -3..3, fourth-order accurate (truncation ~ step^4 m^(k+4))
        1: (np.array([0, 1, -8, 0, 8, -1, 0]) / 12.0),
        2: (np.array([0, -1, 16, -30, 16, -1, 0]) / 12.0),
        3: (np.array([1, -8, 13, 0, -13, 8, -1]) / 8.0),
        4: (np.array([-1, 12, -39, 56, -39, 12, -1]) / 6.0),
    }
    out = []
    scale = max(1.0, abs(float(x0))) if scale is None else scale
    for k in range(1, k_max + 1):
        step = np.finfo(np.float64).eps ** (1.0 / (k + 4)) * scale
        pts = (float(x0) + step * np.arange(-3.0, 4.0))[:, None]
        vals = _eval_scalar(fn, pts)
        out.append(float(np.dot(stencils[k], vals)) / step**k)
    return out


def _grad_laplacian(fn, x0):
    """Gradient and Laplacian of a scalar fn at x0 (d,), coordinate by coordinate (see _derivs_1d)."""
    x0 = np.asarray(x0, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(x0))))
    grad, lap = np.zeros(len(x0)), 0.0
    for j in range(len(x0)):
        e = np.eye(len(x0))[j]
        line = lambda t, e=e: fn(x0 + t[..., :1] * e)  # noqa: E731 - t has shape (k, 1)
        d1, d2 = _derivs_1d(line, 0.0, 2, scale=scale)
        grad[j], lap = d1, lap + d2
    return grad, lap


# ------------------------------------------------------------------------------------------------------
# theory
class AsymptoticMSE(NamedTuple):
    r"""Asymptotic bias, variance and MSE of a local polynomial estimator at one point.

    ``bias`` :math:`\approx` ``bias_constant * h**rate`` (plus, in 1-D, the next order),
    ``variance = variance_constant / (n h^d)``, ``mse = bias**2 + variance``; arrays when ``h`` is one.
    """

    bias: object
    variance: object
    mse: object
    rate: int
    bias_constant: float
    variance_constant: float


def _resolve_inputs(order, d, x0, m_derivs, target, f, df, boundary):
    if x0 is not None:
        x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
        if d is not None and d != len(x0):
            raise ValueError(f"x0 must have d = {d} coordinates, got {len(x0)}")
        d = len(x0)
    d = 1 if d is None else int(d)
    if d < 1:
        raise ValueError(f"d must be >= 1, got {d}")
    if boundary is not False and d != 1:
        raise ValueError(f"boundary: the boundary theory is 1-D, got d = {d}")
    if d > 1 and order > 1:
        raise ValueError(f"order: the multivariate theory covers p = 0 and 1, got p = {order} with d = {d}")
    # --- the target's derivatives
    if (m_derivs is None) == (target is None):
        raise ValueError("m_derivs: pass exactly one of m_derivs (values at x0) and target (a callable m)")
    if target is not None:
        if x0 is None:
            raise ValueError("x0: needed to differentiate target numerically")
        if d == 1:
            fn1 = lambda x: target(x[..., None] if x.ndim == 1 else x)  # noqa: E731
            m_derivs = _derivs_1d(fn1, x0[0], order + 2)
        else:
            grad, lap = _grad_laplacian(target, x0)
            m_derivs = {"grad": grad, "laplacian": lap}
    if d == 1:
        if isinstance(m_derivs, Mapping):
            m_derivs = [m_derivs.get(k) for k in range(1, order + 3)]
        m_derivs = list(m_derivs)
        need = order + 2
        if len(m_derivs) < need or any(v is None for v in m_derivs[:need]):
            raise ValueError(
                f"m_derivs: order {order} needs the derivatives m', ..., m^({need}) at x0 (a sequence of "
                f"{need}), got {m_derivs!r}"
            )
        mk = [float(v) for v in m_derivs[:need]]
    else:
        if not isinstance(m_derivs, Mapping) or "grad" not in m_derivs or "laplacian" not in m_derivs:
            raise ValueError("m_derivs: in d > 1 pass a mapping {'grad': (d,), 'laplacian': float}")
        mk = {
            "grad": np.asarray(m_derivs["grad"], dtype=np.float64).reshape(-1),
            "laplacian": float(m_derivs["laplacian"]),
        }
        if len(mk["grad"]) != d:
            raise ValueError(f"m_derivs: grad must have {d} entries, got {len(mk['grad'])}")
    # --- the design density and its gradient
    if isinstance(f, str) or callable(f):
        if x0 is None:
            raise ValueError("x0: needed to evaluate the design density f")
        if isinstance(f, str):
            fval, grad_f = design_density(f, x0)
        else:
            fval = float(_eval_scalar(f, x0))
            if d == 1:
                grad_f = np.array(_derivs_1d(lambda x: f(x[..., None] if x.ndim == 1 else x), x0[0], 1))
            else:
                grad_f, _ = _grad_laplacian(f, x0)
        if df is not None:
            grad_f = np.asarray(df, dtype=np.float64).reshape(-1)
    else:
        if f is None:
            raise ValueError(
                "f: pass the design density at x0 (a float), a callable density or a design name"
            )
        fval = float(f)
        grad_f = np.zeros(d) if df is None else np.asarray(df, dtype=np.float64).reshape(-1)
        if df is None and (order % 2 == 0 or boundary):
            raise ValueError("df: the bias of even orders (and at a boundary) needs the density's derivative")
    if not fval > 0:
        raise ValueError(f"f: the design density at x0 must be > 0, got {fval}")
    if len(grad_f) != d:
        raise ValueError(f"df must have {d} entries, got {len(grad_f)}")
    return d, mk, fval, grad_f


def _theory_1d(order, kernel, mk, fval, fprime, c):
    mom, sq = _KERNELS[kernel]
    p = order
    mu = [mom(j, c) for j in range(2 * p + 4)]
    S = np.array([[mu[i + j] for j in range(p + 1)] for i in range(p + 1)])
    Sp = np.array([[mu[i + j + 1] for j in range(p + 1)] for i in range(p + 1)])
    G = np.array([[sq(i + j, c) for j in range(p + 1)] for i in range(p + 1)])
    w = np.linalg.solve(S, np.eye(p + 1)[0])  # equivalent kernel K*(u) = sum_j w_j u^j K(u)
    c1 = np.array([mu[i + p + 1] for i in range(p + 1)])
    c2 = np.array([mu[i + p + 2] for i in range(p + 1)])
    a1 = mk[p] / math.factorial(p + 1)
    a2 = mk[p + 1] / math.factorial(p + 2)
    g = fprime / fval
    B1 = a1 * float(w @ c1)
    B2 = (a2 + a1 * g) * float(w @ c2) - a1 * g * float(w @ Sp @ np.linalg.solve(S, c1))
    V = float(w @ G @ w) / fval
    # clean exact zeros of symmetric interior moments (the leading term then has order p + 2)
    if abs(B1) < 1e-14 * max(1.0, abs(a1)):
        B1 = 0.0
    return B1, B2, V


def theory(
    order,
    kernel="gaussian",
    *,
    n,
    h,
    sigma=1.0,
    d=None,
    x0=None,
    m_derivs=None,
    target=None,
    f=None,
    df=None,
    boundary=False,
):
    r"""Asymptotic bias, variance and MSE of local polynomial regression of degree ``order`` at one point.

    Parameters
    ----------
    order : int in {0, 1, 2, ...}
        p (0 NW, 1 local linear, 2 local quadratic). Any p in 1-D; p <= 1 for d > 1 (interior only).
    kernel : {"gaussian", "epanechnikov"}
        A product kernel in d > 1.
    n : int
        Sample size.
    h : float or array
        Bandwidth(s); the outputs broadcast with it.
    sigma : float
        Noise standard deviation :math:`\sigma(x_0)`.
    d : int, optional
        Dimension (default: from ``x0``, else 1).
    x0 : array of shape (d,), optional
        The point; needed when ``target`` or ``f`` is a callable or a design name.
    m_derivs : sequence or mapping, optional
        The target's derivatives at x0. 1-D: ``(m', m'', ..., m^(p+2))`` (or a mapping ``k -> m^(k)``);
        d > 1: ``{"grad": (d,), "laplacian": float}``.
    target : callable, optional
        Instead of ``m_derivs``: m itself (vectorised over (..., d) NumPy arrays); the derivatives are
        taken by central finite differences (steps :math:`\epsilon^{1/(k+2)}`, relative error ~1e-5).
    f : float, callable or {"uniform", "beta22", "normal"}
        The design density at x0 (at a boundary, the one-sided limit), a callable density, or a named design
        (closed-form f and :math:`\nabla f`).
    df : float or array of shape (d,), optional
        :math:`f'(x_0)` / :math:`\nabla f(x_0)` (overrides the numerical or closed-form one).
    boundary : bool or float
        False: interior. True (c = 0) or a float c >= 0: x0 lies c·h from the left end of a support
        [x0 - c h, inf) (1-D; reflect x -> -x for a right end).

    Returns
    -------
    AsymptoticMSE
        ``bias``, ``variance``, ``mse`` (shaped like ``h``), ``rate`` r, ``bias_constant`` (bias ~ B h^r),
        ``variance_constant`` V (variance = V / (n h^d)).

    Notes
    -----
    In 1-D (interior c = inf, boundary c finite) with :math:`\mu_j = \int_{-c}^\infty u^j K`,
    :math:`S = (\mu_{i+j})`, :math:`S^+ = (\mu_{i+j+1})`, :math:`w = S^{-1}e_1` (the equivalent kernel
    :math:`K^*(u) = \sum_j w_j u^j K(u)`), :math:`c_k = (\mu_{k+i})_{i=0..p}`,
    :math:`a_1 = m^{(p+1)}/(p+1)!`, :math:`a_2 = m^{(p+2)}/(p+2)!`, :math:`g = f'/f`:

    .. math::

        \mathrm{bias} = a_1 w^\top c_{p+1}\,h^{p+1}
          + \big[(a_2 + a_1 g)\,w^\top c_{p+2} - a_1 g\, w^\top S^+ S^{-1} c_{p+1}\big] h^{p+2},
        \qquad \mathrm{var} = \frac{\sigma^2 \int_{-c}^\infty K^{*2}}{n h f}.

    This is the expansion of the population weighted least squares fit to :math:`O(h^{p+3})`. In the
    interior it gives NW :math:`(h^2/2)\mu_2(m'' + 2m'f'/f)`, LL :math:`(h^2/2)\mu_2 m''`, LQ (Gaussian)
    :math:`-(h^4/8)(m'''' + 4m'''f'/f)` with :math:`R(K^*) = 27/(32\sqrt\pi)`; at c = 0 (Gaussian) NW
    :math:`\sqrt{2/\pi}\,h m' + (h^2/2) m''` (uniform f; variance constant :math:`1/\sqrt\pi`) and LL
    :math:`-0.37597\,h^2 m''` (variance constant 1.78596). In d > 1 (interior, product kernel):
    NW :math:`(h^2/2)\mu_2[\nabla^2 m + 2\nabla m\cdot\nabla f/f]`, LL :math:`(h^2/2)\mu_2\nabla^2 m`,
    variance :math:`R(K)^d\sigma^2/(n h^d f)`.

    References
    ----------
    theory.md §1; Ruppert & Wand (1994), Thm 4.1-4.2; Fan & Gijbels (1996), Thm 3.1.

    Examples
    --------
    >>> from ttr_stats.diagnostics.bias_variance import theory
    >>> t = theory(0, n=20000, h=0.03, sigma=0.5, x0=[0.3], target=lambda x: x[..., 0] ** 2, f="beta22")
    >>> round(float(t.bias), 6), round(float(t.variance), 7)
    (0.001929, 9.33e-05)
    """
    if isinstance(order, bool) or not isinstance(order, numbers.Integral) or order < 0:
        raise ValueError(f"order must be an integer >= 0, got {order!r}")
    order = int(order)
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {tuple(_KERNELS)}, got {kernel!r}")
    if not (isinstance(n, numbers.Real) and n > 0):
        raise ValueError(f"n must be > 0, got {n!r}")
    if not (isinstance(sigma, numbers.Real) and sigma >= 0):
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    h_arr = np.asarray(h, dtype=np.float64)
    if not np.all(h_arr > 0):
        raise ValueError(f"h must be > 0, got {h!r}")
    if boundary is True:
        c = 0.0
    elif boundary is False or boundary is None:
        c = math.inf
    else:
        c = float(boundary)
        if not c >= 0:
            raise ValueError(
                f"boundary must be False, True or a distance c >= 0 (in bandwidths), got {boundary}"
            )
    # (not `boundary in (False, None)`: 0.0 == False, and c = 0.0 is a boundary)
    d, mk, fval, grad_f = _resolve_inputs(order, d, x0, m_derivs, target, f, df, not math.isinf(c))
    mom, sq = _KERNELS[kernel]
    if d == 1:
        B1, B2, V = _theory_1d(order, kernel, mk, fval, float(grad_f[0]), c)
        bias = B1 * h_arr ** (order + 1) + B2 * h_arr ** (order + 2)
        rate, Bc = (order + 1, B1) if B1 != 0.0 else (order + 2, B2)
    else:
        mu2 = mom(2, math.inf)
        design_term = 2.0 * float(mk["grad"] @ grad_f) / fval if order == 0 else 0.0
        Bc = 0.5 * mu2 * (mk["laplacian"] + design_term)
        rate = 2
        bias = Bc * h_arr**2
        V = sq(0, math.inf) ** d / fval
    variance = float(sigma) ** 2 * V / (float(n) * h_arr**d)
    out = AsymptoticMSE(bias, variance, bias**2 + variance, rate, float(Bc), float(sigma) ** 2 * V)
    if h_arr.ndim == 0:
        out = out._replace(bias=float(bias), variance=float(variance), mse=float(out.mse))
    return out


def optimal_bandwidth(order, kernel="gaussian", *, n, **kwargs):
    r"""AMSE-optimal bandwidth :math:`h^* = (d\,B / (2r\,A))^{1/(2r+d)}` (r = 2: :math:`(dB/4A)^{1/(d+4)}`).

    With the leading terms :math:`\mathrm{AMSE}(h) = A h^{2r} + B h^{-d}`, :math:`A` = ``bias_constant**2``
    and :math:`B` = ``variance_constant / n`` from :func:`theory` (same keyword arguments, no ``h``).

    Returns
    -------
    float
        :math:`h^* \propto n^{-1/(2r+d)}`; ``inf`` when the leading bias vanishes (e.g. a linear target
        under local linear regression).

    References
    ----------
    theory.md §1 (Bandwidth).
    """
    if "h" in kwargs:
        raise ValueError("h: optimal_bandwidth chooses h; do not pass it")
    t = theory(order, kernel, n=n, h=1.0, **kwargs)
    x0 = kwargs.get("x0")
    d = kwargs.get("d") or (len(np.asarray(x0).reshape(-1)) if x0 is not None else 1)
    A = t.bias_constant**2
    if A == 0.0:
        return math.inf
    B = t.variance_constant / float(n)
    r = t.rate
    return float((d * B / (2 * r * A)) ** (1.0 / (2 * r + d)))


# ------------------------------------------------------------------------------------------------------
# Monte Carlo
def _default_factory(order):
    def make(bandwidth):
        import ttr_stats as tt

        reg = tt.regressors.LocalPolynomial(order, tt.similarity.Gaussian(bandwidth))
        return tt.TestTimeRegression(regressor=reg)

    return make


def _check_estimators(estimators, d):
    if not isinstance(estimators, Mapping) or not estimators:
        raise ValueError("estimators must be a non-empty mapping name -> order p (int) or factory(bandwidth)")
    out = {}
    for name, spec in estimators.items():
        if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
            if spec < 0:
                raise ValueError(f"estimators: order of {name!r} must be >= 0, got {spec}")
            out[name] = (_default_factory(int(spec)), int(spec))
        elif callable(spec):
            out[name] = (spec, None)
        else:
            raise ValueError(f"estimators: {name!r} must map to an order (int) or a factory, got {spec!r}")
    return out


def _bytes_per_rep(orders, m, n, d):
    from ..regressors.local_polynomial import n_coefficients

    P = max(n_coefficients(d, p) if p is not None else d for p in orders)
    # the (m, n) weights and (m, n, P) designs, a handful of copies each, float64
    return 8 * m * n * (P + 2) * 6 + 8 * n * (d + 4)


def _single_threaded_blas():
    """Host BLAS limited to one thread: the batched matmuls here are (m x n)(n x P) per replication, for
    which OpenBLAS's threads cost more than they give (3.5x slower on 2 busy cores); no effect on a GPU."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _simulate(layers, reads, design, target, xp, Q, n, d, sigma, n_rep, chunk, design_rng, noise_rng):
    """Fill ``reads[key]`` (n_rep, m, 2) with the noisy and noise-free reads of each layer, chunk by chunk."""
    for start in range(0, n_rep, chunk):
        c = min(chunk, n_rep - start)
        if isinstance(design, str):
            X = _sample_design(design, design_rng, (c, n), d)
        else:
            X = np.asarray(design(design_rng, (c, n)), dtype=np.float64)
            if X.shape != (c, n, d):
                raise ValueError(f"design must return an array of shape {(c, n, d)}, got {X.shape}")
        K = xp.asarray(X)
        ns = _array.namespace(K)  # the array-API view of xp (concat, reshape on NumPy 1.26 and CuPy)
        mK = ns.reshape(target(K), (c, n, 1))
        eps = xp.asarray(noise_rng.standard_normal((c, n, 1)))
        V = ns.concat([mK + float(sigma) * eps, mK], axis=-1)  # columns: noisy, noise-free
        for key, layer in layers.items():
            Y = layer(Q, K, V, causal=False)  # (c, m, 2)
            reads[key][start : start + c] = _array.to_numpy(Y)


def monte_carlo(
    estimators,
    target,
    design,
    x0,
    bandwidths,
    n,
    sigma,
    n_rep,
    seed,
    xp=None,
    *,
    conditional=True,
    chunk_bytes=CHUNK_BYTES,
):
    r"""Bias, variance and MSE of layer estimators at fixed points, by seeded Monte Carlo.

    Each replication draws :math:`X_i \sim` ``design``, :math:`Y_i = m(X_i) + \sigma\varepsilon_i`
    (:math:`i \le n`) and reads the layer at ``x0`` with ``causal=False``. The replications are the layer's
    batch dimension (K of shape (n_rep, n, d), Q = x0 of shape (1, m, d)), chunked only to stay below
    ``chunk_bytes``. Every estimator and bandwidth sees the same data (common random numbers), so their
    differences are estimated far more precisely than each alone; results do not depend on the chunking.

    Parameters
    ----------
    estimators : mapping name -> int or callable
        An order p (``LocalPolynomial(p, Gaussian(h))``) or a factory ``bandwidth -> TestTimeRegression``.
    target : callable
        m, vectorised over (..., d) arrays of the chosen namespace, returning (...,).
    design : {"uniform", "beta22", "normal"} or callable
        Named design or a sampler ``design(rng, size) -> ndarray of shape (*size, d)`` (NumPy Generator).
    x0 : array of shape (d,) or (m, d)
        Evaluation point(s).
    bandwidths : float or sequence of float
    n : int
        Pairs per replication.
    sigma : float
        Noise standard deviation (Gaussian noise).
    n_rep : int
        Replications.
    seed : int
        Seeds the design and noise streams (``numpy.random.SeedSequence(seed).spawn(2)``).
    xp : array namespace, optional
        Where to compute (e.g. ``cupy``): the data are drawn with NumPy and moved there once per chunk.
    conditional : bool
        True (default): the bias is averaged from the noise-free reads :math:`\hat m(x_0; X, m(X))`, which
        equal :math:`E[\hat m(x_0) \mid X]` for layers linear in the values (all but
        ``linear_attention(normalize="output")``): the same expectation with a standard error smaller by a
        factor ~ :math:`\sigma / (h|m'|)`. False: the plain average of the noisy reads. Both are in the
        result (``bias_plain``); the variance is always the sample variance of the noisy reads.
    chunk_bytes : int
        Memory budget of one batched computation.

    Returns
    -------
    pandas.DataFrame
        One row per (estimator, bandwidth, point): ``estimator, bandwidth, point, bias, bias_se, bias2,
        variance, variance_se, mse, n_rep, bias_plain, bias_plain_se``. ``bias2 = bias**2`` and
        ``mse = bias2 + variance`` (each biased up by ``bias_se**2``, negligible when the bias is resolved).

    Notes
    -----
    With reads :math:`y_r` (noisy) and :math:`c_r` (noise-free), r = 1..R:
    bias = mean(c) - m(x0) with SE sd(c)/sqrt(R) (or the same with y); variance
    :math:`s^2 = \mathrm{var}(y)` with SE :math:`\mathrm{sd}((y - \bar y)^2)/\sqrt R`.

    References
    ----------
    theory.md §1 (the MC checks).

    Examples
    --------
    >>> from ttr_stats.diagnostics.bias_variance import monte_carlo
    >>> df = monte_carlo({"NW": 0, "LL": 1}, lambda x: x[..., 0] ** 2, "beta22", [0.3], [0.05],
    ...                  n=2000, sigma=0.5, n_rep=50, seed=0)
    >>> list(df["estimator"])
    ['NW', 'LL']
    """
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.ndim == 1:
        x0 = x0[None, :]
    if x0.ndim != 2 or x0.shape[-1] < 1:
        raise ValueError(f"x0 must have shape (d,) or (m, d), got {x0.shape}")
    m_pts, d = x0.shape
    if not callable(target):
        raise ValueError(f"target must be a callable m(x) over (..., d) arrays, got {target!r}")
    if isinstance(design, str):
        if design not in DESIGNS:
            raise ValueError(f"design must be a callable or one of {DESIGNS}, got {design!r}")
    elif not callable(design):
        raise ValueError(f"design must be a callable or one of {DESIGNS}, got {design!r}")
    bws = [float(b) for b in np.atleast_1d(np.asarray(bandwidths, dtype=np.float64))]
    if not bws or not all(b > 0 and math.isfinite(b) for b in bws):
        raise ValueError(f"bandwidths must be > 0, got {bandwidths!r}")
    for name, val, low in (("n", n, 1), ("n_rep", n_rep, 2)):
        if isinstance(val, bool) or not isinstance(val, numbers.Integral) or val < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {val!r}")
    if not (isinstance(sigma, numbers.Real) and sigma >= 0):
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    specs = _check_estimators(estimators, d)
    if xp is None:
        xp = np
    n, n_rep = int(n), int(n_rep)

    per_rep = _bytes_per_rep([p for _, p in specs.values()], m_pts, n, d)
    chunk = max(1, min(n_rep, int(chunk_bytes) // per_rep))
    design_rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    Q = xp.asarray(x0[None])  # (1, m, d): broadcast over the replications
    truth = _array.to_numpy(target(xp.asarray(x0))).reshape(m_pts)
    layers = {(name, b): make(b) for name, (make, _) in specs.items() for b in bws}
    reads = {key: np.empty((n_rep, m_pts, 2)) for key in layers}

    with _single_threaded_blas():
        _simulate(layers, reads, design, target, xp, Q, n, d, sigma, n_rep, chunk, design_rng, noise_rng)

    try:
        import pandas as pd
    except ImportError as exc:  # pragma: no cover - pandas is the docs extra
        raise ImportError("monte_carlo returns a pandas DataFrame: pip install pandas") from exc

    rows = []
    sqrt_r = math.sqrt(n_rep)
    for (name, b), Y in reads.items():
        y, cm = Y[..., 0], Y[..., 1]
        for j in range(m_pts):
            e_plain = y[:, j] - truth[j]
            e_cond = cm[:, j] - truth[j]
            bias_plain = float(np.mean(e_plain))
            bias_plain_se = float(np.std(e_plain, ddof=1)) / sqrt_r
            bias, bias_se = (
                (float(np.mean(e_cond)), float(np.std(e_cond, ddof=1)) / sqrt_r)
                if conditional
                else (bias_plain, bias_plain_se)
            )
            dev2 = (y[:, j] - np.mean(y[:, j])) ** 2
            var = float(np.sum(dev2)) / (n_rep - 1)
            var_se = float(np.std(dev2, ddof=1)) / sqrt_r
            rows.append(
                {
                    "estimator": name,
                    "bandwidth": b,
                    "point": j,
                    "bias": bias,
                    "bias_se": bias_se,
                    "bias2": bias**2,
                    "variance": var,
                    "variance_se": var_se,
                    "mse": bias**2 + var,
                    "n_rep": n_rep,
                    "bias_plain": bias_plain,
                    "bias_plain_se": bias_plain_se,
                }
            )
    return pd.DataFrame(rows)
