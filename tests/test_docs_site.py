"""The documentation site (`make docs`): a strict build, and math that renders without the network.

Skips without mkdocs (the ``site`` extra; ``make test`` does not install it). The MathJax files come from
``django-static-mathjax`` through ``docs/_hooks/offline_math.py``; with chromium installed, a page of formulas is
rendered headless with every host but 127.0.0.1 unresolvable, and MathJax must have typeset it.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
pytest.importorskip("material")

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location(
    "_offline_math_hook", ROOT / "docs" / "_hooks" / "offline_math.py"
)
hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hook)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    if hook.mathjax_root() is None:  # then the strict build fails, on purpose: the pages would need the CDN
        pytest.skip(
            "django-static-mathjax is not installed (the site extra brings it: pip install -e '.[site]')"
        )
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return out


def test_strict_build_serves_mathjax_itself(site):
    page = (site / "diagnostics" / "index.html").read_text(encoding="utf-8")
    assert 'src="../javascripts/mathjax/tex-mml-chtml.js"' in page
    assert hook.CDN not in page and "unpkg.com" not in page
    local = site / "javascripts" / "mathjax"
    assert (local / "tex-mml-chtml.js").stat().st_size > 500_000
    assert (local / "LICENSE").is_file()
    fonts = list((local / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) > 20  # the CHTML TeX fonts the bundle asks for
    assert (local / "input" / "tex" / "extensions" / "ams.js").is_file()  # what autoload may fetch


def test_math_renders_offline_in_a_browser(site):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium installed")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/diagnostics/"
        dom = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--virtual-time-budget=20000", "--dump-dom", url],
            capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
    finally:
        server.shutdown()
    n_math = dom.count('class="arithmatex"')
    assert n_math > 20, "the page lost its formulas"
    # every formula typeset by MathJax (an mjx-container each), none an error
    assert dom.count("<mjx-container") >= n_math
    assert "<mjx-merror" not in dom
