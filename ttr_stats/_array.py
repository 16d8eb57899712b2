"""Array namespace, dtype policy and the few operations outside the array API standard.

This module is the one place that knows about concrete array libraries. Everything else asks for
``xp`` (an array-API namespace from :mod:`array_api_compat`) and calls standard functions on it; the
operations outside the standard (triangular solves, device memory) live here with one explicit branch
each. Contractions are written as batched ``matmul`` (not ``einsum``, which is outside the standard and
whose memory use differs between libraries).
"""

from __future__ import annotations

import contextlib
import functools
import math

import array_api_compat
import numpy as np

__all__ = [
    "namespace",
    "as_float_arrays",
    "segsum",
    "psd_solve",
    "pd_solve",
    "ridge_solve",
    "solve_triangular",
    "is_array",
    "device",
]


_ARRAY_TYPES: set = set()  # types array-api-compat recognised: the answer is a property of the type


def is_array(x) -> bool:
    """True for an array of any library that array-api-compat recognises (NumPy, CuPy, torch, ...)."""
    if type(x) in _ARRAY_TYPES:
        return True
    ok = array_api_compat.is_array_api_obj(x)
    if ok:
        _ARRAY_TYPES.add(type(x))
    return ok


#: array types whose device is their ``.device`` attribute, as ``array_api_compat.device`` finds after its
#: type tests (NumPy, Dask, JAX, sparse), which cost ~5 us a call: CuPy and torch, the libraries whose
#: small calls are host-bound. The answer is a property of the type, so it is looked up once per type.
_PLAIN_DEVICE_LIBRARIES = ("cupy", "torch")
_PLAIN_DEVICE: dict = {}


def device(x):
    """The device of array ``x`` (``array_api_compat.device``): ``"cpu"`` for NumPy, a CUDA device for
    CuPy and torch CUDA tensors. Pass it to every array creation so outputs stay where the inputs are."""
    t = type(x)
    plain = _PLAIN_DEVICE.get(t)
    if plain is None:
        plain = _PLAIN_DEVICE[t] = t.__module__.split(".")[0] in _PLAIN_DEVICE_LIBRARIES
    return x.device if plain else array_api_compat.device(x)


_NUMPY = array_api_compat.array_namespace(np.empty(0))
_NAMESPACE_OF: dict = {}  # CuPy / torch array type -> its array-api-compat namespace


def namespace(*arrays):
    """Array-API namespace shared by ``arrays`` (``None`` and Python scalars are ignored).

    Raises
    ------
    TypeError
        If the arrays come from different libraries (for example NumPy and CuPy).
    """
    if all(type(a) is np.ndarray for a in arrays):  # the common case, without the generic lookup
        return _NUMPY
    arrs = [a for a in arrays if a is not None and is_array(a)]
    t = type(arrs[0]) if arrs else None
    if t is not None and all(type(a) is t for a in arrs):  # one array type: its namespace, looked up once
        xp = _NAMESPACE_OF.get(t)
        if xp is not None:
            return xp
        if t.__module__.split(".")[0] in _PLAIN_DEVICE_LIBRARIES:  # (a type-only answer: CuPy, torch)
            xp = _NAMESPACE_OF[t] = array_api_compat.array_namespace(arrs[0])
            return xp
    if not arrs:
        return array_api_compat.array_namespace(np.empty(0))
    try:
        return array_api_compat.array_namespace(*arrs)
    except TypeError as exc:  # pragma: no cover - message depends on the libraries mixed
        kinds = sorted({type(a).__module__.split(".")[0] + "." + type(a).__name__ for a in arrs})
        raise TypeError(
            f"all arrays must come from one array library, got {', '.join(kinds)}; "
            "move them to one library (e.g. cupy.asarray or .get()) first"
        ) from exc


