"""Optimizers: how each layer solves (or approximates) its test-time regression."""

from .base import (
    LinearAttentionState,
    MemoryState,
    Optimizer,
    RLSState,
    SufficientStatistics,
)
from .closed_form import ClosedForm, IdentityCovariance
from .gradient import (
    LMS,
    BatchGradientDescent,
    DeltaRule,
    LeakyLMS,
    gated_deltanet_to_leaky_lms,
    leaky_lms_to_gated_deltanet,
)
from .implicit import NLMS, Implicit
from .neural import GradientOptimizer, MiniBatchGD, Momentum
from .rls import RecursiveLeastSquares

__all__ = [
    "Optimizer",
    "ClosedForm",
    "IdentityCovariance",
    "RecursiveLeastSquares",
    "BatchGradientDescent",
    "DeltaRule",
    "LMS",
    "LeakyLMS",
    "Implicit",
    "NLMS",
    "GradientOptimizer",
    "MiniBatchGD",
    "Momentum",
    "leaky_lms_to_gated_deltanet",
    "gated_deltanet_to_leaky_lms",
    "MemoryState",
    "LinearAttentionState",
    "SufficientStatistics",
    "RLSState",
]
