"""The results folder of a sweep: atomic writes, ``env.json``, the part files, the tidy table, the
progress bar and ``ttr-stats experiment show``'s summary (see :mod:`ttr_stats.experiments`)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import platform
import socket
import sys
import time
import uuid
from pathlib import Path

import numpy as np

#: columns every row has, in this order (metrics and parameter columns go between ``status`` and
#: ``seconds``); a metric may not use one of these names
BOOK_COLUMNS = ("cell_id", "recipe", "data", "seed", "status", "seconds", "worker", "error", "traceback")
#: distributions whose versions env.json records (None when not installed)
DISTRIBUTIONS = (
    "ttr_stats",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "threadpoolctl",
    "dask",
    "distributed",
    "pyarrow",
    "tqdm",
    "cupy-cuda12x",
    "cupy-cuda13x",
    "torch",
)


def _canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=True)


# ------------------------------------------------------------------------------------------------------
# the results folder
def _atomic_write(path, text):
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _git_revision(where):
    import subprocess

    def git(*args):
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None

    try:
        rev = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"revision": None, "dirty": None}
    return {"revision": rev, "dirty": None if dirty is None else bool(dirty)}


def environment(where=None):
    """What ``env.json`` records: git revision, package versions, machine, BLAS pools, CUDA devices."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    blas = []
    with contextlib.suppress(Exception):
        from threadpoolctl import threadpool_info

        blas = [
            {k: i.get(k) for k in ("internal_api", "version", "num_threads", "threading_layer")}
            for i in threadpool_info()
        ]
    devices = []
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            for i in range(cupy.cuda.runtime.getDeviceCount()):
                name = cupy.cuda.runtime.getDeviceProperties(i)["name"]
                devices.append(name.decode() if isinstance(name, bytes) else str(name))
        except Exception as exc:  # noqa: BLE001 - report, do not fail
            devices.append(f"unavailable ({type(exc).__name__})")
    return {
        "git": _git_revision(where or Path.cwd()),
        "versions": versions,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "hostname": socket.gethostname(),
        },
        "blas": blas,
        "cuda_devices": devices,
        "argv": sys.argv,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _read_parts(out):
    """Rows of every part file, in write order (file names start with a time stamp)."""
    rows = []
    for part in sorted((Path(out) / "parts").glob("part-*.jsonl")):
        with open(part, encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return rows


def read_results(out, cells=None):
    """The latest row of each cell in a results folder (an ``ok`` row is never rerun, so it is the last).

    With ``cells`` (ids), only those, in that order; otherwise every cell found, in the order of
    ``config.json`` and then of writing.
    """
    latest = {}
    for row in _read_parts(out):
        latest[row["cell_id"]] = row
    if cells is None:
        cfg = Path(out) / "config.json"
        order = [c["id"] for c in json.loads(cfg.read_text())["cells"]] if cfg.is_file() else []
        cells = [i for i in order if i in latest] + [i for i in latest if i not in set(order)]
    return [latest[i] for i in cells if i in latest]


def _columns(rows):
    cols, seen = [], set()
    for key in BOOK_COLUMNS[:4]:
        cols.append(key)
        seen.add(key)
    tail = [c for c in BOOK_COLUMNS[4:] if c != "status"]
    params = [k for r in rows for k in r if k.startswith(("recipe.", "data."))]
    metrics = [k for r in rows for k in r if k not in BOOK_COLUMNS and not k.startswith(("recipe.", "data."))]
    for key in [*dict.fromkeys(params), "status", *dict.fromkeys(metrics), *tail]:
        if key not in seen:
            cols.append(key)
            seen.add(key)
    return cols


def write_table(out, rows):
    """The tidy table: ``results.parquet`` when pyarrow is importable, else ``results.csv``."""
    out = Path(out)
    cols = _columns(rows)
    cells = lambda r: [_cell_text(r.get(c)) for c in cols]  # noqa: E731
    if importlib.util.find_spec("pyarrow") is not None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: [_arrow_value(r.get(c)) for r in rows] for c in cols})
        tmp = out / f".results.parquet.{uuid.uuid4().hex[:8]}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, out / "results.parquet")
        return out / "results.parquet"
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(cols)
    w.writerows(cells(r) for r in rows)
    _atomic_write(out / "results.csv", buf.getvalue())
    return out / "results.csv"


def _cell_text(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)  # round-trips exactly
    if isinstance(v, (list, dict)):
        return _canonical(v)
    return v


def _arrow_value(v):
    return _canonical(v) if isinstance(v, (list, dict)) else v


