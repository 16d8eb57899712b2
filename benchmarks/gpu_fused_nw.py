r"""The fused Nadaraya-Watson / softmax kernel's variants and tile shapes against torch SDPA and fla (a GPU).

At B = 8, H = 16, d = 64 (``--B --H --d``), T in ``--T`` (1024, 4096, 16384; 16384: causal softmax only),
directly on the kernel's operands (``_fused_nw.forward``; no layer checks), for

* ``causal softmax`` (float32, and float64 up to ``--f64-max-T``), ``forgetting attention`` (log-gates
  log U(0.9, 1)) and ``sliding window 512`` (float32);
* variants: ``v1 C=64`` (and ``v1 C=128`` in float32), ``v2 <NTY,NTX,RM,RN>`` for every shape of
  ``_fused_nw.SWEEP`` (the first is the default, ``_fused_nw.CONFIGS``), and ``layer (default)``:
  ``layer(Q, K, V, method="tiled")`` (what a user calls: checks, operands, the default kernel);
* peers on the same numbers: ``torch SDPA`` float32 (default backend choice; and forced to the
  memory-efficient and the math backend), with ``torch.backends.cuda.matmul.allow_tf32`` as found (printed;
  the math backend's matrix products use TF32 only when it is True) and once with it True;
  the window as a boolean (T, T) mask; and fla's Triton kernels (``parallel_attn`` for causal softmax and,
  with ``window_size``, the window; ``parallel_forgetting_attn``), run at the end in one child process per
  Triton float32 precision (``--fla-precisions``; ``TRITON_F32_DEFAULT``): ieee (plain float32 FMA: the
  fair comparison with our float32), tf32 (Triton's default for ``tl.dot`` on float32, i.e. what fla runs
  unless told: TF32 tensor cores, ~1e-3 off float64), tf32x3 (three TF32 products: float32-like accuracy on
  tensor cores; torch's memory-efficient SDPA does the same for float32 on sm80+).

Columns: ms = median of ``--runs`` (10) calls, each with the device synchronised before and after (wall
clock, after two warm-ups; the first compiles); x peer = ms / ms of the float32 SDPA row of the case (for
forgetting attention: none, see the summary); TFLOP/s = 4 d per causal pair; diff64 = max |y - y64| / max
|y64| on the first head's first ``--check-T`` tokens against a float64 dense reference computed on the host
(causal: those outputs depend on those tokens only); vs v1 = the same measure over the whole output against
``v1 C=64`` of the same dtype (our rows). A row (or fla child) that would start after ``--budget-s`` (170 s)
is skipped and says so. The summary at the end: per case, T and dtype the default v2, the best v2 shape and
the best v1 against each peer (SDPA as it chose its backend, fla ieee, fla tf32).

Run (GPU): ``python -m benchmarks.gpu_fused_nw [--T 1024,4096,16384] [--out results/gpu_fused_nw.txt]``;
``--dry-run`` runs the logic on the host at tiny sizes with the kernel replaced by its NumPy reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: python benchmarks/gpu_fused_nw.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ttr_stats.methods.kernel_smoother import _fused_nw as F

WINDOW = 512
CASES = ("causal softmax", "forgetting attention", f"sliding window {WINDOW}")
FLA_PRECISIONS = ("ieee", "tf32", "tf32x3")


class Env:
    """The array library (CuPy, or NumPy for ``--dry-run``) and the synchronised clock."""

    def __init__(self, dry):
        self.dry = dry
        if dry:
            self.xp = np
            self.card = "host dry run (kernel = NumPy reference)"
            return
        import cupy as cp

        self.xp = cp
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        self.card = f"{name}, CuPy {cp.__version__}"

    def sync(self):
        if not self.dry:
            self.xp.cuda.Device().synchronize()

    def median_ms(self, fn, runs):
        fn()
        self.sync()
        fn()
        self.sync()
        times = []
        for _ in range(runs):
            self.sync()
            t0 = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

    def host(self, x):
        return np.asarray(x if self.dry else self.xp.asnumpy(x), dtype=np.float64)


def make_inputs(xp, B, H, T, d, seed=0):
    """Q, K, V (B*H, T, d) standard normal float32, log-gates log U(0.9, 1) (B*H, T): the same numbers in
    every process (CuPy's generator with a fixed seed; NumPy's in a dry run)."""
    rng = xp.random.default_rng(seed)
    Q, K, V = (rng.standard_normal((B * H, T, d), dtype=xp.float32) for _ in range(3))
    la = xp.log(rng.uniform(0.9, 1.0, (B * H, T))).astype(xp.float32)
    return Q, K, V, la


def case_ops(xp, case, Q, K, V, la, dtype):
    BH, T, d = Q.shape
    cast = lambda x: x.astype(dtype)  # noqa: E731
    gated = case.startswith("forgetting")
    g = cast(la) if gated else xp.zeros((BH, T), dtype=dtype)
    window = WINDOW if case.startswith("sliding") and WINDOW < T else 0
    return dict(Q=cast(Q), K=cast(K), V=cast(V), g=g, logb=xp.zeros((BH, T), dtype=dtype), tau=d**-0.5,
                causal=True, window=window, gated=gated, sinks=0)  # fmt: skip


def dense64(ops, n):
    """float64 dense causal reference on the first head's first n tokens (host NumPy)."""
    Q, K, V, g = (np.asarray(ops[k][0, :n], dtype=np.float64) for k in ("Q", "K", "V", "g"))
    cs = np.cumsum(g)
    t, i = np.arange(n)[:, None], np.arange(n)[None, :]
    L = ops["tau"] * Q @ K.T + (cs[:, None] - cs[None, :])  # float64, |g| < 0.11, n <= 1024: ~1e-13
    keep = (i <= t) & (((t - i) < ops["window"]) if ops["window"] else True)
    L = np.where(keep, L, -np.inf)
    P = np.exp(L - L.max(-1, keepdims=True))
    return (P / P.sum(-1, keepdims=True)) @ V


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def variants(dtype_name):
    out = [("v1 C=64", dict(variant="v1", C=64))]
    if dtype_name == "float32":
        out.append(("v1 C=128", dict(variant="v1", C=128)))
    for c in F.SWEEP[dtype_name]:
        out.append((f"v2 {','.join(map(str, c))}", dict(variant="v2", config=c)))
    return out


