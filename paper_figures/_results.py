"""Reading a results folder of ``ttr-stats experiment run`` for the figure scripts (``--from-results``).

A figure that can draw from a sweep's results (``fig02_nonstationary``, ``fig_bias_variance``,
``fig_capacity``) selects the cells it needs from ``config.json``, reads their rows from the tidy table
(``results.parquet`` or ``results.csv``) and aggregates over the seed indices itself. Every cell it needs
must have an ``ok`` row: otherwise :class:`ResultsError` says, in one line, which folder and which cells
(failed or missing) and how to finish them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

__all__ = ["ResultsError", "locate", "load", "by_seed", "parse_args"]

#: cells named in full in the error message (the rest are counted)
MAX_NAMED = 5


class ResultsError(ValueError):
    """A results folder that cannot give a figure its numbers (one line: folder, cells, remedy)."""


def locate(path, names):
    """The results folder: ``path`` itself when it holds ``config.json``, else ``path/<name>`` for the
    first of ``names`` (sweep names, e.g. ``("capacity", "capacity_quick")``) that does."""
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    for name in names:
        if (path / name / "config.json").is_file():
            return path / name
    if not path.exists():
        raise ResultsError(
            f"results folder {str(path)!r} does not exist; write it with ttr-stats experiment run "
            f"experiments/<file>.py --out {path}"
        )
    raise ResultsError(
        f"{path}: not a results folder (no config.json) and holds no {' or '.join(n + '/' for n in names)}"
        " results folder; pass the folder written by ttr-stats experiment run FILE --out DIR"
    )


def _number(text):
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def _plain(v):
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None  # a column that this row does not have
    return v


def _table(folder):
    """Rows of the tidy table by cell id; the newer of results.parquet / results.csv."""
    found = [p for p in (folder / "results.parquet", folder / "results.csv") if p.is_file()]
    if not found:
        raise ResultsError(
            f"{folder}: no results.csv or results.parquet (the run was interrupted before writing its "
            "table); finish it with ttr-stats experiment run FILE --out DIR --resume"
        )
    path = max(found, key=lambda p: p.stat().st_mtime_ns)
    if path.suffix == ".parquet":
        import pandas as pd

        rows = [{k: _plain(v) for k, v in r.items()} for r in pd.read_parquet(path).to_dict("records")]
    else:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    return {r["cell_id"]: r for r in rows}


def _name(cell):
    params = " ".join(f"{k}={v}" for k, v in {**cell["params"], **cell["data_params"]}.items())
    return f"{cell['id']} ({cell['recipe']} {params} seed {cell['seed']})"


def load(folder, select, what="this figure"):
    """The cells of ``folder`` that ``select(cell)`` keeps, each with its row's metrics.

    ``cell`` is a ``config.json`` entry (``id, recipe, params, data, data_params, seed, metrics``); the
    result is a list of dicts ``{**cell, **metrics of its row}`` in the order of ``config.json``. Raises
    :class:`ResultsError` (one line) when none is selected, or when a selected cell failed or has no row.
    """
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ResultsError(f"{folder}: no config.json; pass a folder written by ttr-stats experiment run")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cells = [c for c in cfg["cells"] if select(c)]
    if not cells:
        raise ResultsError(
            f"{folder}: sweep {cfg['name']!r} has no cells {what} can use; run the matching sweep "
            "(see docs/experiments.md)"
        )
    table = _table(folder)
    out, bad = [], []
    for c in cells:
        row = table.get(c["id"])
        if row is None:
            bad.append(f"{_name(c)} missing")
        elif row.get("status") != "ok":
            err = str(row.get("error") or "no error recorded").splitlines()[0][:80]
            bad.append(f"{_name(c)} failed: {err}")
        else:
            skip = {"cell_id", "recipe", "data", "seed", "status", "worker", "error", "traceback"}
            metrics = {
                k: v for k, v in row.items() if k not in skip and not k.startswith(("recipe.", "data."))
            }
            out.append({**c, **metrics})
    if bad:
        source = (cfg.get("source") or {}).get("path") or "FILE"
        more = f"; and {len(bad) - MAX_NAMED} more" if len(bad) > MAX_NAMED else ""
        raise ResultsError(
            f"{folder}: {len(bad)} of the {len(cells)} cells {what} needs are not done: "
            + "; ".join(bad[:MAX_NAMED])
            + more
            + f" -- finish them with ttr-stats experiment run {source} --out {folder} --resume"
        )
    return out


def by_seed(cells, key):
    """Group cells by ``key(cell)``; each group's cells sorted by seed index (the order of aggregation)."""
    groups = {}
    for c in cells:
        groups.setdefault(key(c), []).append(c)
    return {k: sorted(v, key=lambda c: c["seed"]) for k, v in groups.items()}


def parse_args(description, argv=None):
    """The command line of a figure that can draw from results: ``--out DIR``, ``--quick`` and
    ``--from-results DIR`` (a results folder, or a folder holding one under the sweep's name)."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--quick", action="store_true", help="small, fast version (used by the tests)")
    ap.add_argument(
        "--from-results",
        metavar="DIR",
        help="draw from a results folder of ttr-stats experiment run instead of computing",
    )
    return ap.parse_args(argv)
