"""Call plans: a layer called again on arrays of the same signature skips its set-up (issue 10).

A short layer call on a GPU is bound by the host: at B = 8, H = 16, T = 1024 a causal softmax call spent
~200-300 us of Python and CuPy before its one kernel's launch (validating the components, resolving the
weights and strengths, building the :class:`~ttr_stats.methods.problem.Problem`, choosing the method,
the memory check, the kernel's operands), against a 0.8 ms kernel. None of that depends on the numbers
in Q, K and V: it depends on the layer's configuration and the arrays' signature (library, shapes,
dtypes, strides, device). So after a plain call (``causal=True``; ``log_alpha`` at most: no ``alpha``,
strengths, lengths, state or extra inputs) that succeeded, a method that can (:attr:`Method.plan`)
leaves a *launch*: a function of the next call's Q, K, V (and log-gates) that gives the same output,
bit for bit, by the same kernel on the same operands. The next call with the same signature, on a layer
whose configuration is unchanged, runs it. Planned now: ``method="tiled"``'s fused softmax kernel
(softmax, sliding-window, sink-window and forgetting attention with ``ExpDot``); the call's log-gates,
where it passes them, are tested there by the one-pass kernel the full call uses.

Trust:

* The configuration is compared, not assumed: :func:`snapshot` records every attribute of the layer and
  of its components (recursively), and a plan runs only where the snapshot of this call equals the one
  it was made under. A component holding anything but plain values (numbers, strings, ``None``,
  tuples of them, other components) is never planned.
* A launch never reports an error itself. It declines (returns ``None``) wherever its promise could fail:
  a switch of the kernel module turned off, an input not aligned as the plan's, the kernel's own
  finiteness flag set (a NaN or infinity in Q, K, V or the output), or a log-gate not finite or above
  0. The full call then runs from the start and does what it always does: the same output, or the error
  that names the argument. An exception inside a launch declines too (an out-of-memory error then comes
  from the full call, with its advice).
* ``method="auto"`` is planned only where its choice does not depend on free device memory (the same
  method with none free and with all of it).

:data:`ENABLED` switches plans off (every call then takes the full path); :func:`clear` drops them.
"""

from __future__ import annotations

import weakref

import numpy as np

#: set False to run every call through the full path (the tests compare the two)
ENABLED = True

#: array libraries whose calls are planned: those whose small calls are bound by the host (CuPy)
LIBRARIES = ("cupy",)

#: plans kept per layer (one per signature; the oldest goes first)
MAX_PLANS = 8

_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_PLANNABLE: dict = {}  # array type -> whether LIBRARIES holds its library (a property of the type)

_PLAIN = (int, float, bool, str, type(None), complex)


class Plan:
    """One signature's plan: the configuration it was made under (:func:`snapshot`), the registered
    method's name, and its launch (``None``: the method leaves none for this signature)."""

    __slots__ = ("snapshot", "method", "launch")

    def __init__(self, snapshot, method, launch):
        self.snapshot, self.method, self.launch = snapshot, method, launch


class _Unplannable(Exception):
    pass


def _value(v, depth):
    t = type(v)
    if t in _PLAIN or isinstance(v, np.generic):  # (NumPy scalars are immutable values too)
        return v
    if t is tuple:
        return tuple(_value(e, depth) for e in v)
    if depth < 8 and hasattr(v, "get_params") and hasattr(v, "__dict__"):  # a component (an estimator)
        return _state(v, depth + 1)
    raise _Unplannable


def _state(obj, depth=0):
    items = tuple(
        (k, _value(v, depth))
        for k, v in vars(obj).items()
        if not (depth == 0 and k.endswith("_"))  # the layer's own results (``method_``)
    )
    return (type(obj), items)


def snapshot(layer):
    """The layer's configuration as a comparable value, or ``None`` where it holds anything but plain
    values and components (such a layer is not planned)."""
    try:
        return _state(layer)
    except _Unplannable:
        return None