def as_float_arrays(named: dict, *, dtype=None):
    """Convert a mapping ``name -> array-like or None`` to arrays of one floating dtype.

    Arrays keep their library; lists and scalars become NumPy arrays. The common dtype is the
    promotion of the floating inputs (float32 stays float32, anything integer or Python becomes
    float64), unless ``dtype`` is given.

    Returns
    -------
    xp, dict, dtype
    """
    present = {k: v for k, v in named.items() if v is not None}
    xp = namespace(*present.values())
    # lists and scalars join the arrays' device (a torch CUDA Q with alpha=0.5 gets alpha on that GPU)
    dev = next((device(v) for v in present.values() if is_array(v)), None)
    out = {}
    for name, value in named.items():
        if value is None:
            out[name] = None
            continue
        if not is_array(value):
            try:
                value = xp.asarray(np.asarray(value, dtype=np.float64), device=dev)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name} must be a numeric array, got {type(value).__name__}") from exc
        out[name] = value
    kinds = {name: _kind(xp, v.dtype) for name, v in out.items() if v is not None}
    if dtype is None:
        floats = [v.dtype for name, v in out.items() if v is not None and kinds[name] == "f" and v.ndim > 0]
        dtype = xp.result_type(*floats) if floats else xp.float64
    for name, value in out.items():
        if value is None:
            continue
        if kinds[name] == "c":
            raise ValueError(f"{name} must be real-valued, got dtype {value.dtype}")
        if kinds[name] not in "biuf":
            raise ValueError(f"{name} must be a numeric array, got dtype {value.dtype}")
        if value.dtype != dtype:
            out[name] = xp.astype(value, dtype, copy=False)
    return xp, out, dtype


def _kind(xp, dt) -> str:
    """NumPy's kind letter of dtype ``dt``: ``f`` real floating, ``c`` complex, ``b`` bool, ``i``/``u``
    integers, anything else not numeric. NumPy and CuPy dtypes carry it; other libraries' dtypes (torch)
    are asked through the array API's ``isdtype`` (several microseconds a question on NumPy itself)."""
    k = getattr(dt, "kind", None)
    if isinstance(k, str) and len(k) == 1:
        return k
    if xp.isdtype(dt, "real floating"):
        return "f"
    if xp.isdtype(dt, "complex floating"):
        return "c"
    if dt == xp.bool:
        return "b"
    return "i" if xp.isdtype(dt, "integral") else "O"


def segsum(xp, g):
    """Segment sums of log-decays: ``out[..., t, i] = sum_{j=i+1}^{t} g[..., j]`` for ``i <= t``.

    Entries above the diagonal are ``-inf`` so that ``exp(segsum(g))`` is the causal decay matrix
    ``Gamma[t, i] = prod_{j=i+1}^t alpha_j``. Computed by masked cumulative sums, not as the difference
    of two cumulative sums, so it stays exact for very negative gates and never forms ``-inf - -inf``.

    Parameters
    ----------
    g : array of shape (..., T)
        Log-decays (``<= 0``, ``-inf`` allowed for a hard reset).

    Returns
    -------
    array of shape (..., T, T)
    """
    T = g.shape[-1]
    dev = device(g)
    idx = xp.arange(T, device=dev)
    strict = idx[:, None] > idx[None, :]  # row j (summand index) strictly after column i
    x = xp.broadcast_to(g[..., :, None], g.shape + (T,))
    x = xp.where(strict, x, xp.zeros((), dtype=g.dtype, device=dev))
    s = xp.cumulative_sum(x, axis=-2)
    lower = idx[:, None] >= idx[None, :]
    return xp.where(lower, s, xp.asarray(-math.inf, dtype=g.dtype, device=dev))


def psd_solve(xp, R, b, *, rtol=None):
    """Minimum-norm solution of ``R x = b`` for symmetric positive semi-definite ``R``.

    Uses the eigendecomposition of ``R`` and drops eigenvalues below ``rtol * max eigenvalue``
    (pseudo-inverse). ``rtol`` defaults to ``100 * d * eps``: rounding in a sum of ``t < d`` outer
    products leaves null-space eigenvalues of order ``t * eps * max eigenvalue``.

    Parameters
    ----------
    R : array of shape (..., d, d)
    b : array of shape (..., d, m)
    """
    d = R.shape[-1]
    if rtol is None:
        rtol = 100.0 * d * float(xp.finfo(R.dtype).eps)
    if array_api_compat.is_numpy_namespace(xp) and R.ndim >= 3 and d > 1 and R.dtype == np.float64:
        return _psd_solve_numpy(R, b, rtol)
    return _psd_solve_eigh(xp, R, b, rtol)


