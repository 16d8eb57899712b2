r"""Capacity sweep: layer x load P/d x sequence length T (theory §4, paper §6).

Two measurements of ``paper_figures/fig_capacity.py``, swept wider:

* ``recall`` -- relative recall error :math:`\sum_i\|m_n(k_i) - v_i\|^2/\sum_i\|v_i\|^2` after n = (P/d) d
  pairs of unit keys and normal values (here T = n: the memory holds the whole sequence), with the closed
  forms (n - 1)/d (outer products) and max(0, 1 - d/n) (least squares) as columns
  (:func:`ttr_stats.diagnostics.capacity.recall_error`);
* ``mqar`` -- untrained multi-query associative recall accuracy with P = (P/d) d pairs in a sequence of
  T tokens (T >= 3P; the rest is the query region), orthonormal or random embeddings
  (:func:`~ttr_stats.diagnostics.capacity.mqar_accuracy`);
* ``self_weight`` -- the weight :math:`S_{ii}` of a stored pair in its own retrieval after n unit keys
  (:func:`~ttr_stats.diagnostics.capacity.self_weight`), softmax with QKNorm at logit scale 8 only, with the
  closed form :math:`1/(1 + (n-1)M_d(\beta)e^{-\beta})` as a column: the figure's panel (b).

Layers (recipes by name): linear attention, least squares (ridge 0 for recall, 1e-6 for MQAR), DeltaNet
with the NLMS step, softmax attention with QKNorm at logit scale 8. Every layer sees the same data at a
(setting, seed index).

Full, d = 64: recall 4 layers x 15 loads (1/4 .. 32) x 6 seeds of 2 sequences = 360 cells; MQAR 4 layers x
6 loads (1/4 .. 2) x 3 T (512, 2048, 8192) x 2 embeddings x 4 seeds of 4 sequences = 576 cells; self weight
5 n (64 .. 3000, the figure's) x 6 seeds of 1 sequence = 30 cells. Quick: d = 8, 36 cells.
"""

import numpy as np

from ttr_stats.datasets import random_pairs
from ttr_stats.diagnostics import capacity as cap
from ttr_stats.experiments import Sweep, grid

SEED = 20250121
LAYERS = {
    "linear_attention": [{}],
    "nlms": [{}],
    "qknorm_attention": [{"scale": 8.0}],
}


def pairs(rng, ratio, d, n_batch):
    """``n_batch`` sequences of n = round(ratio d) unit keys and standard normal values."""
    return random_pairs(max(1, round(ratio * d)), d, n_batch=n_batch, seed=rng)


def recall(layer, data, cell):
    K, _ = data
    r = np.asarray(cap.recall_error(layer, *data), dtype=np.float64)
    n, d = K.shape[-2], K.shape[-1]
    return {
        "recall_error": float(np.mean(r)),
        "n": n,
        "outer_product_theory": float(cap.outer_product_recall(n, d)),
        "least_squares_theory": float(cap.least_squares_recall(n, d)),
    }


def mqar_task(rng, ratio, d, T, embedding, n_batch):
    """An MQAR setting and its seed: an integer drawn from the cell's generator, so that every layer
    redraws the same sequences (mqar_accuracy builds them)."""
    P = max(1, round(ratio * d))
    if T < 3 * P:
        raise ValueError(f"T = {T} < 3 P = {3 * P}: no room for the queries")
    return {
        "P": P,
        "d": d,
        "T": T,
        "embedding": embedding,
        "n_batch": n_batch,
        "seed": int(rng.integers(2**63)),
    }


def mqar(layer, data, cell):
    acc = cap.mqar_accuracy(
        layer,
        data["P"],
        data["d"],
        embedding=data["embedding"],
        n_batch=data["n_batch"],
        seed=data["seed"],
        seq_len=data["T"],
    )
    return {"accuracy": acc.accuracy, "P": data["P"]}


def keys(rng, n, d, n_batch):
    """``n_batch`` sequences of n unit keys (the values of ``random_pairs`` are drawn and dropped)."""
    return random_pairs(n, d, 1, n_batch=n_batch, seed=rng)[0]


def self_weight(layer, K, cell):
    """Mean self weight over the cell's sequences (each sequence's mean over its n stored pairs), and the
    closed form at the layer's logit scale."""
    per_seq = np.mean(np.asarray(cap.self_weight(layer, K)), axis=-1)  # as fig_capacity.compute does
    n, d = K.shape[-2], K.shape[-1]
    return {
        "self_weight": float(np.mean(per_seq)),
        "n": n,
        "hopfield_theory": float(cap.hopfield_self_weight(n, d, cell.params["scale"])),
    }


def _cells(d, ratios, mqar_ratios, Ts, seeds, mqar_seeds, n_batch, mqar_batch, self_n, self_seeds):
    rec = grid(
        {**LAYERS, "least_squares": [{"ridge": 0.0}]},
        {"pairs": [{"ratio": float(r), "d": d, "n_batch": n_batch} for r in ratios]},
        seeds,
        ["recall"],
    )
    settings = [
        {"ratio": float(r), "d": d, "T": T, "embedding": e, "n_batch": mqar_batch}
        for r in mqar_ratios
        for T in Ts
        for e in ("orthonormal", "random")
        if T >= 3 * max(1, round(r * d))
    ]
    mq = grid({**LAYERS, "least_squares": [{"ridge": 1e-6}]}, {"mqar": settings}, mqar_seeds, ["mqar"])
    sw = grid(
        {"qknorm_attention": LAYERS["qknorm_attention"]},
        {"keys": [{"n": int(n), "d": d, "n_batch": 1} for n in self_n]},
        self_seeds,
        ["self_weight"],
    )
    return rec + mq + sw


def _sweep(name, cells):
    return Sweep(
        name,
        cells,
        data={"pairs": pairs, "mqar": mqar_task, "keys": keys},
        metrics={"recall": recall, "mqar": mqar, "self_weight": self_weight},
        seed=SEED,
        description=__doc__.splitlines()[0],
    )


SWEEP = _sweep(
    "capacity",
    _cells(
        64,
        2.0 ** (np.arange(-4, 11) / 2),
        (0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
        (512, 2048, 8192),
        6,
        4,
        2,
        4,
        self_n=(64, 256, 1024, 1816, 3000),
        self_seeds=6,
    ),
)
QUICK = _sweep(
    "capacity_quick", _cells(8, (0.5, 2.0), (0.5, 1.0), (48,), 2, 1, 2, 2, self_n=(8, 32), self_seeds=2)
)
