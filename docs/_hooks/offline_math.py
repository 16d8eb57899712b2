"""MkDocs hook: MathJax served by the site itself, so the pages render their math offline.

The files come from the PyPI package ``django-static-mathjax`` (MathJax 3.2.2, the release the CDN's
``mathjax@3`` resolves to; its Python package ``mathjax`` is only a folder of MathJax's own files and
needs no Django to be read): the ``site`` extra installs it. The hook copies what the ``tex-mml-chtml``
bundle loads at run time -- the bundle, the TeX/MathML input extensions, the CHTML output and its fonts,
the menu and the accessibility components, MathJax's licence -- into ``javascripts/mathjax/`` of the
site, and points ``extra_javascript`` there instead of the CDN.

Without the package the pages would need the network: the hook then keeps the CDN script and logs a
warning, which fails ``make docs`` (``mkdocs build --strict``) with the remedy; a non-strict
``mkdocs serve`` still works online.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.offline_math")

#: the script mkdocs.yml names (the fallback)
CDN = "https://unpkg.com/mathjax@3/es5/tex-mml-chtml.js"
#: where the site serves MathJax from
TARGET = "javascripts/mathjax"
BUNDLE = "tex-mml-chtml.js"
#: what the bundle can load at run time (relative to MathJax's es5/ folder)
PARTS = ("input", "output/chtml", "output/chtml.js", "ui", "a11y", "sre", "adaptors")


def mathjax_root():
    """MathJax's ``es5/`` folder from ``django-static-mathjax``, or None when it is not installed."""
    spec = importlib.util.find_spec("mathjax")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        es5 = Path(loc) / "static" / "mathjax" / "es5"
        if (es5 / BUNDLE).is_file():
            return es5
    return None


def _files(es5):
    """(source file, path under TARGET) of every file the site serves."""
    yield es5 / BUNDLE, BUNDLE
    for part in PARTS:
        path = es5 / part
        for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            yield f, f.relative_to(es5).as_posix()
    yield es5.parent / "LICENSE", "LICENSE"


def _local(config):
    return any(str(s) == f"{TARGET}/{BUNDLE}" for s in config.extra_javascript)


def on_config(config):
    if mathjax_root() is None:
        log.warning(
            "MathJax is not installed: the pages load it from %s and show raw TeX offline; "
            "install the site extra (pip install -e '.[site]', which brings django-static-mathjax)",
            CDN,
        )
        return config
    scripts, local = config.extra_javascript, f"{TARGET}/{BUNDLE}"
    for i, script in enumerate(scripts):
        if str(script) == CDN:
            scripts[i] = local if isinstance(script, str) else type(script)(local)  # ExtraScriptValue
    return config


def on_files(files, config):
    es5 = mathjax_root()
    if es5 is None or not _local(config):
        return files
    for src, rel in _files(es5):
        files.append(File.generated(config, f"{TARGET}/{rel}", abs_src_path=str(src)))
    return files
