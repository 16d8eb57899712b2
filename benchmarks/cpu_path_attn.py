"""PaTH attention on the host: the chunked method against the recurrent reference and fla's naive code,
all measured in this run (ratios, not absolute times, are the result).

    python -m benchmarks.cpu_path_attn [--T 256 1024] [--d 64] [--heads 4] [--repeat 3]

Prints, per T: seconds of each variant (best of ``repeat``), its ratio to the recurrent reference, and its
max abs difference to it (float64 NumPy for ours; fla's runs in float32 torch).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import numpy as np

import ttr_stats as tt


def best(fn, repeat):
    out, t = None, float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        t = min(t, time.perf_counter() - t0)
    return out, t


def fla_naive():
    try:
        import torch  # noqa: F401

        spec = importlib.util.find_spec("fla")
        path = os.path.join(spec.submodule_search_locations[0], "ops", "path_attn", "naive.py")
        mspec = importlib.util.spec_from_file_location("_fla_naive_path_attn", path)
        mod = importlib.util.module_from_spec(mspec)
        mspec.loader.exec_module(mod)
        return mod.naive_path_attn
    except Exception as exc:  # noqa: BLE001 - a missing peer is reported, not fatal
        print(f"fla naive_path_attn unavailable: {exc}")
        return None


def one_length(T, args, layer, ref_fla):
    """The rows (variant, seconds, max diff to the recurrent reference) at length T."""
    rng = np.random.default_rng(T)
    Q, K, V, W = (rng.standard_normal((args.heads, T, args.d)) for _ in range(4))
    W /= np.linalg.norm(W, axis=-1, keepdims=True)
    bw = rng.uniform(0, 2, (args.heads, T))
    la = -rng.uniform(0, 0.1, (args.heads, T))
    kw = dict(log_alpha=la, inputs={"w": W, "w_beta": bw})
    Y0, t0 = best(lambda: layer(Q, K, V, method="recurrent", **kw), args.repeat)
    rows = [("recurrent", t0, 0.0)]
    for C in (16, 32, 64):
        try:
            Y, t = best(lambda C=C: layer(Q, K, V, method="chunked", chunk_size=C, **kw), args.repeat)
            rows.append((f"chunked C={C}", t, float(np.max(np.abs(Y - Y0)))))
        except Exception as exc:  # noqa: BLE001 - a failing variant is reported, the others still run
            print(f"chunked C={C} failed: {exc}")
    if ref_fla is not None:
        import torch

        t_ = lambda x: torch.tensor(x[None].swapaxes(1, 2), dtype=torch.float32)  # noqa: E731
        scale = args.d**-0.5  # fla adds g before the scale: g = log_alpha / scale
        args_fla = (t_(Q), t_(K), t_(V), t_(W), t_(bw), t_(la / scale), scale, 64)
        try:
            o, t = best(lambda: ref_fla(*args_fla), args.repeat)
            rows.append(("fla naive (f32)", t, float(np.max(np.abs(o.numpy()[0].swapaxes(0, 1) - Y0)))))
        except Exception as exc:  # noqa: BLE001
            print(f"fla naive failed: {exc}")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    layer = tt.recipes.path_attention()
    ref_fla = fla_naive()
    print(f"{'T':>6} {'variant':<16} {'seconds':>9} {'x recurrent':>12} {'max diff':>10}")
    for T in args.T:
        rows = one_length(T, args, layer, ref_fla)
        for name, t, diff in rows:
            print(f"{T:>6} {name:<16} {t:>9.4f} {t / rows[0][1]:>12.3f} {diff:>10.2e}")


if __name__ == "__main__":
    main()
