"""ttr_stats.experiments and `ttr-stats experiment`: scheduling-independent results, resume, failures, CLI.

Every comparison of values across executors is exact (==): the cells compute the same float64 operations
on the same inputs (seeds keyed by the cell, BLAS single-threaded everywhere), so any difference at all is
a scheduling dependence -- the thing these tests are for.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from ttr_stats import experiments as ex
from ttr_stats.cli import main

ROOT = Path(__file__).resolve().parents[1]

# A small sweep of real layers on random pairs. Every metric call appends its cell id to the file named by
# TTR_TEST_CALLS (so calls can be counted across processes); a cell whose data has crash == seed index
# TTR_TEST_CRASH raises KeyboardInterrupt (a Ctrl-C in the middle of the sweep); recipe "broken" raises.
SWEEP_FILE = textwrap.dedent(
    """
    import os
    import numpy as np
    import ttr_stats as tt
    from ttr_stats.experiments import Sweep, grid

    def pairs(rng, n, d):
        K = rng.standard_normal((2, n, d))
        return K / np.linalg.norm(K, axis=-1, keepdims=True), rng.standard_normal((2, n, 3))

    def broken(ridge):
        raise ArithmeticError(f"broken layer, ridge {ridge}")

    def recall(layer, data, cell):
        log = os.environ.get("TTR_TEST_CALLS")
        if log:
            with open(log, "a") as fh:
                fh.write(cell.id + "\\n")
        if os.environ.get("TTR_TEST_CRASH") == f"{cell.recipe}:{cell.seed}":
            raise KeyboardInterrupt
        K, V = data
        Y = np.asarray(layer(K, K, V, causal=False))
        return {"recall": float(np.sum((Y - V) ** 2) / np.sum(V**2)), "first": float(Y.flat[0])}

    LAYERS = {"least_squares": [{"ridge": 0.0}, {"ridge": 0.5}], "linear_attention": [{}]}
    DATA = {"pairs": [{"n": 6, "d": 8}, {"n": 12, "d": 8}]}
    SWEEP = Sweep("toy", grid(LAYERS, DATA, 3, ["recall"]), data={"pairs": pairs}, metrics={"recall": recall},
                  layers={"broken": broken}, seed=7)
    QUICK = Sweep("toy_quick", grid({"least_squares": [{"ridge": 0.0}], "broken": [{"ridge": 1.0}]},
                                    {"pairs": [{"n": 6, "d": 8}]}, 2, ["recall"]),
                  data={"pairs": pairs}, metrics={"recall": recall}, layers={"broken": broken}, seed=7)
    """
)

#: columns that say where and how fast a cell ran, not what it computed
WHERE = ("seconds", "worker")


@pytest.fixture
def sweep_file(tmp_path, monkeypatch):
    path = tmp_path / "toy_sweep.py"
    path.write_text(SWEEP_FILE)
    monkeypatch.setenv("TTR_TEST_CALLS", str(tmp_path / "calls.log"))
    monkeypatch.delenv("TTR_TEST_CRASH", raising=False)
    return path


def calls(tmp_path):
    log = tmp_path / "calls.log"
    out = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return out


def values(rows):
    return [{k: v for k, v in r.items() if k not in WHERE} for r in rows]


def test_seeds_are_keyed_by_data_and_seed_index_only():
    a = ex.Cell("rls", {"ridge": 1.0}, "pairs", {"n": 4}, 2, ("m",))
    b = ex.Cell("linear_attention", {}, "pairs", {"n": 4}, 2, ("m", "other"))
    draw = lambda c: ex.cell_rng(5, c).standard_normal(4)  # noqa: E731
    # same data key: the same draws (common random numbers); any change of the key: different draws
    assert np.array_equal(draw(a), draw(b))
    assert np.array_equal(draw(a), draw(a))
    for other in (
        ex.Cell("rls", {"ridge": 1.0}, "pairs", {"n": 4}, 3, ("m",)),
        ex.Cell("rls", {"ridge": 1.0}, "pairs", {"n": 5}, 2, ("m",)),
    ):
        assert not np.array_equal(draw(a), draw(other))
    assert not np.array_equal(draw(a), ex.cell_rng(6, a).standard_normal(4))
    assert a.id != b.id and len(a.id) == 16


def test_cells_refuse_what_cannot_be_a_key():
    with pytest.raises(ValueError, match="params of 'rls'.*JSON"):
        ex.Cell("rls", {"ridge": object()}, "pairs", {}, 0, ("m",))
    with pytest.raises(ValueError, match="seed must be an integer >= 0"):
        ex.Cell("rls", {}, "pairs", {}, -1, ("m",))
    cell = ex.Cell("rls", {"ridge": np.float64(0.5)}, "pairs", {"n": np.int64(3)}, 0, "m")
    assert cell.params == {"ridge": 0.5} and type(cell.data_params["n"]) is int and cell.metrics == ("m",)
    with pytest.raises(ValueError, match="the same cell appears twice"):
        ex.Sweep("s", [cell, cell], data={"pairs": None}, metrics={"m": None})
    with pytest.raises(ValueError, match="recipe 'nope'"):
        ex.Sweep("s", [ex.Cell("nope", {}, "pairs", {}, 0, "m")], data={"pairs": None}, metrics={"m": None})


def test_task_grouping_does_not_change_results(sweep_file, tmp_path):
    sweep = ex.load_sweep(sweep_file)
    one = ex.run(sweep, tmp_path / "one", executor="serial", cells_per_task=1, progress=False)
    five = ex.run(sweep, tmp_path / "five", executor="serial", cells_per_task=5, progress=False)
    assert (one.n_tasks, five.n_tasks) == (18, 4)
    a, b = ex.read_results(one.out), ex.read_results(five.out)
    assert len(a) == 18 and all(r["status"] == "ok" for r in a)
    assert values(a) == values(b)  # exact: see the module docstring
    # least squares with ridge 0 interpolates n = 6 < d = 8 unit keys: recall error at round-off (1e-20
    # is ~1e4 x float64 eps^2 for a relative squared error: a wrong solve would give O(1))
    ls = [r for r in a if r["recipe"] == "least_squares" and r["recipe.ridge"] == 0.0 and r["data.n"] == 6]
    assert len(ls) == 3 and max(r["recall"] for r in ls) < 1e-20


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as c, distributed.Client(c) as client:  # fmt: skip
        yield c, client


def test_dask_cluster_and_process_pool_equal_the_serial_run(sweep_file, tmp_path, cluster):
    _, client = cluster
    sweep = ex.load_sweep(sweep_file)
    serial = ex.run(sweep, tmp_path / "serial", executor="serial", progress=False)
    pool = ex.run(sweep, tmp_path / "pool", executor="processes", workers=2, progress=False)
    dask = ex.run(sweep, tmp_path / "dask", client=client, cells_per_task=4, progress=False)
    assert (serial.executor, pool.executor, dask.executor) == ("serial", "processes", "dask")
    ref = ex.read_results(serial.out)
    assert len(ref) == 18 and all(r["status"] == "ok" for r in ref)
    for other in (pool, dask):
        rows = ex.read_results(other.out)
        assert values(rows) == values(ref)  # exact
    workers = {r["worker"] for r in ex.read_results(dask.out)}
    assert len(workers) == 2, workers  # the cells really ran in the two worker processes
    assert all(str(os.getpid()) not in w for w in workers)


def test_resume_after_an_interrupt_computes_only_the_missing_cells(sweep_file, tmp_path, monkeypatch):
    sweep = ex.load_sweep(sweep_file)
    clean = ex.run(sweep, tmp_path / "clean", executor="serial", progress=False)
    calls(tmp_path)
    out = tmp_path / "crashed"
    monkeypatch.setenv("TTR_TEST_CRASH", "linear_attention:1")  # a Ctrl-C inside one cell
    with pytest.raises(KeyboardInterrupt):
        ex.run(sweep, out, executor="serial", cells_per_task=4, progress=False)
    first = calls(tmp_path)
    on_disk = ex.read_results(out)
    # only whole tasks reached the disk: a multiple of the task size, none of the interrupted task, no
    # temporary files, every row ok
    assert 0 < len(on_disk) < 18 and len(on_disk) % 4 == 0
    assert len(first) > len(on_disk)
    assert not list(out.rglob("*.tmp")) and all(r["status"] == "ok" for r in on_disk)
    monkeypatch.delenv("TTR_TEST_CRASH")
    with pytest.raises(FileExistsError, match="--resume"):
        ex.run(sweep, out, executor="serial", progress=False)
    s = ex.run(sweep, out, executor="serial", resume=True, progress=False)
    second = calls(tmp_path)
    done = {r["cell_id"] for r in on_disk}
    assert (s.n_skipped, s.n_computed) == (len(done), 18 - len(done))
    assert sorted(second) == sorted(c.id for c in sweep.cells if c.id not in done)
    assert values(ex.read_results(out)) == values(ex.read_results(clean.out))  # exact


def test_resume_after_lost_rows(sweep_file, tmp_path):
    sweep = ex.load_sweep(sweep_file)
    out = tmp_path / "r"
    ex.run(sweep, out, executor="serial", cells_per_task=5, progress=False)
    full = ex.read_results(out)
    calls(tmp_path)
    # drop one whole part and two rows of another (a part rewritten by hand, or lost with a disk)
    parts = sorted((out / "parts").glob("part-*.jsonl"))
    lost = [json.loads(line)["cell_id"] for line in parts[0].read_text().splitlines()]
    parts[0].unlink()
    lines = parts[1].read_text().splitlines()
    lost += [json.loads(line)["cell_id"] for line in lines[:2]]
    parts[1].write_text("\n".join(lines[2:]) + "\n")
    s = ex.run(sweep, out, executor="serial", resume=True, progress=False)
    assert sorted(calls(tmp_path)) == sorted(lost) and s.n_computed == len(lost) == 7
    assert values(ex.read_results(out)) == values(full)  # exact


def test_a_failing_cell_is_recorded_and_the_others_complete(sweep_file, tmp_path):
    sweep = ex.load_sweep(sweep_file, quick=True)
    out = tmp_path / "q"
    s = ex.run(sweep, out, executor="serial", progress=False)
    rows = ex.read_results(out)
    assert (s.n_cells, s.n_failed) == (4, 2)
    bad = [r for r in rows if r["status"] == "failed"]
    good = [r for r in rows if r["status"] == "ok"]
    assert len(good) == 2 and all(np.isfinite(r["recall"]) for r in good)
    for r in bad:
        assert r["recipe"] == "broken" and r["error"] == "ArithmeticError: broken layer, ridge 1.0"
        assert "Traceback" in r["traceback"] and "in broken" in r["traceback"]
        assert "recall" not in r
    # the tidy table has both, with the traceback; resume retries only the failed cells
    if s.table.suffix == ".csv":
        with open(s.table, newline="") as fh:
            table = list(csv.DictReader(fh))
        assert [r["status"] for r in table].count("failed") == 2
        assert all(r["traceback"].startswith("Traceback") for r in table if r["status"] == "failed")
        # floats are written with repr: the CSV holds the computed values exactly
        assert [float(r["recall"]) for r in table if r["status"] == "ok"] == [r["recall"] for r in good]
    calls(tmp_path)
    s2 = ex.run(sweep, out, executor="serial", resume=True, progress=False)
    assert (s2.n_skipped, s2.n_computed, s2.n_failed) == (2, 2, 2)


def test_cli_run_show_and_scheduler(sweep_file, tmp_path, capsys, cluster):
    c, _ = cluster
    out = tmp_path / "cli"
    rc = main(["experiment", "run", str(sweep_file), "--out", str(out), "--serial", "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "toy: 18 cells, 0 already done, 18 computed now (0 failed)" in text
    cfg = json.loads((out / "config.json").read_text())
    env = json.loads((out / "env.json").read_text())
    assert cfg["n_cells"] == 18 and len(cfg["cells"]) == 18 and cfg["source"]["export"] == "SWEEP"
    assert env["versions"]["numpy"] == np.__version__ and env["machine"]["cpu_count"] == os.cpu_count()
    assert "revision" in env["git"] and isinstance(env["blas"], list)
    assert main(["experiment", "run", str(sweep_file), "--out", str(out), "--serial"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["experiment", "run", str(sweep_file), "--out", str(out), "--resume", "--serial"]) == 0
    assert "18 already done, 0 computed now" in capsys.readouterr().out

    assert main(["experiment", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "sweep toy: 18 cells; 18 done, 0 failed, 0 missing" in shown
    # the table: one line per layer x data setting, n = 3 seeds, mean +- se of the metric
    rows = ex.read_results(out)
    sel = [r["recall"] for r in rows if r["recipe"] == "linear_attention" and r["data.n"] == 12]
    line = next(ln for ln in shown.splitlines() if "linear_attention" in ln and "| 12 " in ln)
    mean, se = np.mean(sel), np.std(sel, ddof=1) / np.sqrt(3)
    assert f"{mean:.4g} ± {se:.4g}" in line and "| 3 " in line

    # the same sweep through a running scheduler's address equals the serial run (exact)
    out2 = tmp_path / "sched"
    args = ["experiment", "run", str(sweep_file), "--out", str(out2), "--scheduler", c.scheduler_address]
    assert main([*args, "--no-progress"]) == 0
    assert values(ex.read_results(out2)) == values(rows)

    quick = tmp_path / "quick"
    rc = main(
        ["experiment", "run", str(sweep_file), "--quick", "--out", str(quick), "--serial", "--no-progress"]
    )
    assert rc == 1  # failed cells: a non-zero exit for scripts
    assert "2 failed" in capsys.readouterr().out
    main(["experiment", "show", str(quick)])
    assert "ArithmeticError: broken layer, ridge 1.0" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["fig02_temperature", "fig02_settings", "bias_variance", "capacity"])
def test_shipped_experiments_quick(name, tmp_path):
    full = ex.load_sweep(ROOT / "experiments" / f"{name}.py")
    sweep = ex.load_sweep(ROOT / "experiments" / f"{name}.py", quick=True)
    assert len(full.cells) > 10 * len(sweep.cells)
    s = ex.run(sweep, tmp_path / name, executor="serial", progress=False)
    rows = ex.read_results(s.out)
    assert s.n_failed == 0, [r["error"] for r in rows if r["status"] != "ok"]
    assert len(rows) == len(sweep.cells)
    if name == "capacity":
        # least squares (ridge 0) recalls n = 4 < d = 8 pairs exactly: round-off only (see above)
        ls = [r for r in rows if r["recipe"] == "least_squares" and r["data"] == "pairs" and r["n"] == 4]
        assert ls and max(r["recall_error"] for r in ls) < 1e-20
    elif name == "bias_variance":
        assert all(r["variance"] > 0 and np.isfinite(r["theory_mse"]) for r in rows)
    elif name == "fig02_settings":
        # squared distances of unit vectors lie in [0, 4]; the peak lies in the first phase (before T/4)
        assert all(0 <= r["late"] < 4 and 0 <= r["peak"] < 4 and 0 <= r["single_peak"] < 4 for r in rows)
        assert all(r["peak_t"] < r["data.T"] // 4 for r in rows)
        assert {r["data.k0"] for r in rows} == {"figure", "stationary"}
    else:
        assert {r["recipe"] for r in rows} == {"softmax_qknorm", "linear_attention", "rls", "naive"}
        assert all(0 <= r["late"] < 4 for r in rows)  # squared distances of unit vectors lie in [0, 4]


def test_import_ttr_stats_does_not_import_dask():
    code = "import sys, ttr_stats, ttr_stats.experiments; print('dask' in sys.modules, 'distributed' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def test_cli_workers_starts_its_own_local_cluster(sweep_file, tmp_path, capsys):
    """``--workers 2`` starts (and shuts down) a Dask LocalCluster of 2 single-threaded processes: the cells
    run in two processes other than this one, and the values equal the serial run exactly (seeds are keyed
    by the cell, so the schedule cannot change them)."""
    serial, dask_out = tmp_path / "serial", tmp_path / "workers"
    assert (
        main(["experiment", "run", str(sweep_file), "--out", str(serial), "--serial", "--no-progress"]) == 0
    )
    args = ["experiment", "run", str(sweep_file), "--out", str(dask_out), "--workers", "2", "--no-progress"]
    assert main(args) == 0
    rows = ex.read_results(dask_out)
    assert values(rows) == values(ex.read_results(serial))
    workers = {r["worker"] for r in rows}
    assert len(workers) == 2 and all(str(os.getpid()) not in w for w in workers), workers
    assert main(["experiment", "run", str(sweep_file), "--workers", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--workers must be >= 1" in capsys.readouterr().err


def test_parquet_table_equals_the_parts(sweep_file, tmp_path):
    """With pyarrow installed the tidy table is results.parquet: every row and value of the per-task parts,
    exactly (floats are stored as doubles)."""
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "pq"
    assert main(["experiment", "run", str(sweep_file), "--out", str(out), "--serial", "--no-progress"]) == 0
    table = pq.read_table(out / "results.parquet").to_pylist()
    parts = {r["cell_id"]: r for r in ex.read_results(out)}
    assert len(table) == len(parts) == 18
    for row in table:
        ref = parts[row["cell_id"]]
        for key in ("recall", "status", "recipe", "seed"):
            if key in ref:
                assert row[key] == ref[key], (key, row[key], ref[key])


def test_show_folds_a_series_of_numbered_columns(tmp_path):
    """A metric returning a curve (``err_t0``, ``err_t4``, ... more than SERIES_MIN columns of one prefix)
    is named in one line of ``experiment show`` instead of widening the table; fewer such columns, and
    the other metrics, stay in the table."""

    def data(rng, n):
        return rng.standard_normal(n)

    def curve(layer, x, cell):
        return {f"err_t{4 * i}": float(x[i]) for i in range(x.size)}

    def few(layer, x, cell):
        return {"q1": float(x[0]), "q2": float(x[1]), "total": float(x.sum())}

    from ttr_stats._experiment_results import SERIES_MIN

    n = SERIES_MIN + 2
    sweep = ex.Sweep(
        "series", ex.grid({"naive": [{}]}, {"x": [{"n": n}]}, 2, ["curve", "few"]),
        data={"x": data}, metrics={"curve": curve, "few": few}, layers={"naive": lambda: None},
    )  # fmt: skip
    out = ex.run(sweep, tmp_path / "s", executor="serial", progress=False).out
    text = ex.summarize(out)
    header = next(line for line in text.splitlines() if line.startswith("| recipe"))
    assert "total" in header and "q1" in header and "q2" in header
    assert "err_t" not in header
    assert f"({n} columns err_t0 ... err_t{4 * (n - 1)} not shown" in text
    # the table still holds every column
    assert {f"err_t{4 * i}" for i in range(n)} <= set(ex.read_results(out)[0])


BLAS_SWEEP = textwrap.dedent(
    """
    import os
    import numpy as np
    from ttr_stats.experiments import Sweep, grid

    def nothing(rng, n):
        return rng.standard_normal(n)

    def blas(layer, x, cell):
        from threadpoolctl import threadpool_info

        pools = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        return {"blas_threads": max(pools) if pools else -1, "pid": os.getpid()}

    SWEEP = Sweep("blas", grid({"naive": [{}]}, {"x": [{"n": 3}]}, 6, ["blas"]), data={"x": nothing},
                  metrics={"blas": blas}, layers={"naive": lambda: None}, cells_per_task=1)
    """
)


def test_workers_run_blas_single_threaded_and_the_progress_line_counts_cells(tmp_path, capsys):
    """Every worker process computes with one BLAS thread (the cells are the parallelism), whatever the
    parent has; the progress line (no tqdm here, or tqdm's bar) counts the cells to the total."""
    pytest.importorskip("threadpoolctl")
    path = tmp_path / "blas_sweep.py"
    path.write_text(BLAS_SWEEP)
    sweep = ex.load_sweep(path)
    s = ex.run(sweep, tmp_path / "b", executor="processes", workers=2, progress=True)
    rows = ex.read_results(s.out)
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows)
    assert {r["blas_threads"] for r in rows} == {1}
    assert os.getpid() not in {r["pid"] for r in rows}  # computed in the worker processes
    err = capsys.readouterr().err
    assert "6/6" in err and "blas" in err
