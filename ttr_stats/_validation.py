"""Argument checks shared by every component. Each error names the argument it is about."""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _array


def check_finite(xp, name: str, x) -> None:
    """Raise ``ValueError`` naming ``name`` if ``x`` holds NaN or an infinity."""
    check_finite_all(xp, {name: x})


def check_finite_all(xp, named) -> None:
    """:func:`check_finite` for every array of ``named`` (name -> array or None) with one device sync.

    On CuPy the float32/float64 arrays are checked by one reduction pass each on the card
    (:func:`_finite_flags`) and the flags come back in one transfer; the first non-finite argument in
    ``named``'s order is then named, as the per-array check names it. Elsewhere (NumPy, torch,
    array_api_strict, other dtypes) each array is checked as ``all(isfinite(x))``.
    """
    arrays = [(n, x) for n, x in named.items() if x is not None and math.prod(x.shape)]
    if not arrays:
        return
    flags = _finite_flags(xp, [x for _, x in arrays])
    for (name, x), ok in zip(arrays, flags, strict=True):
        if ok is None:
            ok = bool(xp.all(xp.isfinite(x)))
        if not ok:
            raise _nonfinite_error(xp, name, x)


def _nonfinite_error(xp, name, x):
    n_nan = int(xp.sum(xp.astype(xp.isnan(x), xp.int64)))
    kind = "NaN" if n_nan else "infinite values"
    return ValueError(f"{name} contains {kind}; every entry must be finite")


