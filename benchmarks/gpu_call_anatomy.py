"""Where a short causal-softmax layer call spends its host time, measured without a profiler (issue 10).

cProfile doubles the cost of every Python call and cannot see CuPy's Cython, so its per-function times
(``gpu_prelaunch_trace``) name the places but not their weight. Here each stage of the call is wrapped
by a stamp (two ``perf_counter`` reads, ~0.2 us) and the call's inclusive time per stage is reported
as the median over ``--runs`` synchronised calls, beside:

* torch SDPA (``is_causal=True``) on the same numbers, the issue's peer;
* the fused kernel launched by hand (:func:`_fused_nw.forward` on ready operands, with and without a
  preallocated flag), and its time alone on the GPU (CUDA events): the floor of a call;
* CuPy's per-operation costs on this host (an allocation, a zeroed flag, a reshape, a launch, a one-entry
  read-back, ``array_api_compat.device``), so that a stage's time can be read as the operations in it.

Run: ``python -m benchmarks.gpu_call_anatomy [--T 1024] [--runs 200]`` on a GPU machine; ``--device cpu``
runs the stages on NumPy (the fused path simulated as in ``cpu_prelaunch_proxy``; checks the script).
Prints; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import ttr_stats as tt
from ttr_stats import _array, _plans, _validation
from ttr_stats import layer as layer_mod
from ttr_stats.methods.kernel_smoother import _fused_nw

from .gpu_host_profile import median_ms

#: (owner, attribute, label): the stages stamped; each is looked up through its owner at call time
STAGES = (
    (layer_mod.TestTimeRegression, "__call__", "call"),
    (layer_mod.TestTimeRegression, "_prepare", "_prepare"),
    (layer_mod.TestTimeRegression, "_choose", "_choose"),
    (layer_mod.TestTimeRegression, "_run", "_run"),
    (layer_mod.TestTimeRegression, "_check_device_memory", "_check_device_memory"),
    (layer_mod.TestTimeRegression, "_check_output", "_check_output (the read)"),
    (layer_mod.TestTimeRegression, "_pair_features", "_pair_features"),
    (_array, "as_float_arrays", "as_float_arrays"),
    (_validation.Deferred, "finite", "Deferred.finite"),
    (_validation.Deferred, "new_flag", "Deferred.new_flag"),
    (_validation.Deferred, "_read", "Deferred._read"),
    (_fused_nw, "nadaraya_watson", "_fused_nw.nadaraya_watson"),
    (_fused_nw, "operands", "_fused_nw.operands"),
    (_fused_nw, "forward", "_fused_nw.forward"),
    (_fused_nw, "_forward2", "_fused_nw._forward2"),
)


class Stamps:
    def __init__(self):
        self.t = {}
        self.n = {}
        self.saved = []

    def wrap(self, owner, attr, label):
        fn = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        t, n, clock = self.t, self.n, time.perf_counter

        def stamped(*args, **kw):
            t0 = clock()
            try:
                return fn(*args, **kw)
            finally:
                t[label] = t.get(label, 0.0) + clock() - t0
                n[label] = n.get(label, 0) + 1

        stamped.__name__ = getattr(fn, "__name__", attr)
        self.saved.append((owner, attr, fn))
        setattr(owner, attr, stamped)

    def undo(self):
        for owner, attr, fn in reversed(self.saved):
            setattr(owner, attr, fn)
        self.saved = []

    def take(self):
        t, n = dict(self.t), dict(self.n)
        self.t.clear()
        self.n.clear()
        return t, n


def median_us(fn, sync, runs):
    """Median microseconds of ``runs`` synchronised calls (``gpu_host_profile.median_ms``)."""
    return 1e3 * median_ms(fn, sync, runs)


def op_costs(xp, sync, runs, Y_shape, dtype):
    """Median host time of single CuPy / NumPy operations (no sync inside the timed loop)."""
    import array_api_compat

    x = xp.zeros(Y_shape, dtype=dtype)
    flag = xp.zeros(1, dtype=np.int32)
    ops = {
        "empty (Y's shape)": lambda: xp.empty(Y_shape, dtype=dtype),
        "zeros(1, int32) (a flag)": lambda: xp.zeros(1, dtype=np.int32),
        "reshape": lambda: x.reshape((-1, Y_shape[-1])),
        "array_api_compat.device": lambda: array_api_compat.device(x),
        "array_api_compat.array_namespace": lambda: array_api_compat.array_namespace(x),
        "_array.device": lambda: _array.device(x),
        "x.flags.c_contiguous + x.data.ptr": (
            (lambda: (x.flags.c_contiguous, x.data.ptr)) if xp is not np else (lambda: x.flags.c_contiguous)
        ),
        "flag read-back (one int32 to the host)": (lambda: flag.get()) if xp is not np else (lambda: flag[0]),
    }
    out = {}
    for name, f in ops.items():
        for _ in range(20):
            f()
        sync()
        t0 = time.perf_counter_ns()
        for _ in range(runs):
            f()
        out[name] = (time.perf_counter_ns() - t0) / runs / 1e3
        sync()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--device", default="gpu", choices=("gpu", "cpu"))
    a = ap.parse_args(argv)
    undo_sim = None
    if a.device == "gpu":
        import cupy as xp

        sync = xp.cuda.Device().synchronize
        print(f"device: {xp.cuda.runtime.getDeviceProperties(0)['name'].decode()}, cupy {xp.__version__}")
    else:
        from benchmarks.cpu_prelaunch_proxy import _simulate_device

        xp = np
        undo_sim = _simulate_device([])

        def sync():
            return None

        print("device: cpu (NumPy, the fused path simulated; no peer)")
    rng = np.random.default_rng(0)
    shape = (a.B, a.H, a.T, a.d)
    Q, K, V = (xp.asarray((rng.standard_normal(shape) / a.d**0.25).astype(np.float32)) for _ in range(3))
    layer = tt.recipes.softmax_attention()

    def call():
        return layer(Q, K, V, method="tiled")

    for _ in range(5):
        call()
    sdpa = None
    if a.device == "gpu":
        try:
            import torch
            import torch.nn.functional as F

            q, k, v = (torch.from_dlpack(x) for x in (Q, K, V))
            F.scaled_dot_product_attention(q, k, v, is_causal=True)
            sdpa = median_us(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), sync, a.runs)
        except Exception as exc:
            print(f"torch SDPA: not run ({type(exc).__name__}: {exc})")
    whole = median_us(call, sync, a.runs)
    _plans.ENABLED = False
    try:
        unplanned = median_us(call, sync, a.runs)
    finally:
        _plans.ENABLED = True
    print(f"\nB={a.B} H={a.H} T={a.T} d={a.d} float32, median of {a.runs} synchronised calls:")
    print(
        f"  layer call (tiled), planned:  {whole:9.1f} us" + (f"   {whole / sdpa:.3f}x SDPA" if sdpa else "")
    )
    print(
        f"  layer call (tiled), no plan:  {unplanned:9.1f} us"
        + (f"   {unplanned / sdpa:.3f}x SDPA" if sdpa else "")
    )
    if sdpa:
        print(f"  torch SDPA:         {sdpa:9.1f} us")
    BH = a.B * a.H
    ops = _fused_nw.operands(xp, layer, layer._prepare(Q, K, V, None, None, None, None))
    if a.device == "gpu":
        flag = xp.zeros(1, dtype=np.int32)
        by_hand = median_us(lambda: _fused_nw.forward(xp, **ops), sync, a.runs)
        by_hand_flag = median_us(lambda: _fused_nw.forward(xp, flag=flag, **ops), sync, a.runs)
        start, stop = xp.cuda.Event(), xp.cuda.Event()
        ks = []
        for _ in range(20):
            start.record()
            _fused_nw.forward(xp, flag=flag, **ops)
            stop.record()
            stop.synchronize()
            ks.append(xp.cuda.get_elapsed_time(start, stop) * 1e3)
        kern = statistics.median(ks)
        print(f"  kernel by hand (forward on ready operands, a fresh flag): {by_hand:9.1f} us")
        print(f"  kernel by hand, the flag preallocated:                   {by_hand_flag:9.1f} us")
        print(f"  kernel alone (CUDA events, median of 20):                {kern:9.1f} us")
        if sdpa:
            print(f"  -> host time in the planned call beyond the kernel: {whole - kern:.1f} us; "
                  f"the 1.5x line is {1.5 * sdpa:.1f} us")  # fmt: skip
    st = Stamps()
    for owner, attr, label in STAGES:
        st.wrap(owner, attr, label)
    per = {}
    _plans.ENABLED = False  # the stages of the full path (a planned call skips them)
    try:
        for _ in range(a.runs):
            sync()
            call()
            sync()
            t, n = st.take()
            for k, val in t.items():
                per.setdefault(k, []).append((val, n[k]))
    finally:
        _plans.ENABLED = True
        st.undo()
        if undo_sim is not None:
            undo_sim()
    print(f"\nstages, inclusive us a call (median of {a.runs}; each stamp adds ~0.2 us to its callers):")
    for _, _, label in STAGES:
        if label in per:
            vals = [x for x, _ in per[label]]
            print(f"  {1e6 * statistics.median(vals):9.1f}  x{per[label][0][1]}  {label}")
        else:
            print(f"  {'-':>9}      {label} (not reached)")
    print(f"\nsingle operations on this host ({'CuPy' if xp is not np else 'NumPy'}), us each:")
    for name, us in op_costs(xp, sync, 2000, (BH, a.T, a.d), np.float32).items():
        print(f"  {us:9.2f}  {name}")


if __name__ == "__main__":
    main()
