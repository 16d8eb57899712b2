"""Diagnostics with closed-form answers (theory.md): each computes what a researcher would otherwise
derive by hand, and each is checked against the closed forms by seeded Monte Carlo.

Submodules (imported on first use):

* :mod:`.smoother` -- smoother matrices, degrees of freedom, LOO / GCV / Cp / prequential error, selection;
* :mod:`.conditioning` -- QKNorm conditioning, sphere closed forms, key Gram spectra (Marchenko-Pastur);
* :mod:`.bias_variance` -- Monte Carlo bias / variance of local polynomial attention and its theory;
* :mod:`.capacity` and :mod:`.memory` -- associative recall vs n/d, effective windows, LMS/RLS behaviour.

The most used functions are re-exported here: ``smoother_matrix``, ``effective_dof``, ``loo_residuals``,
``gcv``, ``cp``, ``prequential_error``, ``select``.
"""

from __future__ import annotations

import importlib

_SUBMODULES = ("smoother", "conditioning", "bias_variance", "capacity", "memory")
_REEXPORTS = {
    name: "smoother"
    for name in (
        "smoother_matrix",
        "effective_dof",
        "loo_residuals",
        "gcv",
        "cp",
        "prequential_error",
        "select",
    )
}

__all__ = list(_SUBMODULES) + list(_REEXPORTS)


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _REEXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_REEXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
