"""The three sweep figures drawn from a results folder (``--from-results``) plot the numbers the figure
computes directly at the same settings and seeds.

Each sweep's QUICK variant is run once, serially, into a temporary folder; each figure draws from it;
its CSV is compared with the figure's own functions run on the data of the same SeedSequence children
(``ttr_stats.experiments.cell_rng``), aggregated over the seed indices as the figure aggregates its
replications.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

import ttr_stats as tt  # noqa: E402
from paper_figures import _results  # noqa: E402
from paper_figures import fig02_nonstationary as fig02  # noqa: E402
from paper_figures import fig_bias_variance as fbv  # noqa: E402
from paper_figures import fig_capacity as fcap  # noqa: E402
from paper_figures._common import read_csv  # noqa: E402
from ttr_stats.datasets import random_pairs  # noqa: E402
from ttr_stats.diagnostics import capacity as cap  # noqa: E402
from ttr_stats.experiments import Cell, cell_rng, load_sweep, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FILES = {"fig02": "fig02_temperature", "bias_variance": "bias_variance", "capacity": "capacity"}
#: steps per bin of experiments/fig02_temperature.py's per-step metric ``curve``
CURVE_BIN = 4


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """name -> (sweep, results folder) of each QUICK sweep, run serially."""
    base = tmp_path_factory.mktemp("results")
    out = {}
    for key, stem in FILES.items():
        sweep = load_sweep(ROOT / "experiments" / f"{stem}.py", quick=True)
        summary = run(sweep, base / sweep.name, executor="serial", progress=False)
        assert summary.n_failed == 0
        out[key] = (sweep, base / sweep.name)
    return out


def _rng(sweep, data, data_params, seed):
    """The cell's generator: it depends only on (data, data_params, seed index), not on the layer."""
    return cell_rng(sweep.seed, Cell("any", {}, data, data_params, seed, ("m",)))


def _seeds(sweep_or_cells):
    cells = getattr(sweep_or_cells, "cells", sweep_or_cells)
    return sorted({c.seed for c in cells})


def _floats(row, cols):
    return [float(row[c]) for c in cols]


