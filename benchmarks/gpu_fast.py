r"""The fast linear-memory methods on one GPU (CuPy) against flash-linear-attention (fla, torch + Triton).

For each layer at B = 8, H = 16 (128 heads), T in {1024, 4096, 16384}, d_k = d_v = 64, float32:

* ours: ``layer(Q, K, V, log_alpha=..., beta=..., method=m)`` on CuPy arrays of shape (B, H, T, d), for every
  method the layer supports, plus ``chunked`` ("not registered" while no such method exists);
* the fla peer on the same numbers, as torch tensors in fla's (B, T, H, d) layout (zero-copy DLPack, then
  a contiguous transpose that is not timed);
* ratio = median ours / median peer (< 1: ours is faster); max rel diff = max |y - y_peer| / max |y_peer|;
  peak = device bytes allocated beyond the inputs (CuPy's pool high-water mark, torch's
  ``max_memory_allocated``).

Pairs, with the conventions mapped (ours: memory M (d_v x d_k), y_t = M_t q_t, no query scale; fla: state
S = M^T (d_k x d_v), o_t = scale * S_t^T q_t with scale = d_k^-1/2 unless given, so ``scale=1.0``; fla's
``g`` is the natural-log decay, as our ``log_alpha``):

* linear attention (g = None) and Mamba-2 (scalar g) vs ``chunk_simple_gla``;
* GLA (g of shape (B, T, H, d_k): our M Diag(alpha) is fla's S * exp(g)[:, None]) vs ``chunk_gla``;
* gated DeltaNet vs ``chunk_gated_delta_rule`` (decay, then the delta step on the decayed state, both);
  keys and queries are unit-norm here and ``use_qk_l2norm_in_kernel=False`` (fla normalises only if asked);
* exact Mesa, y = G (H + rho I)^-1 q with H, G gated sums of beta k k^T, beta v k^T, vs ``chunk_mesa_net``
  (``lamb`` = rho for every head and key dimension, 30 conjugate-gradient steps): the difference is fla's
  CG + TF32 error against our exact solve;
* RLS (ridge 1e-2) has no fla peer: its peer is our own recurrent loop.

Recurrent loops are measured only at T = ``--rec-T`` (1024; the first 1024 tokens, all 128 heads) and
extrapolated linearly in T (each step costs the same); those rows say "extrapolated". A method whose call
is predicted (from a smaller T; quadratic in T for ``parallel``) to take over ``--max-call-seconds`` is not
run, and a failing row prints its error while the run goes on. Last, chunked RLS in float32 against float64
at the largest T: max |dy| / max |y|.

Timing: CUDA events around each call (synchronised), 3 warm-ups then the median of 10 timed calls (two
warm-ups and 3 calls when a call takes over 1 s); memory is freed between rows. Tables go to stdout and, as
Markdown and JSON, to ``--out`` (default: ``$OUT`` if set, else ``benchmarks/out``).

Run: ``python -m benchmarks.gpu_fast [--T 1024,4096] [--quick]``; ``--cpu-dry-run`` checks the logic on
NumPy (small sizes, no fla: the peer is our recurrent loop). Without CuPy and torch it says so and stops.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: python benchmarks/gpu_fast.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttr_stats as tt

FLA_TOL = 5e-3  # fla's Triton dots on float32 inputs run in TF32 (unit roundoff 2^-11 ~ 4.9e-4), d = 64 terms
MESA_TOL = 1e-2  # plus 30 CG steps: condition of H + I stays ~ 10 here (unit keys, beta < 0.9, decay >= 0.9)
REC_TOL = 1e-4  # float32 methods against our float32 recurrent loop (RLS ridge 1e-2 amplifies rounding)


@dataclass
class Case:
    name: str
    make: object  # () -> layer
    gates: str  # "", "a" (scalar log-decay), "ad" (per-dimension), "ab" (scalar + beta)
    fla: str | None  # fla op, None: the peer is our recurrent loop
    tol: float = FLA_TOL


CASES = [
    Case("linear_attention", tt.recipes.linear_attention, "", "simple_gla"),
    Case("mamba2", tt.recipes.mamba2, "a", "simple_gla"),
    Case("gla", tt.recipes.gla, "ad", "gla"),
    Case("gated_deltanet", tt.recipes.gated_deltanet, "ab", "gated_delta_rule"),
    Case("mesa(ridge=1)", lambda: tt.recipes.mesa(ridge=1.0), "ab", "mesa_net", MESA_TOL),
    Case("rls(ridge=1e-2)", lambda: tt.recipes.rls(ridge=1e-2), "", None, REC_TOL),
]


@dataclass
class Row:
    layer: str
    T: int
    contender: str
    ms: float | None = None
    runs: int | None = None
    ratio: float | None = None
    diff: float | None = None
    tol: float | None = None
    peak_gib: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def check(self):
        if self.diff is None or self.tol is None:
            return "—"
        return "ok" if self.diff <= self.tol else "MISMATCH"


# -------------------------------------------------------------------------------------------------------
# the device: CuPy + torch + fla, or NumPy for a dry run
# -------------------------------------------------------------------------------------------------------
class Device:
    """Array namespace, clocks and memory counters of one run."""

    def __init__(self, dry):
        self.dry = dry
        if dry:
            self.xp, self.torch, self.card = np, None, f"CPU dry run ({platform.machine()})"
            self.versions = f"NumPy {np.__version__} (dry run: no CuPy, torch or fla)"
            return
        import cupy as cp
        import fla
        import torch

        self.xp, self.cp, self.torch = cp, cp, torch
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        self.card = f"{name}, {props['totalGlobalMem'] / 2**30:.1f} GiB"
        import triton

        self.versions = (
            f"CuPy {cp.__version__}, torch {torch.__version__}, Triton {triton.__version__}, "
            f"fla {getattr(fla, '__version__', '?')}, NumPy {np.__version__}, CUDA runtime "
            f"{cp.cuda.runtime.runtimeGetVersion()}, driver {cp.cuda.runtime.driverGetVersion()}"
        )

    def free(self):
        if not self.dry:
            self.cp.get_default_memory_pool().free_all_blocks()
            self.torch.cuda.empty_cache()

    def clock(self, fn, torch_stream=False):
        """(seconds, output) of one call: CUDA events on the stream of the library that runs it."""
        if self.dry:
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, out
        if torch_stream:
            e0, e1 = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
            e0.record()
            out = fn()
            e1.record()
            e1.synchronize()
            return e0.elapsed_time(e1) / 1e3, out
        e0, e1 = self.cp.cuda.Event(), self.cp.cuda.Event()
        e0.record()
        out = fn()
        e1.record()
        e1.synchronize()
        return self.cp.cuda.get_elapsed_time(e0, e1) / 1e3, out

    def timed(self, fn, cfg, torch_stream=False):
        """(output, median seconds, timed runs): 3 warm-ups and 10 runs; 2 and 3 for calls over 1 s.

        The first call compiles (Triton, CuPy kernels): the second warm-up decides what is slow.
        """
        _, out = self.clock(fn, torch_stream)
        second, _ = self.clock(fn, torch_stream)
        warm, runs = (cfg["warmup"], cfg["runs"]) if second <= cfg["slow"] else (2, 3)
        for _ in range(warm - 2):
            self.clock(fn, torch_stream)
        times = [self.clock(fn, torch_stream)[0] for _ in range(runs)]
        return out, statistics.median(times), runs

    # peak memory beyond what is allocated when the counter is reset
    def reset_peak(self, torch_side=False):
        if self.dry:
            return 0
        if torch_side:
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        self.free()
        return self.cp.get_default_memory_pool().used_bytes()

    def peak_gib(self, base, torch_side=False):
        if self.dry:
            return None
        if torch_side:
            return (self.torch.cuda.max_memory_allocated() - base) / 2**30
        return (self.cp.get_default_memory_pool().total_bytes() - base) / 2**30  # the pool keeps its blocks


def rel_diff(xp, a, b):
    """max |a - b| / max |b| (float64)."""
    a, b = a.astype(xp.float64), b.astype(xp.float64)
    return float(xp.max(xp.abs(a - b)) / xp.max(xp.abs(b)))


def make_inputs(xp, B, H, T, d, seed):
    """Unit-norm Q, K, Gaussian V (B, H, T, d); log-decay g = log U(0.9, 1); beta ~ U(0.1, 0.9)."""
    rng = np.random.default_rng(seed) if xp is np else xp.random.default_rng(seed)
    f32 = xp.float32

    def unit(x):
        return x / xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True))

    Q = unit(rng.standard_normal((B, H, T, d), dtype=f32))
    K = unit(rng.standard_normal((B, H, T, d), dtype=f32))
    V = rng.standard_normal((B, H, T, d), dtype=f32)
    g = xp.log(0.9 + 0.1 * rng.random((B, H, T), dtype=f32))
    gd = xp.log(0.9 + 0.1 * rng.random((B, H, T, d), dtype=f32))
    b = 0.1 + 0.8 * rng.random((B, H, T), dtype=f32)
    return Q, K, V, g, gd, b


def ours_gates(case, g, gd, b):
    return {"": {}, "a": dict(log_alpha=g), "ad": dict(log_alpha=gd), "ab": dict(log_alpha=g, beta=b)}[
        case.gates
    ]


def fla_call(dev, case, Q, K, V, g, gd, b):
    """``fn() -> y`` running the fla op on torch copies in fla's layout; y is (B, H, T, d) on CuPy."""
    torch, cp = dev.torch, dev.cp

    def fl(x):  # ours (B, H, T, ...) -> fla (B, T, H, ...), contiguous, outside the timed call
        return torch.from_dlpack(x).transpose(1, 2).contiguous()

    q, k, v = fl(Q), fl(K), fl(V)
    if case.fla == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla

        gg = fl(g) if case.gates == "a" else None

        def run():
            return chunk_simple_gla(q, k, v, g=gg, scale=1.0)[0]
    elif case.fla == "gla":
        from fla.ops.gla import chunk_gla

        gk = fl(gd)

        def run():
            return chunk_gla(q, k, v, g=gk, scale=1.0)[0]
    elif case.fla == "gated_delta_rule":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        gg, bb = fl(g), fl(b)

        def run():
            return chunk_gated_delta_rule(q, k, v, g=gg, beta=bb, scale=1.0, use_qk_l2norm_in_kernel=False)[0]
    elif case.fla == "mesa_net":
        from fla.ops.mesa_net import chunk_mesa_net

        gg, bb = fl(g), fl(b)
        lamb = torch.full((Q.shape[1], Q.shape[-1]), 1.0, dtype=torch.float32, device=q.device)  # rho = 1

        def run():
            return chunk_mesa_net(q, k, v, g=gg, beta=bb, lamb=lamb, max_CG_iteration=30)[0]
    else:
        raise ValueError(case.fla)
    return run, lambda o: cp.from_dlpack(o.transpose(1, 2).contiguous())