#: :func:`psd_solve`'s shortcut on float64 NumPy batches: a matrix whose condition bound
#: ``||R^-1||_F tr(R)`` (>= lambda_max / lambda_min) is below this keeps every eigenvalue under any cut
#: ``rtol < 1 / FAST_COND``, so its pseudo-inverse is its inverse, and ``R^-1 b`` differs from the
#: eigendecomposition's solution by rounding, about ``FAST_COND * eps``; the rest take the eigendecomposition
FAST_COND = 1e4


def _psd_solve_numpy(R, b, rtol):
    """:func:`psd_solve` for a NumPy batch: the inverse for the well-conditioned matrices (batched 8 x 8:
    inverse and Cholesky test 0.7 ms against the eigendecomposition's 2.6 ms for 500 matrices), the
    eigendecomposition for the others. A batch with a matrix that is not numerically positive definite
    (Cholesky fails, or a non-positive pivot of the sweep) takes the eigendecomposition throughout. Many
    small matrices (:data:`SWEEP_MAX_D`, :data:`SWEEP_MIN_BATCH`) are inverted by :func:`_sweep_solve`,
    the others by LAPACK (``np.linalg.cholesky`` and ``inv``, one call per matrix)."""
    batch = np.broadcast_shapes(R.shape[:-2], b.shape[:-2])
    R = np.broadcast_to(R, batch + R.shape[-2:])
    b = np.broadcast_to(b, batch + b.shape[-2:])
    if rtol * FAST_COND >= 1.0:
        return _psd_solve_eigh(np, R, b, rtol)
    d, n = R.shape[-1], math.prod(batch)
    with np.errstate(all="ignore"):
        if d <= SWEEP_MAX_D and n >= SWEEP_MIN_BATCH:
            got = _sweep_solve(np.reshape(R, (n, d, d)), np.reshape(b, (n,) + b.shape[-2:]))
            if got is None:
                return _psd_solve_eigh(np, R, b, rtol)
            x, bound = np.reshape(got[0], batch + b.shape[-2:]), np.reshape(got[1], batch)
        else:
            try:
                np.linalg.cholesky(R)  # raises unless every matrix is numerically positive definite
                Rinv = np.linalg.inv(R)
            except np.linalg.LinAlgError:
                return _psd_solve_eigh(np, R, b, rtol)
            bound = np.sqrt(np.sum(Rinv * Rinv, axis=(-2, -1))) * np.trace(R, axis1=-2, axis2=-1)
            x = np.matmul(Rinv, b)
    ok = np.isfinite(bound) & (bound < FAST_COND)
    if not np.all(ok):
        bad = ~ok
        x[bad] = _psd_solve_eigh(np, R[bad], b[bad], rtol)
    return x


#: :func:`_sweep_solve` takes batches of at least this many matrices of order <= ``SWEEP_MAX_D`` (the
#: 2-core CPU, float64, one right-hand side, milliseconds for B matrices, LAPACK's cholesky + inv / the
#: sweep: d = 2: B = 64 .039/.064, B = 100 .050/.033, B = 512 .15/.05; d = 8: B = 64 .11/.15, B = 100
#: .15/.12, B = 512 .69/.32, B = 2048 3.2/1.4; d = 12, B = 512: 1.7/0.80; d = 16, B = 512: 2.7/1.9 and
#: d = 24 slower: fewer or larger matrices go to LAPACK)
SWEEP_MIN_BATCH = 96
SWEEP_MAX_D = 12
#: matrices a sweep takes at a time (its packed triangles, n_tri x 512 floats, stay in cache)
SWEEP_CHUNK = 512


@functools.lru_cache(maxsize=64)
def _packed_indices(d):
    """For the row-major upper triangle of a d x d matrix: the row and column of each packed entry, the
    packed position of each diagonal entry, and ``pos[k, j]``, the packed position of entry (k, j)."""
    ia, ib = np.triu_indices(d)
    pos = np.empty((d, d), dtype=np.intp)
    pos[ia, ib] = np.arange(ia.size)
    pos[ib, ia] = np.arange(ia.size)
    return ia, ib, pos[np.arange(d), np.arange(d)], pos


