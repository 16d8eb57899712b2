"""Seconds per training step of the Fig. 3 model on one card: input checks deferred (the default for torch
CUDA tensors, ``_validation.LAZY_TORCH_DEVICES``) vs immediate (every check a host sync).

Run on a GPU machine: ``python -m benchmarks.gpu_train_step`` (``source benchmarks/device_env.sh`` first).
Each (recipe, T) trains ``--steps`` steps after ``--warmup`` untimed ones with the grid's settings (one seed,
one rate, batch 64 at T = 512 scaled by 512 / T), once per check mode, in one process; prints the table
and the ratio immediate / deferred.
"""

from __future__ import annotations

import argparse
import time

from ttr_stats import _validation as v


def rate(recipe, T, P, steps, warmup, lazy, device="cuda", vocab=8192):
    import torch

    from ttr_stats.train import MQARTrainConfig, train_mqar

    kind = torch.device(device).type
    v.LAZY_TORCH_DEVICES = (kind,) if lazy else ()
    batch = max(8, int(64 * 512 / T))
    common = dict(
        recipe=recipe, n_pairs=P, seq_len=T, batch_size=batch, device=device, eval_sequences=8, vocab=vocab
    )
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)
    train_mqar(MQARTrainConfig(steps=warmup, **common))  # compiles, caches, allocator
    sync()
    t0 = time.perf_counter()
    _, res = train_mqar(MQARTrainConfig(steps=steps, **common))
    sync()
    return res[0].train_seconds / steps, time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--T", default="512,2048,4096")
    ap.add_argument("--P", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--device", default="cuda", help="cuda (the card) or cpu (checks the script, no timing)")
    a = ap.parse_args(argv)
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_train_step: no CUDA device (--device cpu runs the same code on the host)")
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    print(f"{'recipe':18s} {'T':>5s} {'deferred ms/step':>17s} {'immediate ms/step':>18s} {'ratio':>6s}")
    saved = v.LAZY_TORCH_DEVICES
    try:
        for T in (int(x) for x in a.T.split(",")):
            for recipe in ("linear_attention", "rls"):
                lazy = rate(recipe, T, a.P, a.steps, a.warmup, True, a.device, a.vocab)[0]
                eager = rate(recipe, T, a.P, a.steps, a.warmup, False, a.device, a.vocab)[0]
                row = f"{recipe:18s} {T:5d} {lazy * 1e3:17.2f} {eager * 1e3:18.2f} {eager / lazy:6.2f}"
                print(row, flush=True)
    finally:
        v.LAZY_TORCH_DEVICES = saved


if __name__ == "__main__":
    main()