# ------------------------------------------------------------------------------------------------------
def test_fig02_from_results_equals_direct(results, tmp_path):
    sweep, folder = results["fig02"]
    fig02.main(tmp_path, results=folder)
    (dp,) = {_key(c.data_params) for c in sweep.cells}
    dp = dict(dp)
    taus = sorted({c.params["tau"] for c in sweep.cells if c.recipe == "softmax_qknorm"})
    T = dp["T"]
    blocks_sweep, blocks_late, blocks_curve = [], [], []
    for s in _seeds(sweep):
        # the figure's own code on this seed index's n_seq sequences (the same SeedSequence child)
        args = (dp["n_seq"], T, dp["d"], dp["rho"])
        blocks_sweep.append(
            fig02.temperature_sweep(*args, taus=taus, seed=_rng(sweep, "nonstationary", dp, s))
        )
        errs = fig02.errors(*args, tau=fig02.TAU, seed=_rng(sweep, "nonstationary", dp, s))
        a, b = fig02.peak_window(T)
        blocks_late.append(
            {
                m: (fig02.window_mean_se(e, fig02.late_start(T))[0], fig02.window_mean_se(e, a, b)[0])
                for m, e in errs.items()
            }
        )
        # panel (a): the figure's per-step errors, each sequence averaged over the sweep's bins, then the
        # sequences (as window_mean_se does) -- one value per bin for this seed index
        blocks_curve.append({m: fig02.binned(e, CURVE_BIN).mean(axis=0) for m, e in errs.items()})
    csv_rows = read_csv(tmp_path / "nonstationary_temperature.csv")
    assert len(csv_rows) == 2 * len(taus)
    # tolerance: a cell's metric is one np.mean over its n_seq x L window, the figure averages each sequence
    # and then the sequences -- the same sum in another order, a few ulps of the mean; 1e-12 relative.
    # The standard error is a difference of such means: compared to 1e-12 of the mean's size.
    for i, row in enumerate(csv_rows):
        order, tau = int(row["order"]), float(row["tau"])
        assert (order, tau) == blocks_sweep[0][i][:2]
        for j, col in ((2, "late"), (4, "peak")):
            mean, se = fig02.mean_se([blk[i][j] for blk in blocks_sweep])
            assert float(row[f"{col}_mean"]) == pytest.approx(float(mean), rel=1e-12, abs=0)
            assert abs(float(row[f"{col}_se"]) - float(se)) <= 1e-12 * float(mean)
    late_rows = {r["method"]: r for r in read_csv(tmp_path / "nonstationary_late.csv")}
    assert set(late_rows) == {m for m, _ in fig02.METHODS}  # tau = 64 is in the quick sweep
    for m, row in late_rows.items():
        assert int(row["n_seeds"]) == len(_seeds(sweep))
        for j, col in ((0, "late"), (1, "peak")):
            mean, se = fig02.mean_se([blk[m][j] for blk in blocks_late])
            assert float(row[f"{col}_mean"]) == pytest.approx(float(mean), rel=1e-12, abs=0)
            assert abs(float(row[f"{col}_se"]) - float(se)) <= 1e-12 * float(mean)
    # panel (a): the binned curves of the five methods, bins of CURVE_BIN steps up to T
    curve_rows = read_csv(tmp_path / "nonstationary.csv")
    bins = fig02.curve_bins(T, CURVE_BIN)
    assert [(int(r["t_start"]), int(r["t_stop"])) for r in curve_rows] == bins
    assert bins[-1][1] == T and len(bins) == -(-T // CURVE_BIN)
    assert [float(r["t"]) for r in curve_rows] == [(lo + hi - 1) / 2 for lo, hi in bins]
    for m, _ in fig02.METHODS:
        per_seed = np.array([blk[m] for blk in blocks_curve])  # (seed indices, bins)
        mean, se = fig02.mean_se(per_seed)
        got_mean = np.array([float(r[f"{m}_mean"]) for r in curve_rows])
        got_se = np.array([float(r[f"{m}_se"]) for r in curve_rows])
        # the same tolerance as above, bin by bin: one np.mean over the cell's n_seq x CURVE_BIN block
        # against the figure's per-sequence then across-sequence means
        np.testing.assert_allclose(got_mean, mean, rtol=1e-12, atol=0, err_msg=m)
        assert np.all(np.abs(got_se - se) <= 1e-12 * mean), m
        assert np.all(mean > 0), m  # a real curve, not an empty column
    assert (tmp_path / "nonstationary.png").stat().st_size > 0
    assert not (tmp_path / "nonstationary_temperature.png").exists()  # the whole figure, not panel (b)


def _key(d):
    return tuple(sorted(d.items()))


# ------------------------------------------------------------------------------------------------------
def test_bias_variance_from_results_equals_direct(results, tmp_path):
    sweep, folder = results["bias_variance"]
    fbv.main(tmp_path, results=folder)
    hs = sorted({c.params["bandwidth"] for c in sweep.cells})
    orders = sorted({c.params["order"] for c in sweep.cells})
    (n,) = {c.data_params["n"] for c in sweep.cells}
    (n_rep,) = {c.data_params["n_rep"] for c in sweep.cells}
    runs = {}
    for s in _seeds(sweep):
        # the figure's compute() at the seed every layer of this (setting, n, seed index) drew
        seeds = {
            st: int(_rng(sweep, "regression", {"setting": st, "n": n, "n_rep": n_rep}, s).integers(2**63))
            for st in fbv.SETTINGS
        }
        for r in fbv.compute(n=n, bandwidths=hs, n_rep=n_rep, seeds=seeds, orders=orders):
            runs.setdefault((r["setting"], r["order"], r["bandwidth"]), []).append(r)
    direct = [fbv.pool(v) for v in runs.values()]
    got = read_csv(tmp_path / "bias_variance.csv")
    assert len(got) == len(direct) == len(fbv.SETTINGS) * len(orders) * len(hs)
    by_key = {(r["setting"], int(r["order"]), float(r["bandwidth"])): r for r in got}
    num = [c for c in fbv.COLUMNS if c not in ("setting", "estimator")]
    for d in direct:
        row = by_key[(d["setting"], d["order"], d["bandwidth"])]
        assert row["estimator"] == d["estimator"]
        # exact: the same monte_carlo and theory calls on the same seeds, the same pool()
        assert _floats(row, num) == [float(d[c]) for c in num], d["setting"]
        assert int(row["n_rep"]) == len(_seeds(sweep)) * n_rep


def test_pool_of_one_run_is_the_run_and_of_two_the_independent_combination():
    a = dict(bias=0.1, bias_se=0.01, variance=2.0, variance_se=0.2, n_rep=10, theory_bias=0.0)
    a.update(theory_variance=0.0, theory_mse=0.0, bias2=0.01, mse=2.01, mse_se=0.2)
    assert fbv.pool([a]) == a
    b = dict(a, bias=0.3, bias_se=0.03, variance=4.0, variance_se=0.4)
    p = fbv.pool([a, b])
    # tolerance 1e-15: a handful of roundings on numbers of order 1
    assert p["bias"] == pytest.approx(0.2, abs=1e-15)
    assert p["bias_se"] == pytest.approx(math.sqrt(0.01**2 + 0.03**2) / 2, abs=1e-15)
    assert p["variance"] == pytest.approx(3.0, abs=1e-15)
    assert p["mse"] == pytest.approx(0.04 + 3.0, abs=1e-15)
    assert p["n_rep"] == 20
    with pytest.raises(ValueError, match="n_rep"):
        fbv.pool([a, dict(b, n_rep=11)])


# ------------------------------------------------------------------------------------------------------
def test_capacity_from_results_equals_direct(results, tmp_path):
    sweep, folder = results["capacity"]
    fcap.main(tmp_path, results=folder)
    got = {(r["panel"], r["series"], float(r["x"])): r for r in read_csv(tmp_path / "capacity.csv")}
    makers = {name: make for name, _, make, _, _ in fcap.RECALL}
    expected = {}
    for name, make in makers.items():
        for dp in sorted({_key(c.data_params) for c in sweep.cells if c.data == "pairs"}):
            dp = dict(dp)
            vals = []
            for s in _seeds([c for c in sweep.cells if c.data == "pairs"]):
                n = max(1, round(dp["ratio"] * dp["d"]))
                K, V = random_pairs(n, dp["d"], n_batch=dp["n_batch"], seed=_rng(sweep, "pairs", dp, s))
                vals.append(float(np.mean(np.asarray(cap.recall_error(make(), K, V), dtype=np.float64))))
            expected[("recall", name, n / dp["d"])] = vals
    mqar = [c for c in sweep.cells if c.data == "mqar"]
    T = min(c.data_params["T"] for c in mqar)
    for name, _, layer_name, emb, _, _ in fcap.MQAR:
        for dp in sorted({_key(c.data_params) for c in mqar if c.data_params["T"] == T}):
            dp = dict(dp)
            if dp["embedding"] != emb:
                continue
            P = max(1, round(dp["ratio"] * dp["d"]))
            vals = []
            for s in _seeds(mqar):
                seed = int(_rng(sweep, "mqar", dp, s).integers(2**63))
                acc = cap.mqar_accuracy(
                    fcap._mqar_layer(layer_name), P, dp["d"], embedding=emb, n_batch=dp["n_batch"],
                    seed=seed, seq_len=T,
                )  # fmt: skip
                vals.append(acc.accuracy)
            expected[("mqar", name, P / dp["d"])] = vals
    keys = [c for c in sweep.cells if c.data == "keys"]
    assert keys  # panel (b) is in the quick sweep
    sm = tt.recipes.qknorm_attention(fcap.BETA)
    for dp in sorted({_key(c.data_params) for c in keys}):
        dp = dict(dp)
        vals = []
        for s in _seeds(keys):
            K, _ = random_pairs(dp["n"], dp["d"], 1, n_batch=dp["n_batch"], seed=_rng(sweep, "keys", dp, s))
            vals.append(float(np.mean(fcap.self_weight_per_sequence(sm, K))))
        expected[("self_weight", "softmax_qknorm", dp["n"] / dp["d"])] = vals
    assert set(expected) <= set(got)
    assert {k for k in got if k[1] != "half_weight_n_star"} == set(expected)
    for key, vals in expected.items():
        v = np.asarray(vals, dtype=np.float64)
        # exact: the same recall_error / mqar_accuracy calls on the same data, mean and ddof-1 se over the
        # seed indices as recall_curve forms them over its sequences (nan for one seed index)
        se = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else float("nan")
        row = got[key]
        assert float(row["value"]) == float(np.mean(v)), key
        assert float(row["se"]) == se or (math.isnan(se) and math.isnan(float(row["se"]))), key
    # the closed forms beside the recall and the self weight
    la = [r for k, r in got.items() if k[:2] == ("recall", "linear_attention")]
    for r in la:
        assert float(r["theory"]) == float(cap.outer_product_recall(int(r["n"]), int(r["d"])))
    sw = [r for k, r in got.items() if k[:2] == ("self_weight", "softmax_qknorm")]
    assert len(sw) == len({c.data_params["n"] for c in keys})
    for r in sw:
        th = float(cap.hopfield_self_weight(int(r["n"]), int(r["d"]), fcap.BETA))
        assert float(r["theory"]) == th
        assert 0 < float(r["value"]) <= 1
    assert (tmp_path / "capacity.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------------------
def _break(folder):
    """Drop the first cell's row from the table and mark the second failed; their ids."""
    import pandas as pd

    path = folder / "results.parquet"
    df = pd.read_parquet(path) if path.is_file() else pd.read_csv(folder / "results.csv")
    gone, bad = df["cell_id"].iloc[0], df["cell_id"].iloc[1]
    df = df.astype({"status": object, "error": object})
    df.loc[df.index[1], ["status", "error"]] = ["failed", "FloatingPointError: non-finite\nsecond line"]
    df = df.iloc[1:]
    if path.is_file():
        df.to_parquet(path)
    else:
        df.to_csv(folder / "results.csv", index=False)
    return gone, bad


def test_failed_or_missing_cells_give_one_line_naming_folder_and_cells(results, tmp_path):
    _, folder = results["capacity"]
    broken = tmp_path / "res" / folder.name
    shutil.copytree(folder, broken)
    gone, bad = _break(broken)
    with pytest.raises(_results.ResultsError) as info:
        fcap.main(tmp_path / "out", results=broken)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(broken) in msg and "2 of the" in msg
    assert f"{gone} (" in msg and "missing" in msg
    assert f"{bad} (" in msg and "failed: FloatingPointError: non-finite" in msg
    assert "--resume" in msg
    assert not (tmp_path / "out" / "capacity.csv").exists()

    # the command line: the parent folder, found by sweep name with --quick; exit 1, the message whole
    env = {**os.environ, "MPLBACKEND": "Agg"}
    cmd = [sys.executable, "-m", "ttr_stats", "figures", "--quick", "--no-progress", "--only", "capacity"]
    out = subprocess.run(
        [*cmd, "--from-results", str(tmp_path / "res"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    line = next(x for x in out.stdout.splitlines() if "fig_capacity" in x)
    assert "FAILED" in line and gone in line and bad in line and str(broken) in line

    # a figure that cannot draw from results is a usage error
    out = subprocess.run(
        [*cmd[:-1], "memory", "--from-results", str(tmp_path / "res"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2 and "fig_memory cannot draw from a results folder" in out.stderr


def test_not_a_results_folder(tmp_path):
    with pytest.raises(_results.ResultsError, match="does not exist"):
        fcap.main(tmp_path, results=tmp_path / "nowhere")
    with pytest.raises(_results.ResultsError, match="no config.json"):
        fcap.main(tmp_path, results=tmp_path)


def test_fig02_folder_without_per_step_errors_draws_panel_b_and_says_so(results, tmp_path):
    """A results folder written before the ``curve`` metric existed: panel (b) and the late errors as
    before, panel (a) a note (and no nonstationary.csv), not an error."""
    import json

    _, folder = results["fig02"]
    old = tmp_path / folder.name
    shutil.copytree(folder, old)
    cfg = json.loads((old / "config.json").read_text())
    for c in cfg["cells"]:
        c["metrics"] = ["one_step"]
    (old / "config.json").write_text(json.dumps(cfg))
    sweep, late, settings, curves = fig02.from_results(old)
    assert curves is None and settings["bin"] == 1
    assert set(late) == {m for m, _ in fig02.METHODS} and sweep
    fig02.main(tmp_path / "out", results=old)
    assert not (tmp_path / "out" / "nonstationary.csv").exists()
    assert (tmp_path / "out" / "nonstationary_temperature.csv").is_file()
    assert (tmp_path / "out" / "nonstationary.png").stat().st_size > 0