class Deferred:
    """Argument checks whose verdicts stay on the device until one read (CuPy); checked at once elsewhere.

    A layer call starts its input checks (finiteness, gate ranges) without a device sync, runs its method,
    and reads every verdict together with the output's finiteness (:meth:`outputs_finite`): one transfer
    a call instead of one per check, and the host prepares and launches the method's kernels while the
    card is still checking. Input errors keep their meaning: the first failed check (in the order the
    checks were made) is raised, as the ``ValueError`` naming the argument that an immediate check
    raises, and the call returns nothing. A caller that meets any other exception after starting checks
    raises :meth:`input_error` instead where there is one, so that a bad input is reported as itself
    and not as whatever it broke downstream.

    torch tensors on a device of :data:`LAZY_TORCH_DEVICES` (CUDA) defer their checks the same way, by
    torch reductions instead of the CuPy kernel: each immediate check there is a host sync (``bool`` of a
    device tensor), four to nine a layer call, which stalls the host's launches (a training step of the
    Fig. 3 model makes one call a step). Elsewhere (NumPy, CPU tensors, array_api_strict), and with
    :data:`FUSED_FINITE` off, every check runs at once, as :func:`check_finite_all` and a plain ``if``
    would.
    """

    def __init__(self, xp=None, lazy=True):
        self.xp, self.lazy = None, False
        if xp is not None:
            self.bind(xp, lazy)
        self._flags = []  # device arrays of int32 verdicts (nonzero: failed), in the order of _errors
        self._errors = []  # per verdict: a function making the error to raise
        self._failed = None  # after the read: the index of the first failed verdict, or -1
        self._pending = {}  # index in _flags -> arrays whose check waits (None there): see finite()
        self._later = {}  # index in _flags -> a launch made at the read (None there): see finite_within()
        self._vouched = None  # (Y, flag or None) from vouch()

    def bind(self, xp, lazy=True) -> None:
        """The array namespace of the checked arrays (known once a call has converted its inputs);
        ``lazy=False`` checks everything at once on any namespace."""
        import array_api_compat

        self.xp = xp
        self.lazy = (
            lazy
            and FUSED_FINITE
            and (array_api_compat.is_cupy_namespace(xp) or array_api_compat.is_torch_namespace(xp))
        )  # torch: which arrays defer is _fusable's (their device), the rest are checked at once

    def finite(self, named, vouchable=False) -> None:
        """:func:`check_finite_all` of ``named`` (name -> array or None), its verdicts kept on the card.

        ``vouchable=True`` (the layer's Q, K, V): the check waits, its place in the order kept, until the
        call's output is read. A method whose arithmetic carries every non-finite entry of these arrays
        into its output says so with :meth:`vouch`; a finite output then proves them finite, and their
        passes over memory (three reads of (B, H, T, d) arrays a call) are never made. Without a vouch,
        or when the output or any other check fails, they are checked as any other array (the error
        path costs a second read). :meth:`launch_pending` starts them at once (the layer does where a
        feature map or padding stands between them and the method).
        """
        arrays = [(n, x) for n, x in named.items() if x is not None and math.prod(x.shape)]
        if not self.lazy or not all(_fusable(x) for _, x in arrays):
            check_finite_all(self.xp, named)  # at once, in order (a layout the kernel skips syncs anyway)
            return
        if arrays:
            if vouchable:
                self._pending[len(self._flags)] = [x for _, x in arrays]
                self._flags.append(None)
            else:
                self._flags.append(_launch_finite([x for _, x in arrays]))
            self._errors += [lambda n=n, x=x: _nonfinite_error(self.xp, n, x) for n, x in arrays]

    def finite_within(self, name, x, lo=-math.inf, hi=math.inf, lo_open=False, hi_open=False, error=None):
        """:meth:`finite` of ``x`` and :meth:`when` its entries leave the interval from ``lo`` to ``hi``
        (``lo_open`` / ``hi_open``: the ends excluded), ``error()`` the range's error, in that order. On
        CuPy one pass over ``x`` gives both verdicts (a gate's finiteness and range took four kernels and
        two passes); elsewhere the two checks run as they are written. On the deferred path the pass is
        launched at the read, after the call's own kernels: its host time (~25 us on CuPy) then runs while
        they do, not before their launch."""
        if not math.prod(x.shape):
            return
        if not self.lazy or not _fusable(x):
            self.finite({name: x})
            xp = self.xp
            below = (x <= lo) if lo_open else (x < lo)
            above = (x >= hi) if hi_open else (x > hi)
            self.when(xp.any(below | above), error)
            return
        self._later[len(self._flags)] = lambda: _launch_within(x, lo, hi, lo_open, hi_open)
        self._flags.append(None)
        self._errors += [lambda: _nonfinite_error(self.xp, name, x), error]

    def _launch_later(self) -> None:
        """Make the launches :meth:`finite_within` left for the read (in their places in the order)."""
        for i, launch in self._later.items():
            self._flags[i] = launch()
        self._later = {}

    def launch_pending(self) -> None:
        """Start every check that waits for a vouch (:meth:`finite`): no output will vouch for them."""
        for i, arrays in self._pending.items():
            self._flags[i] = _launch_finite(arrays)
        self._pending = {}

    def vouch(self, Y, flag=None) -> None:
        """A method's promise: its output ``Y`` holds a non-finite entry wherever an array checked with
        ``vouchable=True`` does (the IEEE arithmetic carries NaN and infinities through every product and
        sum, and no select, clamp or normalisation drops them). ``flag``: a device int32 array of one
        entry, nonzero where the method found ``Y`` not finite while it wrote it (else ``Y`` gets the
        one-pass test). Only the ``Y`` object itself is vouched for: a caller that replaces it (padding
        zeroed, rows rolled) reads the waiting checks as usual."""
        if self.lazy:
            self._vouched = (Y, flag)

    def when(self, bad, make_error) -> None:
        """Raise ``make_error()`` if the 0-d device boolean ``bad`` holds (at the read on the deferred path,
        else at once)."""
        if not self.lazy or (_is_torch_tensor(bad) and bad.device.type not in LAZY_TORCH_DEVICES):
            if bool(bad):
                raise make_error()
            return
        self._flags.append(self.xp.astype(self.xp.reshape(bad, (1,)), self.xp.int32))
        self._errors.append(make_error)

    def _read(self, extra=None, vouched=None):
        """One transfer of every verdict (and ``extra``'s flags after them); the extra flags' host copy.
        ``vouched``: the waiting checks (index in the flags -> arrays) that a finite output stands for:
        not launched, read as passed (no transfer of their zeros)."""
        from ._array import to_numpy

        self._launch_later()
        if not vouched:
            self.launch_pending()  # (a reader that did not fill them: they are checked)
        vouched = vouched or {}
        parts = [f for i, f in enumerate(self._flags) if i not in vouched]
        parts += [extra] if extra is not None else []
        host = to_numpy(self.xp.concat(parts) if len(parts) > 1 else parts[0])  # the one sync
        verdicts, pos = [], 0
        for i, f in enumerate(self._flags):
            n = len(vouched[i]) if i in vouched else int(f.shape[0])
            verdicts += [0] * n if i in vouched else list(host[pos : pos + n])
            pos += 0 if i in vouched else n
        self._failed = next((i for i, bad in enumerate(verdicts) if bad), -1)
        self._flags = []
        return host[pos:]

    def input_error(self):
        """The error of the first failed input check, once (reading the verdicts if they are still on the
        card); None if every check passed or the error was already handed out."""
        if self._failed is None and self._flags:
            self._read()
        if self._failed is None or self._failed < 0:
            return None
        i, self._failed = self._failed, -1
        return self._errors[i]()

    def raise_for_inputs(self) -> None:
        """Raise :meth:`input_error` if there is one."""
        err = self.input_error()
        if err is not None:
            raise err

    def outputs_finite(self, Y) -> bool:
        """Whether ``Y`` is all finite, read with the input verdicts in one transfer; an input that failed
        its check raises here first (:meth:`raise_for_inputs`)."""
        vouched, self._vouched = self._vouched, None
        mine = vouched is not None and vouched[0] is Y  # a vouch for this very array
        self._launch_later()  # (before the flags are copied below for a second read)
        if self._failed is not None or not self._flags or not math.prod(Y.shape):
            self.raise_for_inputs()
            return all_finite(self.xp, Y)
        xp = self.xp
        if mine and vouched[1] is not None:  # the method's own verdict, written with Y
            yflag = vouched[1]
        elif _fusable(Y):
            yflag = _launch_finite([Y])
        elif mine:  # a strided Y (rows sliced off a padded result): still one read, by array operations
            yflag = xp.astype(xp.reshape(xp.any(~xp.isfinite(Y)), (1,)), xp.int32)
        else:
            self.raise_for_inputs()
            return all_finite(xp, Y)
        if not mine or not self._pending:
            bad = self._read(yflag)
            self.raise_for_inputs()
            return not bool(bad[0])
        # the output vouches for the waiting checks: a finite Y proves them passed, so they read as 0
        pending, flags = self._pending, list(self._flags)
        self._pending = {}
        bad = self._read(yflag, vouched=pending)
        if bad[0] or self._failed >= 0:  # a failure somewhere: the waiting checks run (in their order)
            self._flags, self._failed = flags, None
            self._pending = pending
            self._read()
        self.raise_for_inputs()
        return not bool(bad[0])

    def new_flag(self):
        """A zeroed device int32 array of one entry for a method's own output verdict (:meth:`vouch`), or
        None off the deferred path (and on torch, whose methods write no flags: their output is tested)."""
        import array_api_compat

        if not self.lazy or array_api_compat.is_torch_namespace(self.xp):
            return None
        return self.xp.zeros(1, dtype=self.xp.int32)


