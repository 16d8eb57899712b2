r"""The fused chunked forward of scalar-decay identity layers (``methods/identity/_fused_chunk.py``,
issue 14) on one GPU: correctness, timings against the old device path and fla, and a sweep of its
module constants. One command, < 4 minutes on an H200:

    .venv/bin/python benchmarks/gpu_fused_chunk.py --out $OUT/gpu_fused_chunk.txt

1. **checks** (B = 1, H = 2 slices; every line says PASS or FAIL): the new path's layer outputs against
   the float64 NumPy recurrent loop (float32: relative RMS 1e-5; float64: 1e-10) for linear attention,
   Mamba-2 and a sum-normalised RetNet-style layer with odd sizes (T = 1000, d_k = 100, d_v = 72, an
   initial state through a two-call continuation), and against fla ``chunk_simple_gla`` (its TF32
   products: 5e-3);
2. **timings** at B = 8, H = 16, d = 64, float32, T in {1024, 4096, 16384}: median of 10 synchronised
   calls (CUDA events) of the layer with the new path, the old one (``_fused_chunk.ENABLED = False``)
   and fla, plus the kernels alone (``forward`` on prepared inputs: no validation, no glue), with the
   chunk states by the default ``STATE_ALGO`` ("kernels") and by the one-kernel sequential pass
   ("k seq") and the pipelined sequential pass ("k pipe");
3. **each kernel alone** (linear attention, T = 4096): every launch of ``forward`` between CUDA events,
   for the scan (C = 16, 32, 64), the sequential state pass (C = 32) and the pipelined one (C = 32, 64,
   by state tile);
4. **sweep** at T = 4096 (linear attention): chunk length x the chunk-delta tile (BK, BV, TK, TV), the
   scan's (unroll, threads) and the output tile (BV, TI, TV, threads), one group varied at a time,
   kernels alone and the whole layer.

Everything is printed and written to ``--out``. A global budget (``--budget-s``, 220 s) skips what is
left past it (the line says so). ``--cpu-dry-run`` runs the script's logic on NumPy at a tiny size (no
GPU: the fused path does not apply there, the rows say so).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttr_stats as tt
from ttr_stats.methods.identity import _fused_chunk as fc
from ttr_stats.methods.identity import chunked as ich

LAYERS = {"linear_attention": (tt.recipes.linear_attention, ""), "mamba2": (tt.recipes.mamba2, "a")}
DELTA_TILES = [(64, 64, 4, 4), (32, 64, 2, 4), (64, 32, 4, 2), (32, 32, 2, 2), (64, 64, 8, 4), (64, 64, 4, 8)]
SCAN_SETTINGS = [(1, 256), (4, 256), (8, 256), (16, 256), (8, 128), (8, 512)]
OUT_TILES = [(64, 4, 4, 128), (64, 2, 4, 256), (64, 4, 2, 256), (32, 4, 4, 64), (64, 8, 4, 64),
             (64, 4, 4, 256), (32, 2, 4, 128), (64, 2, 4, 128), (64, 4, 4, 64), (64, 8, 4, 128),
             (64, 2, 2, 256), (32, 4, 2, 128), (64, 1, 4, 128)]  # fmt: skip
CHUNKS = (16, 32, 64)
PIPE_TILES = [(32, 32, 2, 2), (64, 32, 4, 2), (32, 64, 2, 4), (64, 64, 4, 4), (16, 64, 1, 4), (64, 16, 4, 1)]


class Out:
    def __init__(self, path):
        self.f = open(path, "w") if path else None  # noqa: SIM115

    def __call__(self, *a):
        s = " ".join(str(x) for x in a)
        print(s, flush=True)
        if self.f:
            self.f.write(s + "\n")
            self.f.flush()


@contextlib.contextmanager
def constants(**kw):
    saved = {k: getattr(fc, k) for k in kw}
    for k, v in kw.items():
        setattr(fc, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(fc, k, v)


class Dev:
    def __init__(self, dry):
        self.dry, self.torch, self.fla_error = dry, None, None
        if dry:
            self.xp, self.cp, self.card, self.fla_error = np, None, "CPU dry run (NumPy)", "dry run"
            return
        import cupy as cp

        self.xp = self.cp = cp
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        self.card = f"{name}, CuPy {cp.__version__}"
        try:
            import fla  # noqa: F401
            import torch

            self.torch = torch
            self.card += f", torch {torch.__version__}, fla {getattr(fla, '__version__', '?')}"
        except Exception as exc:  # noqa: BLE001 - fla rows then say why
            self.fla_error = f"fla unavailable: {type(exc).__name__}: {exc}"

    def np(self, y):
        return np.asarray(y) if self.dry else self.cp.asnumpy(y)

    def time(self, fn, warmup, runs, torch_events=False):
        """(median seconds, last output) of ``runs`` calls after ``warmup``, each between two events."""
        out = None
        for _ in range(warmup):
            out = fn()
        ts = []
        for _ in range(runs):
            if self.dry:
                t0 = time.perf_counter()
                out = fn()
                ts.append(time.perf_counter() - t0)
                continue
            ev = self.torch.cuda.Event if torch_events else self.cp.cuda.Event
            e0, e1 = (ev(enable_timing=True) if torch_events else ev() for _ in range(2))
            e0.record()
            out = fn()
            e1.record()
            e1.synchronize()
            ts.append(
                e0.elapsed_time(e1) / 1e3 if torch_events else self.cp.cuda.get_elapsed_time(e0, e1) / 1e3
            )
        return statistics.median(ts), out

    def free(self):
        if not self.dry:
            self.cp.get_default_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()


def rel_rms(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / n) if n else float(np.linalg.norm(a))


def inputs(B, H, T, d, seed=0, dv=None):
    """Unit-norm Q, K, Gaussian V (B, H, T, d) float32; log-decays log U(0.9, 1) (as gpu_chunked_profile)."""
    rng = np.random.default_rng(seed)
    f = np.float32
    unit = lambda x: x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True))  # noqa: E731
    Q = unit(rng.standard_normal((B, H, T, d), dtype=f))
    K = unit(rng.standard_normal((B, H, T, d), dtype=f))
    V = rng.standard_normal((B, H, T, dv or d), dtype=f)
    g = np.log(0.9 + 0.1 * rng.random((B, H, T), dtype=f))
    return dict(Q=Q, K=K, V=V, g=g)


def fla_simple_gla(dev, a, gated):
    torch = dev.torch
    from fla.ops.simple_gla import chunk_simple_gla

    fl = lambda x: torch.from_dlpack(x).transpose(1, 2).contiguous()  # noqa: E731
    q, k, v = fl(a["Q"]), fl(a["K"]), fl(a["V"])
    gg = fl(a["g"]) if gated else None
    run = lambda: chunk_simple_gla(q, k, v, g=gg, scale=1.0)[0]  # noqa: E731
    return run, lambda o: dev.cp.from_dlpack(o.transpose(1, 2).contiguous())


def checks(dev, out, args):
    xp, ok = dev.xp, True
    out("\n## 1. checks (relative RMS; PASS/FAIL against the stated tolerance)")
    T = 1024 if not dev.dry else 100
    host = inputs(1, 2, T, 64 if not dev.dry else 16)
    for name, (factory, kind) in LAYERS.items():
        layer = factory()
        gates = lambda a, kind=kind: {"log_alpha": a["g"]} if kind else {}  # noqa: E731
        ref = layer(*(host[k].astype(np.float64) for k in "QKV"), method="recurrent",
                    **{k: v.astype(np.float64) for k, v in gates(host).items()})  # fmt: skip
        for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-10)):
            a = {k: xp.asarray(v.astype(dt)) for k, v in host.items()}
            y = dev.np(layer(a["Q"], a["K"], a["V"], method="chunked", **gates(a)))
            e = rel_rms(y, ref)
            ok &= e < tol
            out(f"  {name:<18} {np.dtype(dt).name}  new vs float64 recurrent  {e:.2e}  (tol {tol:g}) "
                f"{'PASS' if e < tol else 'FAIL'}")  # fmt: skip
            if dt == np.float32 and dev.fla_error is None:
                try:
                    run, back = fla_simple_gla(dev, a, bool(kind))
                    yf = dev.np(back(run()))
                    e2 = rel_rms(y, yf)
                    ok &= e2 < 5e-3
                    out(f"  {name:<18} float32  new vs fla chunk_simple_gla  {e2:.2e}  (tol 5e-3, TF32) "
                        f"{'PASS' if e2 < 5e-3 else 'FAIL'}")  # fmt: skip
                except Exception as exc:  # noqa: BLE001
                    out(f"  fla failed: {type(exc).__name__}: {exc}")
    # odd sizes, sum normalisation, an initial state (a second call continuing the first's state)
    rng = np.random.default_rng(1)
    T, dk, dv = (1000, 100, 72) if not dev.dry else (50, 7, 5)
    layer = tt.TestTimeRegression(
        weights=tt.weights.Gated(), optimizer=tt.optimizers.IdentityCovariance("sum")
    )
    Q, K = (np.abs(rng.standard_normal((1, 2, T, dk))) for _ in range(2))
    V = rng.standard_normal((1, 2, T, dv))
    la = np.where(rng.random((1, 2, T)) < 0.01, -50.0, -rng.uniform(0, 0.1, (1, 2, T)))
    h = T // 2 + 7
    ref, st = layer(Q[..., :h, :], K[..., :h, :], V[..., :h, :], method="recurrent", log_alpha=la[..., :h],
                    return_state=True)  # fmt: skip
    ref2 = layer(Q[..., h:, :], K[..., h:, :], V[..., h:, :], method="recurrent", log_alpha=la[..., h:],
                 initial_state=st)  # fmt: skip
    for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-10)):
        c = lambda x, dt=dt: xp.asarray(x.astype(dt))  # noqa: E731
        y1, s1 = layer(c(Q[..., :h, :]), c(K[..., :h, :]), c(V[..., :h, :]), method="chunked",
                       log_alpha=c(la[..., :h]), return_state=True)  # fmt: skip
        y2 = layer(c(Q[..., h:, :]), c(K[..., h:, :]), c(V[..., h:, :]), method="chunked",
                   log_alpha=c(la[..., h:]), initial_state=s1)  # fmt: skip
        e = max(rel_rms(dev.np(y1), ref), rel_rms(dev.np(y2), ref2))
        ok &= e < tol
        out(f"  retnet sum, T={T} d_k={dk} d_v={dv}, state carried  {np.dtype(dt).name}  {e:.2e}  "
            f"(tol {tol:g}) "
            f"{'PASS' if e < tol else 'FAIL'}")  # fmt: skip
    out(f"  checks: {'ALL PASS' if ok else 'SOME FAILED'}")
    return ok


def _ms(row, k):
    return f"{row[k] * 1e3:8.3f}" if row.get(k) else f"{'—':>8}"


def _ratio(row, x, y):
    return f"{row[x] / row[y]:8.2f}" if row.get(x) and row.get(y) else f"{'—':>8}"


def timings(dev, out, args, t0):
    out(f"\n## 2. timings, ms (median of {args.runs}, CUDA events), B={args.B} H={args.H} d={args.d} float32")
    out(f"  {'layer':<18} {'T':>6} {'new':>8} {'kernels':>8} {'k seq':>8} {'k pipe':>8} {'old':>8} "
        f"{'fla':>8} "
        f"{'new/fla':>8} {'old/fla':>8} {'new/old':>8}")  # fmt: skip
    for T in args.T:
        host = inputs(args.B, args.H, T, args.d)
        a = {k: dev.xp.asarray(v) for k, v in host.items()}
        del host
        for name, (factory, kind) in LAYERS.items():
            if time.perf_counter() - t0 > args.budget_s:
                out(f"  {name} T={T}: skipped (budget {args.budget_s} s spent)")
                continue
            layer = factory()
            gates = {"log_alpha": a["g"]} if kind else {}

            def call(layer=layer, gates=gates, a=a):
                return layer(a["Q"], a["K"], a["V"], method="chunked", **gates)

            row = {}
            try:
                row["new"] = dev.time(call, args.warmup, args.runs)[0]
                dev.free()
                row["kernels"] = kernels_time(dev, a, kind, args)
                dev.free()
                with constants(STATE_ALGO="sequential"):  # the one-kernel state pass, for comparison
                    row["kseq"] = kernels_time(dev, a, kind, args)
                dev.free()
                with constants(STATE_ALGO="pipelined"):  # the same with the next chunk's loads in flight
                    row["kpipe"] = kernels_time(dev, a, kind, args)
                dev.free()
                with constants(ENABLED=False):
                    row["old"] = dev.time(call, args.warmup, args.runs)[0]
                dev.free()
                if dev.fla_error is None:
                    run, _ = fla_simple_gla(dev, a, bool(kind))
                    row["fla"] = dev.time(run, args.warmup, args.runs, torch_events=True)[0]
                    del run
                    dev.free()
            except Exception as exc:  # noqa: BLE001
                out(f"  {name} T={T} FAILED: {type(exc).__name__}: {exc}")
                traceback.print_exc(limit=4)
            pairs = (("new", "fla"), ("old", "fla"), ("new", "old"))
            times = " ".join(_ms(row, k) for k in ("new", "kernels", "kseq", "kpipe", "old", "fla"))
            out(f"  {name:<18} {T:>6} {times} " + " ".join(_ratio(row, x, y) for x, y in pairs))
        del a
        dev.free()


def kernels_time(dev, a, kind, args, chunk=None):
    """Seconds of ``_fused_chunk.forward`` alone on (B*H, T, d) inputs (None where it does not apply)."""
    xp = dev.xp
    Q, K, V = a["Q"], a["K"], a["V"]
    lead, T = Q.shape[:-2], Q.shape[-2]
    g = a["g"][..., None] if kind else xp.zeros(lead + (T, 1), dtype=Q.dtype)
    b = xp.ones(lead + (T,), dtype=Q.dtype)
    M0 = xp.zeros(lead + (V.shape[-1], Q.shape[-1]), dtype=Q.dtype)
    z0 = xp.zeros(lead + (Q.shape[-1],), dtype=Q.dtype)
    C = min(chunk or ich.DEFAULT_CHUNK, T)
    gated = bool(kind)  # as the layer's call site: ungated linear attention skips the decays
    if fc.forward(xp, Q, K, V, g, b, M0, z0, C, False, gated=gated) is None:
        return None
    call = lambda: fc.forward(xp, Q, K, V, g, b, M0, z0, C, False, gated=gated)  # noqa: E731
    return dev.time(call, args.warmup, args.runs)[0]


def per_kernel(dev, out, args):
    """Each kernel of ``forward`` alone (its launches wrapped between CUDA events), by state form and C."""
    T = 4096 if not dev.dry else 200
    out(f"\n## 3. each kernel alone, ms (median of {args.runs}), linear attention, T={T}")
    if dev.dry:
        out("  (a GPU run only: the kernels do not run on NumPy)")
        return
    cp, xp = dev.cp, dev.xp
    a = {k: xp.asarray(v) for k, v in inputs(args.B, args.H, T, args.d).items()}
    Q, K, V = a["Q"], a["K"], a["V"]
    lead, d = Q.shape[:-2], Q.shape[-1]
    g = xp.zeros(lead + (T, 1), dtype=Q.dtype)
    b = xp.ones(lead + (T,), dtype=Q.dtype)
    M0, z0 = xp.zeros(lead + (d, d), dtype=Q.dtype), xp.zeros(lead + (d,), dtype=Q.dtype)
    # linear attention is ungated (its output kernel skips the decays); one gated row for the decays' cost
    runs = [("scan", C, {}, False) for C in (32, 64, 16)] + [("sequential", 32, {}, False)]
    runs += [("pipelined", 32, {}, True)]
    runs += [("pipelined", C, dict(zip(("PIPE_BK", "PIPE_BV", "PIPE_TK", "PIPE_TV"), t, strict=True)), False)
             for C in (32, 64) for t in PIPE_TILES]  # fmt: skip
    for algo, C, cfg, gated in runs:
        with constants(STATE_ALGO=algo, **cfg):
            tiles = ",".join(f"{name[5:]}={val}" for name, val in cfg.items())
            label = f"{algo:<10} C={C:<3}" + (" gated" if gated else "") + (f" {tiles}" if cfg else "")
            if fc.forward(xp, Q, K, V, g, b, M0, z0, C, False, gated=gated) is None:
                out(f"  {label}: the kernels do not apply")
                continue
            names = fc._names(Q.dtype, d, C, gated)
            fns, events = fc._MODULES[names], {i: [] for i in range(len(names))}

            def timed(f, i, events=events):
                class Timed:  # forward sets attributes (shared sizes) on the function: pass them on
                    def __setattr__(self, k, v):
                        setattr(f, k, v)

                    def __call__(self, *args_, **kw):
                        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
                        e0.record()
                        f(*args_, **kw)
                        e1.record()
                        events[i].append((e0, e1))

                return Timed()

            fc._MODULES[names] = tuple(timed(f, i) for i, f in enumerate(fns))
            try:
                for _ in range(args.warmup + args.runs):
                    fc.forward(xp, Q, K, V, g, b, M0, z0, C, False, gated=gated)
                cp.cuda.Device().synchronize()
            finally:
                fc._MODULES[names] = fns
            parts = [
                f"{names[i].split('<')[0]} "
                f"{statistics.median(cp.cuda.get_elapsed_time(e0, e1) for e0, e1 in ev[args.warmup :]):.3f}"
                for i, ev in events.items()
            ]
            out(f"  {label} " + ", ".join(parts))
    dev.free()


def sweep(dev, out, args, t0):
    T = 4096 if not dev.dry else 200
    out(
        f"\n## 4. sweep at T={T} (linear attention, B={args.B} H={args.H} d={args.d}): ms, kernels alone, "
        "whole layer"
    )
    host = inputs(args.B, args.H, T, args.d)
    a = {k: dev.xp.asarray(v) for k, v in host.items()}
    layer = tt.recipes.linear_attention()
    base = dict(DELTA_BK=fc.DELTA_BK, DELTA_BV=fc.DELTA_BV, DELTA_TK=fc.DELTA_TK, DELTA_TV=fc.DELTA_TV,
                SCAN_UNROLL=fc.SCAN_UNROLL, SCAN_THREADS=fc.SCAN_THREADS,
                OUT_BV=fc.OUT_BV, OUT_TI=fc.OUT_TI, OUT_TV=fc.OUT_TV, OUT_THREADS=fc.OUT_THREADS)  # fmt: skip
    base.update(PIPE_BK=fc.PIPE_BK, PIPE_BV=fc.PIPE_BV, PIPE_TK=fc.PIPE_TK, PIPE_TV=fc.PIPE_TV,
                STATE_ALGO=fc.STATE_ALGO)  # fmt: skip
    scan = {"STATE_ALGO": "scan"}  # the scan's constants matter only when it forms the states
    configs = [
        ("delta", {**scan, **dict(zip(("DELTA_BK", "DELTA_BV", "DELTA_TK", "DELTA_TV"), t, strict=True))})
        for t in DELTA_TILES
    ]
    configs += [
        ("scan", {**scan, **dict(zip(("SCAN_UNROLL", "SCAN_THREADS"), t, strict=True))})
        for t in SCAN_SETTINGS
    ]
    configs += [
        ("pipe", {"STATE_ALGO": "pipelined", **dict(zip(("PIPE_BK", "PIPE_BV", "PIPE_TK", "PIPE_TV"), t,
                                                         strict=True))})
        for t in PIPE_TILES
    ]  # fmt: skip
    configs += [
        ("out", dict(zip(("OUT_BV", "OUT_TI", "OUT_TV", "OUT_THREADS"), t, strict=True))) for t in OUT_TILES
    ]
    configs = [(g, c) for g, c in configs if g in args.sweep_groups.split(",")]
    out(f"  {'C':>3} {'group':<6} {'setting':<34} {'kernels':>8} {'layer':>8}")
    best = None
    for C in CHUNKS:
        for group, cfg in configs:
            if time.perf_counter() - t0 > args.budget_s:
                out(f"  C={C} {group} {cfg}: skipped (budget {args.budget_s} s spent)")
                continue
            label = ",".join(f"{k.split('_')[1]}={v}" for k, v in cfg.items() if k != "STATE_ALGO")
            try:
                with constants(**{**base, **cfg}):
                    kt = kernels_time(dev, a, "", args, chunk=C)
                    lt = dev.time(lambda C=C: layer(a["Q"], a["K"], a["V"], method="chunked", chunk_size=C),
                                  args.warmup, args.runs)[0]  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                out(f"  {C:>3} {group:<6} {label:<34} FAILED: {type(exc).__name__}: {exc}")
                continue
            if kt is not None and (best is None or kt < best[0]):
                best = (kt, C, {**base, **cfg})
            k_s = f"{kt * 1e3:8.3f}" if kt else f"{'—':>8}"
            out(f"  {C:>3} {group:<6} {label:<34} {k_s} {lt * 1e3:8.3f}")
            dev.free()
    if best:
        out(f"  fastest kernels: {best[0] * 1e3:.3f} ms at C={best[1]}, {best[2]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--T", type=lambda s: [int(x) for x in s.split(",")], default=[1024, 4096, 16384])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=220.0)
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--kernels-only", action="store_true", help="section 3 alone (each kernel's time)")
    ap.add_argument("--sweep-groups", default="delta,scan,pipe,out",
                    help="comma-separated groups of section 4: delta, scan (the scan's kernels), pipe (the "
                         "pipelined pass's tile), out (the output kernel's tile)")  # fmt: skip
    ap.add_argument("--cpu-dry-run", action="store_true")
    ap.add_argument("--out", default=None, help="also write the report to this file")
    args = ap.parse_args(argv)
    if args.cpu_dry_run:
        args.B, args.H, args.d, args.T, args.runs, args.warmup = 1, 2, 16, [64, 100], 2, 1
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = Out(args.out)
    t0 = time.perf_counter()
    try:
        dev = Dev(args.cpu_dry_run)
    except Exception as exc:  # noqa: BLE001
        out(f"no GPU run possible: {type(exc).__name__}: {exc} (try --cpu-dry-run)")
        return 1
    out(f"# gpu_fused_chunk: {dev.card}")
    out(f"# defaults: C={ich.DEFAULT_CHUNK}, states by {fc.STATE_ALGO!r}: delta tile BK={fc.DELTA_BK} "
        f"BV={fc.DELTA_BV} TK={fc.DELTA_TK} TV={fc.DELTA_TV}, scan unroll={fc.SCAN_UNROLL} "
        f"threads={fc.SCAN_THREADS} (sequential: BK={fc.STATE_BK} BV={fc.STATE_BV} TK={fc.STATE_TK} "
        f"TV={fc.STATE_TV}), out tile BV={fc.OUT_BV} TI={fc.OUT_TI} TV={fc.OUT_TV} "
        f"threads={fc.OUT_THREADS}")  # fmt: skip
    if dev.fla_error:
        out(f"# {dev.fla_error}")
    ok = True
    if args.kernels_only:
        per_kernel(dev, out, args)
        return 0
    try:
        ok = checks(dev, out, args)
    except Exception as exc:  # noqa: BLE001
        ok = False
        out(f"checks FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc()
    timings(dev, out, args, t0)
    try:
        per_kernel(dev, out, args)
    except Exception as exc:  # noqa: BLE001
        out(f"per-kernel timings FAILED: {type(exc).__name__}: {exc}")
    if not args.no_sweep:
        sweep(dev, out, args, t0)
    out(f"\n# total {time.perf_counter() - t0:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