def _sweep_solve(R, b):
    r"""``R^{-1} b`` and the condition bound ``||R^{-1}||_F tr(R)`` of each symmetric matrix of ``R``
    (n, d, d) with ``b`` (n, d, m), or ``None`` when a pivot of some matrix is not positive (not
    numerically positive definite: the caller takes the eigendecomposition).

    The symmetric sweep operator (Goodnight 1979) on packed triangles (the lower one of each matrix, as
    Cholesky and ``eigh`` read it), batch last so that every step is a few vectorised operations over all
    matrices at once (LAPACK runs one call per matrix, whose overhead dominates at d <= 12): sweeping
    pivot k maps :math:`a_{ij} \to a_{ij} - a_{ik} a_{kj} / a_{kk}`, :math:`a_{kj} \to a_{kj} / a_{kk}`,
    :math:`a_{kk} \to -1 / a_{kk}`; after all d pivots the matrix is :math:`-R^{-1}`. Its pivots are the
    squares of the Cholesky diagonal (the Schur complements' leading entries), so every one is > 0 exactly
    when Cholesky succeeds; on a symmetric positive definite matrix this is Gauss-Jordan elimination
    without pivoting, which is stable there (as Cholesky), the inverse accurate to about cond eps, as
    LAPACK's. Only matrices whose bound is below ``FAST_COND`` are used by the caller.
    """
    n, d, m = R.shape[0], R.shape[-1], b.shape[-1]
    ia, ib, diag, pos = _packed_indices(d)
    flat = np.reshape(R, (n, d * d))
    x = np.empty((n, d, m), dtype=R.dtype)
    bound = np.empty((n,), dtype=R.dtype)
    for c0 in range(0, n, SWEEP_CHUNK):
        c1 = min(n, c0 + SWEEP_CHUNK)
        A = np.ascontiguousarray(flat[c0:c1, ib * d + ia].T)  # (n_tri, B): read from the lower triangles
        tr = np.sum(A[diag], axis=0)
        for k in range(d):
            r = A[pos[k]]  # row k (a copy), (d, B)
            p = r[k]
            if not np.all(p > 0):  # also NaN
                return None
            rs = r / p
            A -= r[ia] * rs[ib]
            A[pos[k]] = rs
            A[diag[k]] = -1.0 / p
        full = A[np.reshape(pos, -1)]  # -R^{-1}, (d * d, B)
        bound[c0:c1] = np.sqrt(np.sum(full * full, axis=0)) * tr
        Rinv = np.reshape(np.ascontiguousarray(full.T), (c1 - c0, d, d))
        np.matmul(np.negative(Rinv, out=Rinv), b[c0:c1], out=x[c0:c1])
    return x, bound


def _psd_solve_eigh(xp, R, b, rtol):
    """:func:`psd_solve` by the eigendecomposition."""
    lam, U = xp.linalg.eigh(R)
    lam_max = xp.max(lam, axis=-1, keepdims=True)
    # below the smallest normal number 1/lam overflows: such eigenvalues count as zero even when the
    # relative cut rtol * lam_max has itself underflowed (a matrix of subnormals is numerically zero)
    tiny = float(xp.finfo(R.dtype).smallest_normal)
    dev = device(lam)
    zero = xp.zeros((), dtype=lam.dtype, device=dev)
    keep = (lam > rtol * xp.maximum(lam_max, zero)) & (lam >= tiny)
    safe = xp.where(keep, lam, xp.ones((), dtype=lam.dtype, device=dev))
    inv = xp.where(keep, 1.0 / safe, zero)
    Ut_b = xp.matmul(xp.matrix_transpose(U), b)
    return xp.matmul(U, inv[..., :, None] * Ut_b)


def ridge_solve(xp, R, b, ridge):
    """``(R + ridge I)^{-1} b`` for symmetric PSD ``R`` (..., d, d), ``b`` (..., d, m).

    ``ridge > 0``: a definite solve; ``ridge = 0``: the minimum-norm solution (:func:`psd_solve`).
    """
    ridge = float(ridge)
    if ridge > 0:
        return pd_solve(xp, R + ridge * xp.eye(R.shape[-1], dtype=R.dtype, device=device(R)), b)
    return psd_solve(xp, R, b)


