"""The method registry: every computation strategy of every family, with what it supports.

A *method* is one way to compute a layer's outputs (the recurrent loop, the direct prefix solve, the T x T
parallel form, the chunked form, ...). Each lives in its own file under ``ttr_stats/methods/<family>/``,
beside the reference it must match, and registers itself here with:

* the *family* it computes (a layer's family is declared by its optimizer, or by its regressor for the
  nonparametric ones: ``"identity"``, ``"least_squares"``, ``"rls"``, ``"batch_gd"``, ``"delta"``,
  ``"neural"``, ``"kernel_smoother"``, ``"kernel_ridge"``);
* ``supports(layer)``: ``None`` when it can run that layer, else the reason it cannot (windows, per-
  dimension decay, several writes per token, ...);
* ``memory(P)``: the bytes of its largest intermediates for a problem (what ``auto`` and the memory
  checks compare with what is free);
* ``auto(P, free)``: whether ``method="auto"`` may pick it at this size (``free`` is the free device memory,
  ``None`` on the host); candidates are tried in ``rank`` order and the family's reference is the fallback;
* the dtypes it computes in.

``method="auto"`` is a lookup over what is registered, supported and fits; the supported-methods table
(:func:`support_table`) and the README catalogue's ``methods`` column are generated from the registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import _array

__all__ = [
    "Method",
    "register",
    "methods_for",
    "method_names",
    "family_of",
    "supported",
    "choose_auto",
    "support_table",
    "AUTO_MEMORY_BUDGET",
    "host_budget",
    "check_dtype",
    "dtype_name",
    "HOST_PARALLEL_MAX_T",
    "free_host_bytes",
]

#: bytes of intermediate arrays above which ``method="auto"`` avoids a method on the host; ``None``: a
#: quarter of the host's available memory, at least :data:`HOST_MIN_BUDGET` (:func:`host_budget`). Set a
#: number to fix it (tests do).
AUTO_MEMORY_BUDGET = None

#: the least host budget of ``auto`` when it follows the host's available memory
HOST_MIN_BUDGET = 256 * 2**20


def host_budget() -> int:
    """The host budget of ``method="auto"``: :data:`AUTO_MEMORY_BUDGET` if set, else a quarter of the
    host's available memory (``MemAvailable``), at least :data:`HOST_MIN_BUDGET`. (Measured peaks of the
    chunked methods at B = 1, H = 16, T = 4096, d = 64, float64: 69 MiB linear attention, 99 MiB Gated
    DeltaNet, 324 MiB RLS, 907 MiB Mesa; a fixed 256 MiB budget made ``auto`` run the loop there, 5-8x
    slower.)"""
    if AUTO_MEMORY_BUDGET is not None:
        return int(AUTO_MEMORY_BUDGET)
    free = free_host_bytes()
    return HOST_MIN_BUDGET if free is None else max(HOST_MIN_BUDGET, free // 4)


#: on the host, ``method="auto"`` uses a T x T parallel form up to this length (docs/benchmarks.md: it
#: ties or wins at T = 256 and is 1.5-5x slower than the loop at T = 1024)
HOST_PARALLEL_MAX_T = 256


def _always(layer):
    return None


def _never(P, free):
    return False


def _no_plan(layer, P, log_alpha=None):
    return None


def _no_memory(P):
    return 0


@dataclass(frozen=True)
class Method:
    """One registered computation strategy of one family.

    Attributes
    ----------
    name : str
        What users pass as ``method=``.
    family : str
    run : callable ``(layer, P) -> (Y, state)``
    supports : callable ``(layer) -> str | None``
        ``None`` if the method runs ``layer``, else why not.
    memory : callable ``(P) -> int``
        Bytes of the largest intermediates.
    auto : callable ``(P, free) -> bool``
        Whether ``method="auto"`` may choose it (``free``: free device bytes, ``None`` on the host).
    rank : int
        Preference of ``auto`` within the family (lower first); also the order of ``supported_methods``.
    reference : bool
        The family's definition (the fallback of ``auto``, and what every other method is tested against).
    window : bool
        Runs sliding-window weights.
    sinks : bool
        Keeps a window's attention sinks (``weights.SinkWindow(sinks=s)``, ``Problem.sinks``): the first s
        pairs stay in every prefix's regression.
    per_dimension : bool
        Runs per-dimension decay (GLA).
    multi_write : bool
        Runs several writes per token (DeltaProduct).
    dtypes : tuple of str
        The input dtypes it runs (half precision by default: elementwise updates and matmuls; methods that
        factorise, and regressors or optimizers that declare ``dtypes``, refuse it with a clear error).
    summary : str
        One line for the tables.
    plan : callable ``(layer, P, log_alpha) -> launch | None``
        Where the method can repeat this call on new arrays of the same signature without the layer's
        set-up (:mod:`ttr_stats._plans`; ``log_alpha``: the call's own, or ``None``):
        ``launch(Q, K, V, log_alpha)`` returns the output, bit for bit what ``run`` gives, or ``None``
        where it declines (the full call then runs). ``None``: no plan.
    """

    name: str
    family: str
    run: Callable
    supports: Callable = _always
    memory: Callable = _no_memory
    auto: Callable = _never
    rank: int = 100
    reference: bool = False
    window: bool = False
    sinks: bool = False
    per_dimension: bool = False
    multi_write: bool = False
    dtypes: tuple = ("float16", "float32", "float64")
    summary: str = ""
    plan: Callable = field(default=_no_plan, compare=False)
    module: str = field(default="", compare=False)

    def check(self, layer):
        """``None`` if this method runs ``layer``; else the reason it cannot."""
        w = layer.weights
        if w.window is not None and not self.window:
            return f"{self.name} does not run sliding windows ({type(w).__name__})"
        if int(getattr(w, "sinks", 0) or 0) > 0 and not self.sinks:
            return (
                f"{self.name} keeps the last w pairs only and would drop the attention sinks of "
                f"{type(w).__name__}(sinks={int(w.sinks)}); use a method that keeps them or sinks=0"
            )
        if w.per_dimension and not self.per_dimension:
            return f"{self.name} does not run per-dimension decay"
        if int(getattr(layer.optimizer, "steps_per_token", 1)) > 1 and not self.multi_write:
            return f"{self.name} writes one pair per token (steps_per_token = 1)"
        return self.supports(layer)


_REGISTRY: dict[str, dict[str, Method]] = {}

#: the families in the order the tables list them
FAMILIES = (
    "identity",
    "least_squares",
    "rls",
    "batch_gd",
    "delta",
    "neural",
    "kernel_smoother",
    "kernel_ridge",
    # issue 13 (2025-26 layers beyond the delta family)
    "log_linear",
    "log_linear_delta",
    "kalman",
    "higher_order",
    "robust",
    "parallax",
    "path",
    "deltaformer",
)


def register(name, family, *, run=None, **kwargs):
    """Register ``run`` as method ``name`` of ``family`` (usable as a decorator when ``run`` is None)."""

    def deco(fn):
        families = (family,) if isinstance(family, str) else tuple(family)
        for fam in families:
            if fam not in FAMILIES:
                raise ValueError(f"unknown family {fam!r}; known: {FAMILIES}")
            _REGISTRY.setdefault(fam, {})[name] = Method(
                name, fam, fn, module=getattr(fn, "__module__", ""), **kwargs
            )
        return fn

    return deco(run) if run is not None else deco


_LOADED = []


def _load():
    """Import every method module once (each registers itself)."""
    if not _LOADED:  # an import statement costs microseconds even when the module is loaded
        from . import _catalogue  # noqa: F401

        _LOADED.append(True)


def family_of(layer) -> str:
    """The family of a layer: its regressor's for nonparametric ones, else its optimizer's."""
    if layer.regressor.nonparametric:
        return layer.regressor.family
    return layer.optimizer.family


def methods_for(family) -> list[Method]:
    """Every method registered for ``family``, in ``rank`` order."""
    _load()
    return sorted(_REGISTRY.get(family, {}).values(), key=lambda m: m.rank)


def method_names() -> tuple:
    """Every method name that any family registers, plus ``"auto"``."""
    _load()
    names = {m for fam in _REGISTRY.values() for m in fam}
    order = ("recurrent", "chunked", "direct", "parallel")
    return ("auto",) + tuple(sorted(names, key=lambda n: (order.index(n) if n in order else 99, n)))


def supported(layer) -> list[Method]:
    """The methods that can run ``layer``, in the order ``auto`` prefers them."""
    return [m for m in methods_for(family_of(layer)) if m.check(layer) is None]


def reference(family) -> Method:
    """The reference method of ``family`` (its definition)."""
    for m in methods_for(family):
        if m.reference:
            return m
    raise ValueError(f"family {family!r} has no registered reference method")


def lookup(layer, name) -> Method:
    """The method ``name`` for ``layer``, or a ValueError that says why not and lists what is."""
    family = family_of(layer)
    registered = {m.name: m for m in methods_for(family)}
    if not isinstance(name, str) or name not in registered:  # every family's names: only on this path
        names = method_names()
        if name not in names:
            raise ValueError(f"method must be one of {names}, got {name!r}")
    why = registered[name].check(layer) if name in registered else None
    if name not in registered or why is not None:  # the requested method alone is checked on success
        ok = supported(layer)
        owner = type(layer.regressor if layer.regressor.nonparametric else layer.optimizer).__name__
        raise ValueError(
            f"method={name!r} is not supported by {owner}"
            + (f" ({why})" if why else "")
            + f"; supported: {', '.join(repr(m.name) for m in ok)}\n{support_table()}"
        )
    return registered[name]


_DTYPE_NAMES: dict = {}


def _dtype_name(dtype) -> str:
    name = getattr(dtype, "name", None) or getattr(dtype, "__name__", None) or str(dtype)
    return str(name).split(".")[-1]


def dtype_name(dtype) -> str:
    """``"float32"`` for NumPy/CuPy dtypes and scalar types and for ``torch.float32`` alike (remembered per
    dtype object: ``_array.remembered``)."""
    return _array.remembered(_DTYPE_NAMES, dtype, _dtype_name)


def check_dtype(layer, m: Method, P) -> None:
    """A TypeError naming the dtype, what ``m`` computes in and the remedy, unless ``m`` runs P's dtype."""
    name = dtype_name(P.dtype)
    for part in (layer.regressor, layer.optimizer):  # a component may narrow what every method runs
        allowed = getattr(part, "dtypes", None)
        if allowed is not None and name not in allowed:
            raise TypeError(
                f"{type(part).__name__} computes in {' or '.join(allowed)}; these inputs are {name}: cast "
                "Q, K and V to float32 or float64 (e.g. Q.astype('float32'))"
            )
    if name in m.dtypes:
        return
    others = [x.name for x in supported(layer) if name in x.dtypes]
    raise TypeError(
        f"method={m.name!r} computes in {' or '.join(m.dtypes)}; these inputs are {name}: cast Q, K and V "
        "to float32 or float64 (e.g. Q.astype('float32'))"
        + (f", or use method={others[0]!r}, which runs {name}" if others else "")
    )


def choose_auto(layer, P, free) -> Method:
    """What ``method="auto"`` picks: the first supported method (rank order) that runs P's dtype and allows
    itself at this size, else the family's reference."""
    name = dtype_name(P.dtype)
    ok = [m for m in supported(layer) if name in m.dtypes] or supported(layer)
    for m in ok:
        if not m.reference and m.auto(P, free):
            return m
    for m in ok:
        if m.reference:
            return m
    return ok[-1]


#: seconds a reading of the host's free memory is reused (a read of /proc/meminfo costs ~0.05 ms, a
#: tenth of a small call; what a quarter second changes is far below the margins the checks keep)
HOST_MEMORY_TTL = 0.25
_HOST_MEMORY = [-math.inf, None]  # (when, bytes) of the last reading


def free_host_bytes():
    """Memory the host can still give (Linux ``MemAvailable``; else free physical pages), or ``None`` when
    the platform says nothing, read at most every :data:`HOST_MEMORY_TTL` seconds. What the host check of
    explicitly requested methods compares with."""
    import time

    now = time.monotonic()
    if now - _HOST_MEMORY[0] < HOST_MEMORY_TTL:
        return _HOST_MEMORY[1]
    _HOST_MEMORY[:] = [now, _read_free_host_bytes()]
    return _HOST_MEMORY[1]


def _read_free_host_bytes():
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def is_host(P):
    """True when the problem's arrays live in host memory (NumPy, torch CPU)."""
    return str(P.device).lower().startswith("cpu")


def fits_host(P, method_memory):
    """The host rule shared by dense methods: intermediates within :func:`host_budget`."""
    return method_memory(P) <= host_budget()


def fits_device(P, method_memory, free):
    """The device rule: intermediates within a quarter of free device memory."""
    return method_memory(P) <= free // 4


def _owners_of(family) -> str:
    """The optimizers or regressors declaring ``family`` (the catalogue's list; for a family it does not
    list, the imported concrete classes whose ``family`` it is, e.g. issue 13's ``generalized_delta``)."""
    from ..optimizers import generalized_delta  # noqa: F401 - not re-exported: import its classes
    from ..optimizers.base import Optimizer
    from ..regressors.nonparametric import NonparametricRegressor
    from ._catalogue import FAMILY_OWNERS

    if family in FAMILY_OWNERS:
        return ", ".join(c.__name__ for c in FAMILY_OWNERS[family])
    found, todo = [], [Optimizer, NonparametricRegressor]
    while todo:
        cls = todo.pop(0)
        subs = cls.__subclasses__()
        todo.extend(subs)
        same = [c for c in subs if getattr(c, "family", None) == family and not c.__name__.startswith("_")]
        if getattr(cls, "family", None) == family and not cls.__name__.startswith("_") and not same:
            found.append(cls.__name__)
    return ", ".join(dict.fromkeys(found)) or "-"


def support_table() -> str:
    """A readable table generated from the registry: family -> components, methods (first = preferred by
    ``auto``), and whether the family's reference runs windows, a window's attention sinks
    (``weights.SinkWindow``) and per-dimension decay. Columns are as wide as their longest cell plus two
    spaces, so a cell never runs into the next one."""
    _load()
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    rows = [("family", "optimizer or regressor", "methods", "window", "sinks", "per-dim decay")]
    for fam in FAMILIES:
        ms = methods_for(fam)
        if not ms:
            continue
        ref = next((m for m in ms if m.reference), ms[-1])
        flags = (yes(ref.window), yes(ref.sinks), yes(ref.per_dimension))
        rows.append((fam, _owners_of(fam), ", ".join(m.name for m in ms)) + flags)
    widths = [max(len(r[j]) for r in rows) + 2 for j in range(len(rows[0]) - 1)]
    return "\n".join("".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + r[-1] for r in rows)
