"""The ``auto`` rules shared by several methods (measured in docs/benchmarks.md)."""

from __future__ import annotations

from .registry import AUTO_MEMORY_BUDGET, HOST_PARALLEL_MAX_T


def device_fits(memory):
    """Allowed on a device (CuPy, torch CUDA) when ``memory(P)`` fits in a quarter of free memory; never on
    the host. The dense prefix solves beat the Python loop 5-20x on a GPU and never on the host."""

    def rule(P, free):
        return free is not None and memory(P) <= free // 4

    return rule


def parallel_rule(memory):
    """The T x T parallel form: on a device whatever fits; on the host only at short T
    (``T <= HOST_PARALLEL_MAX_T``) and within ``AUTO_MEMORY_BUDGET``."""

    def rule(P, free):
        if free is not None:
            return memory(P) <= free // 4
        from . import registry  # read at call time: tests and users may lower the budget

        return P.T <= registry.HOST_PARALLEL_MAX_T and memory(P) <= registry.host_budget()

    return rule


__all__ = ["device_fits", "parallel_rule", "AUTO_MEMORY_BUDGET", "HOST_PARALLEL_MAX_T"]
