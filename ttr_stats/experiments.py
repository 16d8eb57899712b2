r"""Sweeps of cells, run locally or on a Dask cluster, with tidy, resumable results.

A **sweep** is a list of **cells**. A cell names a layer (a recipe and its parameters), a data generator
and its parameters, a seed index and the metrics to compute; one cell gives one row of results. A file in
``experiments/`` exports ``SWEEP`` (and a small ``QUICK``) and ``ttr-stats experiment run FILE`` runs it:

* cells are grouped into tasks (a Dask task costs 0.2-1 ms of scheduling; a cell costs 1 ms-10 s), and
  each finished task is written at once, atomically, to ``<out>/parts/``;
* every cell draws its data from its own :class:`numpy.random.SeedSequence` child, keyed by the cell's
  data generator, data parameters and seed index (not by where or when it runs), so results are identical
  however the cells are scheduled -- and cells that differ only in the layer see the same data (common
  random numbers, as :func:`~ttr_stats.diagnostics.bias_variance.monte_carlo` does);
* BLAS runs one thread per worker process (the cells are the parallelism);
* a cell that raises is recorded with its error and traceback (``status = "failed"``) and the others go
  on; ``resume=True`` (``--resume``) computes only the cells without an ``ok`` row (failed ones are
  retried); Ctrl-C leaves only whole, finished tasks on disk.

The results folder holds ``config.json`` (the sweep and its cells), ``env.json`` (git revision, package
versions, machine and BLAS), ``parts/*.jsonl`` (the rows as computed, the source of truth) and the tidy
table ``results.parquet`` (when pyarrow is installed) or ``results.csv``: one row per cell, columns
``cell_id, recipe, recipe.<param>..., data, data.<param>..., seed, status, <metrics>..., seconds, worker,
error, traceback``.

Dask is optional: it is imported only when a scheduler or a Dask client is asked for
(``pip install "ttr_stats[experiments]"``).

Examples
--------
>>> import numpy as np
>>> from ttr_stats.experiments import Sweep, grid
>>> def pairs(rng, n, d):
...     return rng.standard_normal((n, d)), rng.standard_normal((n, 1))
>>> def fit_error(layer, data, cell):
...     K, V = data
...     return float(np.mean((layer(K, K, V, causal=False) - V) ** 2))
>>> sweep = Sweep("demo", grid({"least_squares": [{"ridge": 0.0}, {"ridge": 1.0}]},
...                            {"pairs": [{"n": 8, "d": 4}]}, seeds=2, metrics=["fit_error"]),
...               data={"pairs": pairs}, metrics={"fit_error": fit_error})
>>> len(sweep.cells)
4
>>> rows = [sweep.run_cell(c) for c in sweep.cells]
>>> [r["status"] for r in rows]
['ok', 'ok', 'ok', 'ok']
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
import math
import numbers
import os
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._experiment_results import (
    BOOK_COLUMNS,
    _atomic_write,
    _canonical,
    _Progress,
    environment,
    read_results,
    summarize,
    write_table,
)

__all__ = [
    "Cell",
    "Sweep",
    "RunSummary",
    "grid",
    "cell_rng",
    "load_sweep",
    "run",
    "read_results",
    "summarize",
]

#: environment variables that size the BLAS/OpenMP pools of a process that has not loaded them yet
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
#: a task holds at most this many cells (so a slow cell cannot hold back a long tail of others, and
#: Ctrl-C loses at most one task's worth per worker)
MAX_CELLS_PER_TASK = 64
#: tasks per worker when the sweep does not set cells_per_task (enough for the fast workers to take over
#: the slow ones' share at the end)
TASKS_PER_WORKER = 4


# ------------------------------------------------------------------------------------------------------
# cells
def _plain(value, where):
    """``value`` as plain JSON types (numpy scalars and arrays converted); a ValueError naming ``where``."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    raise ValueError(
        f"{where}: cell parameters must be JSON values (numbers, strings, lists, dicts), got {value!r} "
        f"({type(value).__name__}); pass a name and build the object in the layer or data factory"
    )


