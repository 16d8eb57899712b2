"""Imports every method module (each registers itself) and names the components of each family.

Discovery is by walking the family folders: a new method is a new file ``methods/<family>/<name>.py`` that
calls :func:`~ttr_stats.methods.registry.register`; nothing else needs to change.
"""

from __future__ import annotations

import importlib
import pkgutil

from . import recurrent  # noqa: F401  (the reference of every parametric family)


def _discover():
    pkg = __name__.rpartition(".")[0]
    here = importlib.import_module(pkg)
    for info in pkgutil.iter_modules(here.__path__):
        if not info.ispkg:
            continue
        family = importlib.import_module(f"{pkg}.{info.name}")
        for mod in pkgutil.iter_modules(family.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{pkg}.{info.name}.{mod.name}")


def _owners():
    from .. import optimizers as o
    from .. import regressors as r

    return {
        "identity": (o.IdentityCovariance,),
        "least_squares": (o.ClosedForm,),
        "rls": (o.RecursiveLeastSquares,),
        "batch_gd": (o.BatchGradientDescent,),
        "delta": (o.LMS, o.LeakyLMS, o.Implicit, o.NLMS),
        "neural": (o.MiniBatchGD, o.Momentum),
        "kernel_smoother": (r.LocalPolynomial,),
        "kernel_ridge": (r.KernelRidge,),
        **_owners_2025(),
    }


def _owners_2025():
    """The families of issue 13 (their classes live in their own modules, not re-exported)."""
    from ..optimizers.higher_order import HigherOrderLinearAttention
    from ..optimizers.kalman import KalmanFilter
    from ..optimizers.log_linear import LogLinearAttention
    from ..optimizers.log_linear_delta import LogLinearDelta
    from ..optimizers.robust import RobustIRLS
    from ..regressors.deltaformer import DeltaFormer
    from ..regressors.parallax import Parallax
    from ..regressors.path import PaTH

    return {
        "log_linear": (LogLinearAttention,),
        "log_linear_delta": (LogLinearDelta,),
        "kalman": (KalmanFilter,),
        "higher_order": (HigherOrderLinearAttention,),
        "robust": (RobustIRLS,),
        "parallax": (Parallax,),
        "path": (PaTH,),
        "deltaformer": (DeltaFormer,),
    }


_discover()
FAMILY_OWNERS = _owners()