def pd_solve(xp, R, b):
    """Solve ``R x = b`` for symmetric positive definite ``R`` of shape (..., d, d), ``b`` (..., d, m)."""
    return xp.linalg.solve(R, b)


def solve_triangular(xp, L, b, *, lower=True):
    """Solve ``L x = b`` for triangular ``L`` (..., n, n), ``b`` (..., n, m), batch dims broadcast.

    SciPy for NumPy, ``torch.linalg.solve_triangular`` for torch (batched, differentiable), cupyx for 2-D
    CuPy; otherwise a general solve (correct, slower).
    """
    if array_api_compat.is_numpy_namespace(xp):
        import scipy.linalg

        batch = np.broadcast_shapes(L.shape[:-2], b.shape[:-2])
        L_ = np.broadcast_to(L, batch + L.shape[-2:])
        b_ = np.broadcast_to(b, batch + b.shape[-2:])
        return scipy.linalg.solve_triangular(L_, b_, lower=lower, check_finite=False)
    if array_api_compat.is_torch_namespace(xp):
        import torch

        return torch.linalg.solve_triangular(L, b, upper=not lower)
    if array_api_compat.is_cupy_namespace(xp) and L.ndim == 2 and b.ndim == 2:  # pragma: no cover - GPU
        import cupyx.scipy.linalg

        return cupyx.scipy.linalg.solve_triangular(L, b, lower=lower)
    return xp.linalg.solve(L, b)  # batched: a general solve (cupyx's triangular solve is 2-D only)


def cholesky(xp, A):
    """Lower Cholesky factor of symmetric positive definite ``A`` (..., n, n)."""
    return xp.linalg.cholesky(A)


def to_numpy(x):
    """A NumPy copy (or view) of an array of any library: ``.get()`` for CuPy, DLPack or the buffer
    protocol otherwise. Used for tables and plots, never inside a computation."""
    if array_api_compat.is_cupy_array(x):  # pragma: no cover - needs a GPU
        return x.get()
    if array_api_compat.is_torch_array(x):  # CUDA tensors and tensors that require grad refuse DLPack
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray) or not is_array(x):
        return np.asarray(x)
    try:
        return np.asarray(np.from_dlpack(x))
    except (TypeError, RuntimeError, BufferError, AttributeError):
        return np.asarray(x)


def remembered(table: dict, dtype, compute):
    """``compute(dtype)``, kept in ``table`` per dtype object (an unhashable one is computed each time).

    NumPy 2 builds a dtype's name anew on every ``str`` or ``.name`` (~2-5 us, several times a layer call
    on a device, where the host's time is what a small call costs). The key is ``(type(dtype), dtype)``:
    the dtypes of different libraries are never compared with each other (array_api_strict's hash as
    NumPy's and warn when compared with them), nor a scalar type with its dtype (they compare equal).
    """
    key = (type(dtype), dtype)
    try:
        return table[key]
    except KeyError:
        out = table[key] = compute(dtype)
        return out
    except TypeError:  # an unhashable dtype object
        return compute(dtype)


_DTYPE_STR: dict = {}


def dtype_str(dtype) -> str:
    """``str(dtype)``, :func:`remembered`."""
    return remembered(_DTYPE_STR, dtype, str)


#: CuPy constant arrays kept by :func:`constant` (a few per call signature; each is T values or fewer)
CONSTANT_CACHE_SIZE = 32
_CONSTANTS: dict = {}


def constant(xp, shape, value, dtype, device=None):
    """``xp.full(shape, value)``, to be read and never written (a layer's default gates and strengths).

    On CuPy the array is kept and handed out again for the same device, shape, value and dtype (the
    :data:`CONSTANT_CACHE_SIZE` latest): a fill is a kernel launch, ~10-20 us of host time, where the
    host's time is what a small call costs. Every other library gets a fresh ``xp.full`` (NumPy fills
    T values in well under a microsecond, and torch arrays may join an autograd graph).
    """
    if array_api_compat.is_cupy_namespace(xp):  # pragma: no cover - needs a GPU
        import cupy

        key = (cupy.cuda.runtime.getDevice(), tuple(shape), float(value), dtype_str(dtype))
        x = _CONSTANTS.pop(key, None)
        if x is None:
            x = xp.full(shape, value, dtype=dtype, device=device)
            while len(_CONSTANTS) >= CONSTANT_CACHE_SIZE:
                _CONSTANT_OF.pop(id(_CONSTANTS.pop(next(iter(_CONSTANTS)))), None)
            _CONSTANT_OF[id(x)] = (x, float(value), device)
        _CONSTANTS[key] = x  # (re)inserted last: the most recent
        return x
    return xp.full(shape, value, dtype=dtype, device=device)


