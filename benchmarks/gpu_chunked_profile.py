r"""Where the time of the chunked linear-memory methods goes on one GPU, old path against new, fla beside.

At B = 8, H = 16 (128 heads), T = 4096, d_k = d_v = 64, float32 (``--B --H --T --d``), for linear
attention, Mamba-2, GLA and Gated DeltaNet (``layer(Q, K, V, method="chunked")`` on CuPy arrays):

1. **variants** (median of ``--runs`` calls, CUDA events): ``old`` = the path before issue 14's GPU work
   (finiteness as ``all(isfinite(x))`` per array, the simple state-pass kernel, the chunk terms of the
   delta rule and the identity family's intra-chunk terms as array operations, the intra-chunk reads
   ``A v`` formed apart); ``new`` = all five replaced (one-pass finiteness, the register-tiled state
   pass, the fused WY kernel, the fused intra-chunk kernel, ``A`` handed to the state pass); and ``new``
   with one of them switched back, so each one's share shows. The switches are module settings
   (:data:`SWITCHES`): ``ttr_stats._validation.FUSED_FINITE``, ``ttr_stats.methods._fused.KERNEL``
   ("tiled" / "simple"), ``ttr_stats.methods.delta._fused_wy.ENABLED``,
   ``ttr_stats.methods.identity._fused_intra.ENABLED``,
   ``ttr_stats.methods.identity.chunked.FUSE_INTRA_READS``;
2. **fla** in the same run (``chunk_simple_gla``, ``chunk_gla``, ``chunk_gated_delta_rule``; imported in a
   try/except: without fla those rows say why), ratio = ours / fla;
3. **accuracy**: max |y - y_ref| / max |y_ref| on a slice (batch 0, heads 0-1, all T) against the same
   layer in float64 on NumPy (``method="chunked"``, itself tested against the recurrent loop to 1e-10),
   for old, new and fla;
4. **breakdown** of one new (and one old) call into validation (``_prepare``), chunk terms (delta),
   intra-chunk products (identity), state pass, output check and the rest, from CUDA events around each
   part (no extra synchronisation inside the call);
5. **sweeps**: the new path at chunk 16 / 32 / 64, the tiled state pass's launch geometry (value
   columns a block, threads a block) and the per-chunk kernels' threads a block, at the default chunk.

Every variant runs in its own try/except: a failure prints its error and the run goes on. Target: under
3 minutes on an H100/H200 (the first calls compile NVRTC and Triton kernels). Output: tables on stdout and
a JSON file under ``--out`` (default ``$OUT`` if set, else ``benchmarks/out``).

Run: ``python -m benchmarks.gpu_chunked_profile``; ``--quick`` (T = 1024, fewer runs);
``--cpu-dry-run`` checks the script's logic on NumPy at a small size (no GPU, no fla; the kernel switches
then change nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttr_stats as tt
from ttr_stats import _validation
from ttr_stats.layer import TestTimeRegression
from ttr_stats.methods import _fused
from ttr_stats.methods.delta import _fused_wy
from ttr_stats.methods.delta import chunked as dch
from ttr_stats.methods.identity import _fused_intra
from ttr_stats.methods.identity import chunked as ich

LAYERS = {  # name -> (factory, gates, fla op)
    "linear_attention": (tt.recipes.linear_attention, "", "simple_gla"),
    "mamba2": (tt.recipes.mamba2, "a", "simple_gla"),
    "gla": (tt.recipes.gla, "ad", "gla"),
    "gated_deltanet": (tt.recipes.gated_deltanet, "ab", "gated_delta_rule"),
}

SWITCHES = {  # short name -> (module, attribute, value on the new path, value on the old path)
    "finite": (_validation, "FUSED_FINITE", True, False),
    "kernel": (_fused, "KERNEL", "tiled", "simple"),
    "wy": (_fused_wy, "ENABLED", True, False),
    "intra": (_fused_intra, "ENABLED", True, False),
    "reads": (ich, "FUSE_INTRA_READS", True, False),
}
VARIANTS = {  # name -> the switches on their old value (every other one on its new value)
    "old": tuple(SWITCHES),
    "new": (),
    "new, plain finiteness": ("finite",),
    "new, simple state pass": ("kernel",),
    "new, array chunk terms (delta)": ("wy",),
    "new, array intra terms (identity)": ("intra",),
    "new, A v apart (identity)": ("reads",),
}

#: threads a block of the per-chunk kernels: (label, module, attribute, values, the gate kinds it serves)
KNOBS = [
    ("WY kernel threads", _fused_wy, "THREADS", (128, 256, 512), ("ab",)),
    ("intra kernel threads", _fused_intra, "THREADS", (128, 256, 512), ("", "a", "ad")),
]

GEOMETRIES = [(32, 128), (16, 64), (16, 128), (32, 256), (64, 256), (8, 64)]  # (columns, threads)


@contextlib.contextmanager
def settings(old=(), columns=None, threads=None):
    """Every switch on its new value except those named in ``old``; the tiled kernel's geometry."""
    todo = [(m, k, o if name in old else n) for name, (m, k, n, o) in SWITCHES.items()]
    if columns is not None:
        todo += [(_fused, "TILED_COLUMNS", columns), (_fused, "TILED_THREADS", threads)]
    saved = [(m, k, getattr(m, k)) for m, k, _ in todo]
    for m, k, v in todo:
        setattr(m, k, v)
    try:
        yield
    finally:
        for m, k, v in saved:
            setattr(m, k, v)


