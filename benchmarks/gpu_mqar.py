r"""The trained Figure 3 grid on N GPUs: MQAR accuracy of linear attention vs unweighted RLS.

Cells: recipe in {linear_attention, rls} x P in {64, 128} x T in {512, 1024, 2048, 4096}; every cell trains
its seeds and learning rates (``--seeds``, ``--lrs``) together, as replicas of one model
(:class:`ttr_stats.train.MQARTrainConfig`, ``seeds`` and ``lrs``: one step trains them all; the replicas are
independent). Zoology sweeps the learning rate and reports the best; the figure keeps, per cell, the rate
with the best mean accuracy over the seeds.

GPUs: ``--gpus all`` (every card torch sees), ``--gpus N`` (the first N) or ``--gpus 0,2,5``. One pool of
``--workers-per-gpu`` processes per card, each pool started with ``CUDA_VISIBLE_DEVICES`` set to its card
(so a worker's ``cuda`` is that card); the cells, the longest first, go to the least loaded card in a
snake (on 8 cards with 16 cells the card of a T = 4096 cell also gets a T = 512 one). Default workers per
card: enough that every cell runs at once (``ceil(cells / gpus)``: 2 on 8 cards, 16 on one;
the models are small and launch-bound, so one process leaves a card idle). ``--device cpu --gpus 2``
fakes two cards with CPU workers (the scheduling, the CSV and the shutdown, without a GPU).

Hard wall-clock budget: ``--budget-s`` covers everything, from this script's start to the last CSV row.
The workers import torch and ttr_stats first (all of them, before any cell); then each cell, when a worker
takes it, gets the time left shared by the rounds still to come (``ceil(cells left / workers)``) less
``--overhead-s`` (model, evaluation), and stops early at the global deadline; the learning-rate schedule
runs on the elapsed fraction of that time, so a slow cell takes fewer steps, not more time. At the
deadline unfinished workers are terminated and their cells written as ``status=timeout`` (or ``not_run``).
Rows are appended to the CSV as cells finish, so an interrupted run still leaves one.

Batch: ``--batch`` sequences per replica and step at T = 512, scaled by ``(512 / T) ** --batch-scale``
for longer T (``--batch-scale 0``: the same batch everywhere; 1: the same tokens a step, so a T = 4096
cell takes as many steps as a T = 512 one). Every sequence carries P scored queries whatever T, so the
gradient's signal is per sequence and a long cell, at a fixed budget, trades sequences for steps.

Steps a cell needs, and gets. On the CPU (one layer, d = 64, vocab 8192, batch 64, fresh data) the
held-out accuracy is near chance for a while and then rises fast: the training loss sits at log(vocab/2)
~ 8.3 ("some value") until the layer finds the pairs. Linear attention at lr 3e-3: P = 16, T = 128 reaches
0.97 in 300 steps; P = 32, T = 128 0.995 in 400; P = 64, T = 512 leaves the plateau only after ~300 steps
(loss 8.3 at step 300, 1.0 at step 650, accuracy 0.86 after 1000). Larger rates leave it sooner: at
P = 32, T = 128 the loss is 7.5 at step 80 at lr 3e-3, 1.6 at 1e-2; at 3e-2 it is 2.4 at step 40 (linear
attention, 0.98 after 200 steps) and 0.45 (RLS, 1.000), hence the rates 1e-2 and 3e-2 here. So a
cell needs a few hundred to a few thousand steps, and the first GPU grid (16 processes on one card, 140 s
in all, 10-650 steps a cell, lrs 3e-3 / 1e-2, batch 32) scored chance (0.000) everywhere because it
stopped on the plateau, not because of a bug. From that run's step counts
(650 steps of linear attention at T = 512 and 10 of RLS at T = 4096 in ~85 s, 16 processes a card) and
the CPU's per-token costs (fwd + bwd, one core: linear attention 35-44 us a token, RLS 82-89 us: RLS's
chunked path under autograd is 2-2.5x linear attention's), 8 cards with 2 processes each and ~480 s of
training a cell give ~20k steps at T = 512 and ~500-1000 for RLS at T = 4096 (batch 23): enough at
P = 64 by the CPU curves, the long RLS cells at P = 128 the tightest. One card (16 processes) gets 1/8 of
that: train one seed at one rate there (``--seeds 0 --lrs 1e-2``, 6x less work a step).

Output: ``--out`` (default ``$OUT/mqar_trained.csv`` if ``$OUT`` is set, else
``paper_figures/data/mqar_trained.csv``), one row per (cell, lr, seed): card (and gpu index), recipe,
n_pairs, seq_len, seed, steps, seconds of training, seconds of the cell (with its evaluation), final
held-out accuracy (argmax over the vocabulary at the query positions, ``--eval`` sequences) and loss, the
paper's accuracy beside it, the settings (lr, batch, method, ...), torch version, the code (``git``:
``git describe --always --dirty``; ``source``: :func:`source_digest`, the same for the same sources on any
machine) and the status / error. Beside it, ``<stem>_history.csv``: the training loss of every (cell, lr,
seed) at ~20-40 steps of its run (step, seconds, loss), to tell a cell still learning from a converged one.

Run (8 cards): ``python -m benchmarks.gpu_mqar --gpus all --budget-s 520 --out $OUT/mqar_trained.csv``;
one card, a length a call, adding to the committed cells (``source benchmarks/device_env.sh || exit 3`` first,
with ``.whl`` carried): ``cp paper_figures/data/mqar_trained*.csv $OUT/ &&
python -m benchmarks.gpu_mqar --P 64,128 --T 2048 --seeds 0 --lrs 1e-2,3e-2 --workers-per-gpu 4 --threads 4
--budget-s 480 --out $OUT/mqar_trained.csv --append`` (copy both files back);
check the logic on a CPU with ``python -m benchmarks.gpu_mqar --dry-run`` (tiny cells, two fake cards,
about a minute). Without torch it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/gpu_mqar.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]

#: the paper's Fig. 3 accuracies (Wang, Shi & Fox 2025, §7): RLS ~1.00 everywhere; linear attention
#: 1.00 at P = 64 and these at P = 128
PAPER = {
    ("linear_attention", 64): {512: 1.0, 1024: 1.0, 2048: 1.0, 4096: 1.0},
    ("linear_attention", 128): {512: 0.934, 1024: 0.930, 2048: 0.921, 4096: 0.915},
    ("rls", 64): {512: 1.0, 1024: 1.0, 2048: 1.0, 4096: 1.0},
    ("rls", 128): {512: 1.0, 1024: 1.0, 2048: 1.0, 4096: 1.0},
}

COLUMNS = [
    "card", "gpu", "recipe", "n_pairs", "seq_len", "seed", "steps", "train_seconds", "cell_seconds",
    "accuracy", "loss", "paper_accuracy", "first_loss", "last_train_loss", "lr", "batch_size", "vocab",
    "d_model", "method", "ridge", "gpus", "workers", "budget_s", "torch", "git", "source", "status", "error",
]  # fmt: skip

#: the training-loss curve of every (cell, lr, seed): ``<out stem>_history.csv`` beside the grid CSV
HISTORY_COLUMNS = ["recipe", "n_pairs", "seq_len", "lr", "seed", "step", "seconds", "train_loss"]


def paper_accuracy(recipe, P, T):
    return PAPER.get((recipe, P), {}).get(T, float("nan"))


def git_commit():
    """``git describe --always --dirty``: the commit, marked ``-dirty`` when the tree differs from it (a
    copy of a working tree can carry a stale HEAD: :func:`source_digest` names the code itself)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True
        )
        return out.stdout.decode().strip() or "?"
    except OSError:
        return "?"


