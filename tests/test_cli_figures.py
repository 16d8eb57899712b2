"""``ttr-stats figures``: runs one cheap figure in quick mode, writes the gallery, and turns user mistakes
into one-line errors with exit status 2 (no traceback)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ttr_stats import _figures_cli, cli

ROOT = Path(__file__).resolve().parent.parent


def _run(*args, cwd=ROOT):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run(
        [sys.executable, "-m", "ttr_stats", "figures", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_quick_only_one_figure_writes_files_and_gallery(tmp_path):
    out = tmp_path / "out"
    r = _run("--quick", "--only", "taxonomy", "--out", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    for name in ("taxonomy.csv", "taxonomy.md", "taxonomy.png", "index.html"):
        assert (out / name).stat().st_size > 100, name
    assert "1/1 figures" in r.stdout
    page = (out / "index.html").read_text()
    assert 'src="taxonomy.png"' in page
    assert "fig_memory" not in page  # only what ran (or was already there) is in the gallery


def test_python_m_and_console_entry_point_share_main(tmp_path):
    # the same parser: --list through main() prints every discovered figure, one per line
    r = _run("--list")
    assert r.returncode == 0, r.stderr
    listed = r.stdout.split()
    assert "fig01_taxonomy" in listed and "fig_cost_scaling" in listed
    assert all(n.startswith("fig") for n in listed)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "no_such_figure"], "unknown figure 'no_such_figure'"),
        (["--only", "taxonomy", "--out", "/proc/cannot/write/here"], "cannot write to --out"),
    ],
)
def test_user_mistakes_are_one_line_errors(args, message):
    r = _run(*args)
    assert r.returncode == _figures_cli.EXIT_USAGE == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_gpu_without_a_gpu_is_a_one_line_error(monkeypatch, capsys):
    # run in-process with CuPy made unimportable, so the test means the same on a machine with a GPU
    monkeypatch.setitem(sys.modules, "cupy", None)
    status = cli.main(["figures", "--device", "gpu", "--only", "taxonomy", "--out", "unused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and "--device gpu needs CuPy and a CUDA device" in err[0]


def test_unwritable_folder_checked_before_any_figure_runs(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")  # --out under a regular file cannot be created, whoever runs the test
    status = cli.main(["figures", "--only", "taxonomy", "--out", str(blocker / "out")])
    assert status == 2
    assert "cannot write to --out" in capsys.readouterr().err


def test_resolve_aliases():
    avail = ["fig01_taxonomy", "fig02_nonstationary", "fig_memory", "fig_neural_memory"]
    assert _figures_cli.resolve(["fig01", "memory", "fig_neural_memory"], avail) == [
        "fig01_taxonomy",
        "fig_memory",
        "fig_neural_memory",
    ]
    with pytest.raises(_figures_cli.UsageError, match="unknown figure 'fig'"):
        _figures_cli.resolve(["fig"], avail)


def test_a_failing_figure_gives_status_1_and_a_log(tmp_path, monkeypatch, capsys):
    import paper_figures.fig01_taxonomy as tax

    def boom(out_dir, quick=False):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(tax, "main", boom)
    status = cli.main(["figures", "--only", "taxonomy", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 1
    assert "FAILED  RuntimeError: broken on purpose" in out
    assert "broken on purpose" in (tmp_path / "fig01_taxonomy.log").read_text()
    assert (tmp_path / "index.html").is_file()  # the gallery is still written


def test_help_explains_every_option():
    r = subprocess.run(
        [sys.executable, "-m", "ttr_stats", "figures", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert r.returncode == 0
    for opt in ("--quick", "--only", "--device", "--out", "--list", "--no-progress", "exit status", "130"):
        assert opt in r.stdout, opt
