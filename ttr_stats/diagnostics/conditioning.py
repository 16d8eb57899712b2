r"""QKNorm and conditioning: closed forms for attention on the sphere, key Gram spectra, raw vs QKNorm keys.

Three groups (theory.md §3, paper §4):

* **Sphere closed forms** -- :func:`log_sphere_moment`, :func:`sphere_moments`,
  :func:`sphere_attention_stats`: with q, k uniform on :math:`S^{d-1}` and logits :math:`\beta q^\top k`,
  the moment :math:`M_d(\beta) = E e^{\beta q^\top k}` and the mean cosine under the tilted law,
  :math:`A_d(\beta) = I_{d/2}(\beta)/I_{d/2-1}(\beta)`, give the effective sample size, entropy, self-weight,
  linear shrinkage and Hopfield half-weight point of softmax attention in the annealed regime.
* **Key Gram conditioning** -- :func:`mp_condition_limit` (Marchenko-Pastur) and :func:`gram_conditioning`
  (:math:`\kappa(K^\top\Gamma K)` over every prefix t, lazily, on any array namespace).
* **Raw vs QKNorm keys** -- :func:`qknorm_report`: the per-key non-local factor
  :math:`\exp(\tau\|k\|^2/2)` that raw softmax attention carries, and what normalising removes.

References
----------
theory.md §3 (attention-specific closed forms, key Gram conditioning); Wang, Shi & Fox (2025), §4 (QKNorm:
softmax attention is Nadaraya-Watson); Henry et al. (2020), *Query-Key Normalization for Transformers*.
"""

from __future__ import annotations

import functools
import math
import numbers

import numpy as np
from scipy import special

from .. import _array
from .._validation import check_finite, check_scalar
from ..similarity import l2_normalize
from ..weights import Uniform, Weights, decay_matrix, sink_window_mask

__all__ = [
    "log_sphere_moment",
    "sphere_moments",
    "sphere_attention_stats",
    "mp_condition_limit",
    "gram_conditioning",
    "GramConditioning",
    "qknorm_report",
    "QKNormReport",
    "AttentionWeights",
]

#: ``ive`` values below this are treated as (near-)underflowed and replaced by the power series
_IVE_FLOOR = 1e-250


# ---------------------------------------------------------------------------------------------- sphere
def _check_d_beta(d, beta):
    d_arr = np.asarray(d)
    if (
        d_arr.dtype == bool
        or not (np.issubdtype(d_arr.dtype, np.integer) or np.issubdtype(d_arr.dtype, np.floating))
        or not np.all(np.isfinite(d_arr))
        or np.any(d_arr != np.round(d_arr))
        or np.any(d_arr < 1)
    ):
        raise ValueError(
            f"d must be an integer >= 1 (the dimension of the sphere's ambient space), got {d!r}"
        )
    b = np.asarray(beta, dtype=np.float64)
    if not np.all(np.isfinite(b)) or np.any(b < 0):
        raise ValueError(f"beta must be finite and >= 0, got {beta!r}")
    d_arr, b = np.broadcast_arrays(d_arr.astype(np.float64), b)
    return d_arr, b


def _log_hyp0f1(b, z):
    r"""``log 0F1(; b; z)`` for scalar ``b > 0``, ``z >= 0``: :math:`\sum_k z^k / (k!\,(b)_k)` in logs.

    Summed from k = 0 to well past the largest term (at :math:`(k+1)(b+k) \approx z`), where the terms fall
    like a Gaussian of variance about k*: 40 standard deviations leave nothing measurable.
    """
    if z == 0.0:
        return 0.0
    kstar = max(0.0, 0.5 * (-(b + 1.0) + math.sqrt((b - 1.0) ** 2 + 4.0 * z)))
    k = np.arange(int(kstar + 40.0 * math.sqrt(kstar + 1.0) + 60.0), dtype=np.float64)
    terms = k * math.log(z) - special.gammaln(k + 1.0) - (special.gammaln(b + k) - special.gammaln(b))
    return float(special.logsumexp(terms))


def _log_moment_and_ratio(d, beta):
    """``log M_d(beta)`` and ``A_d(beta)`` for float arrays d, beta of one shape (beta > 0 handled here)."""
    nu = d / 2.0 - 1.0
    logM = np.zeros_like(beta)
    A = np.zeros_like(beta)
    pos = beta > 0
    with np.errstate(divide="ignore", invalid="ignore", under="ignore"):
        e0 = special.ive(nu, beta)
        e1 = special.ive(nu + 1.0, beta)
        # M = Gamma(d/2) (2/beta)^nu I_nu(beta), I_nu = ive * e^beta
        log_ive = np.log(np.where(e0 > 0, e0, 1.0))
        logM_ive = special.gammaln(d / 2.0) + nu * np.log(np.where(pos, 2.0 / np.where(pos, beta, 1.0), 1.0))
        logM_ive = logM_ive + log_ive + beta
        A_ive = e1 / np.where(e0 > 0, e0, 1.0)
    ok0 = pos & (e0 > _IVE_FLOOR) & np.isfinite(e0)
    ok1 = ok0 & (e1 > _IVE_FLOOR) & np.isfinite(e1)
    logM = np.where(ok0, logM_ive, logM)
    A = np.where(ok1, A_ive, A)
    # large orders and small arguments: ive underflows; M = 0F1(; d/2; beta^2/4) and
    # A = (beta/d) 0F1(; d/2+1; beta^2/4) / 0F1(; d/2; beta^2/4) (differentiate the series)
    for idx in map(tuple, np.argwhere(pos & ~(ok0 & ok1))):
        dd, bb = float(d[idx]), float(beta[idx])
        z = bb * bb / 4.0
        l0 = _log_hyp0f1(dd / 2.0, z)
        if not ok0[idx]:
            logM[idx] = l0
        if not ok1[idx]:
            A[idx] = bb / dd * math.exp(_log_hyp0f1(dd / 2.0 + 1.0, z) - l0)
    return logM, A


