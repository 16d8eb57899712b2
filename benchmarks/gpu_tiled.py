r"""Tiled softmax / Nadaraya-Watson and local linear attention on one GPU (CuPy), against torch SDPA.

At B = 8, H = 16 (128 heads), T in {1024, 4096}, d_k = d_v = 64 (``--T``, ``--B``, ``--H``), per case:

* ``fused``: ``layer(Q, K, V, method="tiled")`` on CuPy, which runs the fused kernel of
  ``ttr_stats/methods/kernel_smoother/_fused_nw.py``;
* ``kernel only, v2 default``: the kernel the layer runs (its variant and tile shape for the size) alone on
  operands prepared outside the timed call (no input checks, no output check): the layer's row minus this
  one is its host time before the launch and after the kernel;
* ``fused kernel only, C=...``: v1 alone the same way, at each tile length of ``_fused_nw.TILES`` (128:
  float32 only);
* ``tiled (array)``: the same call with the kernel switched off (``_fused_nw.ENABLED = False``): the
  array-API tiled path, batched CuPy matrix products;
* ``parallel``: the dense T x T form, where its ~4 B H T^2 itemsize bytes fit a quarter of free memory;
* peers, same numbers as torch tensors (zero-copy DLPack): ``torch SDPA causal``
  (``scaled_dot_product_attention(is_causal=True)``), ``torch SDPA window mask`` (a boolean (T, T) mask
  ``0 <= t - i < w``, with ``or i < 4`` for the sink window), for forgetting attention ``torch SDPA +
  bias`` (the dense (B, H, T, T) float mask of the gate sums, built outside the timed call) and fla's
  ``parallel_forgetting_attn`` if fla is there;
* local linear attention (p = 1, ridge 1e-2): ``tiled (array)`` only (no fused form yet) and its share of
  the card's float32 matrix-product rate measured in the same run (``cupy.matmul`` 8192^2).

Columns: milliseconds (wall clock around a call with the device synchronised before and after, median
of ``--runs`` calls after two warm-ups; the first warm-up compiles the NVRTC kernel), ratio = ms / ms of
the row's peer (the float32 torch SDPA with the same mask, also for the float64 rows; < 1: faster),
TFLOP/s (4 d per pair for softmax rows; for local linear the ``2 d^2 + 2 d d_v`` multiply-adds of the
centred second moments per pair), max |diff| = max |y - y64| / max |y64| on the first head's first
``--check-T`` tokens against the float64 NumPy ``parallel`` reference on the host (causal: those outputs
depend on those tokens only), peak = CuPy pool bytes beyond the inputs (torch rows: torch's counter).

Each variant runs in its own try/except (a failure prints its error and the run goes on); a variant that
would start after ``--budget-s`` seconds (150) is skipped and says so. Prints a table; writes nothing.

Run: ``python -m benchmarks.gpu_tiled [--T 1024,4096]``; ``--cpu-dry-run`` checks the logic on NumPy at
small sizes (the fused kernel replaced by its NumPy reference; torch's peers on the CPU if torch is there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: python benchmarks/gpu_tiled.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ttr_stats as tt
from ttr_stats.methods.kernel_smoother import _fused_nw
from ttr_stats.regressors import LocalPolynomial
from ttr_stats.similarity import ExpDot

WINDOW = 512
SINKS = 4


def layer(weights=None, order=0, ridge=0.0):
    return tt.TestTimeRegression(
        weights=weights or tt.weights.Uniform(), regressor=LocalPolynomial(order, ExpDot(), ridge)
    )


CASES = [  # name, layer factory, gates ("" or "a": log_alpha), peer kind
    ("causal softmax", lambda: layer(), "", "sdpa"),
    (f"sliding window {WINDOW}", lambda: layer(tt.weights.SlidingWindow(WINDOW)), "", "sdpa_window"),
    (
        f"window {WINDOW} + {SINKS} sinks",
        lambda: tt.recipes.sink_window_attention(WINDOW, SINKS),
        "",
        "sdpa_sink",
    ),  # fmt: skip
    ("forgetting attention", lambda: layer(tt.weights.Gated()), "a", "sdpa_bias"),
    ("local linear (ridge 1e-2)", lambda: layer(order=1, ridge=1e-2), "", None),
]


class Device:
    def __init__(self, dry):
        self.dry = dry
        self.torch = None
        if dry:
            self.xp = np
            self.card = "CPU dry run"
            try:  # the peers' code on torch's CPU tensors, when torch is there
                import torch

                self.torch = torch
            except ImportError:
                pass
            return
        import cupy as cp

        self.xp = self.cp = cp
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        self.card = f"{name}, {props['totalGlobalMem'] / 2**30:.1f} GiB, CuPy {cp.__version__}"
        try:
            import torch

            self.torch = torch
            self.card += f", torch {torch.__version__}"
        except Exception as exc:  # noqa: BLE001 - no torch: the peers are skipped, ours still run
            print(f"torch unavailable ({exc}); peers skipped")

    def sync(self):
        if not self.dry:
            self.cp.cuda.Device().synchronize()
            if self.torch is not None:
                self.torch.cuda.synchronize()

    def clock(self, fn):
        self.sync()
        t0 = time.perf_counter()
        out = fn()
        self.sync()
        return time.perf_counter() - t0, out

    def timed(self, fn, runs):
        """(output, median seconds): two warm-ups (the first compiles), then ``runs`` calls (1 if slow)."""
        _, out = self.clock(fn)
        second, _ = self.clock(fn)
        n = runs if second < 1.0 else 1
        return out, statistics.median([self.clock(fn)[0] for _ in range(n)])

    def free(self):
        if not self.dry:
            self.cp.get_default_memory_pool().free_all_blocks()
            if self.torch is not None:
                self.torch.cuda.empty_cache()

    def pool_base(self, torch_side=False):
        if self.dry:
            return 0
        if torch_side:
            self.torch.cuda.reset_peak_memory_stats()
            return self.torch.cuda.memory_allocated()
        self.free()
        return self.cp.get_default_memory_pool().total_bytes()

    def peak_mib(self, base, torch_side=False):
        if self.dry:
            return None
        if torch_side:
            return (self.torch.cuda.max_memory_allocated() - base) / 2**20
        return (self.cp.get_default_memory_pool().total_bytes() - base) / 2**20

    def free_bytes(self):
        if self.dry:
            return 2**31
        return self.cp.cuda.Device().mem_info[0]

    def to_torch(self, x):
        return self.torch.from_dlpack(x)


def inputs(dev, B, H, T, d, dtype, seed=0):
    """Q, K, V (B, H, T, d) standard normal, log_alpha = log U(0.9, 1) (forgetting gates), on the device."""
    rng = np.random.default_rng(seed)
    Q, K, V = (rng.standard_normal((B, H, T, d)) for _ in range(3))
    la = np.log(rng.uniform(0.9, 1.0, (B, H, T)))
    put = (lambda x: x.astype(dtype)) if dev.dry else (lambda x: dev.cp.asarray(x, dtype=dtype))
    return (Q, K, V, la), tuple(put(x) for x in (Q, K, V, la))


def reference(L, host, gates, n):
    """float64 NumPy ``parallel`` on head (0, 0), the first n tokens."""
    Q, K, V, la = (x[0, 0, :n] for x in host)
    kw = {"log_alpha": la} if gates else {}
    return L(Q, K, V, method="parallel", **kw)


def max_diff(dev, y, ref):
    y = np.asarray(y if dev.dry else dev.cp.asnumpy(y), dtype=np.float64)[0, 0, : ref.shape[0]]
    return float(np.abs(y - ref).max() / np.abs(ref).max())


def matmul_rate(dev):
    """float32 TFLOP/s of cupy.matmul at 8192^2 (the card's matrix-product rate in this run)."""
    if dev.dry:
        return None
    cp = dev.cp
    n = 8192
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    _, s = dev.timed(lambda: a @ b, 5)
    return 2 * n**3 / s / 1e12


def pair_count(name, B, H, T):
    if name.startswith(("sliding", "window")):
        w = min(WINDOW, T)
        sinks = SINKS * max(0, T - w) if name.startswith("window") else 0  # each later query's sink pairs
        return B * H * (w * (w + 1) // 2 + (T - w) * w + sinks)
    return B * H * T * (T + 1) // 2


def torch_peer(dev, kind, dQ, dK, dV, dla, T, d):
    """(label, callable) of the torch / fla peer, or None."""
    torch = dev.torch
    F = torch.nn.functional
    q, k, v = (dev.to_torch(x) for x in (dQ, dK, dV))
    if kind == "sdpa":
        return "torch SDPA causal", lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = torch.arange(T, device=q.device)
    if kind in ("sdpa_window", "sdpa_sink"):
        lag = t[:, None] - t[None, :]
        keep = (lag < WINDOW) | (t[None, :] < SINKS) if kind == "sdpa_sink" else lag < WINDOW
        mask = (lag >= 0) & keep
        return "torch SDPA window mask", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if kind == "sdpa_bias":
        G = torch.cumsum(dev.to_torch(dla), dim=-1)  # the peer's own convention: G_t - G_i
        bias = G[..., :, None] - G[..., None, :]
        bias = bias.masked_fill(t[:, None] < t[None, :], float("-inf")).to(q.dtype)
        return "torch SDPA + bias", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return None


def fla_forgetting(dev, dQ, dK, dV, dla):
    from fla.ops.forgetting_attn import parallel_forgetting_attn

    tr = lambda x: dev.to_torch(x).transpose(1, 2).contiguous()  # noqa: E731 - (B, T, H, ...)
    q, k, v = tr(dQ), tr(dK), tr(dV)
    g = dev.to_torch(dla).transpose(1, 2).contiguous()
    return lambda: parallel_forgetting_attn(q, k, v, g).transpose(1, 2)


class Runner:
    def __init__(self, dev, args):
        self.dev, self.args = dev, args
        self.t0 = time.perf_counter()
        self.rows = []
        self.ll = {}  # (case, T) -> ms of local linear, to predict the next T
        self.peers = {}  # (case, T) -> ms of the float32 peer, the ratio's denominator for both dtypes

    def over_budget(self):
        return time.perf_counter() - self.t0 > self.args.budget_s

    def row(self, case, T, dtype, variant, fn, ref, pairs, flop_per_pair, torch_side=False, peer_ms=None):
        """Time one variant; the row records ms, ratio to ``peer_ms``, TFLOP/s, max diff, peak MiB."""
        dev = self.dev
        rec = {"case": case, "T": T, "dtype": dtype, "variant": variant}
        if self.over_budget():
            rec["note"] = "skipped: time budget"
            self.rows.append(rec)
            return None
        try:
            base = dev.pool_base(torch_side)
            y, s = dev.timed(fn, self.args.runs)
            rec["ms"] = s * 1e3
            rec["peak"] = dev.peak_mib(base, torch_side)
            rec["tflops"] = pairs * flop_per_pair / s / 1e12
            if peer_ms:
                rec["ratio"] = s * 1e3 / peer_ms
            if ref is not None:
                if torch_side and not dev.dry:
                    y = dev.cp.from_dlpack(y.detach())
                rec["diff"] = max_diff(dev, y, ref)
            del y
        except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the run
            first = str(exc).splitlines()[0][:120] if str(exc) else ""
            rec["note"] = f"failed: {type(exc).__name__}: {first}"
        dev.free()
        self.rows.append(rec)
        print(fmt_row(rec), flush=True)
        return rec.get("ms")

    def case(self, name, make, gates, peer, T, dtype):
        dev, a = self.dev, self.args
        B, H, d = a.B, a.H, a.d
        L = make()
        host, (dQ, dK, dV, dla) = inputs(dev, B, H, T, d, dtype)
        kw = {"log_alpha": dla} if gates else {}

        def ours(method):
            return lambda: L(dQ, dK, dV, method=method, **kw)

        n = min(T, a.check_T)
        try:
            ref = reference(L, host, gates, n)
        except Exception as exc:  # noqa: BLE001
            print(f"{name}: reference failed: {exc}")
            ref = None
        order = int(L.regressor.order)
        pairs = pair_count(name, B, H, T)
        flop = 4 * d if order == 0 else 2 * (d * d + d * d) + 4 * d
        dname = "float32" if dtype == np.float32 else "float64"
        peer_ms = self.peers.get((name, T))
        if peer is not None and dev.torch is not None and dtype == np.float32:
            try:
                label, fn = torch_peer(dev, peer, dQ, dK, dV, dla, T, d)
                peer_ms = self.row(name, T, dname, label, fn, ref, pairs, 4 * d, torch_side=True)
                self.peers[(name, T)] = peer_ms
            except Exception as exc:  # noqa: BLE001
                print(f"{name}: peer failed: {exc}")
            if peer == "sdpa_bias":
                try:
                    fn = fla_forgetting(dev, dQ, dK, dV, dla)
                    label = "fla parallel_forgetting_attn"
                    self.row(name, T, dname, label, fn, ref, pairs, 4 * d, torch_side=True, peer_ms=peer_ms)
                except Exception as exc:  # noqa: BLE001
                    print(f"{name}: fla failed: {exc}")
        if order == 0:
            self.row(name, T, dname, "fused", ours("tiled"), ref, pairs, flop, peer_ms=peer_ms)
            try:  # the kernel alone on prepared operands, at each tile length (the layer's checks excluded)
                P = L._prepare(dQ, dK, dV, None, dla if gates else None, None, None)
                ops = _fused_nw.operands(dev.xp, L, P)
                shape = P.batch_shape + (T, P.d_v)

                def kernel2():  # the layer's own variant and tiles (v2, its default config for this size)
                    y = _fused_nw.forward(dev.xp, **ops)
                    if y is None:
                        raise RuntimeError("does not fit shared memory")
                    return dev.xp.reshape(y, shape)

                label = f"kernel only, {_fused_nw.VARIANT} default"
                self.row(name, T, dname, label, kernel2, ref, pairs, flop, peer_ms=peer_ms)
                for C in _fused_nw.TILES if a.rows == "all" else ():
                    if C == 128 and dtype == np.float64:
                        continue

                    def kernel(C=C):
                        y = _fused_nw.forward(dev.xp, C=C, **ops)
                        if y is None:
                            raise RuntimeError("does not fit shared memory")
                        return dev.xp.reshape(y, shape)

                    self.row(name, T, dname, f"fused kernel only, C={C}", kernel, ref, pairs, flop,
                             peer_ms=peer_ms)  # fmt: skip
            except Exception as exc:  # noqa: BLE001
                print(f"{name}: kernel-only rows failed: {exc}")
        _fused_nw.ENABLED = False
        try:
            # local linear: quadratic in T; three calls predicted from the smaller T must fit the budget
            left = a.budget_s - (time.perf_counter() - self.t0)
            known = [(t, ms) for (c, t), ms in self.ll.items() if c == name and ms]
            predicted = max((3 * ms / 1e3 * (T / t) ** 2 for t, ms in known), default=0.0)
            if order == 0 and a.rows != "all":
                pass  # (--rows issue: the fused layer, its kernel and the peers only)
            elif order == 1 and (T > a.ll_max_T or predicted > left):
                why = f"T > --ll-max-T {a.ll_max_T}" if T > a.ll_max_T else f"predicted ~{predicted:.0f} s"
                why = "time budget" if left <= 0 else why
                rec = {"case": name, "T": T, "dtype": dname, "variant": "tiled (array)"}
                self.rows.append({**rec, "note": "skipped: " + why})
            else:
                fn = ours("tiled")
                ms = self.row(name, T, dname, "tiled (array)", fn, ref, pairs, flop, peer_ms=peer_ms)
                if order == 1:
                    self.ll[(name, T)] = ms
        finally:
            _fused_nw.ENABLED = True
        itemsize = 4 if dtype == np.float32 else 8
        dense = 4 * B * H * T * T * itemsize
        if (
            order == 0
            and a.rows == "all"
            and dense < dev.free_bytes() / 4
            and (T <= 1024 or dtype == np.float32)
        ):
            self.row(name, T, dname, "parallel", ours("parallel"), ref, pairs, flop, peer_ms=peer_ms)
        dev.free()


def fmt(x, spec):
    width = int(spec.split(".")[0] or 0) if spec[0].isdigit() else 0
    return "—".rjust(width) if x is None else format(x, spec)


HEADER = f"{'case':<27} {'T':>6} {'dtype':<8} {'variant':<30} {'ms':>9} {'ratio':>6} {'TFLOP/s':>8} "
HEADER += f"{'max|diff|':>9} {'peak MiB':>9}  note"


def fmt_row(r):
    return (
        f"{r['case']:<27} {r['T']:>6} {r['dtype']:<8} {r['variant']:<30} {fmt(r.get('ms'), '9.2f')} "
        f"{fmt(r.get('ratio'), '6.2f')} {fmt(r.get('tflops'), '8.2f')} {fmt(r.get('diff'), '9.1e')} "
        f"{fmt(r.get('peak'), '9.0f')}  {r.get('note', '')}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", default="1024,4096")
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--check-T", type=int, default=512)
    ap.add_argument("--ll-max-T", type=int, default=4096, help="local linear only up to this T")
    ap.add_argument("--budget-s", type=float, default=150.0)
    ap.add_argument("--float64", default="1", help="0: skip the float64 NW rows")
    ap.add_argument(
        "--rows",
        default="all",
        choices=("all", "issue"),
        help="issue: the peers, the fused layer and its kernel alone, float64, local linear (no v1 tile "
        "lengths, no array or dense softmax rows)",
    )
    ap.add_argument("--cpu-dry-run", action="store_true")
    a = ap.parse_args(argv)
    if a.cpu_dry_run:
        a.T, a.B, a.H, a.d, a.check_T = "70,200", 1, 2, 8, 64
        _fused_nw._on_device = lambda xp: True
        _fused_nw.forward = _fused_nw.fused_nw_reference
    else:
        try:
            import cupy

            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # noqa: BLE001
            print(f"needs CuPy and a CUDA device ({exc}); try --cpu-dry-run")
            return 1
    dev = Device(a.cpu_dry_run)
    print(f"# gpu_tiled: {dev.card}; B={a.B} H={a.H} d={a.d}")
    run = Runner(dev, a)
    rate = None
    try:
        rate = matmul_rate(dev)
        print(f"# cupy.matmul float32 8192^2: {fmt(rate, '.1f')} TFLOP/s")
    except Exception as exc:  # noqa: BLE001
        print(f"# matmul rate failed: {exc}")
    print(HEADER)
    for T in (int(t) for t in a.T.split(",")):
        for name, make, gates, peer in CASES:
            for dtype in (np.float32, np.float64):
                f32_only = name.startswith(("local", "window")) or gates
                if dtype == np.float64 and (a.float64 == "0" or f32_only):
                    continue
                try:
                    run.case(name, make, gates, peer, T, dtype)
                except Exception as exc:  # noqa: BLE001
                    print(f"{name} T={T}: failed: {exc}")
    print("\n# summary")
    print(HEADER)
    for r in run.rows:
        print(fmt_row(r))
    if rate:
        for r in run.rows:
            if r["case"].startswith("local") and r.get("tflops"):
                print(f"# local linear T={r['T']}: {r['tflops'] / rate:.1%} of the matmul rate")
    print(f"# total {time.perf_counter() - run.t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
