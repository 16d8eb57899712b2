"""``ttr-stats figures``: run the figure scripts of ``paper_figures/`` and write the gallery.

Kept apart from :mod:`ttr_stats.cli` so that the command's parser stays small; ``paper_figures`` is a
folder of the repository (not part of the installed package), found on ``sys.path``, in the current
folder or beside the package's source folder (an editable install).
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_FIGURE_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
figures: every module paper_figures/fig*.py (figNN_<slug> for the paper's figure NN, fig_<slug> for the
theory's); NAME in --only is a module name (fig_memory), its slug (memory) or the paper figure (fig01).

exit status:
  0    every figure and the gallery were written
  1    at least one figure failed (the others still ran; its traceback is in OUT/<name>.log)
  2    a usage mistake: unknown figure, a folder that cannot be written, --device gpu without a GPU,
       or paper_figures/ not found
  130  interrupted (Ctrl-C); figures finished before it are kept

examples:
  ttr-stats figures                          all figures into paper_figures/out (about 5 min on 2 cores)
  ttr-stats figures --quick --only taxonomy  one small figure (seconds)
  python -m ttr_stats figures --list         the figure names
  ttr-stats figures --from-results results   the figures of the sweeps in results/ (no recomputing)
  ttr-stats figures --only capacity --from-results results/capacity_quick

--from-results DIR draws the figures that correspond to a sweep of experiments/ (fig02_nonstationary,
fig_bias_variance, fig_capacity) from DIR: a results folder of `ttr-stats experiment run`, or a folder
holding them under their sweep names (results/capacity, results/capacity_quick with --quick). A figure
whose cells are failed or missing there fails with one line naming the folder and the cells.
"""


class UsageError(Exception):
    """A mistake in the command line: reported as one line, exit status 2."""


def add_parser(sub):
    p = sub.add_parser(
        "figures",
        help="draw the paper's figures into a folder and write its index.html gallery",
        description="Run the figure scripts of paper_figures/ (each writes its CSV and PNG) and write "
        "OUT/index.html, a gallery with a caption per figure whose numbers are read from the CSVs.",
        epilog=EPILOG,
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small versions of every figure (what CI runs; under 2 minutes for all on 2 cores)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="run only these figures (module name, slug or figNN; see --list); the gallery still shows "
        "every figure already in OUT",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="cpu (default) or gpu: figures that measure on a device (cost_scaling) use CuPy on the GPU; "
        "the others compute on the CPU either way. gpu needs CuPy and a CUDA device",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=os.path.join("paper_figures", "out"),
        help="output folder, created if missing (default: paper_figures/out)",
    )
    p.add_argument(
        "--from-results",
        metavar="DIR",
        help="draw the figures of the experiments/ sweeps from a results folder (or a folder of them) "
        "instead of recomputing; without --only, every figure that can",
    )
    p.add_argument("--list", action="store_true", help="print the figure names and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress line (one line per figure only)")
    return p


def _import_paper_figures():
    try:
        return importlib.import_module("paper_figures")
    except ImportError:
        pass
    here = Path(__file__).resolve().parent.parent
    for root in (Path.cwd(), here):
        if (root / "paper_figures" / "__init__.py").is_file():
            sys.path.insert(0, str(root))
            return importlib.import_module("paper_figures")
    raise UsageError(
        "paper_figures/ not found: run from the repository root (the folder with paper_figures/) "
        "or install ttr_stats from a checkout with pip install -e ."
    )


def aliases(module):
    """The names --only accepts for a figure module: ``fig_memory`` -> {fig_memory, memory};
    ``fig01_taxonomy`` -> {fig01_taxonomy, fig01, taxonomy}."""
    head, _, slug = module.partition("_")
    names = {module, slug} if slug else {module}
    if head[3:].isdigit():
        names.add(head)
    return names


def resolve(names, available):
    """Map each NAME of --only to a figure module name; UsageError for an unknown or ambiguous one."""
    out = []
    for name in names:
        hits = [m for m in available if name in aliases(m)]
        if len(hits) != 1:
            why = "unknown" if not hits else f"ambiguous ({', '.join(hits)})"
            raise UsageError(f"{why} figure {name!r}; choose from: {', '.join(available)}")
        if hits[0] not in out:
            out.append(hits[0])
    return out


def _accepts_results(pf, name):
    module = importlib.import_module(f"{pf.__name__}.{name}")
    return "results" in inspect.signature(module.main).parameters