def _out(x):
    return float(x) if np.ndim(x) == 0 else x


def log_sphere_moment(d, beta):
    r"""Logarithm of :math:`M_d(\beta) = E\, e^{\beta q^\top k}` for q, k uniform on :math:`S^{d-1}`.

    Parameters
    ----------
    d : int >= 1 or array of ints
        Ambient dimension (keys on :math:`S^{d-1} \subset R^d`).
    beta : float >= 0 or array
        Logit scale. Broadcasts against ``d``.

    Returns
    -------
    float or ndarray
        :math:`\log M_d(\beta)`; 0 at :math:`\beta = 0`. Finite for every finite input (no overflow for
        :math:`\beta` up to 1e3 and d up to 4096, and beyond).

    Notes
    -----
    :math:`M_d(\beta) = \Gamma(d/2)\,(2/\beta)^{d/2-1} I_{d/2-1}(\beta) = {}_0F_1(; d/2; \beta^2/4)`,
    computed as ``gammaln(d/2) + (d/2-1) log(2/beta) + log(ive(d/2-1, beta)) + beta`` with the
    exponentially scaled Bessel function; where ``ive`` underflows (large d, small :math:`\beta`) the
    hypergeometric series is summed in log space. :math:`0 \le \log M_d(\beta) \le \beta`.

    References
    ----------
    theory.md §3.

    Examples
    --------
    >>> round(log_sphere_moment(64, 8.0), 6)
    0.496284
    >>> log_sphere_moment(4096, 1e3) < 1e3
    True
    """
    d, b = _check_d_beta(d, beta)
    logM, _ = _log_moment_and_ratio(d, b)
    return _out(logM)


def sphere_moments(d, beta):
    r"""The sphere moment :math:`M_d(\beta)` and mean-cosine ratio :math:`A_d(\beta)`.

    Parameters
    ----------
    d : int >= 1 or array of ints
    beta : float >= 0 or array

    Returns
    -------
    M : float or ndarray
        :math:`E\,e^{\beta q^\top k}` (``inf`` once it exceeds the float range, about :math:`\beta > 709`;
        use :func:`log_sphere_moment` there).
    A : float or ndarray
        :math:`A_d(\beta) = I_{d/2}(\beta)/I_{d/2-1}(\beta) = E[q^\top k\, e^{\beta q^\top k}]/M_d(\beta)
        = d \log M_d / d\beta`, in [0, 1); 0 at :math:`\beta = 0`.

    Notes
    -----
    :math:`A_d` is the mean cosine between the query and a key drawn from the softmax-tilted law, so the
    Nadaraya-Watson estimate of a linear target :math:`m(k) = a^\top k` has bias
    :math:`(A_d(\beta) - 1)\, a^\top q` (a shrinkage towards 0). :math:`d = 1`: :math:`M = \cosh\beta`,
    :math:`A = \tanh\beta`; :math:`d = 3`: :math:`M = \sinh\beta/\beta`.

    References
    ----------
    theory.md §3.

    Examples
    --------
    >>> M, A = sphere_moments(64, 8.0)
    >>> round(M, 4), round(A, 3)
    (1.6426, 0.123)
    """
    d, b = _check_d_beta(d, beta)
    logM, A = _log_moment_and_ratio(d, b)
    with np.errstate(over="ignore"):
        M = np.exp(logM)
    return _out(M), _out(A)