def _digest(obj):
    return hashlib.sha256(_canonical(obj).encode()).digest()


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of a sweep: a layer, a data set, a seed index, the metrics to compute.

    Parameters
    ----------
    recipe : str
        Layer name: a key of the sweep's ``layers`` or a function of :mod:`ttr_stats.recipes`.
    params : mapping
        Keyword arguments of the layer factory (JSON values).
    data : str
        Data generator name (a key of the sweep's ``data``).
    data_params : mapping
        Keyword arguments of the generator (JSON values).
    seed : int >= 0
        Seed index: replication number. Seeds come from ``(sweep.seed, data, data_params, seed)``.
    metrics : sequence of str
        Keys of the sweep's ``metrics``.
    """

    recipe: str
    params: Mapping = dataclasses.field(default_factory=dict)
    data: str = ""
    data_params: Mapping = dataclasses.field(default_factory=dict)
    seed: int = 0
    metrics: tuple = ()

    def __post_init__(self):
        for name in ("recipe", "data"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0 (a seed index), got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "params", _plain(dict(self.params), f"params of {self.recipe!r}"))
        object.__setattr__(
            self, "data_params", _plain(dict(self.data_params), f"data_params of {self.data!r}")
        )
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        if not metrics or not all(isinstance(m, str) for m in metrics):
            raise ValueError(f"metrics must be a non-empty sequence of names, got {self.metrics!r}")
        object.__setattr__(self, "metrics", metrics)

    def to_dict(self):
        return {
            "recipe": self.recipe,
            "params": self.params,
            "data": self.data,
            "data_params": self.data_params,
            "seed": self.seed,
            "metrics": list(self.metrics),
        }

    @classmethod
    def from_dict(cls, d):
        return cls(d["recipe"], d["params"], d["data"], d["data_params"], d["seed"], tuple(d["metrics"]))

    @property
    def id(self):
        """16 hex digits naming the cell (a hash of everything in it); what ``resume`` matches on."""
        return _digest(self.to_dict()).hex()[:16]

    @property
    def data_key(self):
        """What the cell's random numbers depend on: the generator, its parameters, the seed index."""
        return (self.data, _canonical(self.data_params), self.seed)


def grid(layers, data, seeds, metrics):
    """Every combination of layer, data setting and seed index, as a list of :class:`Cell`.

    Parameters
    ----------
    layers : mapping name -> list of dict
        Layer name to the parameter sets to try (``{"rls": [{"ridge": 1e-3}]}``).
    data : mapping name -> list of dict
        Generator name to its parameter sets.
    seeds : int or sequence of int
        ``n`` means seed indices ``0 .. n - 1``.
    metrics : sequence of str
        Computed in every cell.
    """
    seeds = range(seeds) if isinstance(seeds, numbers.Integral) else seeds
    return [
        Cell(name, p, dname, dp, s, tuple(metrics))
        for (dname, dps), (name, ps) in itertools.product(data.items(), layers.items())
        for dp in dps
        for p in ps
        for s in seeds
    ]


def cell_rng(base_seed, cell):
    """The random generator of a cell: a SeedSequence child keyed by the cell's data and seed index.

    ``SeedSequence(base_seed, spawn_key=(w0, w1, w2, w3, seed))`` with ``w`` four 32-bit words of the
    SHA-256 of ``(data, data_params)``. Independent of scheduling, and shared by the cells that differ
    only in the layer or the metrics.
    """
    words = np.frombuffer(_digest([cell.data, cell.data_params])[:16], dtype="<u4")
    seq = np.random.SeedSequence(int(base_seed), spawn_key=(*(int(w) for w in words), cell.seed))
    return np.random.default_rng(seq)


# ------------------------------------------------------------------------------------------------------
# sweeps
def _recipe(name):
    from . import recipes

    fn = getattr(recipes, name, None)
    if not callable(fn) or name.startswith("_"):
        raise ValueError(f"recipe {name!r}: not a layer of the sweep and not a function of ttr_stats.recipes")
    return fn


@dataclasses.dataclass
class Sweep:
    """A named list of cells and the functions that compute them.

    Parameters
    ----------
    name : str
        Names the results folder (``results/<name>``).
    cells : list of Cell
    data : mapping name -> callable
        ``generator(rng, **data_params) -> data`` (``rng`` a :class:`numpy.random.Generator`).
    metrics : mapping name -> callable
        ``metric(layer, data, cell) -> float or mapping str -> float`` (a mapping gives one column per key).
    layers : mapping name -> callable, optional
        ``factory(**params) -> layer``; names not found here are looked up in :mod:`ttr_stats.recipes`.
        A layer is anything the metric can call (a TestTimeRegression, a wrapper around one).
    seed : int
        Base entropy of every cell's SeedSequence.
    cells_per_task : int, optional
        Cells grouped into one task (default: about 4 tasks per worker, at most 64 cells).
    description : str
    """

    name: str
    cells: list
    data: Mapping
    metrics: Mapping
    layers: Mapping = dataclasses.field(default_factory=dict)
    seed: int = 0
    cells_per_task: int | None = None
    description: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or os.sep in self.name or self.name in (".", ".."):
            raise ValueError(f"name must be a folder name (no {os.sep!r}), got {self.name!r}")
        self.cells = list(self.cells)
        if not self.cells or not all(isinstance(c, Cell) for c in self.cells):
            raise ValueError("cells must be a non-empty list of Cell (see ttr_stats.experiments.grid)")
        ids = [c.id for c in self.cells]
        if len(set(ids)) != len(ids):
            raise ValueError("cells: the same cell appears twice; give replications distinct seed indices")
        for c in self.cells:
            if c.data not in self.data:
                raise ValueError(f"cell data {c.data!r}: no such generator (have {sorted(self.data)})")
            missing = [m for m in c.metrics if m not in self.metrics]
            if missing:
                raise ValueError(f"cell metrics {missing}: no such metric (have {sorted(self.metrics)})")
            if c.recipe not in self.layers:
                _recipe(c.recipe)
        if self.cells_per_task is not None and (
            isinstance(self.cells_per_task, bool)
            or not isinstance(self.cells_per_task, numbers.Integral)
            or self.cells_per_task < 1
        ):
            raise ValueError(f"cells_per_task must be an integer >= 1, got {self.cells_per_task!r}")

    def make_layer(self, cell):
        factory = self.layers.get(cell.recipe) or _recipe(cell.recipe)
        return factory(**cell.params)

    def make_data(self, cell):
        return self.data[cell.data](cell_rng(self.seed, cell), **cell.data_params)

    def run_cell(self, cell, data=None):
        """Compute one cell; a row (dict). Never raises for an error inside the cell: it is recorded."""
        row = {"cell_id": cell.id, "recipe": cell.recipe, "data": cell.data, "seed": cell.seed}
        row.update({f"recipe.{k}": v for k, v in cell.params.items()})
        row.update({f"data.{k}": v for k, v in cell.data_params.items()})
        t0 = time.perf_counter()
        try:
            if data is None:
                data = self.make_data(cell)
            layer = self.make_layer(cell)
            values = {}
            for m in cell.metrics:
                out = self.metrics[m](layer, data, cell)
                out = dict(out) if isinstance(out, Mapping) else {m: out}
                for k, v in out.items():
                    if k in BOOK_COLUMNS or k.startswith(("recipe.", "data.")):
                        raise ValueError(f"metric {m!r}: column {k!r} is reserved; rename it")
                    values[k] = _metric_value(m, k, v)
            row.update(status="ok", **values, error="", traceback="")
        except Exception as exc:  # noqa: BLE001 - a failing cell is data, not a crash of the sweep
            row.update(
                status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
            )
        row["seconds"] = time.perf_counter() - t0
        row["worker"] = f"{socket.gethostname()}:{os.getpid()}"
        return row


def _metric_value(metric, key, v):
    if isinstance(v, np.ndarray) and v.ndim == 0 or isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, bool) or isinstance(v, (str, numbers.Integral)) or v is None:
        return v
    if isinstance(v, numbers.Real):
        return float(v)
    raise ValueError(
        f"metric {metric!r}: column {key!r} must be a number or a string, got {type(v).__name__}"
    )


