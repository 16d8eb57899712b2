"""Griffe extension for the API pages: the docstrings' reST markup as Markdown, at build time only.

The numpydoc docstrings of ``ttr_stats`` use three pieces of reST that Markdown does not know:

* ``:math:`x``` (inline) becomes ``\\(x\\)``, which ``pymdownx.arithmatex`` hands to MathJax;
* ``.. math::`` directives (content on the directive line and/or the indented block after it; blank lines
  separate equations) become ``$$ ... $$`` blocks, one per equation;
* ``:func:`` / ``:class:`` / ``:meth:`` / ``:mod:`` / ``:attr:`` / ``:data:`` / ``:obj:`` / ``:exc:`` roles
  become optional cross-references: a link where the target is rendered on some page, plain code otherwise
  (so a role naming something undocumented or external never fails ``mkdocs build --strict``).

The source docstrings are not changed; ``help()`` and the doctests see the reST.
"""

from __future__ import annotations

import re

import griffe

_ROLE = re.compile(r":(func|class|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<first>.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _MATH_DIRECTIVE.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        base = len(m["indent"])
        pad = m["indent"]
        body: list[str] = [m["first"].strip()] if m["first"].strip() else []
        i += 1
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            body.append(lines[i].strip())
            i += 1
        while body and not body[-1]:
            body.pop()
        while body and not body[0]:
            body.pop(0)
        equations: list[list[str]] = [[]]
        for line in body:
            if line:
                equations[-1].append(line)
            elif equations[-1]:
                equations.append([])
        if out and out[-1].strip():
            out.append("")
        for eq in equations:
            if eq:
                out.extend([pad + "$$", *(pad + e for e in eq), pad + "$$", ""])
        if i < len(lines) and not lines[i].strip():
            i += 1  # the blank line after the block is already there
    return "\n".join(out)


def _target(obj: griffe.Object, name: str, collection) -> str | None:
    """The path a role's target names, seen from ``obj``; None if it is not part of the loaded package."""
    name = name.strip().removesuffix("()")
    if name.startswith("."):
        module = obj if obj.is_module else obj.module
        base = module.path if module.is_package else module.path.rpartition(".")[0]
        stripped = name.lstrip(".")
        for _ in range(len(name) - len(stripped) - 1):
            base = base.rpartition(".")[0]
        path = f"{base}.{stripped}"
    else:
        head, _, rest = name.partition(".")
        try:
            path = obj.resolve(head) + (f".{rest}" if rest else "")
        except griffe.NameResolutionError:
            path = name
    try:
        found = collection.get_member(path)
    except (KeyError, ValueError, AttributeError):
        return None
    try:
        return found.target_path if found.is_alias else found.path
    except griffe.AliasResolutionError:
        return None


def _convert(obj: griffe.Object, text: str, collection) -> str:
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: "\\(" + m[1].strip() + "\\)", text)

    def role(m: re.Match) -> str:
        name = m[3].strip()
        shown = name.removesuffix("()").rpartition(".")[2] if m[2] else name.lstrip(".")
        path = _target(obj, name, collection)
        if path is None:
            return f"`{shown}`"
        return f'<autoref identifier="{path}" optional><code>{shown}</code></autoref>'

    return _ROLE.sub(role, text)


class RstRoles(griffe.Extension):
    """Rewrite every docstring of a loaded package once the whole package is known."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs) -> None:
        collection = loader.modules_collection
        seen: set[int] = set()

        def walk(obj: griffe.Object) -> None:
            if id(obj) in seen:
                return
            seen.add(id(obj))
            if obj.docstring is not None:
                obj.docstring.value = _convert(obj, obj.docstring.value, collection)
            for member in obj.members.values():
                if not member.is_alias:
                    walk(member)

        walk(pkg)