def sphere_attention_stats(n, d, beta):
    r"""Closed forms for softmax attention, n keys uniform on :math:`S^{d-1}`, logits :math:`\beta q^\top k`.

    Parameters
    ----------
    n : int >= 1 or array
        Number of keys.
    d : int >= 1 or array
    beta : float >= 0 or array
        All three broadcast.

    Returns
    -------
    dict
        ``n_eff`` -- :math:`n M_d(\beta)^2 / M_d(2\beta) = n (E w)^2 / E w^2` (ratio of expectations; the
        Monte Carlo mean of :math:`1/\sum_j s_j^2` is a few percent larger, Jensen);
        ``entropy`` -- :math:`\log n - [\beta A_d(\beta) - \log M_d(\beta)]` (nats);
        ``self_weight`` -- :math:`1/(1 + (n-1) M_d(\beta) e^{-\beta})`, the weight a stored key gets from
        the exact-match query;
        ``linear_shrinkage`` -- :math:`A_d(\beta)`: NW returns :math:`A_d\, a^\top q` for the target
        :math:`a^\top k` (bias :math:`(A_d - 1) a^\top q`; local linear with no ridge has none);
        ``half_weight_n`` -- :math:`n^* = \exp(\beta - \log M_d(\beta))`, the number of keys at which an
        exact match keeps half the weight (modern Hopfield retrieval);
        ``annealed`` -- ``n_eff >= 20``, theory.md's rule of thumb for where these formulas hold.

    Notes
    -----
    The formulas replace the random normaliser :math:`\sum_j e^{\beta q^\top k_j}` by its mean
    :math:`n M_d(\beta)` (the annealed approximation), so they hold while many keys share the weight. For
    large :math:`\beta` at fixed n (d = 64: :math:`\beta \ge 32` with :math:`n \le 4096`) the weight sits
    on the few nearest keys, the formula's ``n_eff`` drops below 1 and its entropy goes negative, while the
    true values stay :math:`\ge 1` and :math:`\ge 0`: the formulas fail there (see the tests).

    References
    ----------
    theory.md §3 (attention-specific) and §4 (Hopfield half-weight point).

    Examples
    --------
    >>> s = sphere_attention_stats(256, 64, 8.0)
    >>> round(s["self_weight"], 4), round(s["n_eff"], 1), round(s["entropy"], 3)
    (0.8768, 98.9, 5.056)
    """
    n_arr = np.asarray(n, dtype=np.float64)
    if not np.all(np.isfinite(n_arr)) or np.any(n_arr < 1):
        raise ValueError(f"n must be >= 1 (the number of keys), got {n!r}")
    d_arr, b = _check_d_beta(d, beta)
    n_arr, d_arr, b = np.broadcast_arrays(n_arr, d_arr, b)
    logM, A = _log_moment_and_ratio(d_arr, b)
    logM2, _ = _log_moment_and_ratio(d_arr, 2.0 * b)
    n_eff = n_arr * np.exp(2.0 * logM - logM2)
    entropy = np.log(n_arr) - (b * A - logM)
    with np.errstate(divide="ignore"):
        # 1/(1 + exp(x)) with x = log(n-1) + log M - beta, computed as expit(-x): no overflow
        self_weight = special.expit(-(np.log(n_arr - 1.0) + logM - b))
    with np.errstate(over="ignore"):
        half = np.exp(b - logM)
    return {
        "n_eff": _out(n_eff),
        "entropy": _out(entropy),
        "self_weight": _out(self_weight),
        "linear_shrinkage": _out(A),
        "half_weight_n": _out(half),
        "annealed": bool(n_eff >= 20) if np.ndim(n_eff) == 0 else n_eff >= 20,
    }


def mp_condition_limit(n, d):
    r"""Marchenko-Pastur limit of :math:`\kappa(K^\top K)` for n iid isotropic rows in :math:`R^d`.

    Parameters
    ----------
    n : float > d
        Number of rows (an effective number is allowed, hence real).
    d : int >= 1

    Returns
    -------
    float
        :math:`((1+\sqrt\gamma)/(1-\sqrt\gamma))^2`, :math:`\gamma = d/n`.

    Raises
    ------
    ValueError
        ``n <= d``: the Gram matrix is singular (n < d) or its smallest eigenvalue tends to 0 (n = d, where
        :math:`\kappa` is of order :math:`d^2`).

    Notes
    -----
    The eigenvalues of :math:`K^\top K / n` fill :math:`[(1-\sqrt\gamma)^2, (1+\sqrt\gamma)^2]`. At finite
    d the extreme eigenvalues fluctuate on the Tracy-Widom scale and the median condition number sits
    below the limit (d = 64, n = 4d: about 7.97 against 9).

    References
    ----------
    theory.md §3 (key Gram conditioning); Marchenko & Pastur (1967).

    Examples
    --------
    >>> mp_condition_limit(256, 64)
    9.0
    >>> round(mp_condition_limit(128, 64), 2)
    33.97
    """
    d = check_scalar("d", d, low=1, integer=True)
    n = check_scalar("n", n)
    if n <= d:
        raise ValueError(f"n must be > d = {d} (gamma = d/n < 1), got {n!r}")
    r = math.sqrt(d / n)
    return ((1.0 + r) / (1.0 - r)) ** 2


def _mp_limit_array(xp, n, d):
    """Elementwise MP limit for an array of (effective) n; ``inf`` where ``n <= d``."""
    big = n > d
    r = xp.sqrt(d / xp.where(big, n, xp.asarray(2.0 * d + 1.0, dtype=n.dtype, device=_array.device(n))))
    lim = ((1.0 + r) / (1.0 - r)) ** 2
    return xp.where(big, lim, xp.asarray(math.inf, dtype=n.dtype, device=_array.device(n)))


