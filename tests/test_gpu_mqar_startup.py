"""The trained-grid script fails fast when its workers cannot start (a broken install on a lent GPU).

Before: a pool whose initializer raised restarted the process without end, the preflight waited for the
deadline and the whole call (9 minutes of a GPU) produced nothing. Now the parent checks the workers'
imports first, and a worker that cannot start reports the reason on its first cell.
"""

from __future__ import annotations

import importlib.util
import sys
import time

import pytest

needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")


class _NoBarrier:
    def wait(self, timeout=None):
        return 0


def test_a_worker_that_cannot_import_reports_it_on_its_cells(monkeypatch):
    from benchmarks import gpu_mqar as g

    monkeypatch.setattr(g, "_INIT_ERROR", None)
    monkeypatch.setitem(sys.modules, "ttr_stats.train", None)  # importing it raises ImportError
    t0 = time.time()
    g._init_worker(1, _NoBarrier())  # never raises
    # without torch (CI) the first import to fail is torch's: the same path, another name
    missing = "ttr_stats.train" if importlib.util.find_spec("torch") is not None else "torch"
    assert g._INIT_ERROR is not None and missing in g._INIT_ERROR
    kw = dict(recipe="rls", n_pairs=4, seq_len=32, lr=1e-2, lrs=(1e-2, 3e-2), batch_size=4, vocab=64,
              d_model=8, method="chunked", ridge=1.0, seeds=(0, 1), device="cpu")  # fmt: skip
    rows = g.run_cell((kw, time.time() + 60, {}))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"failed"}
    assert all("worker start-up failed" in r["error"] and missing in r["error"] for r in rows)
    assert time.time() - t0 < 5  # at once, not at a deadline


@needs_torch
def test_the_parent_refuses_a_broken_install_before_starting_workers(monkeypatch, tmp_path, capsys):
    from benchmarks import gpu_mqar as g

    monkeypatch.setitem(sys.modules, "ttr_stats.train", None)
    out = tmp_path / "grid.csv"
    t0 = time.time()
    argv = ["--device", "cpu", "--gpus", "1", "--P", "4", "--T", "32", "--budget-s", "120", "--out", str(out)]
    assert g.main(argv) == 2
    assert time.time() - t0 < 10 and not out.exists()
    err = capsys.readouterr().err
    assert "cannot import ttr_stats.train" in err and "nothing run" in err
