"""Imports every method module (each registers itself) and names the components of each family."""

from __future__ import annotations

from . import recurrent  # noqa: F401  (the reference of every parametric family)
from .batch_gd import direct as _bgd_direct  # noqa: F401
from .identity import direct as _id_direct  # noqa: F401
from .identity import parallel as _id_parallel  # noqa: F401
from .kernel_ridge import direct as _kr_direct  # noqa: F401
from .kernel_ridge import parallel as _kr_parallel  # noqa: F401
from .kernel_ridge import recurrent as _kr_recurrent  # noqa: F401
from .kernel_smoother import direct as _ks_direct  # noqa: F401
from .kernel_smoother import parallel as _ks_parallel  # noqa: F401
from .kernel_smoother import recurrent as _ks_recurrent  # noqa: F401
from .least_squares import direct as _ls_direct  # noqa: F401
from .rls import direct as _rls_direct  # noqa: F401


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
    }


FAMILY_OWNERS = _owners()