def source_digest(root=ROOT):
    """The first 12 hex digits of a SHA-256 over the package's and this script's sources (path and bytes
    of every ``ttr_stats/**/*.py`` and ``benchmarks/gpu_mqar.py``, sorted): the same code gives the same
    digest on any machine, committed or not (``python -m benchmarks.gpu_mqar --source`` prints it)."""
    root = Path(root)
    files = sorted(root.glob("ttr_stats/**/*.py")) + [root / "benchmarks" / "gpu_mqar.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def card_name(device):
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def run_cell(job):
    """Worker: train one cell (all its seeds) and return its rows (never raises)."""
    t0 = time.time()
    cfg_kw, deadline, extra = job
    base = {
        "recipe": cfg_kw["recipe"], "n_pairs": cfg_kw["n_pairs"], "seq_len": cfg_kw["seq_len"],
        "lr": cfg_kw["lr"], "batch_size": cfg_kw["batch_size"], "vocab": cfg_kw["vocab"],
        "d_model": cfg_kw["d_model"], "method": cfg_kw["method"], "ridge": cfg_kw["ridge"], **extra,
        "paper_accuracy": paper_accuracy(cfg_kw["recipe"], cfg_kw["n_pairs"], cfg_kw["seq_len"]),
    }  # fmt: skip
    try:
        if _INIT_ERROR is not None:
            raise RuntimeError(_INIT_ERROR)
        import torch

        from ttr_stats.train import MQARTrainConfig, train_mqar

        base["torch"] = torch.__version__
        base["card"] = card_name(cfg_kw["device"])
        base["gpu"] = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        cfg = MQARTrainConfig(**cfg_kw)
        _, results = train_mqar(cfg, deadline=deadline)
        cell_s = time.time() - t0
        return [
            {**base, **r.row(), "cell_seconds": cell_s, "status": "ok", "error": "", "_history": r.history}
            for r in results
        ]
    except Exception as exc:  # one failed cell must not stop the grid
        tb = traceback.format_exc().strip().splitlines()
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300] + " | " + " / ".join(tb[-3:])[:300]
        lrs = cfg_kw.get("lrs") or (cfg_kw["lr"],)
        return [
            {**base, "seed": s, "lr": lr, "cell_seconds": time.time() - t0, "status": "failed", "error": msg}
            for lr in lrs
            for s in cfg_kw["seeds"]
        ]