# ------------------------------------------------------------------------------------------------------
# progress
class _Progress:
    """Counts cells: tqdm when installed; else one line on stderr, redrawn on a terminal and printed at
    every tenth of the sweep otherwise (a log file gets 10 lines, not one per task)."""

    def __init__(self, total, initial, label, enabled):
        self.total, self.n, self.failed, self.label, self.t0 = total, initial, 0, label, time.perf_counter()
        self.enabled, self.bar, self.next_print = enabled, None, 0
        self.tty = enabled and hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        if enabled and importlib.util.find_spec("tqdm") is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=label, unit="cell")
        else:
            self._line()

    def _line(self, final=False):
        if not self.enabled or not (self.tty or final or self.n >= self.next_print):
            return
        self.next_print = self.n + max(1, self.total // 10)
        dt = time.perf_counter() - self.t0
        fail = f", {self.failed} failed" if self.failed else ""
        text = f"{self.label}: {self.n}/{self.total} cells{fail} ({dt:.1f} s)"
        print(f"\r{text}" if self.tty else text, end="\n" if final or not self.tty else "", file=sys.stderr)

    def update(self, rows):
        self.n += len(rows)
        self.failed += sum(r["status"] != "ok" for r in rows)
        if self.bar is not None:
            self.bar.update(len(rows))
            if self.failed:
                self.bar.set_postfix(failed=self.failed)
        else:
            self._line()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            self._line(final=True)


# ------------------------------------------------------------------------------------------------------
# summaries
def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def summarize(out, max_failures=10):
    """A text summary of a results folder: cells done / failed / missing, the failures, and a table of
    each metric's mean (± standard error over seed indices) per layer and data setting."""
    out = Path(out)
    cfg_path = out / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{out}: no config.json here; is it a folder written by ttr-stats experiment run?"
        )
    cfg = json.loads(cfg_path.read_text())
    rows = read_results(out, cells=[c["id"] for c in cfg["cells"]])
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    lines = [
        f"sweep {cfg['name']}: {cfg['n_cells']} cells; {len(ok)} done, {len(failed)} failed, "
        f"{cfg['n_cells'] - len(rows)} missing",
    ]
    secs = [r["seconds"] for r in ok if isinstance(r.get("seconds"), float)]
    if secs:
        lines.append(f"seconds per cell: median {np.median(secs):.3g}, total {sum(secs):.4g}")
    for r in failed[:max_failures]:
        lines.append(
            f"  failed {r['cell_id']} {r['recipe']} {_params_text(r)} seed {r['seed']}: {r['error']}"
        )
    if len(failed) > max_failures:
        lines.append(f"  ... and {len(failed) - max_failures} more failures")
    if ok:
        lines.append("")
        lines.extend(_metric_table(ok))
    return "\n".join(lines)


def _params_text(r):
    return " ".join(f"{k}={_fmt(v)}" for k, v in r.items() if k.startswith(("recipe.", "data.")))


def _metric_table(rows):
    cols = _columns(rows)
    keys = [
        "recipe",
        *[c for c in cols if c.startswith("recipe.")],
        "data",
        *[c for c in cols if c.startswith("data.")],
    ]
    metrics = [c for c in cols if c not in BOOK_COLUMNS and c not in keys]
    metrics = [
        m for m in metrics if all(isinstance(r.get(m), (int, float)) or r.get(m) is None for r in rows)
    ]
    metrics, series = _fold_series(metrics)
    groups = {}
    for r in rows:
        groups.setdefault(tuple(_canonical(r.get(k)) for k in keys), []).append(r)
    shown_keys = [k for k in keys if len({g[keys.index(k)] for g in groups}) > 1 or k in ("recipe", "data")]
    header = [*shown_keys, "n", *metrics]
    table = [header]
    for members in groups.values():
        line = [_fmt(members[0].get(k)) for k in shown_keys] + [str(len(members))]
        for m in metrics:
            vals = np.array([r[m] for r in members if r.get(m) is not None], dtype=np.float64)
            if vals.size == 0:
                line.append("")
            elif vals.size == 1:
                line.append(_fmt(float(vals[0])))
            else:
                se = float(np.std(vals, ddof=1) / math.sqrt(vals.size))
                line.append(f"{_fmt(float(np.mean(vals)))} ± {_fmt(se)}")
        table.append(line)
    widths = [max(len(row[j]) for row in table) for j in range(len(header))]
    text = ["| " + " | ".join(s.ljust(w) for s, w in zip(row, widths, strict=True)) + " |" for row in table]
    text.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for prefix, nums in series.items():
        text.append(
            f"({len(nums)} columns {prefix}{nums[0]} ... {prefix}{nums[-1]} not shown: a series, such as a "
            "binned curve; read them from the results table)"
        )
    return text


#: metric columns ``<prefix><integer>`` of one prefix, more than this many, are a series (a curve) that
#: the summary table names instead of showing
SERIES_MIN = 8


def _fold_series(metrics):
    """(metrics to show, {prefix: sorted integers}) -- columns like ``err_t0 .. err_t252`` folded."""
    import re

    groups = {}
    for m in metrics:
        hit = re.fullmatch(r"(.*\D)(\d+)", m)
        if hit:
            groups.setdefault(hit.group(1), []).append((int(hit.group(2)), m))
    series = {p: sorted(v) for p, v in groups.items() if len(v) > SERIES_MIN}
    hidden = {m for v in series.values() for _, m in v}
    return [m for m in metrics if m not in hidden], {p: [n for n, _ in v] for p, v in series.items()}
