"""Computation strategies behind ``layer(..., method=...)``: the one place code runs.

Every method is registered in :mod:`.registry` under the family it computes, in its own file beside the
family's reference (``methods/<family>/<method>.py``; the generic recurrent loop in :mod:`.recurrent` is the
reference of every parametric family). The names:

* ``"recurrent"`` -- the definition: the generic loop (parametric) or the growing cache (nonparametric).
* ``"chunked"`` -- chunkwise forms with an inter-chunk state, O(T d^2) memory (linear-memory families).
* ``"direct"`` -- every prefix solved from the regression definition with dense weights Gamma.
* ``"parallel"`` -- the T x T masked form (identity covariance, kernel smoothers, kernel ridge).

:func:`support_table` prints what is registered; ``method="auto"`` is :func:`registry.choose_auto`.
"""

from __future__ import annotations

from . import registry
from .problem import Problem, initial_state
from .recurrent import loop
from .registry import (
    AUTO_MEMORY_BUDGET,
    HOST_PARALLEL_MAX_T,
    Method,
    family_of,
    method_names,
    methods_for,
    register,
    support_table,
    supported,
)

__all__ = [
    "Problem",
    "Method",
    "register",
    "methods_for",
    "method_names",
    "family_of",
    "supported",
    "support_table",
    "initial_state",
    "loop",
    "registry",
    "AUTO_MEMORY_BUDGET",
    "HOST_PARALLEL_MAX_T",
]
