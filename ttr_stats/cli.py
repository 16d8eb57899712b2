"""The ``ttr-stats`` command.

``ttr-stats info``     backends, versions and CUDA devices (``ttr_stats.show_config()``)
``ttr-stats recipes``  the recipe catalogue as Markdown
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="ttr-stats", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="array backends, versions and CUDA devices")
    sub.add_parser("recipes", help="the recipe catalogue (Markdown)")
    args = parser.parse_args(argv)
    if args.command == "info":
        from ._config import show_config

        show_config()
    elif args.command == "recipes":
        from .recipes import registry_markdown

        print(registry_markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