# ------------------------------------------------------------------------------------------------------
# loading an experiment file (in the parent and, by path or by its shipped source, in every worker)
_LOADED = {}


def _module_from_source(path, source):
    key = (str(path), hashlib.sha256(source.encode()).hexdigest())
    if key not in _LOADED:
        name = f"_ttr_experiment_{Path(path).stem}_{key[1][:12]}"
        spec = importlib.util.spec_from_loader(name, loader=None, origin=str(path))
        module = importlib.util.module_from_spec(spec)
        module.__file__ = str(path)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            exec(compile(source, str(path), "exec"), module.__dict__)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        _LOADED[key] = module
    return _LOADED[key]


def load_sweep(path, quick=False):
    """The sweep exported by an experiment file: its ``QUICK`` when ``quick`` (else ``SWEEP``).

    The file is executed as a module named after it (not imported: ``experiments/`` is not a package);
    its source travels with every task, so workers on other machines need ``ttr_stats`` (and whatever the
    file imports) but not the file itself.
    """
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"experiment file {str(path)!r} does not exist")
    source = path.read_text(encoding="utf-8")
    attr = "QUICK" if quick else "SWEEP"
    sweep = getattr(_module_from_source(path, source), attr, None)
    if not isinstance(sweep, Sweep):
        raise ValueError(f"{path}: must export {attr} = ttr_stats.experiments.Sweep(...), got {sweep!r}")
    sweep._origin = (str(path), source, attr)
    return sweep