class Device:
    def __init__(self, dry):
        self.dry = dry
        self.fla_error = None
        if dry:
            self.xp, self.cp, self.torch, self.card = np, None, None, "CPU dry run (NumPy)"
            self.fla_error = "dry run"
            return
        import cupy as cp

        self.xp = self.cp = cp
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        self.card = f"{name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, CuPy {cp.__version__}"
        try:
            import fla  # noqa: F401
            import torch

            self.torch = torch
            self.card += f", torch {torch.__version__}, fla {getattr(fla, '__version__', '?')}"
        except Exception as exc:  # noqa: BLE001 - fla rows then say why
            self.torch, self.fla_error = None, f"fla unavailable: {type(exc).__name__}: {exc}"

    def sync(self):
        if not self.dry:
            self.cp.cuda.Device().synchronize()

    def event(self):
        """A recorded marker: a CUDA event on CuPy's current stream, a perf_counter on the host."""
        if self.dry:
            return time.perf_counter()
        e = self.cp.cuda.Event()
        e.record()
        return e

    def elapsed(self, e0, e1):
        if self.dry:
            return e1 - e0
        e1.synchronize()
        return self.cp.cuda.get_elapsed_time(e0, e1) / 1e3

    def time(self, fn, warmup, runs, torch_stream=False):
        """(median seconds, output) of ``runs`` calls after ``warmup``; torch's events for fla."""
        out = None
        for _ in range(warmup):
            out = fn()
        times = []
        for _ in range(runs):
            if torch_stream and not self.dry:
                e0, e1 = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
                e0.record()
                out = fn()
                e1.record()
                e1.synchronize()
                times.append(e0.elapsed_time(e1) / 1e3)
            else:
                e0 = self.event()
                out = fn()
                times.append(self.elapsed(e0, self.event()))
        return statistics.median(times), out

    def free(self):
        if not self.dry:
            self.cp.get_default_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()