def _from_results_names(pf, names, explicit, folder):
    """The figures --from-results draws: those of ``names`` whose ``main`` takes ``results``;
    UsageError for a figure named in --only that cannot, or for a folder that does not exist."""
    if not Path(folder).is_dir():
        raise UsageError(
            f"--from-results {str(folder)!r} is not a folder; write one with ttr-stats experiment run "
            "experiments/<file>.py --out DIR"
        )
    able = [n for n in names if _accepts_results(pf, n)]
    if explicit and len(able) < len(names):
        cannot = [n for n in names if n not in able]
        raise UsageError(
            f"--from-results: {', '.join(cannot)} cannot draw from a results folder (only the figures of "
            "the experiments/ sweeps can: fig02_nonstationary, fig_bias_variance, fig_capacity); drop it "
            "from --only"
        )
    return able


def _check_out(out):
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".ttr-stats-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot write to --out {str(out)!r}: {reason}; choose a writable folder") from None
    return out


def _check_gpu():
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # ImportError, CUDARuntimeError without a driver, ...
        raise UsageError(
            f"--device gpu needs CuPy and a CUDA device ({type(exc).__name__}: {exc}); use --device cpu"
        ) from None
    if n < 1:
        raise UsageError("--device gpu: CuPy sees no CUDA device; use --device cpu")


class _Ticker:
    """One status line on stderr, redrawn every second on a terminal (elapsed time and sub-steps)."""

    def __init__(self, enabled):
        self.tty = enabled and sys.stderr.isatty()
        self.text, self.t0, self.done, self.total = "", 0.0, 0, 0
        self._stop = threading.Event()
        self._thread = None

    def start(self, text, total=0):
        self.text, self.t0, self.done, self.total = text, time.perf_counter(), 0, total
        if self.tty:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def step(self):
        self.done += 1

    def _draw(self):
        dt = time.perf_counter() - self.t0
        sub = ""
        if self.total:
            k = min(self.done, self.total)
            filled = int(20 * k / self.total)
            sub = f" [{'#' * filled}{'.' * (20 - filled)}] {k}/{self.total}"
        sys.stderr.write(f"\r\033[K{self.text}{sub} {dt:5.1f} s")
        sys.stderr.flush()

    def _run(self):
        while not self._stop.wait(1.0):
            self._draw()

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


def run(args):
    """The ``figures`` subcommand; returns the exit status."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        pf = _import_paper_figures()
        run_all = importlib.import_module("paper_figures.run_all")
        available = run_all.discover()
        if args.list:
            print("\n".join(available))
            return EXIT_OK
        names = resolve(args.only, available) if args.only else available
        from_results = getattr(args, "from_results", None)
        if from_results is not None:
            names = _from_results_names(pf, names, bool(args.only), from_results)
        if args.device == "gpu":
            _check_gpu()
        out = _check_out(args.out)
    except UsageError as exc:
        print(f"ttr-stats figures: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ticker = _Ticker(not args.no_progress)
    failed, total = [], time.perf_counter()
    try:
        for i, name in enumerate(names, 1):
            label = f"[{i}/{len(names)}] {name}"
            t0 = time.perf_counter()
            try:
                module = importlib.import_module(f"{pf.__name__}.{name}")
                params = inspect.signature(module.main).parameters
                kw = {}
                if "device" in params:
                    kw["device"] = args.device
                if from_results is not None:
                    kw["results"] = from_results
                total_steps = 0
                if "progress" in params:
                    kw["progress"] = ticker.step
                    n_steps = getattr(module, "n_steps", None)
                    total_steps = n_steps(quick=args.quick) if callable(n_steps) else 0
                ticker.start(label, total_steps)
                try:
                    module.main(out, quick=args.quick, **kw)
                finally:
                    ticker.stop()
            except Exception as exc:
                log = out / f"{name}.log"
                log.write_text(traceback.format_exc(), encoding="utf-8")
                failed.append(name)
                if type(exc).__name__ == "ResultsError":  # folder and cells, one line: shown whole
                    status = f"FAILED  {exc}"
                else:
                    status = f"FAILED  {type(exc).__name__}: {exc}".splitlines()[0][:160]
                    status += f" (traceback: {log})"
            else:
                status = "ok"
                (out / f"{name}.log").unlink(missing_ok=True)
            print(f"{label:44s} {time.perf_counter() - t0:7.1f} s  {status}", flush=True)
        from paper_figures import gallery

        page = gallery.write(out)
    except KeyboardInterrupt:
        ticker.stop()
        print(
            "ttr-stats figures: interrupted; finished figures are kept in " + str(args.out), file=sys.stderr
        )
        return EXIT_INTERRUPTED
    n = len(names)
    print(f"{n - len(failed)}/{n} figures in {time.perf_counter() - total:.1f} s -> {out}; gallery {page}")
    return EXIT_FIGURE_FAILED if failed else EXIT_OK