#: why this worker process could not start (set by :func:`_init_worker`; every cell it takes then fails
#: at once with this message instead of training)
_INIT_ERROR = None


def _init_worker(threads, barrier):
    """Import everything before the first cell (so that the cells' seconds are training seconds), then
    wait at ``barrier`` until every worker has. Up to sixteen processes share a card: expandable segments
    keep each one's cached blocks from fragmenting (the T = 4096 cells hold a few GB each). The card is the
    one ``CUDA_VISIBLE_DEVICES`` names, set by :func:`start_pools` before this process was spawned.

    Never raises: a pool whose initializer raises restarts the process, which raises again, without end
    (a missing package cost a whole 9-minute GPU call that way); the error is kept in :data:`_INIT_ERROR`
    and reported by the first cell the worker takes (the preflight's, seconds after the start)."""
    global _INIT_ERROR
    try:
        os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
        import torch

        import ttr_stats.train  # noqa: F401

        torch.set_num_threads(threads)
    except Exception as exc:
        _INIT_ERROR = f"worker start-up failed: {type(exc).__name__}: {exc}".replace("\n", " ")[:300]
    try:
        barrier.wait()
    except Exception:  # the parent gave up waiting: start anyway
        pass


def cells_of(args):
    """Cells in the order they are handed out: the longest sequences first, so that a late round holds
    the short ones; linear attention and RLS of one (P, T) next to each other."""
    return [(recipe, P, T) for T in sorted(args.T, reverse=True) for P in args.P for recipe in args.recipes]


