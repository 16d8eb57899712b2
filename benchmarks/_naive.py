r"""Plain NumPy peers for the fast-method benchmarks: the shortest correct code for each computation.

Nothing here is tuned: these are what a reader would write from the equations, and what the ttr_stats
methods are timed against. Every function takes arrays with any leading batch shape (heads, sequences)
and uses batched ``@`` over it. Conventions are ttr_stats': the memory is :math:`M \in R^{d_v \times d_k}`,
the output is read after step t's update, :math:`y_t = M_t q_t`, with no query scaling.

* :func:`linear_attention_loop` / :func:`linear_attention_chunked`: :math:`M_t = M_{t-1} + v_t k_t^\top`.
* :func:`delta_loop` / :func:`delta_chunked`: the gated delta rule
  :math:`M_t = \alpha_t M_{t-1} (I - \beta_t k_t k_t^\top) + \beta_t v_t k_t^\top` (``g = log alpha``).
* :func:`rls_loop` / :func:`rls_step`: recursive least squares (Sherman-Morrison), :math:`P_0 = I/\rho`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "linear_attention_loop",
    "linear_attention_chunked",
    "delta_loop",
    "delta_chunked",
    "rls_loop",
    "rls_step",
]


def _mT(x):
    return np.swapaxes(x, -1, -2)


def linear_attention_loop(Q, K, V):
    """Linear attention, one step at a time.

    Parameters
    ----------
    Q, K : arrays of shape (..., T, d_k)
    V : array of shape (..., T, d_v)

    Returns
    -------
    Y : array of shape (..., T, d_v)
    """
    M = np.zeros(V.shape[:-2] + (V.shape[-1], K.shape[-1]), dtype=V.dtype)
    Y = np.empty_like(V)
    for t in range(K.shape[-2]):
        M += V[..., t, :, None] * K[..., t, None, :]  # v_t k_t^T
        Y[..., t, :] = (M @ Q[..., t, :, None])[..., 0]
    return Y


def linear_attention_chunked(Q, K, V, C=64):
    """Linear attention in chunks of ``C``: causal T x T product inside a chunk, the state across chunks.

    Same shapes as :func:`linear_attention_loop`.
    """
    T = K.shape[-2]
    S = np.zeros(V.shape[:-2] + (V.shape[-1], K.shape[-1]), dtype=V.dtype)  # M at the chunk start
    Y = np.empty_like(V)
    for s in range(0, T, C):
        q, k, v = Q[..., s : s + C, :], K[..., s : s + C, :], V[..., s : s + C, :]
        A = np.tril(q @ _mT(k))  # (..., c, c): q_i . k_j for j <= i
        Y[..., s : s + C, :] = A @ v + q @ _mT(S)
        S = S + _mT(v) @ k
    return Y


def delta_loop(Q, K, V, g, b):
    """The gated delta rule, one step at a time.

    Parameters
    ----------
    Q, K : arrays of shape (..., T, d_k)
    V : array of shape (..., T, d_v)
    g : array of shape (..., T)
        log alpha (<= 0).
    b : array of shape (..., T)
        beta.

    Returns
    -------
    Y : array of shape (..., T, d_v)
    """
    M = np.zeros(V.shape[:-2] + (V.shape[-1], K.shape[-1]), dtype=V.dtype)
    Y = np.empty_like(V)
    for t in range(K.shape[-2]):
        k = K[..., t, :, None]
        M = np.exp(g[..., t, None, None]) * M  # decay first, then the delta step on the decayed memory
        M = M + b[..., t, None, None] * (V[..., t, :, None] - M @ k) @ _mT(k)
        Y[..., t, :] = (M @ Q[..., t, :, None])[..., 0]
    return Y


def delta_chunked(Q, K, V, g, b, C=64):
    r"""The gated delta rule in chunks of ``C`` (WY form).

    Inside a chunk with start state :math:`S` and cumulative log-decay :math:`\gamma_i` (relative to the
    chunk start, so only :math:`e^{\gamma_i - \gamma_j} \le 1` with :math:`j \le i` is formed),
    :math:`S_i = e^{\gamma_i} S + \sum_{j \le i} e^{\gamma_i - \gamma_j} u_j k_j^\top`, where the
    pseudo-values solve the unit lower-triangular system
    :math:`(I + \mathrm{diag}(\beta) L) U = \mathrm{diag}(\beta) (V - \mathrm{diag}(e^{\gamma}) K S^\top)`,
    :math:`L_{ij} = e^{\gamma_i - \gamma_j} k_i^\top k_j` (j < i).

    Same shapes as :func:`delta_loop`.
    """
    T = K.shape[-2]
    S = np.zeros(V.shape[:-2] + (V.shape[-1], K.shape[-1]), dtype=V.dtype)
    Y = np.empty_like(V)
    for s in range(0, T, C):
        q, k, v = Q[..., s : s + C, :], K[..., s : s + C, :], V[..., s : s + C, :]
        c = k.shape[-2]
        gam = np.cumsum(g[..., s : s + C], axis=-1)  # (..., c)
        diff = gam[..., :, None] - gam[..., None, :]  # gamma_i - gamma_j
        causal = np.tril(np.ones((c, c), dtype=bool))
        D = np.exp(np.where(causal, diff, -np.inf))  # e^{gamma_i - gamma_j} for j <= i, else 0
        bb = b[..., s : s + C, None]
        A = np.eye(c) + bb * np.tril(D * (k @ _mT(k)), -1)
        U = np.linalg.solve(A, bb * (v - np.exp(gam)[..., None] * (k @ _mT(S))))
        Y[..., s : s + C, :] = np.exp(gam)[..., None] * (q @ _mT(S)) + (D * (q @ _mT(k))) @ U
        last = np.exp(gam[..., -1:, None] - gam[..., :, None])  # (..., c, 1): e^{gamma_c - gamma_j}
        S = np.exp(gam[..., -1, None, None]) * S + _mT(U) @ (last * k)
    return Y


def rls_step(M, P, k, v):
    """One recursive-least-squares step (Sherman-Morrison), in place of ``M`` and ``P``.

    Parameters
    ----------
    M : array of shape (..., d_v, d_k)
    P : array of shape (..., d_k, d_k)
        Inverse of the (ridge-regularised) Gram matrix.
    k : array of shape (..., d_k)
    v : array of shape (..., d_v)
    """
    Pk = (P @ k[..., None])[..., 0]
    gain = Pk / (1.0 + np.sum(k * Pk, axis=-1, keepdims=True))
    M += (v - (M @ k[..., None])[..., 0])[..., :, None] * gain[..., None, :]
    P -= gain[..., :, None] * Pk[..., None, :]


def rls_loop(Q, K, V, ridge):
    """Recursive least squares with prior :math:`P_0 = I/\\rho`, one step at a time.

    Parameters
    ----------
    Q, K : arrays of shape (..., T, d_k)
    V : array of shape (..., T, d_v)
    ridge : float

    Returns
    -------
    Y : array of shape (..., T, d_v)
    """
    d_k = K.shape[-1]
    M = np.zeros(V.shape[:-2] + (V.shape[-1], d_k), dtype=V.dtype)
    P = np.broadcast_to(np.eye(d_k, dtype=V.dtype) / ridge, K.shape[:-2] + (d_k, d_k)).copy()
    Y = np.empty_like(V)
    for t in range(K.shape[-2]):
        rls_step(M, P, K[..., t, :], V[..., t, :])
        Y[..., t, :] = (M @ Q[..., t, :, None])[..., 0]
    return Y