# ------------------------------------------------------------------------------------------------------
# worker side
_PINNED = False


def pin_blas_threads(n=1):
    """Limit this process's BLAS and OpenMP pools to ``n`` threads (threadpoolctl, else environment
    variables, which only reach libraries not loaded yet). Idempotent; returns what was done."""
    global _PINNED
    for var in THREAD_ENV:
        os.environ[var] = str(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        _PINNED = True
        return "environment"
    threadpool_limits(n)  # kept in force for the life of the process
    _PINNED = True
    return "threadpoolctl"


def _resolve(payload):
    origin, sweep = payload["origin"], payload.get("sweep")
    if sweep is not None:
        return sweep
    path, source, attr = origin
    return getattr(_module_from_source(path, source), attr)


def _task(payload):
    """Run a list of cells in one worker; return their rows. Cells sharing a data key reuse the data."""
    if not _PINNED:
        pin_blas_threads(1)
    sweep = _resolve(payload)
    rows, last_key, data = [], None, None
    for d in payload["cells"]:
        cell = Cell.from_dict(d)
        t_data = 0.0
        if cell.data_key != last_key:
            last_key, data = cell.data_key, None
            t0 = time.perf_counter()
            try:
                data = sweep.make_data(cell)
            except Exception:  # noqa: BLE001 - run_cell regenerates it and records the error
                last_key = None
            t_data = time.perf_counter() - t0
        row = sweep.run_cell(cell, data=data)
        row["seconds"] += t_data  # the cell that drew the data pays for it: seconds add up to the work
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------------
# running
@dataclasses.dataclass
class RunSummary:
    """What :func:`run` did: the folder, the cells in the sweep, already done, computed now, failed, the
    table written, and the tasks sent."""

    out: Path
    n_cells: int
    n_skipped: int
    n_computed: int
    n_failed: int
    table: Path
    n_tasks: int
    executor: str


def _tasks(todo, per_task):
    todo = sorted(todo, key=lambda c: (c.data_key, c.recipe, _canonical(c.params)))
    return [todo[i : i + per_task] for i in range(0, len(todo), per_task)]


@contextlib.contextmanager
def _thread_env(n=1):
    """Environment that sizes BLAS pools in processes started inside the block; restored after."""
    old = {v: os.environ.get(v) for v in THREAD_ENV}
    os.environ.update({v: str(n) for v in THREAD_ENV})
    try:
        yield
    finally:
        for v, x in old.items():
            if x is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = x


def _blas_limited(n):
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()
    return threadpool_limits(n)


def _local_futures(payloads, workers):
    """Submit to a spawn-based process pool (fresh interpreters: the thread variables reach their BLAS)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with _thread_env(1):
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=pin_blas_threads
        )
    try:
        futures = {pool.submit(_task, p): i for i, p in enumerate(payloads)}
        for fut in as_completed(futures):
            yield futures[fut], fut
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _dask_futures(payloads, client):
    from distributed import as_completed

    client.run(pin_blas_threads)  # workers joining later pin themselves in _task
    futures = {}
    for i, p in enumerate(payloads):
        futures[client.submit(_task, p, pure=False, key=f"ttr-cells-{uuid.uuid4().hex}")] = i
    try:
        for fut in as_completed(list(futures)):
            yield futures[fut], fut
    except BaseException:
        client.cancel(list(futures))
        raise


@contextlib.contextmanager
def _dask_client(scheduler, workers, client):
    if client is not None:
        yield client
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(
            "scheduler/workers: running on Dask needs dask.distributed: pip install 'ttr_stats[experiments]' "
            "(or run without --scheduler/--workers on local processes)"
        ) from exc
    if scheduler is not None:
        with Client(scheduler) as c:
            yield c
        return
    env = {v: "1" for v in THREAD_ENV}
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            env=env,
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # the workers' "heartbeat failed" noise while the cluster closes
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


def _failed_rows(cells, exc, tb):
    rows = []
    for d in cells:
        c = Cell.from_dict(d)
        row = {"cell_id": c.id, "recipe": c.recipe, "data": c.data, "seed": c.seed}
        row.update({f"recipe.{k}": v for k, v in c.params.items()})
        row.update({f"data.{k}": v for k, v in c.data_params.items()})
        row.update(status="failed", error=f"{type(exc).__name__} (task): {exc}", traceback=tb, seconds=None)
        row["worker"] = ""
        rows.append(row)
    return rows


def run(
    sweep,
    out=None,
    *,
    resume=False,
    executor=None,
    workers=None,
    scheduler=None,
    client=None,
    cells_per_task=None,
    progress=True,
):
    """Run a sweep; write ``out`` (default ``results/<sweep.name>``); return a :class:`RunSummary`.

    Parameters
    ----------
    sweep : Sweep
        From :func:`load_sweep` (its source travels to the workers) or built in this process (then it is
        pickled to the workers: its functions must be importable there).
    out : path, optional
    resume : bool
        Skip the cells that already have an ``ok`` row in ``out``. Without it, a folder that holds results
        is refused.
    executor : {"processes", "serial", "dask"}, optional
        Default: "dask" when ``scheduler`` or ``client`` is given, else "processes" (a
        :class:`concurrent.futures.ProcessPoolExecutor` of ``workers`` processes, default the CPU count).
        "serial" runs in this process (debugging, profiling). "dask" without a scheduler starts a
        ``LocalCluster`` of ``workers`` single-threaded processes.
    workers : int, optional
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``).
    client : distributed.Client, optional
        Use this client (its cluster is left running).
    cells_per_task : int, optional
        Overrides ``sweep.cells_per_task``.
    progress : bool
        Show a progress bar counting cells on stderr.
    """
    if not isinstance(sweep, Sweep):
        raise ValueError(f"sweep must be a Sweep (see load_sweep), got {type(sweep).__name__}")
    if executor is None:
        executor = "dask" if (scheduler is not None or client is not None) else "processes"
    if executor not in ("processes", "serial", "dask"):
        raise ValueError(f"executor must be 'processes', 'serial' or 'dask', got {executor!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    out = Path("results") / sweep.name if out is None else Path(out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    ids = {c.id for c in sweep.cells}
    previous = read_results(out, cells=None)
    done = {r["cell_id"] for r in previous if r["status"] == "ok" and r["cell_id"] in ids}
    if previous and not resume:
        raise FileExistsError(
            f"out: {out} already holds {len(previous)} cell rows ({len(done)} ok for this sweep); pass "
            "resume=True (--resume) to compute only the missing cells, or choose another out (--out)"
        )
    todo = [c for c in sweep.cells if c.id not in done]

    origin = getattr(sweep, "_origin", None)
    n_workers = 1 if executor == "serial" else (workers or os.cpu_count() or 1)
    if executor == "dask" and client is not None:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    per_task = cells_per_task or sweep.cells_per_task
    if per_task is None:
        per_task = max(1, min(MAX_CELLS_PER_TASK, math.ceil(len(todo) / (TASKS_PER_WORKER * n_workers))))
    groups = _tasks(todo, per_task)

    config = {
        "name": sweep.name,
        "description": sweep.description,
        "seed": sweep.seed,
        "source": None if origin is None else {"path": origin[0], "export": origin[2]},
        "executor": executor,
        "workers": n_workers,
        "scheduler": scheduler,
        "cells_per_task": per_task,
        "n_cells": len(sweep.cells),
        "cells": [{"id": c.id, **c.to_dict()} for c in sweep.cells],
    }
    _atomic_write(out / "config.json", json.dumps(config, indent=1, allow_nan=True))
    where = Path(origin[0]).parent if origin else None
    _atomic_write(out / "env.json", json.dumps(environment(where), indent=1))

    base = {"origin": origin, "sweep": None if origin else sweep}
    payloads = [{**base, "cells": [c.to_dict() for c in g]} for g in groups]
    bar = _Progress(len(sweep.cells), len(done), sweep.name, progress)
    n_failed = 0
    stamp = f"{time.time_ns():020d}-{os.getpid()}"

    def record(i, rows):
        nonlocal n_failed
        text = "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows)
        _atomic_write(out / "parts" / f"part-{stamp}-{i:06d}.jsonl", text)
        n_failed += sum(r["status"] != "ok" for r in rows)
        bar.update(rows)

    def drain(futures):
        for i, fut in futures:
            try:
                rows = fut.result()
            except Exception as exc:  # noqa: BLE001 - a dead worker or an unpicklable result
                if type(exc).__name__ == "BrokenProcessPool":
                    raise RuntimeError(
                        "a worker process died (out of memory, or killed); finished cells are saved: "
                        "rerun with resume=True (--resume)"
                    ) from exc
                rows = _failed_rows(payloads[i]["cells"], exc, traceback.format_exc())
            record(i, rows)

    try:
        if not payloads:
            pass
        elif executor == "serial":
            with _blas_limited(1):
                for i, p in enumerate(payloads):
                    record(i, _task(p))
        elif executor == "processes":
            drain(_local_futures(payloads, min(n_workers, len(payloads))))
        else:
            with _dask_client(scheduler, workers or os.cpu_count() or 1, client) as c:
                drain(_dask_futures(payloads, c))
    finally:
        bar.close()
    rows = read_results(out, cells=[c.id for c in sweep.cells])
    table = write_table(out, rows)
    return RunSummary(out, len(sweep.cells), len(done), len(todo), n_failed, table, len(payloads), executor)