def cell_seconds(n_left, workers, time_left, overhead_s):
    """Training seconds of the next cell: what is left, shared by the rounds still to come (the cells left,
    this one included, ``workers`` at a time), less each round's ``overhead_s`` (model, evaluation)."""
    rounds = math.ceil(n_left / workers)
    return time_left / rounds - overhead_s


def history_path(path):
    """Where the loss curves of the grid CSV ``path`` go: ``<stem>_history.csv`` beside it."""
    path = Path(path)
    return path.with_name(path.stem + "_history.csv")


class CSVSink:
    """Appends rows as they come (header first), flushing each, so a killed run keeps its rows; a row's
    ``_history`` (the run's ``(step, seconds, train loss)`` points) goes to :func:`history_path`.

    ``append=True`` keeps the rows already in ``path`` (a grid built over several runs: the committed CSV
    copied to the device's output folder, one length a run) and adds the new ones after them; rows of an
    older header are rewritten under the current columns first (a column they lack stays empty).
    """

    def __init__(self, path, columns=None, history=True, append=False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        columns = columns or COLUMNS
        old = []
        if append and self.path.is_file():
            with open(self.path, newline="", encoding="utf-8") as fh:
                old = list(csv.DictReader(fh))
        self.fh = open(self.path, "w", newline="", encoding="utf-8")
        self.w = csv.DictWriter(self.fh, columns, extrasaction="ignore")
        self.w.writeheader()
        for r in old:
            self.w.writerow({k: r.get(k, "") for k in columns})
        self.fh.flush()
        self.history = (
            CSVSink(history_path(path), HISTORY_COLUMNS, history=False, append=append) if history else None
        )

    def write(self, rows):
        points = []
        for r in rows:
            self.w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
            key = {k: r.get(k) for k in ("recipe", "n_pairs", "seq_len", "lr", "seed")}
            points += [{**key, "step": st, "seconds": sec, "train_loss": loss}
                       for st, sec, loss in r.get("_history") or ()]  # fmt: skip
        self.fh.flush()
        os.fsync(self.fh.fileno())
        if self.history is not None and points:
            self.history.write(points)

    def close(self):
        self.fh.close()
        if self.history is not None:
            self.history.close()


def batch_of(args, T):
    """Sequences per replica and step at length T: ``--batch`` at T = 512, times (512 / T) ** batch_scale
    for longer T (at least ``--min-batch``)."""
    scale = (512 / T) ** args.batch_scale if T > 512 else 1.0
    return max(args.min_batch, int(round(args.batch * scale)))


def gpu_list(spec, device, count=None):
    """The cards of ``--gpus``: "all" (every card: ``count`` or torch's), "N" (the first N) or "0,2,5".
    With a CPU ``device`` the names are only labels of fake cards (one worker pool each)."""
    spec = str(spec).strip()
    if spec == "all":
        if count is None and str(device).startswith("cuda"):
            import torch

            count = torch.cuda.device_count()
        elif count is None:
            count = 1  # one fake card
        return [str(i) for i in range(max(1, count))]
    parts = [x.strip() for x in spec.split(",") if x.strip()]
    if not parts or not all(x.isdigit() for x in parts):
        raise ValueError(f"--gpus must be 'all', a count or a list of card indices, got {spec!r}")
    if len(parts) == 1:
        n = int(parts[0])
        if n < 1:
            raise ValueError(f"--gpus must be at least 1, got {spec!r}")
        if count is not None and str(device).startswith("cuda") and n > count:
            raise ValueError(f"--gpus {n}: torch sees only {count} card(s)")
        return [str(i) for i in range(n)]
    if len(set(parts)) != len(parts):
        raise ValueError(f"--gpus lists a card twice: {spec!r}")
    return parts


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_out = (
        Path(os.environ["OUT"]) / "mqar_trained.csv"
        if os.environ.get("OUT")
        else ROOT / "paper_figures" / "data" / "mqar_trained.csv"
    )
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--budget-s", type=float, default=520.0, help="hard wall-clock budget of the whole run")
    ap.add_argument(
        "--gpus", default="all",
        help="cards: 'all', a count N (the first N) or indices '0,2,5'; one worker pool per card "
        "(CUDA_VISIBLE_DEVICES); with --device cpu, fake cards",
    )  # fmt: skip
    ap.add_argument(
        "--workers-per-gpu", "--workers", dest="workers", type=int, default=None,
        help="training processes per card (default: ceil(cells / cards), every cell at once, at most 16)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads per worker (cores / workers)")
    ap.add_argument("--seeds", type=ints, default=[0, 1, 2], help="seeds, trained together in each cell")
    ap.add_argument("--P", type=ints, default=[64, 128], help="key-value pairs")
    ap.add_argument("--T", type=ints, default=[512, 1024, 2048, 4096], help="sequence lengths")
    ap.add_argument("--recipes", type=lambda s: s.split(","), default=["linear_attention", "rls"])
    ap.add_argument(
        "--lrs", type=lambda x: [float(v) for v in x.split(",") if v], default=[1e-2, 3e-2],
        help="AdamW peak learning rates, each trained (as replicas) beside the seeds; the figure keeps the "
        "best per cell, as Zoology's sweeps do",
    )  # fmt: skip
    ap.add_argument("--batch", type=int, default=64, help="sequences per step and replica at T <= 512")
    ap.add_argument(
        "--batch-scale", type=float, default=0.5,
        help="batch at T > 512: --batch * (512 / T) ** this (0: constant sequences, 1: constant tokens)",
    )  # fmt: skip
    ap.add_argument("--min-batch", type=int, default=16, help="smallest batch after --batch-scale")
    ap.add_argument("--vocab", type=int, default=8192, help="Zoology's 8192")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--ridge", type=float, default=1.0, help="RLS prior precision")
    ap.add_argument("--method", default="chunked")
    ap.add_argument("--warmup", type=float, default=0.05, help="warm-up fraction of each cell's schedule")
    ap.add_argument("--eval", type=int, default=512, help="held-out sequences per seed")
    ap.add_argument("--max-steps", type=int, default=100_000, help="step cap (time is the budget)")
    ap.add_argument(
        "--max-tokens", type=int, default=2**19,
        help="most tokens (replicas x sequences x T) in one forward/backward: longer steps are split into "
        "micro-batches (fwd + bwd, measured on a CPU at T = 2048: RLS 46 MB a sequence, linear attention 17; "
        "so ~12 GB a step for RLS at T = 4096 and 2**19 tokens; several processes share a card)",
    )  # fmt: skip
    ap.add_argument("--device", default="cuda", help="cuda (each pool's card) or cpu (fake cards)")
    ap.add_argument("--margin-s", type=float, default=15.0, help="kept back for writing and shutdown")
    ap.add_argument("--overhead-s", type=float, default=20.0, help="per cell: model build, evaluation")
    ap.add_argument("--out", type=Path, default=default_out)
    ap.add_argument(
        "--append", action="store_true",
        help="keep the rows already in --out (and its _history.csv) and add this run's after them",
    )  # fmt: skip
    ap.add_argument("--no-preflight", action="store_true", help="skip the 3-step check of each layer")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny cells, 2 fake cards: checks the logic")
    ap.add_argument("--source", action="store_true", help="print the sources' digest (CSV column source)")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.P, args.T, args.vocab, args.batch, args.eval = "cpu", [4], [32, 64], 128, 8, 16
        args.gpus, args.seeds, args.budget_s = "2", [0, 1], min(args.budget_s, 150.0)
        args.workers, args.min_batch = 1, 4
        args.overhead_s, args.margin_s = 5.0, 5.0
    for name in ("budget_s", "batch", "min_batch", "eval", "max_steps"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.workers is not None and args.workers < 1:
        ap.error(f"--workers-per-gpu must be at least 1, got {args.workers}")
    return args


def pick_card(load, n_given):
    """The card for the next cell: the least loaded; ties go up in even rounds (``n_given // cards``) and
    down in odd ones (a snake), so the card of the longest cell of one round gets the shortest of the
    next (the cells come longest first)."""
    up = (n_given // len(load)) % 2 == 0
    return min(range(len(load)), key=lambda i: (load[i], i if up else -i))


def start_pools(ctx, gpus, workers, threads, barrier):
    """One spawn pool of ``workers`` processes per card, each started with ``CUDA_VISIBLE_DEVICES`` = its
    card (spawned children copy the parent's environment when they start; the parent's own is restored)."""
    pools = []
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        for g in gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = g
            pools.append(ctx.Pool(workers, initializer=_init_worker, initargs=(threads, barrier)))
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return pools


def main(argv=None):
    t_start = time.time()
    args = parse(argv)
    if args.source:
        print(source_digest())
        return 0
    deadline = t_start + args.budget_s - args.margin_s
    try:
        import torch
    except ImportError:
        print("gpu_mqar: needs PyTorch (pip install 'ttr_stats[train]'); nothing run", file=sys.stderr)
        return 2
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print(
            f"gpu_mqar: --device {args.device} but torch sees no CUDA device; try --dry-run", file=sys.stderr
        )
        return 2
    if on_gpu and args.device != "cuda":
        print("gpu_mqar: pick cards with --gpus; --device is 'cuda' or 'cpu'", file=sys.stderr)
        return 2
    try:  # what every worker imports, checked here first: a broken install fails now, not at the deadline
        import ttr_stats.train  # noqa: F401
    except Exception as exc:
        print(
            f"gpu_mqar: cannot import ttr_stats.train ({type(exc).__name__}: {exc}); nothing run",
            file=sys.stderr,
        )
        return 2
    try:
        gpus = gpu_list(args.gpus, args.device, torch.cuda.device_count() if on_gpu else None)
    except ValueError as exc:
        print(f"gpu_mqar: {exc}", file=sys.stderr)
        return 2
    cells = cells_of(args)
    if args.workers is None:
        args.workers = min(16, math.ceil(len(cells) / len(gpus)))
    n_workers = max(1, min(args.workers * len(gpus), len(cells)))
    per_gpu = math.ceil(n_workers / len(gpus))
    if args.threads is None:
        args.threads = max(1, (os.cpu_count() or 1) // (per_gpu * len(gpus)))
    extra = {
        "workers": per_gpu, "gpus": len(gpus), "budget_s": args.budget_s, "git": git_commit(),
        "source": source_digest(),
    }  # fmt: skip

    def job(cell, seconds):
        recipe, P, T = cell
        kw = dict(
            recipe=recipe, n_pairs=P, seq_len=T, vocab=args.vocab, d_model=args.d_model,
            batch_size=batch_of(args, T), steps=args.max_steps, seconds=seconds, lr=args.lrs[0],
            lrs=tuple(args.lrs), ridge=args.ridge, method=args.method, eval_sequences=args.eval,
            warmup=args.warmup, seeds=tuple(args.seeds), device=args.device, threads=args.threads,
            max_tokens=args.max_tokens,
        )  # fmt: skip
        return kw, deadline, extra

    sink = CSVSink(args.out, append=args.append)
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be forked
    barrier = ctx.Barrier(per_gpu * len(gpus) + 1)
    pools = start_pools(ctx, gpus, per_gpu, args.threads, barrier)
    try:
        barrier.wait(timeout=max(1.0, (deadline - time.time()) / 3))
    except Exception:  # BrokenBarrierError on timeout: go on with the workers that are up
        barrier.abort()
    slots = per_gpu * len(gpus)
    print(
        f"gpu_mqar: {len(cells)} cells x {len(args.seeds)} seeds x {len(args.lrs)} rates on {len(gpus)} "
        f"card(s) [{','.join(gpus)}] ({args.device}), {per_gpu} workers a card x {args.threads} threads, "
        f"ready after {time.time() - t_start:.0f} s; about "
        f"{cell_seconds(len(cells), slots, deadline - time.time(), args.overhead_s):.0f} s of training a "
        f"cell; budget {args.budget_s:.0f} s -> {args.out}",
        flush=True,
    )
    if not args.no_preflight:  # a few steps of each layer on every card: a broken path fails in seconds
        checks = []
        for pool in pools:
            for recipe in args.recipes:
                kw, _, _ = job((recipe, 4, 64), 30.0)
                kw.update(vocab=128, batch_size=4, steps=3, eval_sequences=4, seeds=(0,), lrs=None)
                checks.append(pool.apply_async(run_cell, ((kw, deadline, extra),)))
        bad = [
            r for c in checks for r in c.get(timeout=max(1.0, deadline - time.time())) if r["status"] != "ok"
        ]
        if bad:
            for r in bad:
                print(
                    f"gpu_mqar: preflight {r['recipe']} failed on card {r.get('gpu', '?')}: {r['error']}",
                    file=sys.stderr,
                    flush=True,
                )
            sink.write(bad)
            sink.close()
            for pool in pools:
                pool.terminate()
            return 1
        print(
            f"gpu_mqar: preflight ok ({', '.join(args.recipes)} on {len(pools)} card(s)) at "
            f"{time.time() - t_start:.0f} s",
            flush=True,
        )
    todo = list(cells)
    running = {}  # cell -> (AsyncResult, config keywords, pool index)
    load = [0] * len(pools)  # cells running on each card
    n_given = 0
    n_ok = 0
    try:
        while (todo or running) and time.time() < deadline + args.margin_s / 2:
            while todo and len(running) < slots:
                g = pick_card(load, n_given)
                if load[g] >= per_gpu:
                    break
                left = deadline - time.time()
                secs = cell_seconds(len(todo) + len(running), slots, left, args.overhead_s)
                if secs < 2:
                    break  # no time for another cell: the rest are written as not run
                j = job(todo[0], secs)
                running[todo.pop(0)] = (pools[g].apply_async(run_cell, (j,)), j[0], g)
                load[g] += 1
                n_given += 1
            if todo and not running:
                break
            for cell in [c for c, (r, _, _) in running.items() if r.ready()]:
                res, _, g = running.pop(cell)
                load[g] -= 1
                rows = res.get()
                sink.write(rows)
                n_ok += sum(r["status"] == "ok" for r in rows)
                r0 = rows[0]
                accs = " ".join(f"{r.get('accuracy', float('nan')):.3f}" for r in rows)
                print(
                    f"  card {gpus[g]:>2s} {r0['recipe']:16s} P={r0['n_pairs']:<4d} T={r0['seq_len']:<5d} "
                    f"{r0['status']:6s} steps={r0.get('steps', '-')} batch={r0['batch_size']} acc={accs} "
                    f"(paper {r0['paper_accuracy']}) {time.time() - t_start:6.0f} s "
                    f"{r0.get('error', '')[:200]}",
                    flush=True,
                )
            time.sleep(0.2)
    finally:
        for pool in pools:
            pool.terminate()
        left = [
            (c, kw["seeds"], "timeout", "not finished inside --budget-s") for c, (_, kw, _) in running.items()
        ]
        left += [(c, tuple(args.seeds), "not_run", "no time left inside --budget-s") for c in todo]
        for (recipe, P, T), seeds, status, why in left:
            rows = [
                {
                    "recipe": recipe,
                    "n_pairs": P,
                    "seq_len": T,
                    "seed": s,
                    "status": status,
                    "error": why,
                    "paper_accuracy": paper_accuracy(recipe, P, T),
                    **extra,
                }  # fmt: skip
                for s in seeds
            ]
            sink.write(rows)
        sink.close()
    print(f"gpu_mqar: {n_ok} seed rows ok, {len(left)} cells unfinished, {time.time() - t_start:.0f} s")
    return 0 if n_ok else 1


if __name__ == "__main__":
    sys.exit(main())
