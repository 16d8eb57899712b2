r"""Seeded synthetic data for the capacity and memory diagnostics (theory §4, paper §6).

Every generator draws with :func:`numpy.random.default_rng` (so a seed gives the same numbers on every
array library) and converts the result with ``xp.asarray`` at the end: ``xp=None`` returns NumPy arrays,
``xp=cupy`` CuPy arrays, ``xp=array_api_strict`` strict arrays, and so on.

* :func:`random_pairs` -- key/value pairs for associative recall (unit, Gaussian or orthonormal keys);
* :func:`linear_target` -- a noisy linear regression problem with known coefficients;
* :func:`mqar` -- multi-query associative recall built the paper's way (bigram memories of token
  embeddings);
* :func:`mqar_tokens` -- Zoology's token-level MQAR (inputs and labels) for training a model (Fig. 3).

References
----------
Wang, Shi & Fox (2025), *Test-time regression*, arXiv 2501.12352, §3 and §6; theory.md §4.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._validation import check_scalar

__all__ = ["random_pairs", "linear_target", "mqar", "MQAR", "mqar_tokens", "MQARTokens", "random_keys"]

_KEYS = ("unit", "gaussian", "orthonormal")


def _to(xp, *arrays):
    if xp is None:
        return arrays if len(arrays) > 1 else arrays[0]
    out = tuple(xp.asarray(a) for a in arrays)
    return out if len(out) > 1 else out[0]


def _batch(n_batch):
    if n_batch is None:
        return ()
    check_scalar("n_batch", n_batch, low=1, integer=True)
    return (int(n_batch),)


def random_keys(rng, shape, d, keys="unit"):
    """Draw keys of shape ``shape + (n, d)`` from a NumPy generator (the shared sampler).

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
        ``batch + (n,)``.
    d : int
    keys : {"unit", "gaussian", "orthonormal"}
        ``"unit"``: uniform on the unit sphere; ``"gaussian"``: N(0, I/d) (so E‖k‖² = 1);
        ``"orthonormal"``: n <= d orthonormal rows, a Haar-random frame per batch element.

    Returns
    -------
    ndarray of shape ``shape + (d,)``
    """
    if keys not in _KEYS:
        raise ValueError(f"keys must be one of {_KEYS}, got {keys!r}")
    n = shape[-1]
    if keys == "orthonormal":
        if n > d:
            raise ValueError(f"keys: at most d = {d} orthonormal keys exist, asked for n = {n}")
        Z = rng.standard_normal(tuple(shape[:-1]) + (d, d))
        Qm, R = np.linalg.qr(Z)
        Qm = Qm * np.sign(np.diagonal(R, axis1=-2, axis2=-1))[..., None, :]  # Haar measure
        return np.swapaxes(Qm, -1, -2)[..., :n, :]
    K = rng.standard_normal(tuple(shape) + (d,))
    if keys == "unit":
        return K / np.linalg.norm(K, axis=-1, keepdims=True)
    return K / np.sqrt(d)


def random_pairs(n, d, d_v=None, *, keys="unit", n_batch=None, seed=None, xp=None):
    r"""Random key/value pairs for associative recall.

    Parameters
    ----------
    n : int >= 1
        Number of pairs.
    d : int >= 1
        Key dimension d_k.
    d_v : int >= 1, optional
        Value dimension (default ``d``).
    keys : {"unit", "gaussian", "orthonormal"}
        Unit keys uniform on :math:`S^{d-1}`; Gaussian keys N(0, I/d); or ``n <= d`` orthonormal keys.
    n_batch : int, optional
        Leading batch dimension (independent replications).
    seed : int or numpy.random.Generator, optional
    xp : array namespace, optional
        Library of the returned arrays (NumPy when None).

    Returns
    -------
    K : array of shape (n_batch, n, d) or (n, d)
    V : array of shape (n_batch, n, d_v) or (n, d_v)
        Standard normal values, independent of the keys.

    Notes
    -----
    With these keys the outer-product memory :math:`M = \sum_j v_j k_j^\top` has relative recall error
    :math:`(n-1)/d` (unit), :math:`(n+1)/d` (Gaussian) or 0 (orthonormal) -- see
    :func:`ttr_stats.diagnostics.capacity.outer_product_recall`.

    References
    ----------
    theory.md §4 (associative-memory capacity).

    Examples
    --------
    >>> from ttr_stats.datasets import random_pairs
    >>> K, V = random_pairs(8, 4, 2, n_batch=3, seed=0)
    >>> K.shape, V.shape
    ((3, 8, 4), (3, 8, 2))
    """
    n = check_scalar("n", n, low=1, integer=True)
    d = check_scalar("d", d, low=1, integer=True)
    d_v = d if d_v is None else check_scalar("d_v", d_v, low=1, integer=True)
    batch = _batch(n_batch)
    rng = np.random.default_rng(seed)
    K = random_keys(rng, batch + (n,), d, keys)
    V = rng.standard_normal(batch + (n, d_v))
    return _to(xp, K, V)


def linear_target(n, d, sigma=1.0, seed=None, *, d_v=1, n_batch=None, xp=None):
    r"""A noisy linear regression problem: :math:`v = W k + \sigma\varepsilon`.

    Parameters
    ----------
    n : int >= 1
        Number of pairs.
    d : int >= 1
        Key dimension.
    sigma : float >= 0
        Noise standard deviation.
    seed : int or numpy.random.Generator, optional
    d_v : int >= 1
        Value dimension.
    n_batch : int, optional
        Leading batch dimension (independent replications, each with its own W).
    xp : array namespace, optional

    Returns
    -------
    K : array of shape (n_batch, n, d) or (n, d)
        Keys N(0, I_d) (the Gaussian design of the excess-risk formula).
    V : array of shape (n_batch, n, d_v) or (n, d_v)
    W : array of shape (n_batch, d_v, d) or (d_v, d)
        Coefficients N(0, 1/d) (so Var(W k) = 1 per value coordinate).

    Notes
    -----
    Least squares on these pairs has excess risk
    :math:`E[(\hat W x - W x)^2] = \sigma^2 d/(n - d - 1)` per value coordinate on a fresh key x.

    References
    ----------
    theory.md §4.

    Examples
    --------
    >>> from ttr_stats.datasets import linear_target
    >>> K, V, W = linear_target(50, 4, 0.1, seed=0)
    >>> K.shape, V.shape, W.shape
    ((50, 4), (50, 1), (1, 4))
    """
    n = check_scalar("n", n, low=1, integer=True)
    d = check_scalar("d", d, low=1, integer=True)
    sigma = check_scalar("sigma", sigma, low=0.0)
    d_v = check_scalar("d_v", d_v, low=1, integer=True)
    batch = _batch(n_batch)
    rng = np.random.default_rng(seed)
    K = rng.standard_normal(batch + (n, d))
    W = rng.standard_normal(batch + (d_v, d)) / np.sqrt(d)
    V = K @ np.swapaxes(W, -1, -2) + sigma * rng.standard_normal(batch + (n, d_v))
    return _to(xp, K, V, W)


class MQAR(NamedTuple):
    """A batch of multi-query associative recall sequences (see :func:`mqar`).

    Attributes
    ----------
    Q, K, V : arrays of shape (n_batch, T, d)
        ``q_t = v_t = x_t`` and ``k_t = x_{t-1}`` (``k_1 = 0``): the layer stores bigrams.
    tokens : ndarray of shape (n_batch, T), int
        Token ids (0 is the padding token).
    embedding : array of shape (vocab, d)
        The embedding table (unit rows).
    query_positions : ndarray of shape (n_batch, n_pairs), int
        Where each key is queried (the output there should decode to the key's value).
    targets : ndarray of shape (n_batch, n_pairs), int
        The value token expected at each query position.
    """

    Q: object
    K: object
    V: object
    tokens: object
    embedding: object
    query_positions: object
    targets: object


def _embedding_table(rng, vocab, n_key_tokens, d, embedding):
    """Unit rows; ``"orthonormal"``: Haar frames in blocks of d (keys first, so <= d keys are orthonormal)."""
    if embedding == "random":
        return random_keys(rng, (vocab,), d, "unit")
    rows = [random_keys(rng, (1,), d, "unit")]  # the padding token
    for start, stop in ((1, 1 + n_key_tokens), (1 + n_key_tokens, vocab)):  # keys, then values
        m = stop - start
        while m > 0:
            rows.append(random_keys(rng, (min(m, d),), d, "orthonormal"))
            m -= d
    return np.concatenate(rows, axis=0)


def mqar(n_pairs, d, *, embedding="orthonormal", vocab=None, seq_len=None, n_batch=None, seed=None, xp=None):
    r"""Multi-query associative recall, built as in the paper (§6): a layer stores token bigrams.

    Each sequence lists ``n_pairs`` key-value token pairs ``k_1 v_1 k_2 v_2 ...`` (keys and values drawn
    without replacement from disjoint halves of the vocabulary), then a query region of length
    ``seq_len - 2 n_pairs`` in which every key appears once at a random position (padding token 0
    elsewhere, as in Zoology's MQAR). Tokens are embedded, :math:`x_t = E[\text{token}_t]`, and the layer
    gets :math:`k_t = x_{t-1}` (a length-2 short convolution), :math:`q_t = v_t = x_t`, so at the value
    position it stores :math:`x(k_i) \to x(v_i)` and at a query position it reads
    :math:`m_t(x(k_i))`, which should decode (nearest embedding by cosine) to :math:`v_i`.

    Parameters
    ----------
    n_pairs : int >= 1
        Key-value pairs per sequence (P).
    d : int >= 1
        Embedding dimension (= d_k = d_v).
    embedding : {"orthonormal", "random"}
        ``"random"``: iid rows uniform on the sphere. ``"orthonormal"``: rows from independent Haar
        frames in blocks of d, key tokens first, so up to d key tokens are exactly orthonormal (the
        idealised learned embedding).
    vocab : int, optional
        Vocabulary size including the padding token; key tokens are ``1 .. (vocab-1)//2``, value tokens
        the rest. Default ``1 + 2 max(n_pairs, d)``.
    seq_len : int, optional
        Sequence length T >= 3 n_pairs (default ``3 n_pairs``: the queries fill the query region).
    n_batch : int, optional
        Number of sequences (default 1, kept as a leading axis).
    seed : int or numpy.random.Generator, optional
    xp : array namespace, optional
        Library of ``Q``, ``K``, ``V`` and ``embedding`` (token ids stay NumPy).

    Returns
    -------
    MQAR
        ``(Q, K, V, tokens, embedding, query_positions, targets)``.

    Notes
    -----
    With orthonormal key embeddings the outer-product memory recalls
    :math:`M x(k_j) = x(v_j) + \sum_i \langle x(v_{i-1}), x(k_j)\rangle x(k_i)`: the only interference
    comes from the value-to-next-key bigrams, with coefficients of order :math:`d^{-1/2}`: at d = 64 every
    query still decodes correctly up to P = d (at d = 16 about 95% do). With
    random embeddings every stored bigram interferes (recall error about 2P/d) and linear attention
    fails well before P = d, while least squares interpolates the 2P + 1 distinct predecessors exactly
    while 2P + 1 <= d.

    References
    ----------
    Wang, Shi & Fox (2025), §6 (short convolution, bigram keys) and §7 (Fig. 3, MQAR); Arora et al.
    (2023), Zoology.

    Examples
    --------
    >>> from ttr_stats.datasets import mqar
    >>> data = mqar(4, 16, n_batch=2, seed=0)
    >>> data.Q.shape, data.targets.shape
    ((2, 12, 16), (2, 4))
    """
    P = check_scalar("n_pairs", n_pairs, low=1, integer=True)
    d = check_scalar("d", d, low=1, integer=True)
    if embedding not in ("orthonormal", "random"):
        raise ValueError(f"embedding must be 'orthonormal' or 'random', got {embedding!r}")
    vocab = 1 + 2 * max(P, d) if vocab is None else check_scalar("vocab", vocab, low=3, integer=True)
    n_key_tokens = (vocab - 1) // 2
    n_val_tokens = vocab - 1 - n_key_tokens
    if P > n_key_tokens or P > n_val_tokens:
        raise ValueError(
            f"vocab = {vocab} has {n_key_tokens} key and {n_val_tokens} value tokens, fewer than "
            f"n_pairs = {P}"
        )
    T = 3 * P if seq_len is None else check_scalar("seq_len", seq_len, low=3 * P, integer=True)
    B = 1 if n_batch is None else check_scalar("n_batch", n_batch, low=1, integer=True)
    rng = np.random.default_rng(seed)
    E = _embedding_table(rng, vocab, n_key_tokens, d, embedding)

    tokens = np.zeros((B, T), dtype=np.int64)
    qpos = np.empty((B, P), dtype=np.int64)
    targets = np.empty((B, P), dtype=np.int64)
    keys = np.stack([1 + rng.choice(n_key_tokens, P, replace=False) for _ in range(B)])
    vals = np.stack([1 + n_key_tokens + rng.choice(n_val_tokens, P, replace=False) for _ in range(B)])
    tokens[:, 0 : 2 * P : 2] = keys
    tokens[:, 1 : 2 * P : 2] = vals
    for b in range(B):
        pos = 2 * P + np.sort(rng.choice(T - 2 * P, P, replace=False))
        order = rng.permutation(P)
        qpos[b] = pos
        targets[b] = vals[b, order]
        tokens[b, pos] = keys[b, order]
    X = E[tokens]  # (B, T, d)
    K = np.concatenate([np.zeros((B, 1, d)), X[:, :-1]], axis=1)
    Q, K, V, E = _to(xp, X, K, X.copy(), E)
    return MQAR(Q, K, V, tokens, E, qpos, targets)


class MQARTokens(NamedTuple):
    """A batch of Zoology-style MQAR token sequences (see :func:`mqar_tokens`).

    Attributes
    ----------
    inputs : ndarray of shape (n_batch, T), int64
        Token ids.
    labels : ndarray of shape (n_batch, T), int64
        The value token to predict at each query position, ``IGNORE`` (-100) elsewhere.
    keys, values : ndarray of shape (n_batch, n_pairs), int64
        The pairs in context order (key i at position 2i, its value at 2i + 1).
    query_positions : ndarray of shape (n_batch, n_pairs), int64
        Where key i is queried (sorted by i, not by position).
    """

    inputs: object
    labels: object
    keys: object
    values: object
    query_positions: object


#: the label of a position that is not scored (PyTorch's cross-entropy ``ignore_index``)
IGNORE = -100


def _top(scores, k):
    """Indices of the k largest scores of each row, largest first (argpartition, then sort the k)."""
    idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def mqar_tokens(n_pairs, seq_len, *, vocab=8192, n_batch=1, power_a=0.01, random_non_queries=True, seed=None):
    r"""Zoology's multi-query associative recall as token ids, for training (paper Fig. 3).

    Each sequence starts with ``n_pairs`` key-value pairs ``k_1 v_1 ... k_P v_P`` (keys drawn without
    replacement from ``1 .. vocab//2 - 1``, values from ``vocab//2 .. vocab - 1``); after them every key
    appears once more, at position ``2P + 2 g_i`` with gaps :math:`g_i \in \{0, ..., (T - 2P)/2 - 1\}`
    drawn without replacement with power-law probabilities :math:`p(g) \propto a\,(g+1)^{a-1}`
    (``a = power_a``: small a puts the queries close to the context). The label at a query position is the
    key's value; every other position is ignored (``IGNORE``). The remaining positions of the query region
    are random tokens of the whole vocabulary (``random_non_queries=True``, Zoology's default) or 0.

    Parameters
    ----------
    n_pairs : int >= 1
        Key-value pairs P.
    seq_len : int
        Sequence length T, even, with ``4 P <= T < vocab`` (Zoology's conditions).
    vocab : int
        Vocabulary size (Zoology's standard 8192).
    n_batch : int >= 1
    power_a : float in (0, 1]
        Power-law exponent of the query gaps (1: uniform).
    random_non_queries : bool
    seed : int or numpy.random.Generator, optional

    Returns
    -------
    MQARTokens
        ``(inputs, labels, keys, values, query_positions)``, NumPy int64 arrays.

    Notes
    -----
    Follows ``zoology/data/multiquery_ar.py`` (Arora et al. 2023) with two implementation choices that
    do not change the distribution: the gaps drawn without replacement by Gumbel top-k (which draws
    sequentially proportional to p, as ``numpy.random.choice(replace=False, p=p)`` does; the keys and
    values, uniform orderings, by ``Generator.choice(replace=False)``), and one NumPy generator for
    everything. A random
    filler token may equal one of the sequence's keys (as in Zoology): it is not scored.

    References
    ----------
    Arora, Eyuboglu et al. (2023), *Zoology*, arXiv 2312.04927, §3; Wang, Shi & Fox (2025), §7 (Fig. 3).

    Examples
    --------
    >>> from ttr_stats.datasets import mqar_tokens
    >>> d = mqar_tokens(4, 32, vocab=64, n_batch=2, seed=0)
    >>> d.inputs.shape, int((d.labels != -100).sum())
    ((2, 32), 8)
    """
    P = check_scalar("n_pairs", n_pairs, low=1, integer=True)
    T = check_scalar("seq_len", seq_len, low=4, integer=True)
    vocab = check_scalar("vocab", vocab, low=4, integer=True)
    B = check_scalar("n_batch", n_batch, low=1, integer=True)
    a = check_scalar("power_a", power_a, low=0.0, high=1.0, low_inclusive=False)
    if T % 2:
        raise ValueError(f"seq_len must be even (queries sit at even offsets), got {T}")
    if 4 * P > T:
        raise ValueError(f"seq_len = {T} is too short for n_pairs = {P}: need 4 n_pairs <= seq_len")
    if vocab <= T:
        raise ValueError(
            f"vocab = {vocab} must exceed seq_len = {T} (Zoology's condition); use a larger vocab"
        )
    n_keys = vocab // 2 - 1  # key tokens 1 .. vocab//2 - 1 (0 is the filler of the non-random variant)
    n_vals = vocab - vocab // 2
    if P > n_keys:
        raise ValueError(f"vocab = {vocab} has {n_keys} key tokens, fewer than n_pairs = {P}")
    rng = np.random.default_rng(seed)
    # without replacement, in draw order: keys and values uniform (below); gaps the P largest of log p +
    # Gumbel noise (Gumbel top-P = sequential draws proportional to p)
    # per row: Generator.choice without replacement (a uniform ordering of P distinct tokens; O(P) a row,
    # where a top-P of n uniforms costs O(n) and was most of a training step's host time at vocab 8192)
    keys = 1 + np.stack([rng.choice(n_keys, P, replace=False) for _ in range(B)])
    values = vocab // 2 + np.stack([rng.choice(n_vals, P, replace=False) for _ in range(B)])
    space = (T - 2 * P) // 2
    logp = (a - 1.0) * np.log(np.arange(1, space + 1))  # log of a g^(a-1), constants dropped
    gaps = _top(logp + rng.gumbel(size=(B, space)), P)
    qpos = 2 * P + 2 * gaps
    inputs = np.zeros((B, T), dtype=np.int64)
    inputs[:, 0 : 2 * P : 2] = keys
    inputs[:, 1 : 2 * P : 2] = values
    filler = np.ones((B, T), dtype=bool)
    filler[:, : 2 * P] = False
    rows = np.arange(B)[:, None]
    filler[rows, qpos] = False
    if random_non_queries:
        inputs[filler] = rng.integers(0, vocab, size=int(filler.sum()))
    inputs[rows, qpos] = keys
    labels = np.full((B, T), IGNORE, dtype=np.int64)
    labels[rows, qpos] = values
    return MQARTokens(inputs, labels, keys.astype(np.int64), values.astype(np.int64), qpos.astype(np.int64))
