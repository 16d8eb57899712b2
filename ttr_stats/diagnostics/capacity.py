r"""Associative-memory capacity: how many pairs a layer recalls, measured and in closed form (theory §4).

Measured (any layer, any array library):

* :func:`recall_error` -- relative recall error :math:`\sum_i\|m(k_i) - v_i\|^2 / \sum_i\|v_i\|^2` of the
  final memory read at every stored key;
* :func:`self_weight` -- the weight a stored pair gets when its own key is the query (smoother diagonal);
* :func:`excess_risk` -- prediction error against a known linear target on fresh keys;
* :func:`recall_curve` -- recall error against n/d for several layers, with the theory columns;
* :func:`mqar_accuracy` -- untrained multi-query associative recall accuracy (paper §6).

Closed forms: :func:`outer_product_recall`, :func:`least_squares_recall`,
:func:`least_squares_excess_risk`, :func:`hopfield_self_weight`, :func:`hopfield_half_weight`.

References
----------
Wang, Shi & Fox (2025), *Test-time regression*, arXiv 2501.12352, §3, §6; theory.md §3-4.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .. import _array
from .._validation import check_counts, check_scalar
from ..datasets import mqar, random_pairs
from .conditioning import log_sphere_moment

__all__ = [
    "recall_error",
    "self_weight",
    "excess_risk",
    "recall_curve",
    "mqar_accuracy",
    "MQARAccuracy",
    "outer_product_recall",
    "least_squares_recall",
    "least_squares_excess_risk",
    "hopfield_self_weight",
    "hopfield_half_weight",
]


# ------------------------------------------------------------------------------------------------------
# closed forms
def outer_product_recall(n, d, keys="unit"):
    r"""Relative recall error of the outer-product memory :math:`M = \sum_j v_j k_j^\top` (linear attention).

    Parameters
    ----------
    n : int or array
        Number of stored pairs.
    d : int
        Key dimension.
    keys : {"unit", "gaussian", "orthonormal"}
        Key distribution (values isotropic, independent of the keys).

    Returns
    -------
    float or ndarray
        :math:`(n-1)/d` for unit keys, :math:`(n+1)/d` for N(0, I/d) keys, 0 for orthonormal keys
        (``n <= d``).

    Notes
    -----
    :math:`Mk_i - v_i = (\|k_i\|^2 - 1)v_i + \sum_{j\ne i}\langle k_j, k_i\rangle v_j`, and
    :math:`E\langle k_j,k_i\rangle^2 = 1/d`, :math:`\mathrm{Var}\|k\|^2 = 0` (unit) or :math:`2/d` (Gaussian).

    References
    ----------
    theory.md §4.
    """
    n = check_counts("n", n, low=1)  # (n - 1)/d < 0 at n = 0: a recall error must be refused, not given
    d = check_scalar("d", d, low=1, integer=True)
    if keys == "unit":
        out = (n - 1.0) / d
    elif keys == "gaussian":
        out = (n + 1.0) / d
    elif keys == "orthonormal":
        out = np.where(n <= d, 0.0, np.nan)
    else:
        raise ValueError(f"keys must be 'unit', 'gaussian' or 'orthonormal', got {keys!r}")
    return out[()] if out.ndim == 0 else out


def least_squares_recall(n, d):
    r"""In-sample relative recall error of (minimum-norm) least squares with random values.

    Returns
    -------
    float or ndarray
        0 for :math:`n \le d` (interpolation), :math:`1 - d/n` beyond.

    Notes
    -----
    The fitted values are :math:`HV` with :math:`H` the projection on the d-dimensional column space of
    K, so :math:`E\|(I-H)V\|^2 = (n - d)\,E\|v\|^2` for values independent of full-rank keys.

    References
    ----------
    theory.md §4.
    """
    n = check_counts("n", n, low=1)
    d = check_scalar("d", d, low=1, integer=True)
    out = np.where(n <= d, 0.0, 1.0 - d / n)
    return out[()] if out.ndim == 0 else out


def least_squares_excess_risk(n, d, sigma):
    r"""Excess risk of least squares on a linear target with Gaussian keys: :math:`\sigma^2 d/(n-d-1)`.

    Parameters
    ----------
    n, d : int
        Pairs and key dimension (``n > d + 1``).
    sigma : float
        Noise standard deviation.

    Returns
    -------
    float
        :math:`E[(\hat W x - W x)^2]` per value coordinate on a fresh key :math:`x\sim N(0,\Sigma)`.

    Notes
    -----
    :math:`\hat W - W = E K (K^\top K)^{-1}`, so the excess risk is
    :math:`\sigma^2 E\,\mathrm{tr}((K^\top K)^{-1}\Sigma) = \sigma^2 d/(n-d-1)` (inverse-Wishart mean).

    References
    ----------
    theory.md §4.
    """
    d = check_scalar("d", d, low=1, integer=True)
    n = float(check_counts("n", n, low=1))
    sigma = check_scalar("sigma", sigma, low=0.0)
    if not n > d + 1:
        raise ValueError(f"n must exceed d + 1 = {d + 1} for a finite excess risk, got {n}")
    return float(sigma) ** 2 * d / (n - d - 1)


def hopfield_self_weight(n, d, beta):
    r"""Softmax weight of a stored pair under an exact-match query: :math:`1/(1 + (n-1)M_d(\beta)e^{-\beta})`.

    Parameters
    ----------
    n : int or array
        Stored pairs (keys uniform on the sphere).
    d : int
    beta : float
        Logit scale (logits :math:`\beta q^\top k`, unit q and k).

    Returns
    -------
    float or ndarray

    Notes
    -----
    The query's own key scores :math:`e^\beta`; the other n - 1 score :math:`M_d(\beta)` on average
    (annealed approximation, good while their sum concentrates, theory §3).

    References
    ----------
    theory.md §3-4.
    """
    n = check_counts("n", n, low=1)  # at n = 0 the formula gives a weight above 1
    d = check_scalar("d", d, low=1, integer=True)
    beta = check_scalar("beta", beta, low=0.0)
    out = 1.0 / (1.0 + (n - 1.0) * np.exp(log_sphere_moment(d, beta) - beta))
    return out[()] if out.ndim == 0 else out


def hopfield_half_weight(d, beta):
    r"""Number of stored pairs n* at which an exact-match query's self weight falls to 1/2.

    Returns
    -------
    float
        :math:`n^* = 1 + \exp(\beta - \log M_d(\beta))` (d = 64, beta = 8: about 1816).

    Notes
    -----
    Solving :func:`hopfield_self_weight` = 1/2: :math:`\log(n^*-1) = \beta - \log M_d(\beta)`; capacity is
    exponential in the logit scale (modern Hopfield networks).

    References
    ----------
    theory.md §4.
    """
    check_scalar("d", d, low=1, integer=True)
    check_scalar("beta", beta, low=0.0)
    return 1.0 + math.exp(float(beta) - log_sphere_moment(d, beta))


# ------------------------------------------------------------------------------------------------------
# measurements
def recall_error(layer, K, V, **gates):
    r"""Relative recall error of the final memory read at every stored key.

    Parameters
    ----------
    layer : TestTimeRegression
    K : array of shape (..., n, d_k)
    V : array of shape (..., n, d_v)
    **gates
        ``alpha`` / ``log_alpha`` / ``beta`` passed to the layer.

    Returns
    -------
    array of shape (...)
        :math:`\sum_i\|m_n(k_i) - v_i\|^2 / \sum_i\|v_i\|^2` per batch element, :math:`m_n` the memory after
        all n pairs (``causal=False`` with Q = K: memorize, then read).

    Notes
    -----
    Averaged over replications this estimates :math:`E\|Mk_i - v_i\|^2 / E\|v\|^2` (the ratio of sums
    concentrates, its bias is :math:`O(1/(n d_v))`).

    References
    ----------
    theory.md §4.
    """
    xp, a, _ = _array.as_float_arrays({"K": K, "V": V})
    K, V = a["K"], a["V"]
    Y = layer(K, K, V, causal=False, **gates)
    R = Y - V
    return xp.sum(R * R, axis=(-2, -1)) / xp.sum(V * V, axis=(-2, -1))


def self_weight(layer, K, **gates):
    r"""Weight of each stored pair in its own retrieval: the diagonal of the smoother, :math:`S_{ii}`.

    Parameters
    ----------
    layer : TestTimeRegression
        Any layer linear in the values.
    K : array of shape (..., n, d_k)

    Returns
    -------
    array of shape (..., n)
        :math:`S_{ii}` where :math:`m_n(k_i) = \sum_j S_{ij} v_j` (read after all n pairs). For softmax
        attention with unit keys this is the exact-match self weight of theory §3.

    Notes
    -----
    Computed by storing the one-hot values :math:`V = I_n`, so the outputs are the smoother rows
    (memory O(n^2) per batch element).
    """
    xp, a, dtype = _array.as_float_arrays({"K": K})
    K = a["K"]
    if K.ndim < 2:
        raise ValueError(
            f"K must have shape (..., n, d_k), got shape {tuple(K.shape)}; pass one key per row "
            "(K[:, None] for scalar keys)"
        )
    n = K.shape[-2]
    V = xp.broadcast_to(xp.eye(n, dtype=dtype, device=_array.device(K)), K.shape[:-2] + (n, n))
    S = layer(K, K, V, causal=False, **gates)
    eye = xp.eye(n, dtype=dtype, device=_array.device(K))
    return xp.sum(S * eye, axis=-1)


def excess_risk(layer, K, V, W, Q, **gates):
    r"""Prediction error of the final memory against a known linear target, on fresh keys.

    Parameters
    ----------
    layer : TestTimeRegression
    K : array of shape (..., n, d_k)
    V : array of shape (..., n, d_v)
    W : array of shape (..., d_v, d_k)
        The true coefficients (:math:`v = Wk + \text{noise}`).
    Q : array of shape (..., n_q, d_k)
        Fresh keys.

    Returns
    -------
    array of shape (...)
        :math:`\frac{1}{n_q d_v}\sum_q \|m_n(q) - Wq\|^2`, which estimates
        :math:`E(v - m(q))^2 - \sigma^2` per value coordinate.

    References
    ----------
    theory.md §4 (compare :func:`least_squares_excess_risk`).
    """
    xp, a, _ = _array.as_float_arrays({"K": K, "V": V, "W": W, "Q": Q})
    for name, shape in (("K", "(..., n, d_k)"), ("V", "(..., n, d_v)"), ("Q", "(..., n_q, d_k)")):
        if a[name].ndim < 2:
            raise ValueError(f"{name} must have shape {shape}, got shape {tuple(a[name].shape)}")
    d_v, d_k = a["V"].shape[-1], a["Q"].shape[-1]
    if a["W"].ndim < 2 or a["W"].shape[-2:] != (d_v, d_k):
        raise ValueError(
            f"W must have shape (..., d_v, d_k) = (..., {d_v}, {d_k}) (v = W k + noise), got shape "
            f"{tuple(a['W'].shape)}; transpose it if it maps values to keys"
        )
    Y = layer(a["Q"], a["K"], a["V"], causal=False, **gates)
    R = Y - xp.matmul(a["Q"], xp.matrix_transpose(a["W"]))
    return xp.mean(R * R, axis=(-2, -1))


def recall_curve(layers, n_over_d, d, n_batch=16, seed=None, keys="unit", d_v=None):
    r"""Recall error against the load n/d for several layers, with the closed forms beside.

    Parameters
    ----------
    layers : dict of str -> TestTimeRegression, or list of layers
        Layers to compare (a list is named by each layer's ``repr``).
    n_over_d : sequence of float
        Loads; n = round(ratio * d) pairs.
    d : int
        Key dimension.
    n_batch : int
        Replications per load (common random numbers across layers).
    seed : int, optional
    keys : {"unit", "gaussian", "orthonormal"}
        Key distribution (:func:`ttr_stats.datasets.random_pairs`).
    d_v : int, optional
        Value dimension (default d).

    Returns
    -------
    pandas.DataFrame
        Columns ``layer, n, d, ratio, recall_error, se, outer_product_theory, least_squares_theory``:
        the mean of :func:`recall_error` over replications, its standard error, and
        :func:`outer_product_recall` / :func:`least_squares_recall` at (n, d).

    References
    ----------
    theory.md §4.
    """
    import pandas as pd

    if not isinstance(layers, dict):
        layers = {repr(layer): layer for layer in layers}
    d = check_scalar("d", d, low=1, integer=True)
    B = check_scalar("n_batch", n_batch, low=2, integer=True)
    ss = np.random.SeedSequence(seed)
    rows = []
    for ratio, child in zip(n_over_d, ss.spawn(len(n_over_d)), strict=True):
        n = max(1, int(round(float(ratio) * d)))
        K, V = random_pairs(n, d, d_v, keys=keys, n_batch=B, seed=np.random.default_rng(child))
        for name, layer in layers.items():
            r = np.asarray(recall_error(layer, K, V), dtype=np.float64)
            rows.append(
                {
                    "layer": name,
                    "n": n,
                    "d": d,
                    "ratio": n / d,
                    "recall_error": float(np.mean(r)),
                    "se": float(np.std(r, ddof=1) / math.sqrt(B)),
                    "outer_product_theory": float(outer_product_recall(n, d, keys)),
                    "least_squares_theory": float(least_squares_recall(n, d)),
                }
            )
    return pd.DataFrame(rows)


class MQARAccuracy(NamedTuple):
    """Result of :func:`mqar_accuracy`: mean accuracy, its standard error over sequences, queries scored."""

    accuracy: float
    se: float
    n_queries: int


def mqar_accuracy(
    layer, n_pairs, d, *, embedding="orthonormal", n_batch=16, seed=None, vocab=None, seq_len=None, xp=None
):
    r"""Untrained MQAR accuracy: run the layer on bigram memories and decode by nearest embedding.

    Parameters
    ----------
    layer : TestTimeRegression
        Run causally on :func:`ttr_stats.datasets.mqar` sequences (``k_t = x_{t-1}``, ``q_t = v_t = x_t``).
    n_pairs : int
        Key-value pairs per sequence.
    d : int
        Embedding dimension.
    embedding : {"orthonormal", "random"}
    n_batch : int
        Sequences.
    seed : int, optional
    vocab, seq_len : int, optional
        See :func:`ttr_stats.datasets.mqar`.
    xp : array namespace, optional
        Library to run the layer on (NumPy when None).

    Returns
    -------
    MQARAccuracy
        ``(accuracy, se, n_queries)``: the fraction of query positions whose output's nearest embedding
        (cosine, over the whole vocabulary) is the key's value, with its standard error over sequences.

    Notes
    -----
    Orthonormal key embeddings make linear attention decode every query up to ``n_pairs = d`` at
    d = 64 (only the value-to-next-key bigrams interfere, with coefficients of order
    :math:`d^{-1/2}`; at d = 16 about 95% decode); random embeddings interfere everywhere and linear
    attention fails well before ``n_pairs = d``, while least squares still interpolates the
    ``2 n_pairs + 1`` distinct predecessors while ``2 n_pairs + 1 <= d``.

    References
    ----------
    Wang, Shi & Fox (2025), §6-7 (Fig. 3).
    """
    B = check_scalar("n_batch", n_batch, low=1, integer=True)
    data = mqar(n_pairs, d, embedding=embedding, vocab=vocab, seq_len=seq_len, n_batch=B, seed=seed, xp=xp)
    Y = layer(data.Q, data.K, data.V)
    ns = _array.namespace(Y)
    E = data.embedding
    E = E / ns.linalg.vector_norm(E, axis=-1, keepdims=True)
    # cosine argmax = dot argmax with unit embeddings (the output's own norm does not change the argmax)
    pred = _array.to_numpy(ns.argmax(ns.matmul(Y, ns.matrix_transpose(E)), axis=-1))
    got = np.take_along_axis(pred, data.query_positions, axis=1)
    per_seq = np.mean(got == data.targets, axis=1)
    se = float(np.std(per_seq, ddof=1) / math.sqrt(B)) if B > 1 else float("nan")
    return MQARAccuracy(float(np.mean(per_seq)), se, int(got.size))