def unavailable(layer, method):
    """``None`` if ``layer`` runs ``method``; else "not registered" or the reason it does not run it."""
    registered = {m.name: m for m in tt.methods.methods_for(layer.family)}
    if method not in registered:
        return "not registered"
    why = registered[method].check(layer)
    return None if why is None else f"not supported: {why}"


def auto_choice(layer, Q, K, V, gates):
    """The method ``method="auto"`` picks here, without running it (a peek at the layer's internals)."""
    try:
        P = layer._prepare(Q, K, V, None, gates.get("log_alpha"), gates.get("beta"), None)
        return layer._choose("auto", P).name
    except Exception as exc:  # noqa: BLE001 - a label only
        return f"? ({type(exc).__name__})"


def error_note(exc):
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"


# -------------------------------------------------------------------------------------------------------
# one layer at one T
# -------------------------------------------------------------------------------------------------------
def run_case(dev, case, T, cfg, seed, history):
    """Rows of one layer at one T: the peer, then every method of ours; plus one summary dict."""
    xp, B, H, d = dev.xp, cfg["B"], cfg["H"], cfg["d"]
    rows, layer = [], case.make()
    Q, K, V, g, gd, b = make_inputs(xp, B, H, T, d, seed + T)
    gates = ours_gates(case, g, gd, b)
    rec_T = min(cfg["rec_T"], T)
    pre = tuple(x[:, :, :rec_T] for x in (Q, K, V))
    pre_gates = {k: v[:, :, :rec_T] for k, v in gates.items()}

    # the peer: fla, or (RLS, dry run) our recurrent loop on the first rec_T tokens, extrapolated
    y_peer, peer_s, peer_rows = None, None, T
    use_fla = case.fla is not None and not dev.dry
    label = f"fla chunk_{case.fla}" if use_fla else "ours recurrent (peer)"
    try:
        if use_fla:
            run, to_xp = fla_call(dev, case, Q, K, V, g, gd, b)
            base = dev.reset_peak(torch_side=True)
            o, peer_s, runs = dev.timed(run, cfg, torch_stream=True)
            peak = dev.peak_gib(base, torch_side=True)
            y_peer = to_xp(o)
            del o, run
            rows.append(Row(case.name, T, label, peer_s * 1e3, runs, 1.0, peak_gib=peak, note="peer"))
        else:
            y_peer, s, runs, peak, note = recurrent(dev, case, layer, pre, pre_gates, cfg, history)
            peer_s, peer_rows = s * T / rec_T, rec_T
            note = "peer" + (f"; extrapolated x{T / rec_T:g} from T = {rec_T}" if T > rec_T else "") + note
            rows.append(Row(case.name, T, label, peer_s * 1e3, runs, 1.0, peak_gib=peak, note=note))
    except Exception as exc:  # noqa: BLE001 - the row says what failed, the run goes on
        rows.append(Row(case.name, T, label, note=error_note(exc)))
    dev.free()

    choice = auto_choice(layer, Q, K, V, gates)
    methods = ["chunked"] + [m for m in layer.supported_methods if m != "chunked"]
    methods = [m for m in methods if cfg.get("methods") is None or m in cfg["methods"]]
    for m in methods:
        lab = f"ours {m}" + (" (auto)" if m == choice else "")
        why = unavailable(layer, m)
        if why:
            rows.append(Row(case.name, T, lab, note=why))
            continue
        if m == "recurrent" and not use_fla:  # the peer row is this measurement already
            rows.append(Row(case.name, T, lab, peer_s and peer_s * 1e3, note="= the peer row"))
            continue
        guess = None if m == "recurrent" else history.predicted(case.name, m, T)
        if guess is not None and guess > cfg["max_call"]:
            rows.append(Row(case.name, T, lab, note=f"not run: predicted {guess:.3g} s per call"))
            continue
        try:
            if m == "recurrent":  # measured on the first rec_T tokens, extrapolated linearly
                y, s, runs, peak, note = recurrent(dev, case, layer, pre, pre_gates, cfg, history)
                n = min(rec_T, peer_rows)
                if T > rec_T:
                    s *= T / rec_T
                    note = (
                        f"extrapolated x{T / rec_T:g} from T = {rec_T}; diff over the first {n} tokens{note}"
                    )
            else:
                base = dev.reset_peak()
                y, s, runs = dev.timed(lambda m=m: layer(Q, K, V, method=m, **gates), cfg)
                peak = dev.peak_gib(base)
                history.add(case.name, m, T, s)
                n, note = peer_rows, "" if peer_rows == T else f"diff over the first {peer_rows} tokens"
            diff = None if y_peer is None else rel_diff(xp, y[:, :, :n], y_peer[:, :, :n])
            rows.append(Row(case.name, T, lab, s * 1e3, runs, peer_s and s / peer_s, diff, case.tol, peak,
                            note))  # fmt: skip
            del y
        except Exception as exc:  # noqa: BLE001
            rows.append(Row(case.name, T, lab, note=error_note(exc)))
        dev.free()

    timed_ours = [r for r in rows[1:] if r.ms is not None and "extrapolated" not in r.note]
    best = min(timed_ours, key=lambda r: r.ms, default=None)
    summary = dict(layer=case.name, T=T, best=best and best.contender, best_ms=best and best.ms,
                   peer=label, peer_ms=peer_s and peer_s * 1e3, ratio=best and best.ratio,
                   diff=best and best.diff, check=best.check if best else "—",
                   best_peak_gib=best and best.peak_gib, peer_peak_gib=rows[0].peak_gib,
                   auto=choice)  # fmt: skip
    return rows, summary  # the caller frees the device memory once these locals are gone


