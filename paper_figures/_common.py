"""Small helpers shared by the figure scripts: saving figures, writing CSV files, the command line."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

__all__ = ["save_figure", "write_csv", "read_csv", "parse_args"]


def save_figure(fig, out_dir, name):
    """Save ``fig`` (a :class:`matplotlib.figure.Figure`) as ``out_dir/name`` (PNG, dpi 120).

    ``name`` may omit the ``.png`` suffix. The directory is created if needed. Returns the path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (name if str(name).endswith(".png") else f"{name}.png")
    fig.savefig(path, dpi=120, format="png")
    return path


def write_csv(path, header, rows):
    """Write ``rows`` (iterables of values) under ``header`` to ``path`` with the csv module.

    Floats are written with ``repr`` (full precision; ``inf`` as ``inf``). Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(list(header))
        for row in rows:
            w.writerow([repr(float(x)) if isinstance(x, float) else x for x in row])
    return path


def read_csv(path):
    """Read a CSV written by :func:`write_csv` into a list of dicts (values stay strings)."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def parse_args(description, argv=None):
    """The command line every figure module shares: ``--out DIR`` and ``--quick``."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--quick", action="store_true", help="small, fast version (used by the tests)")
    return ap.parse_args(argv)