# ------------------------------------------------------------------------------------ Gram conditioning
class GramConditioning:
    r"""Conditioning of the weighted key Gram matrices :math:`G_t = \sum_i \Gamma_{ti} k_i k_i^\top` (lazy).

    Made by :func:`gram_conditioning`; every property is computed on first access and cached.

    Attributes
    ----------
    t : tuple of int
        The prefix lengths evaluated (1-based), length m.
    d : int
    center : bool
    """

    def __init__(self, xp, K, gamma_rows, t, center, rtol, uniform_rows=False):
        self._xp = xp
        self._K = K
        self._gamma_rows = gamma_rows  # None: uniform weights over every prefix (cumulative sums)
        self.t = tuple(int(x) for x in t)
        self.d = int(K.shape[-1])
        self.center = bool(center)
        self._rtol = rtol
        self._uniform_rows = uniform_rows

    @functools.cached_property
    def total_weight(self):
        r""":math:`w_t = \sum_i \Gamma_{ti}`, array of shape (..., m)."""
        xp = self._xp
        if self._gamma_rows is None:
            return xp.asarray([float(x) for x in self.t], dtype=self._K.dtype, device=_array.device(self._K))
        return xp.sum(self._gamma_rows, axis=-1)

    @functools.cached_property
    def n_eff(self):
        r"""Kish effective number of keys :math:`(\sum_i \Gamma_{ti})^2 / \sum_i \Gamma_{ti}^2`, (..., m).

        Equals t for uniform weights and the window length (capped at t) for sliding windows.
        """
        xp = self._xp
        if self._gamma_rows is None:
            return self.total_weight
        w = self.total_weight
        w2 = xp.sum(self._gamma_rows * self._gamma_rows, axis=-1)
        return w * w / xp.where(w2 > 0, w2, xp.ones((), dtype=w2.dtype, device=_array.device(w2)))

    @functools.cached_property
    def gram(self):
        r"""Gram matrices :math:`K^\top \mathrm{diag}(\Gamma_t) K` (centred if asked), (..., m, d, d)."""
        xp, K = self._xp, self._K
        if self._gamma_rows is None:
            outer = K[..., :, :, None] * K[..., :, None, :]
            rows = xp.asarray([x - 1 for x in self.t], device=_array.device(K))
            G = xp.take(xp.cumulative_sum(outer, axis=outer.ndim - 3), rows, axis=outer.ndim - 3)
            S = xp.take(xp.cumulative_sum(K, axis=K.ndim - 2), rows, axis=K.ndim - 2)
        elif self._uniform_rows:
            # uniform weights at a few prefixes: K[:t]^T K[:t] directly (O(t d^2) each, no weighted copy)
            G = xp.stack(
                [xp.matmul(xp.matrix_transpose(K[..., :t, :]), K[..., :t, :]) for t in self.t], axis=-3
            )
            S = xp.stack([xp.sum(K[..., :t, :], axis=-2) for t in self.t], axis=-2)
        else:
            R = self._gamma_rows
            blocks, sums = [], []
            step = 64  # rows per block: memory (..., 64, T, d) at a time
            for start in range(0, R.shape[-2], step):
                Rb = R[..., start : min(start + step, R.shape[-2]), :]
                X = K[..., None, :, :] * Rb[..., :, :, None]
                blocks.append(xp.matmul(xp.matrix_transpose(X), K[..., None, :, :]))
                sums.append(xp.matmul(Rb, K))
            G = xp.concat(blocks, axis=-3) if len(blocks) > 1 else blocks[0]
            S = xp.concat(sums, axis=-2) if len(sums) > 1 else sums[0]
        if self.center:
            # sum_i w_i (k_i - kbar)(k_i - kbar)^T = G - S S^T / w with S = sum_i w_i k_i; the keys were
            # shifted by their overall mean first, so S is small and the subtraction loses little
            w = self.total_weight
            w_safe = xp.where(w > 0, w, xp.ones((), dtype=w.dtype, device=_array.device(w)))
            G = G - S[..., :, None] * S[..., None, :] / w_safe[..., None, None]
        return 0.5 * (G + xp.matrix_transpose(G))

    @functools.cached_property
    def eigenvalues(self):
        """Eigenvalues of every Gram matrix, ascending, shape (..., m, d)."""
        return self._xp.linalg.eigvalsh(self.gram)

    @functools.cached_property
    def kappa(self):
        r"""Condition number :math:`\lambda_{max}/\lambda_{min}`, (..., m); ``inf`` where rank-deficient.

        Rank-deficient means :math:`\lambda_{min} \le \mathrm{rtol}\,\lambda_{max}` (default
        :math:`100\, d\, \varepsilon`: rounding leaves null-space eigenvalues of order
        :math:`t\,\varepsilon\,\lambda_{max}`), which covers t < d (t <= d when centred).
        """
        xp = self._xp
        lam = self.eigenvalues
        lo, hi = lam[..., 0], lam[..., -1]
        rtol = self._rtol if self._rtol is not None else 100.0 * self.d * float(xp.finfo(lam.dtype).eps)
        ok = (hi > 0) & (lo > rtol * hi)
        one = xp.ones((), dtype=lo.dtype, device=_array.device(lo))
        return xp.where(ok, hi / xp.where(ok, lo, one), math.inf * one)

    @functools.cached_property
    def mp_limit(self):
        r"""Marchenko-Pastur limit :math:`((1+\sqrt\gamma)/(1-\sqrt\gamma))^2` at every prefix, (..., m).

        :math:`\gamma = d/n`, with n the effective number of keys (:attr:`n_eff`, minus one when centred);
        exact for 0/1 weights (uniform, windows), a guide for decaying weights; ``inf`` where :math:`n \le d`.
        """
        n = self.n_eff - (1.0 if self.center else 0.0)
        return _mp_limit_array(self._xp, n, float(self.d))

    def plot(self, ax=None):
        """Draw :math:`\\kappa` against t (log scale) with the Marchenko-Pastur limit beside it.

        With batch dimensions the median over them is drawn, with the 10-90% band. Returns the figure.
        """
        from matplotlib.figure import Figure

        if ax is None:
            fig = Figure(figsize=(6, 4), layout="constrained")
            ax = fig.subplots()
        t = np.asarray(self.t)
        kap = _array.to_numpy(self.kappa).reshape(-1, len(t))
        kap = np.where(np.isfinite(kap), kap, np.nan)
        mp = _array.to_numpy(self.mp_limit)
        mp = np.broadcast_to(mp, kap.shape[:0] + mp.shape).reshape(-1, len(t))[0]
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-nan columns (t < d)
                med = np.nanmedian(kap, axis=0)
                label = "κ(KᵀΓK)" + (", centred" if self.center else "")
                if kap.shape[0] > 1:
                    lo, hi = np.nanquantile(kap, [0.1, 0.9], axis=0)
                    ax.fill_between(t, lo, hi, alpha=0.25, linewidth=0)
                    label += f" (median of {kap.shape[0]}, 10-90%)"
        ax.plot(t, med, label=label)
        ax.plot(t, np.where(np.isfinite(mp), mp, np.nan), "k--", linewidth=1, label="Marchenko-Pastur limit")
        ax.axvline(self.d, color="gray", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("prefix length t")
        ax.set_ylabel("condition number")
        ax.legend(fontsize=8)
        return ax.figure


def gram_conditioning(K, *, weights=None, center=False, t=None, rtol=None):
    r"""Condition number and spectrum of the weighted key Gram matrix :math:`K^\top\Gamma_t K` over prefixes.

    Parameters
    ----------
    K : array of shape (..., T, d)
        Keys of a sequence (any leading batch dimensions).
    weights : Weights or array of shape (..., T, T), optional
        A ``tt.weights`` object with constant decay (``Uniform``, ``ExponentialDecay``, ``SlidingWindow``,
        ``Gated(alpha=c)``, ``SinkWindow``: its sinks stay in every prefix's Gram) or a dense
        lower-triangular :math:`\Gamma` (for data-dependent gates pass ``weights.matrix(T, alpha=...)``).
        Default: uniform.
    center : bool
        Subtract the (weighted) prefix mean :math:`\bar k_t = \sum_i \Gamma_{ti} k_i / \sum_i \Gamma_{ti}`.
    t : sequence of int, optional
        Prefix lengths (1..T) to evaluate; default every t. A few values keep large batches cheap.
    rtol : float, optional
        Relative eigenvalue floor below which a Gram matrix counts as rank-deficient
        (:math:`\kappa = \infty`).

    Returns
    -------
    GramConditioning
        Lazy results: ``kappa`` (..., m), ``eigenvalues`` (..., m, d), ``mp_limit`` (..., m), ``n_eff``,
        ``gram``, ``plot()``.

    Notes
    -----
    :math:`G_t = \sum_{i \le t} \Gamma_{ti} k_i k_i^\top`; centred,
    :math:`\sum_i \Gamma_{ti}(k_i - \bar k_t)(k_i - \bar k_t)^\top`. For iid isotropic rows and uniform
    weights :math:`\kappa(G_t) \to ((1+\sqrt{\gamma})/(1-\sqrt{\gamma}))^2`, :math:`\gamma = d/t`. A shared
    mean direction :math:`\bar k` adds a spike :math:`\approx t\|\bar k\|^2` to the top eigenvalue while the
    bottom edge stays at the bulk's; centring removes it. Row-normalising (QKNorm) Gaussian keys keeps the
    Marchenko-Pastur limit (their directions are uniform) and removes norm heterogeneity, not anisotropy.
    Cost: O(T d^2) memory and time for uniform weights over every prefix, O(m T d^2) otherwise, plus
    O(m d^3) for the eigenvalues.

    References
    ----------
    theory.md §3 (key Gram conditioning).

    Examples
    --------
    >>> import numpy as np
    >>> K = np.random.default_rng(0).standard_normal((256, 8))
    >>> res = gram_conditioning(K)
    >>> res.kappa.shape, bool(np.isinf(res.kappa[6])), bool(res.kappa[-1] < 3)
    ((256,), True, True)
    """
    xp, arrs, dtype = _array.as_float_arrays({"K": K})
    K = arrs["K"]
    if K.ndim < 2:
        raise ValueError(f"K must have shape (..., T, d), got {tuple(K.shape)}")
    T, d = int(K.shape[-2]), int(K.shape[-1])
    if T < 1 or d < 1:
        raise ValueError(f"K must have T >= 1 and d >= 1, got shape {tuple(K.shape)}")
    check_finite(xp, "K", K)
    if t is None:
        rows = list(range(1, T + 1))
    else:
        if isinstance(t, numbers.Integral):
            t = [t]
        rows = [int(x) for x in t]
        if not rows or any(x < 1 or x > T for x in rows) or any(x != y for x, y in zip(rows, t, strict=True)):
            raise ValueError(f"t must hold integer prefix lengths in 1..{T}, got {t!r}")
    if rtol is not None:
        rtol = check_scalar("rtol", rtol, low=0.0)
    if center:
        # centring is shift-invariant: remove the overall mean first so the prefix sums stay small
        K = K - xp.mean(K, axis=-2, keepdims=True)

    idx = xp.arange(T, device=_array.device(K))
    sel = xp.asarray([x - 1 for x in rows], device=_array.device(K))
    if weights is None or type(weights) is Uniform:
        if t is None:
            return GramConditioning(xp, K, None, rows, center, rtol)
        gamma_rows = xp.astype(idx[None, :] <= sel[:, None], dtype)
        return GramConditioning(xp, K, gamma_rows, rows, center, rtol, uniform_rows=True)
    elif isinstance(weights, Weights):
        if weights.per_dimension:
            raise ValueError("weights: per-dimension decay has no scalar weight matrix Gamma")
        dev = _array.device(K)
        g = weights.resolve(xp, None, T=T, d_k=1, dtype=dtype, device=dev)[..., 0]
        sinks = int(getattr(weights, "sinks", 0) or 0)
        if sinks and weights.window is not None:  # SinkWindow: the first s pairs stay in every prefix
            G = decay_matrix(xp, g, None, None)
            keep = sink_window_mask(xp, T, weights.window, sinks, device=dev)
            G = xp.where(keep, G, xp.zeros((), dtype=G.dtype, device=dev))
        else:
            G = decay_matrix(xp, g, None, weights.window)
        gamma_rows = xp.take(G, sel, axis=0)
    else:
        if not _array.is_array(weights):
            raise ValueError(
                f"weights must be a tt.weights object or an array (..., T, T), got {type(weights).__name__}"
            )
        G = xp.astype(weights, dtype) if weights.dtype != dtype else weights
        if G.ndim < 2 or tuple(G.shape[-2:]) != (T, T):
            raise ValueError(f"weights must have shape (..., T, T) = (..., {T}, {T}), got {tuple(G.shape)}")
        check_finite(xp, "weights", G)
        if bool(xp.any(G < 0)):
            raise ValueError("weights must be non-negative")
        gamma_rows = xp.take(G, sel, axis=G.ndim - 2)
    return GramConditioning(xp, K, gamma_rows, rows, center, rtol)


# ------------------------------------------------------------------------------------- raw vs QKNorm
def _ranks(xp, x):
    """0-based ranks along the last axis (ties broken by position; continuous data has none)."""
    order = xp.argsort(x, axis=-1, stable=True)
    return xp.astype(xp.argsort(order, axis=-1, stable=True), x.dtype)


class AttentionWeights:
    r"""Softmax attention of queries over a set of keys at one logit scale, with lazy statistics.

    One variant of a :class:`QKNormReport` (``report.raw`` or ``report.qknorm``); arrays are in the input's
    namespace. Every query sees every key (set regression, no causal mask).

    Attributes
    ----------
    name : str
    Q : array of shape (..., T_q, d)
        Queries as compared (normalised for QKNorm).
    K : array of shape (..., n, d)
    scale : float
    """

    def __init__(self, xp, name, Q, K, scale, V=None, target=None):
        self._xp = xp
        self.name = name
        self.Q, self.K, self.scale = Q, K, float(scale)
        self._V, self._target = V, target

    @functools.cached_property
    def logits(self):
        r""":math:`\tau\, q^\top k`, shape (..., T_q, n)."""
        xp = self._xp
        return self.scale * xp.matmul(self.Q, xp.matrix_transpose(self.K))

    @functools.cached_property
    def log_weights(self):
        """Log softmax weights (log-sum-exp with the row maximum subtracted), shape (..., T_q, n)."""
        xp = self._xp
        z = self.logits - xp.max(self.logits, axis=-1, keepdims=True)
        return z - xp.log(xp.sum(xp.exp(z), axis=-1, keepdims=True))

    @functools.cached_property
    def weights(self):
        """Softmax weights :math:`s_j(q)`, shape (..., T_q, n); rows sum to 1."""
        return self._xp.exp(self.log_weights)

    @functools.cached_property
    def key_norms(self):
        r""":math:`\|k_j\|`, shape (..., n)."""
        return self._xp.linalg.vector_norm(self.K, axis=-1)

    @functools.cached_property
    def log_nonlocal_factor(self):
        r""":math:`\tau\|k_j\|^2/2`, shape (..., n): log of the per-key factor that survives normalisation.

        :math:`e^{\tau q^\top k} = e^{-\tau\|q-k\|^2/2}\, e^{\tau\|k\|^2/2}\, e^{\tau\|q\|^2/2}`; the query
        factor cancels in the softmax, the key factor does not. Constant (:math:`\tau/2`) under QKNorm.
        """
        return 0.5 * self.scale * self.key_norms**2

    @functools.cached_property
    def nonlocal_factor(self):
        r""":math:`\exp(\tau\|k_j\|^2/2)`, (..., n); may overflow to ``inf`` (see ``log_nonlocal_factor``)."""
        return self._xp.exp(self.log_nonlocal_factor)

    @functools.cached_property
    def distances(self):
        r""":math:`\|q - k_j\|`, shape (..., T_q, n)."""
        xp = self._xp
        qq = xp.sum(self.Q * self.Q, axis=-1)[..., :, None]
        kk = xp.sum(self.K * self.K, axis=-1)[..., None, :]
        d2 = qq + kk - 2.0 * xp.matmul(self.Q, xp.matrix_transpose(self.K))
        return xp.sqrt(xp.maximum(d2, xp.zeros((), dtype=d2.dtype, device=_array.device(d2))))

    @functools.cached_property
    def rank_correlation(self):
        r"""Spearman correlation between the weight and :math:`-\|q - k\|` over the keys, shape (..., T_q).

        1 when the weight is a decreasing function of distance (a kernel smoother: QKNorm); lower when the
        non-local factor reorders keys. Ranks of the logits (softmax is monotone in them, and logits never
        underflow into ties). ``nan`` for n < 2.
        """
        xp = self._xp
        n = self.K.shape[-2]
        rw = _ranks(xp, self.logits)
        rd = _ranks(xp, -self.distances)
        if n < 2:
            return xp.full(rw.shape[:-1], math.nan, dtype=rw.dtype, device=_array.device(rw))
        return 1.0 - 6.0 * xp.sum((rw - rd) ** 2, axis=-1) / (n * (n * n - 1.0))

    @functools.cached_property
    def n_eff(self):
        r"""Effective sample size :math:`1/\sum_j s_j^2` per query, shape (..., T_q) (theory.md §2)."""
        xp = self._xp
        return 1.0 / xp.sum(self.weights * self.weights, axis=-1)

    @functools.cached_property
    def entropy(self):
        r"""Attention entropy :math:`-\sum_j s_j \log s_j` (nats) per query, shape (..., T_q)."""
        return -self._xp.sum(self.weights * self.log_weights, axis=-1)

    @property
    def bandwidth(self):
        r"""Implied Gaussian bandwidth :math:`h = \tau^{-1/2}` (unit vectors; the raw kernel's local part)."""
        return self.scale**-0.5

    @functools.cached_property
    def prediction(self):
        r"""Nadaraya-Watson output :math:`\sum_j s_j v_j`, shape (..., T_q, d_v); ``None`` without values."""
        if self._V is None:
            return None
        return self._xp.matmul(self.weights, self._V)

    @functools.cached_property
    def squared_error(self):
        r""":math:`\|\hat m(q) - m(q)\|^2` per query, shape (..., T_q); ``None`` without values."""
        if self._V is None:
            return None
        r = self.prediction - self._target
        return self._xp.sum(r * r, axis=-1)


class QKNormReport:
    r"""Raw vs QK-normalised softmax attention on the same data (made by :func:`qknorm_report`).

    Attributes
    ----------
    raw : AttentionWeights
        Logits :math:`\tau q^\top k` on the vectors as given.
    qknorm : AttentionWeights
        Logits :math:`\tau \hat q^\top \hat k` on L2-normalised queries and keys: a Gaussian kernel of
        bandwidth :math:`\tau^{-1/2}` (Nadaraya-Watson).
    """

    def __init__(self, raw, qknorm):
        self.raw = raw
        self.qknorm = qknorm

    @property
    def variants(self):
        return {"raw": self.raw, "qknorm": self.qknorm}

    def summary(self):
        """One row per variant (raw, qknorm): means over queries and batch of the per-query statistics.

        Returns
        -------
        pandas.DataFrame
            Columns ``scale``, ``bandwidth``, ``log_nonlocal_sd`` (standard deviation over keys of
            :math:`\\tau\\|k\\|^2/2`), ``rank_correlation``, ``n_eff``, ``entropy`` and, with values,
            ``nw_mse`` (mean of :math:`\\|\\hat m(q) - m(q)\\|^2`).
        """
        import pandas as pd

        def mean(x):
            return float(np.mean(_array.to_numpy(x)))

        rows = {}
        for name, v in self.variants.items():
            row = {
                "scale": v.scale,
                "bandwidth": v.bandwidth,
                "log_nonlocal_sd": float(np.mean(np.std(_array.to_numpy(v.log_nonlocal_factor), axis=-1))),
                "rank_correlation": mean(v.rank_correlation),
                "n_eff": mean(v.n_eff),
                "entropy": mean(v.entropy),
            }
            if v.squared_error is not None:
                row["nw_mse"] = mean(v.squared_error)
            rows[name] = row
        return pd.DataFrame.from_dict(rows, orient="index")

    def plot(self, query=0):
        """Weight against distance for one query (first batch element), raw and QKNorm, and the n_eff spread.

        Returns the matplotlib figure.
        """
        from matplotlib.figure import Figure

        fig = Figure(figsize=(11, 3.6), layout="constrained")
        axes = fig.subplots(1, 3)
        for ax, (name, v) in zip(axes[:2], self.variants.items(), strict=True):
            dist = _array.to_numpy(v.distances).reshape((-1,) + tuple(v.distances.shape[-2:]))[0, query]
            w = _array.to_numpy(v.weights).reshape((-1,) + tuple(v.weights.shape[-2:]))[0, query]
            rho = _array.to_numpy(v.rank_correlation).reshape(-1, v.rank_correlation.shape[-1])[0, query]
            ax.scatter(dist, np.maximum(w, 1e-300), s=6, alpha=0.6)
            ax.set_yscale("log")
            ax.set_xlabel("‖q − k‖")
            ax.set_ylabel("softmax weight")
            ax.set_title(f"{name}: Spearman(weight, −distance) = {rho:.3f}", fontsize=9)
        for name, v in self.variants.items():
            axes[2].hist(_array.to_numpy(v.n_eff).ravel(), bins=30, alpha=0.5, label=name)
        axes[2].set_xlabel("n_eff = 1/Σ s²")
        axes[2].set_ylabel("queries")
        axes[2].legend(fontsize=8)
        return fig


def qknorm_report(Q, K, V=None, *, scale, target=None):
    r"""Compare softmax attention on raw keys with QKNorm (L2-normalised queries and keys) at one logit scale.

    Parameters
    ----------
    Q : array of shape (..., T_q, d)
    K : array of shape (..., n, d)
        A set of keys; every query sees every key.
    V : array of shape (..., n, d_v), or callable, optional
        Values at the keys. A callable ``m`` (a smooth map, applied to the raw vectors) gives ``V = m(K)``
        and ``target = m(Q)``.
    scale : float > 0
        Logit scale :math:`\tau` for both variants (QKNorm's learnable gain g; bandwidth
        :math:`h = \tau^{-1/2}`).
    target : array of shape (..., T_q, d_v), optional
        The regression function at the queries; required when ``V`` is an array.

    Returns
    -------
    QKNormReport
        ``.raw`` and ``.qknorm`` (:class:`AttentionWeights`: lazy ``weights``, ``nonlocal_factor``,
        ``rank_correlation``, ``n_eff``, ``entropy``, ``bandwidth``, ``squared_error``), ``summary()`` and
        ``plot()``.

    Notes
    -----
    :math:`e^{\tau q^\top k} = e^{-\tau\|k-q\|^2/2} e^{\tau\|k\|^2/2} e^{\tau\|q\|^2/2}`: the query factor
    cancels in the softmax, the per-key factor :math:`e^{\tau\|k\|^2/2}` stays, a non-local weight that
    favours large-norm keys (a distorted design density). With :math:`\|q\| = \|k\| = 1` it is constant and
    softmax attention is Nadaraya-Watson with a Gaussian kernel of bandwidth :math:`\tau^{-1/2}`.

    References
    ----------
    Wang, Shi & Fox (2025), §4; theory.md §3 (QKNorm); Henry et al. (2020).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> U = rng.standard_normal((300, 4)); U /= np.linalg.norm(U, axis=1, keepdims=True)
    >>> K = U * np.exp(rng.standard_normal((300, 1)))          # lognormal key norms
    >>> rep = qknorm_report(U[:20], K, scale=4.0)
    >>> s = rep.summary()
    >>> bool(s.loc["qknorm", "rank_correlation"] == 1.0), bool(s.loc["raw", "rank_correlation"] < 0.9)
    (True, True)
    """
    scale = check_scalar("scale", scale, low=0.0, low_inclusive=False)
    fn = V if callable(V) else None
    xp, arrs, dtype = _array.as_float_arrays({"Q": Q, "K": K, "V": None if fn else V, "target": target})
    Q, K = arrs["Q"], arrs["K"]
    if Q.ndim < 2 or K.ndim < 2:
        raise ValueError(
            f"Q must have shape (..., T_q, d) and K (..., n, d), got {tuple(Q.shape)} and {tuple(K.shape)}"
        )
    if Q.shape[-1] != K.shape[-1]:
        raise ValueError(f"K must have the queries' last dimension {Q.shape[-1]}, got {K.shape[-1]}")
    if K.shape[-2] < 1:
        raise ValueError("K must hold at least one key")
    check_finite(xp, "Q", Q)
    check_finite(xp, "K", K)
    Vv, tgt = arrs["V"], arrs["target"]
    if fn is not None:
        Vv = xp.astype(xp.asarray(fn(K), device=_array.device(K)), dtype)
        tgt = xp.astype(xp.asarray(fn(Q), device=_array.device(Q)), dtype) if tgt is None else tgt
    if Vv is not None:
        if Vv.ndim < 2 or Vv.shape[-2] != K.shape[-2]:
            raise ValueError(f"V must have shape (..., n, d_v) with n = {K.shape[-2]}, got {tuple(Vv.shape)}")
        if tgt is None:
            raise ValueError(
                "target: pass the regression function at the queries (..., T_q, d_v), or V as a callable"
            )
        if tgt.ndim < 2 or tgt.shape[-2] != Q.shape[-2] or tgt.shape[-1] != Vv.shape[-1]:
            raise ValueError(
                f"target must have shape (..., T_q, d_v) = (..., {Q.shape[-2]}, {Vv.shape[-1]}), "
                f"got {tuple(tgt.shape)}"
            )
        check_finite(xp, "V", Vv)
        check_finite(xp, "target", tgt)
    elif tgt is not None:
        raise ValueError("target needs values V")
    raw = AttentionWeights(xp, "raw", Q, K, scale, Vv, tgt)
    qkn = AttentionWeights(xp, "qknorm", l2_normalize(xp, Q), l2_normalize(xp, K), scale, Vv, tgt)
    return QKNormReport(raw, qkn)
