"""Run every figure script: ``python -m paper_figures.run_all --out DIR [--quick]``.

Figures are the modules ``paper_figures/fig*.py`` (``figNN_<slug>`` for the paper's figure NN,
``fig_<slug>`` for the theory's), discovered with :mod:`pkgutil` (a new figure is picked
up by adding such a module with ``main(out_dir, quick=False)``). Every figure runs even if an earlier one
fails; the exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from pathlib import Path

import paper_figures


def discover():
    """Names of the figure modules (``fig*``: ``fig02_...``, ``fig_...``) in this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(paper_figures.__path__) if m.name.startswith("fig"))


def run(out_dir, quick=False, names=None):
    """Run ``main(out_dir, quick)`` of each figure module (all by default); return the names that failed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    total = time.perf_counter()
    for name in discover() if names is None else names:
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"{paper_figures.__name__}.{name}")
            module.main(out_dir, quick=quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            status = "FAILED"
        else:
            status = "ok"
        print(f"{name:32s} {status:6s} {time.perf_counter() - t0:7.2f} s", flush=True)
    n = len(discover() if names is None else names)
    print(f"{n - len(failed)}/{n} figures in {time.perf_counter() - total:.2f} s -> {out_dir}", flush=True)
    return failed


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output directory (created if missing)")
    ap.add_argument("--quick", action="store_true", help="small, fast versions of every figure")
    args = ap.parse_args(argv)
    return 1 if run(args.out, quick=args.quick) else 0


if __name__ == "__main__":
    sys.exit(main())