def make_inputs(xp, B, H, T, d, seed):
    """Unit-norm Q, K, Gaussian V (B, H, T, d); log-decays log U(0.9, 1), scalar and per dimension;
    beta ~ U(0.1, 0.9) (as benchmarks/gpu_fast.py)."""
    rng = np.random.default_rng(seed)

    def unit(x):
        return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True))

    f = np.float32
    Q = unit(rng.standard_normal((B, H, T, d), dtype=f))
    K = unit(rng.standard_normal((B, H, T, d), dtype=f))
    V = rng.standard_normal((B, H, T, d), dtype=f)
    g = np.log(0.9 + 0.1 * rng.random((B, H, T), dtype=f))
    gd = np.log(0.9 + 0.1 * rng.random((B, H, T, d), dtype=f))
    b = 0.1 + 0.8 * rng.random((B, H, T), dtype=f)
    host = dict(Q=Q, K=K, V=V, g=g, gd=gd, b=b)
    dev = {k: xp.asarray(v) for k, v in host.items()}
    return host, dev


def gates_of(kind, a):
    return {"": {}, "a": dict(log_alpha=a["g"]), "ad": dict(log_alpha=a["gd"]),
            "ab": dict(log_alpha=a["g"], beta=a["b"])}[kind]  # fmt: skip


def to_np(dev, y):
    return np.asarray(y) if dev.dry else dev.cp.asnumpy(y)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def fla_runner(dev, op, kind, a):
    """``fn() -> y`` (our (B, H, T, d) layout, CuPy) running the fla op on torch copies in fla's layout."""
    torch, cp = dev.torch, dev.cp

    def fl(x):
        return torch.from_dlpack(x).transpose(1, 2).contiguous()

    q, k, v = fl(a["Q"]), fl(a["K"]), fl(a["V"])
    if op == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla

        gg = fl(a["g"]) if kind == "a" else None
        run = lambda: chunk_simple_gla(q, k, v, g=gg, scale=1.0)[0]  # noqa: E731
    elif op == "gla":
        from fla.ops.gla import chunk_gla

        gk = fl(a["gd"])
        run = lambda: chunk_gla(q, k, v, g=gk, scale=1.0)[0]  # noqa: E731
    else:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        gg, bb = fl(a["g"]), fl(a["b"])
        run = lambda: chunk_gated_delta_rule(
            q, k, v, g=gg, beta=bb, scale=1.0, use_qk_l2norm_in_kernel=False
        )[0]  # noqa: E731
    return run, lambda o: cp.from_dlpack(o.transpose(1, 2).contiguous())


# ---------------------------------------------------------------------------------------------------------
# the breakdown: CUDA events around the parts of one call
# ---------------------------------------------------------------------------------------------------------
PARTS = [  # (label, owner, attribute)
    ("validation", TestTimeRegression, "_prepare"),
    ("output check", TestTimeRegression, "_check_output"),
    ("chunk terms (fused)", _fused_wy, "chunk_terms"),
    ("chunk terms (array)", dch, "chunk_terms"),
    ("intra-chunk (scalar, fused)", _fused_intra, "intra_scalar"),
    ("intra-chunk (per-dim, fused)", _fused_intra, "intra_per_dim"),
    ("intra-chunk (scalar)", ich, "_intra_scalar"),
    ("intra-chunk (per-dim)", ich, "_intra_per_dim"),
    ("intra-chunk reads A v", ich, "_intra_reads"),
    ("state pass", _fused, "state_pass"),
]


