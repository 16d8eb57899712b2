"""MkDocs hook: the figure gallery from paper_figures/out, or a pointer to `make figures` when it is absent.

The figures are build outputs (`paper_figures/out/` is gitignored), so the page is filled in at build time
from `paper_figures/README.md`'s table (figure, what it shows, script, command, outputs): each figure's PNG
is copied into the site under `figures/` and shown with its caption and the command that redraws it.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

_ROOT = Path(__file__).resolve().parents[2]
_OUT = _ROOT / "paper_figures" / "out"
_README = _ROOT / "paper_figures" / "README.md"
_MARKER = "<!-- gallery -->"


def _rows():
    """(figure, what it shows, script, command, png names) for each row of paper_figures/README.md."""
    rows = []
    for line in _README.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("figure", "") or set(cells[0]) <= {"-"}:
            continue
        pngs = re.findall(r"`([^`]+\.png)`", cells[4])
        rows.append((cells[0], cells[1], cells[2], cells[3], pngs))
    return rows


def on_files(files, config):
    if _OUT.is_dir():
        for png in sorted(_OUT.glob("*.png")):
            files.append(File.generated(config, f"figures/{png.name}", abs_src_path=str(png)))
    return files


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "gallery.md" or _MARKER not in markdown:
        return markdown
    parts = []
    present = _OUT.is_dir() and any(_OUT.glob("*.png"))
    if not present:
        parts.append(
            '!!! note "No figures in this build"\n'
            "    `paper_figures/out/` did not exist when this site was built. Run `make figures`\n"
            "    and then `make docs` to see every figure here; the sections below say what each\n"
            "    one shows and how to redraw it alone.\n"
        )
    for figure, what, script, command, pngs in _rows():
        parts.append(f"## {figure}\n\n{what}\n\nScript {script}; redraw with {command}.\n")
        for name in pngs:
            if present and (_OUT / name).is_file():
                parts.append(f"![{figure}](figures/{name})\n")
            elif present:
                parts.append(f"*`{name}` is missing from `paper_figures/out/`: run {command}.*\n")
    return markdown.replace(_MARKER, "\n".join(parts))