def all_finite(xp, x) -> bool:
    """Whether every entry of ``x`` is finite (one fused pass on CuPy; see :func:`check_finite_all`)."""
    if not math.prod(x.shape):
        return True
    (ok,) = _finite_flags(xp, [x])
    return bool(xp.all(xp.isfinite(x))) if ok is None else ok


#: the one-pass finiteness test on CuPy: every thread of a grid-stride loop ORs "not finite" over its
#: elements, a block combines its threads with __syncthreads_or and one thread sets the array's flag
#: (a plain store of 1: every writer writes the same value). Memory-bound: one read of x, no bool array
#: (``all(isfinite(x))`` writes a bool array, reads it back and syncs once per array)
_FINITE_SOURCE = r"""
template <typename T>
__global__ void any_nonfinite(const T* __restrict__ x, const long long n, int* __restrict__ flags,
                              const int j)
{
    int bad = 0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        bad |= !isfinite(x[i]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) flags[j] = 1;
}

// one pass, two verdicts: flags[j] some entry is not finite, flags[j + 1] some entry lies outside the
// interval from lo to hi (open at an end where lo_open / hi_open; a NaN is outside too)
template <typename T>
__global__ void any_nonfinite_or_outside(const T* __restrict__ x, const long long n, int* __restrict__ flags,
                                         const int j, const double lo, const double hi, const int lo_open,
                                         const int hi_open)
{
    int bad = 0, out = 0;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const double v = (double)x[i];
        bad |= !isfinite(v);
        out |= lo_open ? !(v > lo) : !(v >= lo);
        out |= hi_open ? !(v < hi) : !(v <= hi);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) flags[j] = 1;
    if (__syncthreads_or(out) && threadIdx.x == 0) flags[j + 1] = 1;
}
"""

_FINITE_MODULE = None
_FINITE_FUNCTIONS = {}  # dtype char -> the kernel (a lookup a call costs microseconds on the host)
_FINITE_TYPES = {"f": "float", "d": "double"}  # by ``dtype.char`` (``str(dtype)`` is slow in NumPy 2)

#: set False to use ``all(isfinite(x))`` on CuPy too (the tests compare the two)
FUSED_FINITE = True