def recurrent(dev, case, layer, pre, pre_gates, cfg, history):
    """Our recurrent loop on the first rec_T tokens: (y, seconds, runs, peak GiB, note).

    Timed once per layer (each step costs the same at every T); at a later T it runs once more, untimed,
    for the difference on that T's inputs.
    """

    def run():
        return layer(*pre, method="recurrent", **pre_gates)

    if case.name in history.rec:
        s, runs, peak, T0 = history.rec[case.name]
        return run(), s, runs, peak, f"; timed in the T = {T0} run"
    base = dev.reset_peak()
    y, s, runs = dev.timed(run, cfg)
    peak = dev.peak_gib(base)
    history.rec[case.name] = (s, runs, peak, history.current_T)
    return y, s, runs, peak, ""


class History:
    """Seconds per call of each (layer, method) at each T, to predict larger T."""

    def __init__(self):
        self.seen, self.rec, self.current_T = {}, {}, None

    def add(self, name, method, T, s):
        self.seen[(name, method, T)] = s

    def predicted(self, name, method, T):
        done = [(t, s) for (n, m, t), s in self.seen.items() if n == name and m == method and t < T]
        if not done:
            return None
        t0, s0 = max(done)
        return s0 * (T / t0) ** (2 if method == "parallel" else 1)