def breakdown(dev, fn):
    """Seconds per part of one call of ``fn`` (and "total", "rest"), each part timed where it is called."""
    marks, saved = [], []
    depth = [0]

    def wrap(label, f):
        def timed(*args, **kwargs):
            if depth[0]:  # a part inside another part counts for the outer one
                return f(*args, **kwargs)
            depth[0] += 1
            e0 = dev.event()
            try:
                return f(*args, **kwargs)
            finally:
                marks.append((label, e0, dev.event()))
                depth[0] -= 1

        return timed

    for label, owner, attr in PARTS:
        orig = getattr(owner, attr)
        saved.append((owner, attr, orig))
        setattr(owner, attr, wrap(label, orig))
    try:
        fn()  # warm
        marks.clear()
        dev.sync()
        e0 = dev.event()
        fn()
        e1 = dev.event()
        dev.sync()
    finally:
        for owner, attr, orig in saved:
            setattr(owner, attr, orig)
    out = {"total": dev.elapsed(e0, e1)}
    for label, a, b in marks:
        out[label] = out.get(label, 0.0) + dev.elapsed(a, b)
    out["rest"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


# ---------------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--T", type=int, default=4096)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--quick", action="store_true", help="T = 1024, 5 runs")
    ap.add_argument("--no-sweeps", action="store_true")
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(Path(__file__).parent / "out"))
    args = ap.parse_args(argv)
    if args.cpu_dry_run:
        args.B, args.H, args.T, args.d, args.runs, args.warmup = 1, 2, 200, 16, 2, 1
    elif args.quick:
        args.T, args.runs = 1024, 5
    t_start = time.perf_counter()
    try:
        dev = Device(args.cpu_dry_run)
    except Exception as exc:  # noqa: BLE001
        print(f"no GPU run possible: {type(exc).__name__}: {exc} (try --cpu-dry-run)")
        return 1
    print(f"# gpu_chunked_profile: {dev.card}")
    print(f"# B = {args.B}, H = {args.H}, T = {args.T}, d = {args.d}, float32; median of {args.runs} calls")
    if dev.fla_error:
        print(f"# {dev.fla_error}")
    host, a = make_inputs(dev.xp, args.B, args.H, args.T, args.d, 0)
    results = {"card": dev.card, "args": vars(args), "layers": {}}
    for name in args.layers.split(","):
        factory, kind, op = LAYERS[name]
        res = results["layers"][name] = {"variants": {}, "errors": {}}
        print(f"\n## {name}")
        layer = factory()
        gates = gates_of(kind, a)

        def call(chunk=None, layer=layer, gates=gates):
            return layer(a["Q"], a["K"], a["V"], method="chunked", chunk_size=chunk, **gates)

        # the float64 reference on a slice: batch 0, heads 0-1
        ref = None
        try:
            sl = (slice(0, 1), slice(0, min(2, args.H)))
            hg = gates_of(kind, host)
            ref = layer(*(host[k][sl].astype(np.float64) for k in "QKV"), method="chunked",
                        **{k: v[sl].astype(np.float64) for k, v in hg.items()})  # fmt: skip
        except Exception as exc:  # noqa: BLE001
            res["errors"]["reference"] = repr(exc)
            print(f"  float64 reference failed: {exc!r}")

        def accuracy(y, ref=ref, sl=sl):
            return None if ref is None else rel(to_np(dev, y)[sl], ref)

        fla_s = None
        if dev.fla_error is None:
            try:
                run, back = fla_runner(dev, op, kind, a)
                fla_s, o = dev.time(run, args.warmup, args.runs, torch_stream=True)
                yf = back(o)
                res["fla"] = {"op": f"chunk_{op}", "ms": fla_s * 1e3, "max_rel_diff": accuracy(yf)}
                del o, yf, run
            except Exception as exc:  # noqa: BLE001
                res["errors"]["fla"] = repr(exc)
                print(f"  fla chunk_{op} failed: {type(exc).__name__}: {exc}")
            dev.free()
        print(f"  {'variant':<36} {'ms':>8} {'vs fla':>7} {'vs old':>7} {'max rel diff (f64 ref)':>22}")
        if fla_s is not None:
            acc = res["fla"]["max_rel_diff"]
            acc = float("nan") if acc is None else acc
            print(f"  {'fla chunk_' + op:<36} {fla_s * 1e3:8.3f} {1.0:7.2f} {'':>7} {acc:22.2e}")
        old_s = None
        for vname, flags in VARIANTS.items():
            try:
                with settings(flags):
                    s, y = dev.time(call, args.warmup, args.runs)
                    acc = accuracy(y)
                if vname == "old":
                    old_s = s
                res["variants"][vname] = {"ms": s * 1e3, "max_rel_diff": acc}
                vf = f"{s / fla_s:7.2f}" if fla_s else f"{'—':>7}"
                vo = f"{s / old_s:7.2f}" if old_s else f"{'—':>7}"
                print(
                    f"  {vname:<36} {s * 1e3:8.3f} {vf} {vo} {acc if acc is not None else float('nan'):22.2e}"
                )
                del y
            except Exception as exc:  # noqa: BLE001
                res["errors"][vname] = repr(exc)
                print(f"  {vname:<36} FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc(limit=3)
            dev.free()
        for vname in ("new", "old"):
            try:
                with settings(VARIANTS[vname]):
                    parts = breakdown(dev, call)
                res[f"breakdown {vname}"] = {k: v * 1e3 for k, v in parts.items()}
                print(
                    f"  breakdown ({vname}), ms: "
                    + ", ".join(f"{k} {v * 1e3:.3f}" for k, v in parts.items() if v)
                )
            except Exception as exc:  # noqa: BLE001
                res["errors"][f"breakdown {vname}"] = repr(exc)
                print(f"  breakdown ({vname}) FAILED: {type(exc).__name__}: {exc}")
            dev.free()
        if args.no_sweeps:
            continue
        line = []
        for chunk in (16, 32, 64):
            try:
                s, y = dev.time(lambda chunk=chunk: call(chunk), args.warmup, args.runs)
                acc = accuracy(y)
                res[f"new chunk {chunk}"] = {"ms": s * 1e3, "max_rel_diff": acc}
                line.append(
                    f"C={chunk}: {s * 1e3:.3f} ms ({acc:.1e})"
                    if acc is not None
                    else f"C={chunk}: {s * 1e3:.3f} ms"
                )
                del y
            except Exception as exc:  # noqa: BLE001
                res["errors"][f"chunk {chunk}"] = repr(exc)
                line.append(f"C={chunk}: FAILED {type(exc).__name__}: {exc}")
            dev.free()
        print("  new path by chunk size: " + "; ".join(line))
        line = []
        for cols, thr in GEOMETRIES:
            try:
                with settings(columns=cols, threads=thr):
                    s, y = dev.time(call, args.warmup, args.runs)
                    acc = accuracy(y)
                res[f"tiled {cols}x{thr}"] = {"ms": s * 1e3, "max_rel_diff": acc}
                line.append(f"{cols} cols/{thr} thr: {s * 1e3:.3f}")
                del y
            except Exception as exc:  # noqa: BLE001
                res["errors"][f"tiled {cols}x{thr}"] = repr(exc)
                line.append(f"{cols}/{thr}: FAILED {type(exc).__name__}: {exc}")
            dev.free()
        print("  tiled state pass geometry (ms a call, default chunk): " + "; ".join(line))
        for label, mod, attr, values, families in KNOBS:
            if kind not in families:
                continue
            line, saved = [], getattr(mod, attr)
            for val in values:
                try:
                    setattr(mod, attr, val)
                    s, y = dev.time(call, args.warmup, args.runs)
                    res[f"{label} {val}"] = {"ms": s * 1e3}
                    line.append(f"{val}: {s * 1e3:.3f}")
                    del y
                except Exception as exc:  # noqa: BLE001
                    res["errors"][f"{label} {val}"] = repr(exc)
                    line.append(f"{val}: FAILED {type(exc).__name__}: {exc}")
                finally:
                    setattr(mod, attr, saved)
                dev.free()
            print(f"  {label} (ms a call): " + "; ".join(line))
        print(f"  [{time.perf_counter() - t_start:.0f} s so far]")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_chunked_profile.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"\n# wrote {out / 'gpu_chunked_profile.json'}; {time.perf_counter() - t_start:.0f} s in all")
    except OSError as exc:
        print(f"# could not write results: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
