"""Function classes m in which the test-time regression is solved (the regressor column of the taxonomy).

Linear in features: :class:`Linear`, :class:`FeatureMap`. Nonparametric (they keep every pair):
:class:`LocalPolynomial` (Nadaraya-Watson, local linear, local quadratic), :class:`KernelRidge`. Neural
(trained by gradient optimizers): :class:`MLP`, and :class:`Linear` with ``layer_norm=True``.
"""

from .feature_maps import FEATURE_MAPS, FeatureMap
from .kernel_ridge import KERNELS, KernelRidge, kernel_matrix
from .linear import Linear, Regressor
from .local_polynomial import LocalPolynomial
from .mlp import MLP
from .nonparametric import CacheState, NonparametricRegressor

__all__ = [
    "Regressor",
    "Linear",
    "MLP",
    "FeatureMap",
    "FEATURE_MAPS",
    "NonparametricRegressor",
    "LocalPolynomial",
    "KernelRidge",
    "KERNELS",
    "kernel_matrix",
    "CacheState",
]