def rls_precision(dev, cfg, T, seed):
    """Chunked RLS, float32 against float64 on the same inputs: max |dy| / max |y64|."""
    layer = tt.recipes.rls(ridge=1e-2)
    why = unavailable(layer, "chunked")
    if why:
        return Row("rls(ridge=1e-2) float32 vs float64", T, "ours chunked", note=why)
    xp = dev.xp
    Q, K, V, *_ = make_inputs(xp, cfg["B"], cfg["H"], T, cfg["d"], seed + T)
    try:
        y32 = layer(Q, K, V, method="chunked")
        y64 = layer(*(x.astype(xp.float64) for x in (Q, K, V)), method="chunked")
        return Row("rls(ridge=1e-2) float32 vs float64", T, "ours chunked", diff=rel_diff(xp, y32, y64),
                   note="max |y32 - y64| / max |y64|")  # fmt: skip
    except Exception as exc:  # noqa: BLE001
        return Row("rls(ridge=1e-2) float32 vs float64", T, "ours chunked", note=error_note(exc))
    finally:
        dev.free()


# -------------------------------------------------------------------------------------------------------
# output
# -------------------------------------------------------------------------------------------------------
def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def markdown(header, rows, summaries, precision):
    out = [header, "", "### Summary: our fastest measured method against the peer", ""]
    out += ["| layer | T | ours: best method | ours ms | peer | peer ms | ratio | max rel diff | check | "
            "ours peak GiB | peer peak GiB | auto picks |", "|" + "---|" * 12]  # fmt: skip
    for s in summaries:
        out.append(f"| {s['layer']} | {s['T']} | {s['best'] or '—'} | {fmt(s['best_ms'], '.4g')} | "
                   f"{s['peer']} | {fmt(s['peer_ms'], '.4g')} | {fmt(s['ratio'], '.3g')} | "
                   f"{fmt(s['diff'], '.1e')} | {s['check']} | {fmt(s['best_peak_gib'], '.3g')} | "
                   f"{fmt(s['peer_peak_gib'], '.3g')} | {s['auto']} |")  # fmt: skip
    out += ["", "### Every contender", "",
            "| layer | T | contender | median ms | runs | ratio vs peer | max rel diff vs peer | tol | "
            "check | peak GiB | note |", "|" + "---|" * 11]  # fmt: skip
    for r in rows:
        out.append(f"| {r.layer} | {r.T} | {r.contender} | {fmt(r.ms, '.4g')} | {fmt(r.runs, 'd')} | "
                   f"{fmt(r.ratio, '.3g')} | {fmt(r.diff, '.1e')} | {fmt(r.tol, '.0e')} | {r.check} | "
                   f"{fmt(r.peak_gib, '.3g')} | {r.note} |")  # fmt: skip
    if precision is not None:
        out += ["", "### Chunked RLS: float32 against float64", "",
                f"- T = {precision.T}: {fmt(precision.diff, '.2e')} ({precision.note})"]  # fmt: skip
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", default="", help="comma-separated sequence lengths (default 1024,4096,16384)")
    ap.add_argument("--quick", action="store_true", help="smoke run: B = 2, H = 2, T = 256")
    ap.add_argument("--cpu-dry-run", action="store_true", help="NumPy, small sizes, no fla: checks the logic")
    ap.add_argument(
        "--layers", default="", help="comma-separated subset of: " + ",".join(c.name for c in CASES)
    )
    ap.add_argument("--rec-T", type=int, default=None, help="T at which recurrent loops are measured (1024)")
    ap.add_argument("--max-call-seconds", type=float, default=5.0)
    ap.add_argument("--methods", default="", help="comma-separated subset of our methods to time (the peer "
                    "always runs; default: every supported method)")  # fmt: skip
    ap.add_argument("--out", default=None, help="folder for gpu_fast.md / gpu_fast.json")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    if not args.cpu_dry_run:
        try:
            import cupy  # noqa: F401
            import fla  # noqa: F401
            import torch

            if not torch.cuda.is_available():
                raise ImportError("torch sees no CUDA device")
        except ImportError as exc:
            print(f"gpu_fast: skipped, needs CuPy, torch with CUDA and fla ({exc}); try --cpu-dry-run")
            return 0
    dev = Device(args.cpu_dry_run)
    if args.cpu_dry_run:
        cfg = dict(B=1, H=2, d=16, Ts=(128, 256), rec_T=128)
    elif args.quick:
        cfg = dict(B=2, H=2, d=64, Ts=(256,), rec_T=256)
    else:
        cfg = dict(B=8, H=16, d=64, Ts=(1024, 4096, 16384), rec_T=1024)
    cfg.update(warmup=3, runs=10, slow=1.0, max_call=args.max_call_seconds)
    if args.T:
        cfg["Ts"] = tuple(int(t) for t in args.T.split(","))
    if args.rec_T:
        cfg["rec_T"] = args.rec_T
    cfg["methods"] = set(args.methods.split(",")) if args.methods else None
    cases = [c for c in CASES if not args.layers or c.name in args.layers.split(",")]
    out_dir = Path(args.out or os.environ.get("OUT") or Path(__file__).resolve().parent / "out")

    t_start = time.perf_counter()
    header = (f"## Fast methods vs flash-linear-attention — {dev.card}\n\n"
              f"- {dev.versions}; ttr_stats {getattr(tt, '__version__', 'n/a')}\n"
              f"- B = {cfg['B']}, H = {cfg['H']} ({cfg['B'] * cfg['H']} heads), d_k = d_v = {cfg['d']}, "
              f"float32; recurrent loops measured at T = {cfg['rec_T']} and extrapolated linearly\n"
              "- ratio = median ours / median peer (< 1: ours faster); max rel diff = max|y - y_peer| / "
              "max|y_peer|; peak = device memory allocated beyond the inputs")  # fmt: skip
    print(header, flush=True)
    rows, summaries, history = [], [], History()
    for T in cfg["Ts"]:
        history.current_T = T
        for case in cases:
            r, s = run_case(dev, case, T, cfg, args.seed, history)
            dev.free()
            for row in r:
                print(f"  {row.layer:<18} T={row.T:<6} {row.contender:<44} {fmt(row.ms, '10.4g')} ms  "
                      f"ratio {fmt(row.ratio, '.3g'):>7}  diff {fmt(row.diff, '.1e'):>8} {row.check:<8} "
                      f"peak {fmt(row.peak_gib, '.3g')} GiB  {row.note}", flush=True)  # fmt: skip
            rows += r
            summaries.append(s)
    precision = None
    if any(c.name.startswith("rls") for c in cases):
        precision = rls_precision(dev, cfg, max(cfg["Ts"]), args.seed)
    wall = time.perf_counter() - t_start
    text = markdown(header, rows, summaries, precision) + f"\n\ntotal wall time: {wall:.1f} s\n"
    print("\n" + text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_fast.md").write_text(text)
    payload = dict(card=dev.card, versions=dev.versions, config={k: v for k, v in cfg.items()},
                   summary=summaries, rows=[asdict(r) | {"check": r.check} for r in rows],
                   rls_precision=precision and asdict(precision), wall_s=wall)  # fmt: skip
    (out_dir / "gpu_fast.json").write_text(json.dumps(payload, indent=1, default=str))
    print(f"written: {out_dir / 'gpu_fast.md'}, {out_dir / 'gpu_fast.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