def _finite_module():
    global _FINITE_MODULE
    if _FINITE_MODULE is None:
        import cupy

        _FINITE_MODULE = cupy.RawModule(
            code=_FINITE_SOURCE,
            name_expressions=[
                f"{k}<{t}>"
                for k in ("any_nonfinite", "any_nonfinite_or_outside")
                for t in _FINITE_TYPES.values()
            ],
        )
    return _FINITE_MODULE


def _finite_function(char, kernel="any_nonfinite"):
    fn = _FINITE_FUNCTIONS.get((kernel, char))
    if fn is None:
        fn = _FINITE_FUNCTIONS[(kernel, char)] = _finite_module().get_function(
            f"{kernel}<{_FINITE_TYPES[char]}>"
        )
    return fn


def _numpy_sum_finite(x):
    """True if a float NumPy array is all finite by its sum, else None (the caller's plain test decides).

    A NaN or an infinity makes every sum that contains it NaN or infinite (IEEE: inf + finite = inf,
    inf - inf = NaN, NaN + x = NaN), so a finite sum proves every entry finite: one vectorised pass, no
    bool array (1.3-2.3x faster than ``all(isfinite(x))`` on 16 x 4096 x 64, C-contiguous arrays only). A
    non-finite sum may be an overflow of finite entries: then the plain test runs.
    """
    import numpy as np

    if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float64) or not x.flags.c_contiguous:
        return None
    with np.errstate(all="ignore"):  # an overflowing or NaN sum is an answer here, not a warning
        total = float(np.sum(np.reshape(x, -1)))  # one flat pass (a sum over 4 axes was 1.8x slower)
    return True if math.isfinite(total) else None


def _finite_flags(xp, arrays):
    """Per array: True (all finite), False, or None (not checked here: the caller runs the plain test).

    Only C-contiguous float32/float64 CuPy arrays are checked here, all with one transfer of flags."""
    flags = [None] * len(arrays)
    import array_api_compat

    if array_api_compat.is_numpy_namespace(xp):
        return [_numpy_sum_finite(x) for x in arrays]
    if not FUSED_FINITE:
        return flags
    if not array_api_compat.is_cupy_namespace(xp):
        return flags
    todo = [i for i, x in enumerate(arrays) if _fusable(x)]
    if not todo:
        return flags
    bad = _launch_finite([arrays[i] for i in todo]).get()  # the one sync
    for j, i in enumerate(todo):
        flags[i] = not bool(bad[j])
    return flags


#: torch devices (``tensor.device.type``) whose checks :class:`Deferred` keeps on the device until the
#: output is read; CPU tensors are checked at once (no sync to save there). The tests add ``"cpu"`` to run
#: the deferred bookkeeping of torch on the host.
LAZY_TORCH_DEVICES = ("cuda",)


def _is_torch_tensor(x) -> bool:
    import sys

    torch = sys.modules.get("torch")  # never imported here: a tensor means torch is loaded
    return torch is not None and isinstance(x, torch.Tensor)


def defers(x) -> bool:
    """Whether ``x`` is a torch tensor on a device of :data:`LAZY_TORCH_DEVICES`: its checks wait on the
    device, and so may a method's (a factorisation that does not succeed gives NaN, refused with the
    outputs, instead of an error that would read the device's status at once)."""
    return _is_torch_tensor(x) and x.device.type in LAZY_TORCH_DEVICES


def _fusable(x) -> bool:
    """Whether ``x``'s check can wait on its device: a C-contiguous float32/float64 CuPy array (the
    one-pass kernel) or a float32/float64 torch tensor on a device of :data:`LAZY_TORCH_DEVICES`."""
    import sys

    if _is_torch_tensor(x):
        torch = sys.modules["torch"]
        return x.dtype in (torch.float32, torch.float64) and x.device.type in LAZY_TORCH_DEVICES
    cupy = sys.modules.get("cupy")  # never imported here: a CuPy array means CuPy is loaded
    return (
        cupy is not None
        and isinstance(x, cupy.ndarray)
        and x.dtype.char in _FINITE_TYPES
        and x.flags.c_contiguous
    )


def _torch_flags(bads):
    """0-d boolean tensors (True: failed) as one int32 tensor of flags on their device, no sync."""
    import torch

    return torch.stack([b.reshape(()) for b in bads]).to(torch.int32)


