"""The README's example runs and prints what it says."""

import contextlib
import io
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 12  # the promised short example
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == "(16, 16) (128, 16)"


def test_readme_has_exactly_two_setup_commands():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Set up.*?```sh\n(.*?)```", text, re.S).group(1)
    cmds = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert cmds == ["make figures", "make test"]
