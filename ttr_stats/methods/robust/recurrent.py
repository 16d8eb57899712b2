"""The robust family's reference: the generic loop (grow the weighted cache, IRLS on every prefix)."""

from __future__ import annotations

from ..recurrent import loop
from ..registry import register


def recurrent(layer, P):
    """The generic loop without its per-row freezing under ``lengths`` (the cache grows, so a frozen row
    cannot be kept beside a grown one): a padded pair has weight 0 and zero k, v, so it never enters an
    IRLS solve -- the outputs are exact and the final cache holds the padded pairs at weight 0."""
    return loop(layer._solver(), P._replace(lengths=None))


def cache_bytes(P):
    """The cache of every pair and one IRLS system per value coordinate."""
    T, dk, dv = P.T * P.steps_per_token, P.d_k, P.d_v
    return P.n_batch * (T * (dk + dv + 1) + dv * (dk * dk + T)) * P.itemsize


register("recurrent", "robust", run=recurrent, memory=cache_bytes, reference=True, rank=90,
         summary="the generic loop: cache the pairs, IRLS on every prefix (definition)")  # fmt: skip
