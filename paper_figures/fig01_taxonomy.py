r"""Figure 1, the taxonomy: every recipe as (weights, regressor, optimizer, update rule, methods).

Rendered from :func:`ttr_stats.recipes.catalogue` at run time (the registry plus the recipes that cannot
meet a generic contract, each with its note), so a recipe added there appears here with no edit. Columns:
the weights, regressor and optimizer classes of the recipe's default layer; the update rule (the first
paragraph of the recipe's docstring, which states its recursion or objective); the optimizer's rule (the
first line of the optimizer class's docstring); the computation methods the layer supports; the note says
what a catalogue-only recipe cannot do (marked † in the image). Rows are grouped by family: the optimizer's
family for linear memories (identity covariance = linear attention, exact least squares, RLS, batch GD,
delta rules, ...), "nonparametric" for kernel smoothers and kernel ridge, "neural" for MLP memories.

Writes ``taxonomy.csv`` (recipe, weights, regressor, optimizer, family, update_rule, optimizer_rule, methods,
note), ``taxonomy.md`` (the same as a Markdown table) and ``taxonomy.png`` (the table drawn with matplotlib).
"""

from __future__ import annotations

import re
from pathlib import Path

from matplotlib.figure import Figure

import ttr_stats as tt
from paper_figures._common import parse_args, save_figure, write_csv

HEADER = ["recipe", "weights", "regressor", "optimizer", "family", "update_rule", "optimizer_rule", "methods"]
HEADER += ["note"]


def _first_line(obj):
    doc = (type(obj).__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else ""


def _plain(text):
    """Readable text from a docstring line: ``:math:`x``` -> x, ````code```` -> code, a few TeX macros."""
    text = re.sub(r":math:`([^`]*)`", r"\1", text)
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
    text = text.replace("``", "")
    text = re.sub(r"_\{([^{}]*)\}", lambda m: "_" + (m[1] if len(m[1]) == 1 else f"({m[1]})"), text)
    text = text.replace("^\\top", "ᵀ").replace("^{-1}", "⁻¹").replace("^2", "²")
    for a, b in (
        (r"\tfrac12", "½"),
        (r"\tfrac\lambda2", "λ/2"),
        (r"\mathrm{Diag}", "Diag"),
        (r"\mathrm{LN}", "LN"),
        (r"\mathbb{1}", "1"),
        (r"\mathrm", ""),
        (r"\Gamma", "Γ"),
        (r"\lambda", "λ"),
        (r"\gamma", "γ"),
        (r"\alpha", "α"),
        (r"\beta", "β"),
        (r"\delta", "δ"),
        (r"\eta", "η"),
        (r"\theta", "θ"),
        (r"\kappa", "κ"),
        (r"\rho", "ρ"),
        (r"\tau", "τ"),
        (r"\phi", "φ"),
        (r"\nabla", "∇"),
        (r"\ell", "ℓ"),
        (r"\sum", "Σ"),
        (r"\leftarrow", "←"),
        (r"\odot", "⊙"),
        (r"\le", "≤"),
        (r"\top", "ᵀ"),
        (r"\approx", "≈"),
        (r"\|", "‖"),
        (r"\,", " "),
        (r"\cos", "cos"),
        (r"\exp", "exp"),
    ):
        text = text.replace(a, b)
    return text.replace("{", "").replace("}", "").replace("\\", "")


def _group(regressor, optimizer):
    """The taxonomy column: nonparametric and neural regressors by regressor, the rest by optimizer family."""
    if getattr(regressor, "nonparametric", False):  # kernel smoothers, kernel ridge, Parallax, PaTH, ...
        return "nonparametric"
    if type(regressor).__name__ == "MLP":
        return "neural"
    return str(getattr(optimizer, "family", None) or type(optimizer).__name__)


def rows():
    """One row per recipe of the catalogue, grouped by optimizer family (catalogue order within a family)."""
    out = []
    for r in tt.recipes.catalogue():
        out.append(
            (
                r.name,
                type(r.weights).__name__,
                type(r.regressor).__name__,
                type(r.optimizer).__name__,
                _group(r.regressor, r.optimizer),
                _plain(r.summary),
                _plain(_first_line(r.optimizer)),
                ", ".join(r.methods),
                r.note,
            )
        )
    order = list(dict.fromkeys(row[4] for row in out))
    return sorted(out, key=lambda row: order.index(row[4]))


def markdown(table):
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for row in table:
        cells = [f"`{row[0]}()`", *row[1:]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table):
    n = len(table)
    fig = Figure(figsize=(17, 0.9 + 0.3 * n), layout="constrained")
    ax = fig.subplots()
    ax.axis("off")
    mark = lambda r: r[0] + (" †" if r[8] else "")  # noqa: E731 - catalogue-only: see the note column
    cells = [[mark(r), r[1], r[2], r[3], r[5][:95] + ("…" if len(r[5]) > 95 else ""), r[7]] for r in table]
    tab = ax.table(
        cellText=cells,
        colLabels=["recipe", "weights", "regressor", "optimizer", "update rule", "methods"],
        loc="center",
        cellLoc="left",
        colLoc="left",
        colWidths=[0.11, 0.08, 0.08, 0.1, 0.49, 0.14],
    )
    tab.auto_set_font_size(False)
    tab.set_fontsize(7)
    tab.scale(1, 1.25)
    families = list(dict.fromkeys(r[4] for r in table))
    shades = ["#f2f2f2", "#ffffff"]
    for i, r in enumerate(table, start=1):
        for j in range(len(cells[0])):
            tab[i, j].set_facecolor(shades[families.index(r[4]) % 2])
    for j in range(len(cells[0])):
        tab[0, j].set_facecolor("#d9e2f3")
        tab[0, j].get_text().set_fontweight("bold")
    fig.suptitle(
        f"Taxonomy of test-time regression layers: {n} recipes as weights × regressor × optimizer "
        "(rows shaded by optimizer family; generated from ttr_stats.recipes.catalogue(); † cannot meet a "
        "generic contract: see the note in taxonomy.md)",
        fontsize=10,
    )
    return fig


def main(out_dir, quick=False):
    """Write ``taxonomy.csv``, ``taxonomy.md`` and ``taxonomy.png``; return the rows (no quick variant)."""
    out_dir = Path(out_dir)
    table = rows()
    write_csv(out_dir / "taxonomy.csv", HEADER, table)
    (out_dir / "taxonomy.md").write_text(markdown(table), encoding="utf-8")
    save_figure(plot(table), out_dir, "taxonomy.png")
    return table


if __name__ == "__main__":
    args = parse_args(__doc__.splitlines()[0])
    print(markdown(main(args.out, quick=args.quick)))
