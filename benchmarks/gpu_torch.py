r"""Training on torch CUDA: forward and forward + backward of the layers' fast methods against their peers.

For each layer at B = 2, H = 8, d_k = d_v = 64, float32, T in ``--T`` (256, 1024, 4096), on torch CUDA
tensors of shape (B, H, T, d) that require grad:

* ours: ``layer(Q, K, V, alpha=..., beta=..., method=m)`` with m the chunked / tiled method (what ``auto``
  picks for training) and, at T <= ``--rec-T``, the recurrent loop (the definition);
* the peer on the same numbers: flash-linear-attention's Triton kernels where installed (fla's (B, T, H, d)
  layout; ``scale=1.0``, our memory has no query scale; ``g`` = log alpha): ``chunk_simple_gla`` (linear
  attention, Mamba-2), ``chunk_gla`` (GLA), ``chunk_delta_rule`` (DeltaNet), ``chunk_gated_delta_rule``
  (Gated DeltaNet); ``torch.nn.functional.scaled_dot_product_attention`` (causal, scale d^-1/2) for softmax;
  no peer for RLS, Mesa and local linear attention (their ratio column is to the recurrent loop where run);
* columns: median ms of the forward, of forward + backward of ``sum(Y * G)``, the ratio ours / peer of the
  latter (< 1: ours is faster), max |Y - Y_peer| / max |Y_peer| and the same for dQ (the convention check:
  ~1e-6 in float32; fla computes in float32 with TF32 off unless it chooses otherwise).

Timing: CUDA events around each call after synchronising, 2 warm-ups, then the median of 5 (3 for the
recurrent loop). Every row runs in try/except: a failure prints its error and the run goes on.

Run (GPU): ``python -m benchmarks.gpu_torch [--T 256,1024,4096] [--quick]``; about two minutes on an H200
(``--quick``: T = 256 only). ``--device cpu`` checks the logic on the CPU (small sizes, no fla).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/gpu_torch.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timer(torch, dev):
    def run(fn, reps):
        for _ in range(2):
            fn()
        out = []
        for _ in range(reps):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                torch.cuda.synchronize(dev)
                out.append(a.elapsed_time(b))
            else:
                t = time.perf_counter()
                fn()
                out.append(1e3 * (time.perf_counter() - t))
        return statistics.median(out)

    return run


def _inputs(torch, dev, B, H, T, d, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32)  # noqa: E731
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    Q, K, V = unit(r(B, H, T, d)), unit(r(B, H, T, d)), r(B, H, T, d)
    alpha = 0.9 + 0.1 * torch.rand(B, H, T, generator=g)
    alpha_dim = 0.9 + 0.1 * torch.rand(B, H, T, d, generator=g)
    beta = 0.2 + 0.6 * torch.rand(B, H, T, generator=g)
    G = r(B, H, T, d)
    return {
        k: v.to(dev) for k, v in dict(Q=Q, K=K, V=V, alpha=alpha, alpha_dim=alpha_dim, beta=beta, G=G).items()
    }


def _layers(tt):
    """name -> (layer, gates it takes, fla peer name)"""
    return {
        "linear_attention": (tt.recipes.linear_attention(), (), "simple_gla"),
        "mamba2": (tt.recipes.mamba2(), ("alpha",), "simple_gla"),
        "gla": (tt.recipes.gla(), ("alpha_dim",), "gla"),
        "deltanet": (tt.recipes.deltanet(), ("beta",), "delta_rule"),
        "gated_deltanet": (tt.recipes.gated_deltanet(), ("alpha", "beta"), "gated_delta_rule"),
        "rls": (tt.recipes.rls(ridge=1.0), (), None),
        "mesa": (tt.recipes.mesa(ridge=1.0), ("alpha", "beta"), None),
        "softmax_attention": (tt.recipes.softmax_attention(), (), "sdpa"),
        "local_linear_attention": (tt.recipes.local_linear_attention(ridge=0.1), (), None),
    }


def _ours(layer, gates, method):
    def f(x):
        kw = {("alpha" if g == "alpha_dim" else g): x[g] for g in gates}
        return layer(x["Q"], x["K"], x["V"], method=method, **kw)

    return f


def _peer(torch, name, gates):
    """A function of the inputs dict giving Y in our (B, H, T, d) layout, or None."""
    if name == "sdpa":
        F = torch.nn.functional
        return lambda x: F.scaled_dot_product_attention(x["Q"], x["K"], x["V"], is_causal=True)
    if name is None:
        return None
    import fla.ops as ops  # noqa: F401 - ImportError: no fla / Triton here

    t = lambda a: a.transpose(1, 2)  # noqa: E731 - (B, H, T, ...) -> (B, T, H, ...)

    def f(x):
        q, k, v = t(x["Q"]), t(x["K"]), t(x["V"])
        if name == "simple_gla":
            from fla.ops.simple_gla import chunk_simple_gla

            g = t(torch.log(x["alpha"])) if "alpha" in gates else None
            o, _ = chunk_simple_gla(q, k, v, g=g, scale=1.0)
        elif name == "gla":
            from fla.ops.gla import chunk_gla

            o, _ = chunk_gla(q, k, v, g=t(torch.log(x["alpha_dim"])), scale=1.0)
        elif name == "delta_rule":
            from fla.ops.delta_rule import chunk_delta_rule

            o, _ = chunk_delta_rule(q, k, v, beta=t(x["beta"]), scale=1.0)
        else:
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule

            o, _ = chunk_gated_delta_rule(q, k, v, g=t(torch.log(x["alpha"])), beta=t(x["beta"]), scale=1.0)
        return t(o)

    return f


def _fwd_bwd(torch, f, x, need):
    leaves = {k: v.detach().clone().requires_grad_(k in need) for k, v in x.items()}

    def fwd():
        with torch.no_grad():
            return f(leaves)

    def both():
        for v in leaves.values():
            v.grad = None
        (f(leaves) * leaves["G"]).sum().backward()
        return leaves["Q"].grad

    return fwd, both, leaves


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", default="256,1024,4096")
    ap.add_argument("--rec-T", type=int, default=256, help="run the recurrent loop up to this T")
    ap.add_argument("--quick", action="store_true", help="T = 256 only")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=8)
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated layer names")
    a = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing to measure")
        return 2
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device (use --device cpu to check the logic)")
        return 2
    import ttr_stats as tt

    dev = torch.device(a.device)
    if a.device == "cpu":
        a.B, a.H, a.d = 1, 2, 16
    Ts = [256] if a.quick else [int(t) for t in a.T.split(",")]
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(
        f"# torch {torch.__version__} on {card}; B={a.B} H={a.H} d={a.d} float32; ttr_stats {tt.__version__}"
    )
    head = f"{'layer':<24}{'T':>6} {'method':<10}{'fwd ms':>9}{'fwd+bwd ms':>12}{'ratio':>8}"
    print(head + f"{'dY':>10}{'dQ grad':>10}")
    timer = _timer(torch, dev)
    layers = _layers(tt)
    only = [s for s in a.only.split(",") if s]
    for name, (layer, gates, peer_name) in layers.items():
        if only and name not in only:
            continue
        fast = next(m for m in layer.supported_methods if m in ("chunked", "tiled"))
        for T in Ts:
            x = _inputs(torch, dev, a.B, a.H, T, a.d)
            need = ("Q", "K", "V") + tuple(gates)
            rows = {}
            candidates = [(fast, _ours(layer, gates, fast))]
            if T <= a.rec_T:
                candidates.append(("recurrent", _ours(layer, gates, "recurrent")))
            try:
                pf = _peer(torch, peer_name, gates)
                if pf is not None:
                    candidates.append(("peer:" + peer_name, pf))
            except Exception as exc:  # noqa: BLE001 - no fla / Triton: the row says so
                print(f"{name:<24}{T:>6} {'peer':<10} not run: {type(exc).__name__}: {exc}")
            for label, f in candidates:
                try:
                    fwd, both, leaves = _fwd_bwd(torch, f, x, need)
                    reps = 3 if label == "recurrent" else 5
                    t_f = timer(fwd, reps)
                    t_b = timer(both, reps)
                    rows[label] = (t_f, t_b, fwd().detach(), both().detach().clone())
                except Exception as exc:  # noqa: BLE001 - print and go on
                    print(f"{name:<24}{T:>6} {label:<10} FAILED {type(exc).__name__}: {str(exc)[:200]}")
                    traceback.print_exc(limit=3)
            ref_label = next(
                (k for k in rows if k.startswith("peer")), "recurrent" if "recurrent" in rows else None
            )
            for label, (t_f, t_b, y, dq) in rows.items():
                ratio = dy = dg = ""
                if ref_label and label != ref_label and ref_label in rows:
                    rt_b, ry, rdq = rows[ref_label][1], rows[ref_label][2], rows[ref_label][3]
                    ratio, dy, dg = f"{t_b / rt_b:.2f}", f"{_rel(y, ry):.1e}", f"{_rel(dq, rdq):.1e}"
                print(f"{name:<24}{T:>6} {label:<10}{t_f:>9.2f}{t_b:>12.2f}{ratio:>8}{dy:>10}{dg:>10}")
            del x, rows
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    print("# ratio, dY, dQ grad: against the peer row (fla / SDPA), else against the recurrent row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
