"""Function classes m in which the test-time regression is solved (the regressor column of the taxonomy)."""

from .linear import Linear, Regressor

__all__ = ["Regressor", "Linear"]