class Table:
    HEAD = f"{'case':<22} {'T':>6} {'dtype':<8} {'variant':<34} {'ms':>9} {'x peer':>7} {'TFLOP/s':>8} "
    HEAD += f"{'diff64':>8} {'vs v1':>8}  note"

    def __init__(self, out):
        self.rows, self.out, self.recs = [], out, []

    def add(self, case, T, dtype, variant, ms=None, peer=None, tflops=None, d64=None, dv1=None, note=""):
        self.recs.append(dict(case=case, T=T, dtype=dtype, variant=variant, ms=ms, d64=d64))
        f = lambda x, s: "—".rjust(int(s.split(".")[0])) if x is None else format(x, s)  # noqa: E731
        ratio = ms / peer if (ms and peer) else None
        line = (f"{case:<22} {T:>6} {dtype:<8} {variant:<34} {f(ms, '9.2f')} {f(ratio, '7.2f')} "
                f"{f(tflops, '8.2f')} {f(d64, '8.1e')} {f(dv1, '8.1e')}  {note}")  # fmt: skip
        self.rows.append(line)
        print(line, flush=True)


def pairs(case, B, H, T):
    if case.startswith("sliding") and WINDOW < T:
        w = WINDOW
        return B * H * (w * (w + 1) // 2 + (T - w) * w)
    return B * H * T * (T + 1) // 2


def torch_rows(env, tab, case, T, ops, ref, n, a, npairs):
    """SDPA rows (float32); returns the default row's ms (the case's peer) or None."""
    try:
        import torch
    except ImportError as exc:
        tab.add(case, T, "float32", "torch SDPA", note=f"skipped: {exc}")
        return None
    Fn = torch.nn.functional
    dev = "cpu" if env.dry else "cuda"
    tt = (lambda x: torch.from_numpy(x)) if env.dry else (lambda x: torch.from_dlpack(x))  # noqa: E731
    BH, d = ops["Q"].shape[0], ops["Q"].shape[-1]
    q, k, v = (tt(ops[x]).reshape(a.B, a.H, T, d) for x in ("Q", "K", "V"))
    if ops["window"]:
        t = torch.arange(T, device=dev)
        lag = t[:, None] - t[None, :]
        mask = (lag >= 0) & (lag < ops["window"])
        call = lambda: Fn.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # noqa: E731
        label = "torch SDPA bool window mask"
    else:
        call = lambda: Fn.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        label = "torch SDPA is_causal"
    sync = (lambda: None) if env.dry else torch.cuda.synchronize

    def timed(fn):
        fn()
        sync()
        fn()
        sync()
        ts = []
        for _ in range(a.runs):
            sync()
            t0 = time.perf_counter()
            y = fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3, y

    tf32 = torch.backends.cuda.matmul.allow_tf32
    note = f"allow_tf32={tf32} cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    peer = None
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        forced = [("", None), (" [efficient]", SDPBackend.EFFICIENT_ATTENTION), (" [math]", SDPBackend.MATH)]
    except ImportError:  # an older torch: the default choice only
        SDPBackend = sdpa_kernel = None
        forced = [("", None)]
    for suffix, backend in forced:
        if backend is not None and (env.dry or (backend == SDPBackend.MATH and T > 4096)):
            continue
        try:
            fn = call if backend is None else (lambda b=backend: _under(sdpa_kernel, b, call))
            ms, y = timed(fn)
            yh = y.reshape(BH, T, d)[0, :n].double().cpu().numpy()
            tab.add(case, T, "float32", label + suffix, ms, peer or ms, npairs * 4 * d / ms / 1e9,
                    rel(yh, ref), None, note)  # fmt: skip
            peer = peer or ms
            del y
        except Exception as exc:  # noqa: BLE001 - a backend that does not apply
            tab.add(case, T, "float32", label + suffix, note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")
    if not env.dry and not ops["window"] and T <= 4096 and SDPBackend is not None:
        try:
            torch.backends.cuda.matmul.allow_tf32 = True
            ms, y = timed(lambda: _under(sdpa_kernel, SDPBackend.MATH, call))
            yh = y.reshape(BH, T, d)[0, :n].double().cpu().numpy()
            rate = npairs * 4 * d / ms / 1e9
            tab.add(case, T, "float32", label + " [math, allow_tf32=True]", ms, peer, rate,
                    rel(yh, ref), None, "TF32 tensor cores")  # fmt: skip
            del y
        except Exception as exc:  # noqa: BLE001
            tab.add(case, T, "float32", label + " [math, tf32]", note=f"failed: {type(exc).__name__}")
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    if not env.dry:
        torch.cuda.empty_cache()
    return peer


def _under(ctx, backend, fn):
    with ctx(backend):
        return fn()


def fla_rows(env, tab, refs, a, npairs, t0):
    """fla's Triton kernels (``parallel_attn``: causal softmax, and with ``window_size`` the window;
    ``parallel_forgetting_attn``), one child process per Triton float32 precision (all cases in it)."""
    keys = sorted(refs)  # (case, T)
    for prec in a.fla_precisions.split(","):
        label = f"fla ({prec})"
        if env.dry or time.perf_counter() - t0 > min(a.budget_s, a.max_s - 20):
            for case, T in keys:
                tab.add(
                    case, T, "float32", label, note="skipped: " + ("dry run" if env.dry else "time budget")
                )
            continue
        envv = dict(os.environ, TRITON_F32_DEFAULT=prec)
        Ts = sorted({T for _, T in keys})
        cmd = [sys.executable, "-m", "benchmarks.gpu_fused_nw", "--fla-child", "--T", ",".join(map(str, Ts)),
               "--B", str(a.B), "--H", str(a.H), "--d", str(a.d), "--runs", str(a.runs),
               "--check-T", str(a.check_T)]  # fmt: skip
        try:
            left = min(a.fla_timeout_s, a.max_s - (time.perf_counter() - t0))  # the run stays under --max-s
            root = str(Path(__file__).resolve().parents[1])
            res = subprocess.run(cmd, env=envv, capture_output=True, text=True, timeout=left, cwd=root)
            got = {}
            for ln in res.stdout.splitlines():
                if ln.startswith("{"):
                    r = json.loads(ln)
                    got[(r["case"], r["T"])] = r
            if not got:
                raise RuntimeError(
                    ((res.stderr or res.stdout).strip().splitlines() or ["no output"])[-1][:100]
                )
            for case, T in keys:
                r = got.get((case, T))
                if r is None:
                    tab.add(case, T, "float32", label, note="failed: no result")
                    continue
                if "error" in r:
                    tab.add(case, T, "float32", label, note=f"failed: {r['error']}"[:120])
                    continue
                yh = np.asarray(r["y"], dtype=np.float64)
                rate = npairs[(case, T)] * 4 * a.d / r["ms"] / 1e9
                d64 = rel(yh, refs[(case, T)])
                tab.add(
                    case, T, "float32", f"{r['fn']} ({prec})", r["ms"], None, rate, d64, None, r["versions"]
                )
        except Exception as exc:  # noqa: BLE001
            for case, T in keys:
                tab.add(case, T, "float32", label, note=f"failed: {type(exc).__name__}: {exc}"[:120])


def fla_child(a):
    import cupy as cp
    import fla
    import torch
    import triton
    from fla.ops.attn.parallel import parallel_attn
    from fla.ops.forgetting_attn import parallel_forgetting_attn

    versions = f"fla {fla.__version__}, triton {triton.__version__}, TRITON_F32_DEFAULT="
    versions += os.environ.get("TRITON_F32_DEFAULT", "")
    for T in (int(t) for t in a.T.split(",")):
        Q, K, V, la = make_inputs(cp, a.B, a.H, T, a.d)
        q, k, v = (
            torch.from_dlpack(x).reshape(a.B, a.H, T, -1).transpose(1, 2).contiguous() for x in (Q, K, V)
        )
        g = torch.from_dlpack(la).reshape(a.B, a.H, T).transpose(1, 2).contiguous()
        calls = {  # scale d^-1/2 by default; fla's window keeps keys [t - w + 1, t], as ours
            "causal softmax": ("parallel_attn", lambda q=q, k=k, v=v: parallel_attn(q, k, v)),
            "forgetting attention": (
                "parallel_forgetting_attn",
                lambda q=q, k=k, v=v, g=g: parallel_forgetting_attn(q, k, v, g),
            ),
            CASES[2]: (
                "parallel_attn window_size",
                lambda q=q, k=k, v=v: parallel_attn(q, k, v, window_size=WINDOW),
            ),
        }
        for case, (name, fn) in calls.items():
            if T > 4096 and case != "causal softmax":
                continue
            out = {"case": case, "T": T, "fn": name, "versions": versions}
            try:
                ts = []
                for i in range(a.runs + 2):
                    torch.cuda.synchronize()
                    t1 = time.perf_counter()
                    y = fn()
                    torch.cuda.synchronize()
                    if i >= 2:
                        ts.append(time.perf_counter() - t1)
                out["ms"] = statistics.median(ts) * 1e3
                out["y"] = y[0, : a.check_T, 0].double().cpu().numpy().tolist()  # batch 0, head 0: (n, d)
                del y
            except Exception as exc:  # noqa: BLE001
                out["error"] = f"{type(exc).__name__}: {exc}"[:200]
            print(json.dumps(out), flush=True)
        del q, k, v, g, Q, K, V, la
        torch.cuda.empty_cache()
        cp.get_default_memory_pool().free_all_blocks()
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--T", default="1024,4096,16384")
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--check-T", type=int, default=256)
    ap.add_argument("--f64-max-T", type=int, default=4096)
    ap.add_argument("--budget-s", type=float, default=170.0, help="no row (nor fla child) starts after it")
    ap.add_argument("--fla-precisions", default=",".join(FLA_PRECISIONS))
    ap.add_argument("--fla-timeout-s", type=float, default=90.0)
    ap.add_argument(
        "--max-s", type=float, default=230.0, help="an fla child is stopped where it would pass it"
    )
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--fla-child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.fla_child:
        return fla_child(a)
    if a.dry_run:
        a.T, a.B, a.H, a.d, a.check_T, a.runs = "70,150", 1, 2, 8, 64, 2
        F.forward = lambda xp, variant=None, C=None, config=None, **ops: F.fused_nw_reference(xp, **ops)
    env = Env(a.dry_run)
    t0 = time.perf_counter()
    tab = Table(a.out)
    title = f"# gpu_fused_nw: {env.card}; B={a.B} H={a.H} d={a.d}; median of {a.runs} synchronised calls"
    print(title)
    print(Table.HEAD)
    fla_refs, fla_pairs = {}, {}
    for T in (int(t) for t in a.T.split(",")):
        Q, K, V, la = make_inputs(env.xp, a.B, a.H, T, a.d)
        for case in CASES:
            if T > 4096 and case != "causal softmax":
                continue
            npairs = pairs(case, a.B, a.H, T)
            n = min(T, a.check_T)
            ops32 = case_ops(env.xp, case, Q, K, V, la, env.xp.float32)
            ref = dense64({k: env.host(v) if hasattr(v, "shape") else v for k, v in ops32.items()}, n)
            peer = None
            fla_refs[(case, T)], fla_pairs[(case, T)] = ref, npairs  # fla runs at the end (children)
            if not case.startswith("forgetting") and not a.no_peers:
                peer = torch_rows(env, tab, case, T, ops32, ref, n, a, npairs)
            for dtype in (np.float32, np.float64):
                dname = np.dtype(dtype).name
                if dtype == np.float64 and (case != "causal softmax" or T > a.f64_max_T):
                    continue
                ops = ops32 if dtype == np.float32 else case_ops(env.xp, case, Q, K, V, la, env.xp.float64)
                y1 = None
                for label, kw in variants(dname):
                    if time.perf_counter() - t0 > a.budget_s:
                        tab.add(case, T, dname, label, note="skipped: time budget")
                        continue
                    try:
                        y = F.forward(env.xp, **kw, **ops)
                        if y is None:
                            tab.add(case, T, dname, label, note="does not fit shared memory")
                            continue
                        ms = env.median_ms(lambda kw=kw, ops=ops: F.forward(env.xp, **kw, **ops), a.runs)
                        yh = env.host(y[0, :n])
                        dv1 = None
                        if y1 is None:
                            y1 = y
                        else:
                            dv1 = float(env.xp.max(env.xp.abs(y - y1)) / env.xp.max(env.xp.abs(y1)))
                        tab.add(
                            case, T, dname, label, ms, peer, npairs * 4 * a.d / ms / 1e9, rel(yh, ref), dv1
                        )
                        del y
                    except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the run
                        tab.add(case, T, dname, label, note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")
                del y1
                layer_row(env, tab, case, T, dname, ops, a, peer, npairs, ref, n)
                del ops
                if not env.dry:
                    env.xp.get_default_memory_pool().free_all_blocks()
    if fla_refs and not a.no_peers:
        fla_rows(env, tab, fla_refs, a, fla_pairs, t0)
    lines = summary(tab.recs)
    total = f"# total {time.perf_counter() - t0:.0f} s"
    print("\n".join(lines + [total]))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("\n".join([title, Table.HEAD] + tab.rows + [""] + lines + [total]) + "\n")
    return 0


def summary(recs):
    """Per case, T and dtype: the default v2, the best v2 shape, the best v1, and the peers; ratios to the
    peer (float32 softmax / window: torch SDPA as it chose its backend; forgetting: fla ieee and tf32)."""
    out = [
        "# summary: ms (x peer)",
        f"{'case':<22} {'T':>6} {'dtype':<8} {'what':<44} {'ms':>9} {'x peer':>7}",
    ]
    keys = sorted({(r["case"], r["T"], r["dtype"]) for r in recs if r["T"]}, key=lambda k: (k[0], k[1], k[2]))
    for case, T, dt in keys:
        rs = [r for r in recs if (r["case"], r["T"], r["dtype"]) == (case, T, dt) and r["ms"]]
        peers = [r for r in rs if r["variant"].startswith("torch SDPA") and "[" not in r["variant"]]
        peers += [r for r in rs if "(ieee)" in r["variant"] or "(tf32)" in r["variant"]]
        peers = sorted(peers, key=lambda r: "(tf32)" in r["variant"])
        if dt == "float64":  # the float32 peer of the same case
            peers = [r for r in recs if (r["case"], r["T"], r["dtype"]) == (case, T, "float32") and r["ms"]
                     and r["variant"].startswith("torch SDPA") and "[" not in r["variant"]]  # fmt: skip
        v2 = [r for r in rs if r["variant"].startswith("v2")]
        v1 = [r for r in rs if r["variant"].startswith("v1")]
        picks = [("v2 default " + v2[0]["variant"][3:], v2[0])] if v2 else []
        if v2:
            best = min(v2, key=lambda r: r["ms"])
            picks.append(("v2 best " + best["variant"][3:], best))
        if v1:
            best = min(v1, key=lambda r: r["ms"])
            picks.append(("v1 best " + best["variant"][3:], best))
        for p in peers:
            out.append(f"{case:<22} {T:>6} {dt:<8} {'peer: ' + p['variant']:<44} {p['ms']:9.2f}")
        for what, r in picks:
            for p in peers or [None]:
                ratio = f"{r['ms'] / p['ms']:7.2f}" if p else "      —"
                tag = f" vs {p['variant'][:22]}" if p and len(peers) > 1 else ""
                out.append(f"{case:<22} {T:>6} {dt:<8} {(what + tag)[:44]:<44} {r['ms']:9.2f} {ratio}")
    return out


def layer_row(env, tab, case, T, dname, ops, a, peer, npairs, ref, n):
    """``layer(Q, K, V, method="tiled")`` with the default kernel: what a user's call costs."""
    import ttr_stats as tt
    from ttr_stats.regressors import LocalPolynomial
    from ttr_stats.similarity import ExpDot

    if env.dry:
        return
    weights = {"causal softmax": tt.weights.Uniform(), "forgetting attention": tt.weights.Gated()}
    w = weights.get(case, tt.weights.SlidingWindow(WINDOW))
    L = tt.TestTimeRegression(weights=w, regressor=LocalPolynomial(0, ExpDot()))
    shape = (a.B, a.H, T, a.d)
    Q, K, V = (env.xp.reshape(ops[k], shape) for k in ("Q", "K", "V"))
    kw = {"log_alpha": env.xp.reshape(ops["g"], shape[:3])} if ops["gated"] else {}
    try:
        fn = lambda: L(Q, K, V, method="tiled", **kw)  # noqa: E731
        y = fn()
        ms = env.median_ms(fn, a.runs)
        d64 = rel(env.host(y[0, 0, :n]), ref)
        tab.add(case, T, dname, f"layer (default: {F.VARIANT})", ms, peer, npairs * 4 * a.d / ms / 1e9, d64)
    except Exception as exc:  # noqa: BLE001
        tab.add(case, T, dname, "layer (default)", note=f"failed: {type(exc).__name__}: {str(exc)[:80]}")


if __name__ == "__main__":
    sys.exit(main())