def _launch_finite(arrays):
    """Launch the one-pass test of every (fusable, non-empty) array; their flags (nonzero: not all
    finite) as a device int32 array, not yet read."""
    if _is_torch_tensor(arrays[0]):
        import torch

        with torch.no_grad():
            return _torch_flags([~torch.isfinite(x).all() for x in arrays])
    import cupy

    out = cupy.zeros(len(arrays), dtype=cupy.int32)
    from .methods._fused import device_attribute

    sms = device_attribute("MultiProcessorCount", 1)
    for j, x in enumerate(arrays):
        n = x.size
        if not n:
            continue
        blocks = max(1, min(-(-n // 256), 8 * sms))  # a few blocks per SM; the loop strides over the rest
        _finite_function(x.dtype.char)((blocks,), (256,), (x, cupy.int64(n), out, cupy.int32(j)))
    return out


def _launch_within(x, lo, hi, lo_open, hi_open):
    """Launch the one-pass finiteness and range test of ``x`` (fusable, non-empty); its two flags (not
    finite, outside the interval) as a device int32 array, not yet read."""
    if _is_torch_tensor(x):
        import torch

        with torch.no_grad():  # compared in float64, as the kernel does (a bound float32 cannot hold)
            xd = x.to(torch.float64)
            inside = ((xd > lo) if lo_open else (xd >= lo)) & ((xd < hi) if hi_open else (xd <= hi))
            return _torch_flags([~torch.isfinite(x).all(), ~inside.all()])  # a NaN is outside too
    import cupy

    out = cupy.zeros(2, dtype=cupy.int32)
    from .methods._fused import device_attribute

    n = x.size
    blocks = max(1, min(-(-n // 256), 8 * device_attribute("MultiProcessorCount", 1)))
    _finite_function(x.dtype.char, "any_nonfinite_or_outside")(
        (blocks,),
        (256,),
        (x, cupy.int64(n), out, cupy.int32(0), cupy.float64(lo), cupy.float64(hi), cupy.int32(lo_open),
         cupy.int32(hi_open)),
    )  # fmt: skip
    return out


def renamed(name, value, old_name, old_value):
    """The value of a renamed argument: ``old_value`` (with a ``FutureWarning``) when the caller used the
    old spelling ``old_name``, else ``value``. Old spellings stay only where a public signature promised
    them."""
    if old_value is None:
        return value
    import warnings

    warnings.warn(
        f"{old_name}= is renamed {name}=; the old spelling will be removed in a future release",
        FutureWarning,
        stacklevel=3,
    )
    return old_value


def check_scalar(
    name: str,
    value,
    *,
    low=None,
    high=None,
    low_inclusive=True,
    high_inclusive=True,
    integer=False,
):
    """Validate a scalar hyperparameter; return it as ``float`` (or ``int`` when ``integer``)."""
    if integer:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    else:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {op} {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        op = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {op} {high}, got {value!r}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` as a ``bool``; a string such as ``"False"`` (truthy!) or a number is a ``TypeError``."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__}); pass a bool")


def check_not_text(name: str, value) -> None:
    """Refuse text where numbers are expected: ``alpha="0.5"`` would otherwise be parsed as 0.5.

    ``TypeError`` naming ``name`` for a ``str``/``bytes`` or an array-like of strings or objects; arrays of
    an array library and numbers pass (their dtype is checked later)."""
    if value is None or _array.is_array(value):
        if isinstance(value, np.ndarray) and value.dtype.kind in "USO":
            raise TypeError(
                f"{name} must be a numeric array, got dtype {value.dtype}; pass numbers, not text"
            )
        return
    if isinstance(value, (str, bytes)):
        raise TypeError(
            f"{name} must be numeric, got the string {value!r}; pass a number or an array of numbers"
        )
    if isinstance(value, (list, tuple)):
        try:
            kind = np.asarray(value).dtype.kind
        except (TypeError, ValueError):  # ragged: as_float_arrays reports it
            return
        if kind in "USO":
            raise TypeError(f"{name} must be numeric, got a sequence holding text or objects; pass numbers")


def check_counts(name: str, value, *, low=1):
    """``value`` (a number or an array of them) as a float64 array, every entry finite and ``>= low``.

    For the closed forms of :mod:`ttr_stats.diagnostics`, whose formulas give finite nonsense outside their
    domain (a self weight above 1 at n = 0, a recall error of -1/d ...)."""
    import numpy as np

    if isinstance(value, (str, bytes)) or np.asarray(value).dtype.kind not in "iuf":
        raise TypeError(f"{name} must be a number or an array of numbers, got {value!r}")
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if arr.size and np.min(arr) < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return arr
