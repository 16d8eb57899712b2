"""ttr_stats: sequence layers as test-time regression (Wang, Shi & Fox 2025, arXiv 2501.12352).

A layer is weights x regressor x optimizer; :mod:`ttr_stats.recipes` names the known ones.
"""

from . import diagnostics, optimizers, recipes, regressors, similarity, weights
from ._config import show_config
from .estimator import TestTimeRegressor
from .layer import TestTimeRegression

__all__ = [
    "TestTimeRegression",
    "TestTimeRegressor",
    "weights",
    "regressors",
    "optimizers",
    "recipes",
    "similarity",
    "diagnostics",
    "show_config",
]
__version__ = "0.1.0"