_CONSTANT_OF: dict = {}  # id -> (array, value, device) of each array in _CONSTANTS (it keeps the id valid)

#: most entries a broadcast constant is made with (:func:`broadcast_to`); a larger one stays a view
BROADCAST_CONSTANT_MAX = 1 << 20


def broadcast_to(xp, x, shape):
    """``xp.broadcast_to(x, shape)`` (``x`` itself where the shape matches). A small constant of
    :func:`constant` (a layer's default gates and strengths) is handed out as the cached constant of
    ``shape`` instead: the same values, read-only as the view, and no broadcast on repeated calls (a few
    microseconds of CuPy's host time each)."""
    shape = tuple(shape)
    if tuple(x.shape) == shape:
        return x
    got = _CONSTANT_OF.get(id(x))
    if got is not None and got[0] is x and math.prod(shape) <= BROADCAST_CONSTANT_MAX:
        return constant(xp, shape, got[1], x.dtype, got[2])  # (asking x for its device costs ~5 us)
    return xp.broadcast_to(x, shape)


#: seconds a driver reading of a device's free memory may be reused by ``free_device_bytes(max_age=...)``
#: (``cudaMemGetInfo`` costs 25-40 us, a tenth of a small layer call on the H200)
DEVICE_MEMORY_TTL = 0.25
_DEVICE_MEMORY: dict = {}  # device id -> (monotonic time, driver's free bytes)


def free_device_bytes(xp, device=None, max_age=0.0):
    """Free memory of a CUDA device, ``None`` for host memory.

    CuPy: the current device; torch: ``device`` (the arrays' device, :func:`device`) when it is a CUDA
    device, else ``None`` (torch CPU tensors live in host memory). Both count what their caching
    allocators hold but do not use as free: they hand it out again before asking the driver.

    ``max_age`` (seconds, CuPy): a driver reading at most this old is reused (the pool's own free bytes
    are always current); 0 reads the driver now. A caller that reuses one decides only what a stale
    reading cannot turn wrong (``TestTimeRegression._check_device_memory`` re-reads when a method's
    need comes near it).
    """
    if array_api_compat.is_cupy_namespace(xp):  # pragma: no cover - needs a GPU
        import time

        import cupy

        dev, now = cupy.cuda.runtime.getDevice(), time.monotonic()
        when, free = _DEVICE_MEMORY.get(dev, (-math.inf, 0))
        if now - when > max_age:
            free, _ = cupy.cuda.runtime.memGetInfo()
            _DEVICE_MEMORY[dev] = (now, int(free))
        return int(free) + int(cupy.get_default_memory_pool().free_bytes())
    if array_api_compat.is_torch_namespace(xp) and getattr(device, "type", None) == "cuda":
        import torch  # pragma: no cover - needs a GPU

        free, _ = torch.cuda.mem_get_info(device)  # pragma: no cover
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)  # pragma: no cover
        return int(free) + int(cached)  # pragma: no cover
    return None


def is_out_of_memory(exc) -> bool:
    """True for a device allocation failure (CuPy's ``OutOfMemoryError`` and friends)."""
    name = type(exc).__name__
    return (
        isinstance(exc, MemoryError)
        or name in ("OutOfMemoryError", "CUDARuntimeError")
        and ("memory" in str(exc).lower())
    )


def quiet_overflow(xp):
    """Context that silences NumPy's floating-point warnings (overflow, invalid, divide).

    Used around a layer's computation, whose output is then checked for finiteness and reported as one
    error that explains the cause; other libraries do not warn, so this is a no-op for them.
    """
    if array_api_compat.is_numpy_namespace(xp):
        return np.errstate(over="ignore", invalid="ignore", divide="ignore")
    return contextlib.nullcontext()