def _plannable(t):
    ok = _PLANNABLE.get(t)
    if ok is None:
        ok = _PLANNABLE[t] = t.__module__.split(".")[0] in LIBRARIES
    return ok


def _device_key(x):
    data = getattr(x, "data", None)
    dev = getattr(data, "device_id", None)  # CuPy: the array's device
    if dev is None:
        return None
    import cupy

    return (dev, cupy.cuda.runtime.getDevice())  # (a launch goes to the current device)


def signature(method, Q, K, V, log_alpha=None):
    """What a plan is keyed by: the method asked for and the arrays' type, shapes, dtypes, strides and
    devices (``log_alpha``'s too, or ``None``); ``None`` for arrays of a library that is not planned."""
    t = type(Q)
    if not (type(method) is str and _plannable(t) and type(K) is t and type(V) is t):
        return None  # (a method that is not a string: the full call says what it should be)
    key = (
        method, t, Q.shape, K.shape, V.shape, Q.dtype, K.dtype, V.dtype,
        Q.strides, K.strides, V.strides, _device_key(Q), _device_key(K), _device_key(V),
    )  # fmt: skip
    if log_alpha is None:
        return key
    if type(log_alpha) is not t:
        return None
    return key + (log_alpha.shape, log_alpha.dtype, log_alpha.strides, _device_key(log_alpha))


def run(layer, method, Q, K, V, log_alpha=None):
    """The output of a planned call, or ``None``: no plan for this signature, the layer's configuration
    changed since, or the launch declined (the caller then runs the full call)."""
    plans = _PLANS.get(layer) if ENABLED else None
    if not plans:
        return None
    key = signature(method, Q, K, V, log_alpha)
    plan = plans.get(key) if key is not None else None
    if plan is None or plan.launch is None:
        return None
    if plan.snapshot != snapshot(layer):
        del plans[key]
        return None
    try:
        Y = plan.launch(Q, K, V, log_alpha)
    except Exception:  # noqa: BLE001 - the full call runs and reports whatever this was
        return None
    if Y is not None:
        layer.method_ = plan.method
    return Y


def make(layer, method, m, P, Q, K, V, log_alpha=None):
    """After a plain call of ``layer`` with ``method`` (the user's word) that ran registered method ``m``
    on problem ``P`` from the user's ``Q, K, V`` (and ``log_alpha``, or ``None``): keep ``m``'s launch
    for the next call of this signature (or remember that there is none, so that the next call does not
    ask again)."""
    from .methods.registry import _no_plan, choose_auto

    if not ENABLED or m.plan is _no_plan:
        return
    key = signature(method, Q, K, V, log_alpha)
    if key is None:
        return
    try:
        plans = _PLANS.setdefault(layer, {})
    except TypeError:  # a layer class that is not hashable or weakly referable
        return
    snap = snapshot(layer)
    old = plans.get(key)
    if old is not None and old.snapshot == snap:
        return  # (a plan that declined this call, or none to make: asked once per configuration)
    launch = None
    if snap is not None and P.Q is Q and P.K is K and P.V is V and tuple(P.batch_shape) == Q.shape[:-2]:
        stable = method != "auto" or (
            choose_auto(layer, P, 0).name == m.name and choose_auto(layer, P, 1 << 62).name == m.name
        )
        launch = m.plan(layer, P, log_alpha) if stable else None
    plans.pop(key, None)  # (a stale plan of this signature is replaced, not counted)
    while len(plans) >= MAX_PLANS:
        plans.pop(next(iter(plans)))
    plans[key] = Plan(snap, m.name, launch)


def clear(layer=None):
    """Drop the plans of ``layer`` (of every layer without one)."""
    if layer is None:
        _PLANS.clear()
    else:
        _PLANS.pop(layer, None)


def plans_of(layer):
    """The plans kept for ``layer``: ``{signature: method name or None}`` (None: nothing to launch)."""
    return {k: (p.method if p.launch is not None else None) for k, p in _PLANS.get(layer, {}).items()}
