"""The ``ttr-stats`` command.

``ttr-stats info``     backends, versions and CUDA devices (``ttr_stats.show_config()``)
``ttr-stats recipes``  the recipe catalogue as Markdown
``ttr-stats experiment run FILE [--scheduler ADDRESS] [--workers N] [--resume] [--out DIR] [--quick]``
                      run the sweep an experiment file exports (``ttr_stats.experiments``)
``ttr-stats experiment show DIR``  cells done / failed and a table of the metrics of a results folder
``ttr-stats figures [--quick] [--only NAME ...] [--device cpu|gpu] [--out DIR] [--list]``
                      draw the paper's figures and their gallery (``ttr-stats figures --help``)
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ttr-stats", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="array backends, versions and CUDA devices")
    sub.add_parser("recipes", help="the recipe catalogue (Markdown)")
    _experiment_parser(sub)
    from . import _figures_cli

    _figures_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        from ._config import show_config

        show_config()
    elif args.command == "recipes":
        from .recipes import registry_markdown

        print(registry_markdown())
    elif args.command == "experiment":
        return _experiment(args)
    elif args.command == "figures":
        return _figures_cli.run(args)
    return 0


def _experiment_parser(sub):
    exp = sub.add_parser("experiment", help="run a sweep (experiments/*.py) or summarise its results")
    esub = exp.add_subparsers(dest="action", required=True)
    run = esub.add_parser("run", help="run the SWEEP (or QUICK) an experiment file exports")
    run.add_argument("file", help="experiment file, e.g. experiments/fig02_temperature.py")
    run.add_argument("--scheduler", metavar="ADDRESS", help="a running Dask scheduler (tcp://host:8786)")
    run.add_argument(
        "--workers", type=int, metavar="N", help="start a Dask LocalCluster of N single-threaded processes"
    )
    run.add_argument("--resume", action="store_true", help="compute only the cells not finished in --out")
    run.add_argument("--out", metavar="DIR", help="results folder (default results/<sweep name>)")
    run.add_argument("--quick", action="store_true", help="the file's QUICK sweep (small; used by tests)")
    run.add_argument(
        "--serial", action="store_true", help="run in this process, one cell after another (debugging)"
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    show = esub.add_parser("show", help="cells done / failed and a table of metrics of a results folder")
    show.add_argument("dir", help="results folder written by `experiment run`")


def _experiment(args):
    from . import experiments

    if args.action == "show":
        print(experiments.summarize(args.dir))
        return 0
    if args.serial and (args.scheduler or args.workers):
        print("ttr-stats: --serial runs in this process; drop --scheduler/--workers", file=sys.stderr)
        return 2
    if args.workers is not None and args.workers < 1:
        print(f"ttr-stats: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    sweep = experiments.load_sweep(args.file, quick=args.quick)
    if args.serial:
        executor = "serial"
    elif args.scheduler or args.workers:
        executor = "dask"
    else:
        executor = "processes"
    try:
        s = experiments.run(
            sweep,
            args.out,
            resume=args.resume,
            executor=executor,
            workers=args.workers,
            scheduler=args.scheduler,
            progress=not args.no_progress,
        )
    except FileExistsError as exc:
        print(f"ttr-stats: {exc}", file=sys.stderr)
        return 2
    print(
        f"{sweep.name}: {s.n_cells} cells, {s.n_skipped} already done, {s.n_computed} computed now "
        f"({s.n_failed} failed) in {s.n_tasks} tasks on {s.executor}; table {s.table}"
    )
    return 1 if s.n_failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
