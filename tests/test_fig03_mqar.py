"""Figure 3 (MQAR): the Zoology token generator, the training module, the grid script and the figure.

Torch tests skip before importing torch (CI has none); the figure runs in quick mode with or without it.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from ttr_stats.datasets import IGNORE, mqar_tokens

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs PyTorch (the train extra)")


# ------------------------------------------------------------------------------------------------------
# the generator
@pytest.mark.parametrize("random_non_queries", [True, False])
@pytest.mark.parametrize(("P", "T", "vocab"), [(4, 32, 64), (16, 128, 256), (64, 512, 8192)])
def test_mqar_tokens_invariants(P, T, vocab, random_non_queries):
    d = mqar_tokens(P, T, vocab=vocab, n_batch=16, seed=3, random_non_queries=random_non_queries)
    B = 16
    assert d.inputs.shape == d.labels.shape == (B, T)
    assert d.keys.shape == d.values.shape == d.query_positions.shape == (B, P)
    for b in range(B):
        keys, vals, qpos = d.keys[b], d.values[b], d.query_positions[b]
        # keys unique per sequence, from the lower half; values from the upper half
        assert len(set(keys.tolist())) == P and len(set(vals.tolist())) == P
        assert np.all((keys >= 1) & (keys < vocab // 2)) and np.all((vals >= vocab // 2) & (vals < vocab))
        # the context: k_1 v_1 k_2 v_2 ...
        np.testing.assert_array_equal(d.inputs[b, 0 : 2 * P : 2], keys)
        np.testing.assert_array_equal(d.inputs[b, 1 : 2 * P : 2], vals)
        # every key is queried once, in the query region, at an even offset from its start
        assert len(set(qpos.tolist())) == P
        assert np.all(qpos >= 2 * P) and np.all(qpos < T) and np.all((qpos - 2 * P) % 2 == 0)
        np.testing.assert_array_equal(d.inputs[b, qpos], keys)
        # each query's answer is the value of its key; nothing else is scored
        ctx = d.inputs[b, : 2 * P]
        pair_of = {int(k): int(v) for k, v in zip(ctx[0::2], ctx[1::2], strict=True)}
        scored = np.flatnonzero(d.labels[b] != IGNORE)
        assert set(scored.tolist()) == set(qpos.tolist())
        for t in scored:
            assert d.labels[b, t] == pair_of[int(d.inputs[b, t])]
            # causality: the answer is in the past (key at 2i, value at 2i + 1 < t)
            i = int(np.flatnonzero(keys == d.inputs[b, t])[0])
            assert 2 * i + 1 < t
        filler = np.ones(T, bool)
        filler[: 2 * P] = False
        filler[qpos] = False
        if not random_non_queries:
            assert np.all(d.inputs[b, filler] == 0)
        assert np.all((d.inputs[b] >= 0) & (d.inputs[b] < vocab))


def test_mqar_tokens_seeded_and_power_law():
    a = mqar_tokens(8, 256, vocab=512, n_batch=4, seed=7)
    b = mqar_tokens(8, 256, vocab=512, n_batch=4, seed=7)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # power_a = 0.01 puts the queries near the context (Zoology's p(g) ~ g^-0.99); uniform (a = 1) does not:
    # mean gap over 2000 x 8 draws, 4 standard errors apart at least (se of a uniform gap ~ 124/sqrt(16000))
    near = mqar_tokens(8, 512, vocab=1024, n_batch=2000, seed=1).query_positions - 16
    flat = mqar_tokens(8, 512, vocab=1024, n_batch=2000, seed=1, power_a=1.0).query_positions - 16
    assert near.mean() < flat.mean() - 4 * 124 / math.sqrt(near.size)
    # with a = 1 the gaps are uniform over the (512 - 16) / 2 = 248 slots: mean 247/2 (4 se)
    assert abs(flat.mean() / 2 - 123.5) < 4 * 71.6 / math.sqrt(flat.size)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"n_pairs": 4, "seq_len": 15}, "even"),
        ({"n_pairs": 8, "seq_len": 30}, "too short"),
        ({"n_pairs": 4, "seq_len": 64, "vocab": 64}, "must exceed seq_len"),
        ({"n_pairs": 4, "seq_len": 32, "power_a": 0.0}, "power_a"),
        ({"n_pairs": 0, "seq_len": 32}, "n_pairs"),
    ],
)
def test_mqar_tokens_bad_arguments(kw, match):
    kw = {"vocab": 128, **kw}
    with pytest.raises(ValueError, match=match):
        mqar_tokens(**kw)


# ------------------------------------------------------------------------------------------------------
# training (torch)
def _cfg(**kw):
    from ttr_stats.train import MQARTrainConfig

    base = dict(n_pairs=4, seq_len=32, vocab=64, d_model=16, batch_size=16, steps=40, lr=1e-2,
                eval_sequences=32, seeds=(0,), threads=1)  # fmt: skip
    return MQARTrainConfig(**{**base, **kw})


@needs_torch
@pytest.mark.parametrize("recipe", ["linear_attention", "rls"])
def test_a_few_steps_reduce_the_loss(recipe):
    from ttr_stats.train import train_mqar

    _, (r,) = train_mqar(_cfg(recipe=recipe))
    assert r.steps == 40
    # at init the read-out is near uniform: loss ~ log(vocab) = 4.16; 40 steps at lr 1e-2 bring the mean
    # of the last 4 training losses down by 0.3 nats at least (measured: about 0.5-1.5 for both layers)
    assert abs(r.first_loss - math.log(64)) < 0.1
    assert r.last_train_loss < r.first_loss - 0.3
    assert 0.0 <= r.accuracy <= 1.0 and math.isfinite(r.loss)


@needs_torch
@pytest.mark.parametrize("recipe", ["linear_attention", "rls"])
def test_a_tiny_model_learns_mqar(recipe):
    """The whole recipe learns, not only lowers the loss: P = 4, T = 32, vocab 64, d_model 32, 150 steps of
    16 sequences at lr 1e-2 (a few seconds on one thread; deterministic: one thread, fixed seeds). Chance
    is 1/32 (the value half of the vocabulary); measured 0.94 (linear attention) and 0.996 (RLS) held-out
    accuracy, so 0.8 leaves room for another CPU's float32 rounding without accepting a model that did
    not learn to recall."""
    from ttr_stats.train import train_mqar

    cfg = _cfg(recipe=recipe, d_model=32, steps=150, warmup=0.1, eval_sequences=64)
    _, (r,) = train_mqar(cfg)
    assert r.steps == 150
    assert r.accuracy >= 0.8, r.row()


@needs_torch
def test_replicas_train_as_separate_runs():
    """Two seeds trained together as replicas give each seed's run alone (float32 rounding: the batched
    matmuls may sum in another order; 40 steps of AdamW amplify it little at this scale, 1e-4)."""
    from ttr_stats.train import train_mqar

    _, both = train_mqar(_cfg(seeds=(0, 1), steps=15))
    for i, s in enumerate((0, 1)):
        _, (alone,) = train_mqar(_cfg(seeds=(s,), steps=15))
        assert both[i].seed == s
        assert abs(both[i].last_train_loss - alone.last_train_loss) < 1e-4
        assert abs(both[i].loss - alone.loss) < 1e-4


def test_parallel_draws_are_the_serial_ones():
    """The replicas' batches drawn on several threads are exactly the serial loop's, step after step
    (each generator is used by one draw at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    from ttr_stats.train import _batch_host, _rngs

    cfg = _cfg(seeds=(0, 1, 2))
    serial, threaded = _rngs(cfg.seeds, 0), _rngs(cfg.seeds, 0)
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            for a, b in zip(_batch_host(cfg, serial, 8), _batch_host(cfg, threaded, 8, pool), strict=True):
                np.testing.assert_array_equal(a, b)


@needs_torch
def test_replica_adamw_is_torch_adamw():
    """One replica of ReplicaAdamW follows torch.optim.AdamW step for step (float64 parameters: the same
    operations in another order, 1e-12 after 5 steps), and slices with other rates follow their own."""
    import torch

    from ttr_stats.train import ReplicaAdamW

    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64)
    grads = [torch.randn(3, 4, 5, generator=gen, dtype=torch.float64) for _ in range(5)]
    lrs = torch.tensor([1e-2, 3e-3, 1e-1], dtype=torch.float64)
    ours = torch.nn.Parameter(p0.clone())
    opt = ReplicaAdamW([([ours], 0.1)])
    for g in grads:
        ours.grad = g.clone()
        opt.step(lrs)
    for s in range(3):
        ref = torch.nn.Parameter(p0[s].clone())
        topt = torch.optim.AdamW([ref], lr=float(lrs[s]), weight_decay=0.1)
        for g in grads:
            ref.grad = g[s].clone()
            topt.step()
        assert torch.allclose(ours[s], ref, rtol=0, atol=1e-12)


@needs_torch
def test_learning_rates_as_replicas():
    """lrs=(a, b) trains one replica per (lr, seed); each equals the run with that single rate (1e-4, as
    for the seeds)."""
    from ttr_stats.train import train_mqar

    cfg = _cfg(seeds=(0,), lrs=(3e-3, 1e-2), steps=10)
    assert cfg.replicas == [(3e-3, 0), (1e-2, 0)]
    _, both = train_mqar(cfg)
    for r in both:
        _, (alone,) = train_mqar(_cfg(seeds=(0,), lr=r.lr, steps=10))
        assert abs(r.last_train_loss - alone.last_train_loss) < 1e-4 and r.lr == alone.lr


@needs_torch
def test_micro_batches_give_the_full_step():
    """max_tokens splits a step into micro-batches (here 4 of 4 sequences); the accumulated gradient is
    the full batch's, so the run matches the unsplit one (float32 summation order: 1e-4 after 10 steps)."""
    from ttr_stats.train import train_mqar

    _, (whole,) = train_mqar(_cfg(steps=10))
    _, (split,) = train_mqar(_cfg(steps=10, max_tokens=4 * 32))
    assert abs(whole.last_train_loss - split.last_train_loss) < 1e-4
    assert abs(whole.loss - split.loss) < 1e-4


@needs_torch
def test_model_is_causal():
    """Changing tokens at positions >= s never changes the hidden states before s (the short convolution
    looks one token back only, and the layer is causal): exactly, not to a tolerance."""
    import torch

    from ttr_stats.train import build_model

    for recipe in ("linear_attention", "rls"):
        cfg = _cfg(recipe=recipe, seeds=(0, 1))
        model = build_model(cfg)
        x = mqar_tokens(4, 32, vocab=64, n_batch=2, seed=0).inputs
        tokens = torch.from_numpy(np.stack([x, x[::-1]]))
        changed = tokens.clone()
        s = 20
        changed[..., s:] = (changed[..., s:] + 5) % 64
        with torch.no_grad():
            h0, h1 = model.hidden(tokens), model.hidden(changed)
        assert torch.equal(h0[..., :s, :], h1[..., :s, :])
        assert not torch.equal(h0[..., s:, :], h1[..., s:, :])


def test_config_checks():
    from ttr_stats.train import MQARTrainConfig

    with pytest.raises(ValueError, match="recipe"):
        MQARTrainConfig(recipe="mamba")
    with pytest.raises(ValueError, match="seeds"):
        MQARTrainConfig(seeds=())
    with pytest.raises(ValueError, match="must exceed seq_len"):
        MQARTrainConfig(seq_len=512, vocab=256)


def test_lr_schedule():
    from ttr_stats.train import lr_factor

    assert lr_factor(0.0, 0.1) == 0.0 and lr_factor(0.05, 0.1) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(0.1, 0.1) == 1.0 and lr_factor(1.0, 0.1) == pytest.approx(0.0, abs=1e-15)
    assert lr_factor(0.55, 0.1) == pytest.approx(0.5, abs=1e-15)  # cosine midpoint


# ------------------------------------------------------------------------------------------------------
# the grid script's scheduling and CSV (no training)
def test_grid_cell_seconds_and_sink(tmp_path):
    from benchmarks import gpu_mqar as g

    # 16 cells on 8 workers with 400 s left: 2 rounds of 200 s, less 10 s overhead each
    assert g.cell_seconds(16, 8, 400.0, 10.0) == 190.0
    assert g.cell_seconds(9, 8, 400.0, 10.0) == 190.0 and g.cell_seconds(8, 8, 400.0, 10.0) == 390.0
    args = g.parse(["--out", str(tmp_path / "x.csv")])
    cells = g.cells_of(args)
    assert len(cells) == 16 and cells[0][2] == 4096 and cells[-1][2] == 512
    sink = g.CSVSink(tmp_path / "x.csv")
    sink.write([{"recipe": "rls", "n_pairs": 64, "seq_len": 512, "accuracy": 0.5, "status": "ok"}])
    sink.close()
    from paper_figures._common import read_csv

    (row,) = read_csv(tmp_path / "x.csv")
    assert row["recipe"] == "rls" and float(row["accuracy"]) == 0.5 and list(row) == g.COLUMNS
    assert read_csv(g.history_path(tmp_path / "x.csv")) == []  # no curve given: a header only
    assert g.paper_accuracy("linear_attention", 128, 4096) == 0.915


def test_grid_gpus_and_batch():
    from benchmarks import gpu_mqar as g

    assert g.gpu_list("all", "cuda", count=8) == [str(i) for i in range(8)]
    assert g.gpu_list("3", "cuda", count=8) == ["0", "1", "2"] and g.gpu_list("2,5", "cuda", 8) == ["2", "5"]
    assert g.gpu_list("all", "cpu") == ["0"] and g.gpu_list("2", "cpu") == ["0", "1"]  # fake cards
    for bad, match in (("0", "at least 1"), ("x", "--gpus"), ("1,1", "twice"), ("9", "only 8")):
        with pytest.raises(ValueError, match=match):
            g.gpu_list(bad, "cuda", count=8)
    # 16 cells (longest first) on 8 idle cards, every cell at once: a snake, so the card of each T = 4096
    # cell also gets a T = 512 one
    load, given = [0] * 8, []
    for n in range(16):
        c = g.pick_card(load, n)
        load[c] += 1
        given.append(c)
    assert given == [0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 5, 4, 3, 2, 1, 0]
    cells = g.cells_of(g.parse([]))
    assert all({cells[i][2], cells[15 - i][2]} == {4096, 512} for i in range(4))
    assert g.pick_card([2, 1, 2], 5) == 1  # a card that finished early takes the next cell
    args = g.parse(["--batch", "64", "--batch-scale", "0.5", "--min-batch", "16"])
    # sqrt scaling: 64 at T <= 512, 64 / sqrt(8) = 22.6 -> 23 at T = 4096; constant tokens floor at 16
    assert [g.batch_of(args, T) for T in (128, 512, 2048, 4096)] == [64, 64, 32, 23]
    args = g.parse(["--batch", "64", "--batch-scale", "1", "--min-batch", "16"])
    assert [g.batch_of(args, T) for T in (512, 1024, 4096)] == [64, 32, 16]


@needs_torch
def test_grid_runs_on_two_fake_cards(tmp_path):
    """The multi-card logic end to end on the CPU: --device cpu --gpus 2 starts one pool per fake card
    (CUDA_VISIBLE_DEVICES 0 and 1), hands the two cells to different cards and writes every seed's row."""
    from benchmarks import gpu_mqar as g
    from paper_figures._common import read_csv

    out = tmp_path / "grid.csv"
    argv = ["--device", "cpu", "--gpus", "2", "--P", "4", "--T", "32", "--vocab", "64", "--batch", "8",
            "--seeds", "0,1", "--lrs", "1e-2", "--max-steps", "5", "--eval", "8", "--budget-s", "120",
            "--threads", "1", "--no-preflight", "--out", str(out)]  # fmt: skip
    assert g.main(argv) == 0
    rows = read_csv(out)
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    # one worker a card (ceil(2 cells / 2 cards)); the cells go out in order to the least loaded card
    assert {(r["recipe"], r["gpu"]) for r in rows} == {("linear_attention", "0"), ("rls", "1")}
    assert {r["gpus"] for r in rows} == {"2"} and {r["steps"] for r in rows} == {"5"}
    assert all(r["torch"] and r["card"].startswith("CPU") for r in rows)
    assert {r["source"] for r in rows} == {g.source_digest()}
    # the loss curves: every (cell, seed) from step 1 to its last step, finite losses
    hist = read_csv(g.history_path(out))
    curves = {}
    for h in hist:
        curves.setdefault((h["recipe"], h["seed"]), []).append(int(h["step"]))
    assert set(curves) == {(r["recipe"], r["seed"]) for r in rows}
    assert all(c[0] == 1 and c[-1] == 5 and c == sorted(c) for c in curves.values())
    assert all(math.isfinite(float(h["train_loss"])) for h in hist)


def test_source_digest_follows_the_sources(tmp_path):
    """The digest changes with any package source and not with other files."""
    from benchmarks import gpu_mqar as g

    (tmp_path / "ttr_stats" / "sub").mkdir(parents=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "ttr_stats" / "a.py").write_text("x = 1\n")
    (tmp_path / "ttr_stats" / "sub" / "b.py").write_text("y = 2\n")
    (tmp_path / "benchmarks" / "gpu_mqar.py").write_text("z = 3\n")
    d0 = g.source_digest(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    assert g.source_digest(tmp_path) == d0 and len(d0) == 12
    (tmp_path / "ttr_stats" / "sub" / "b.py").write_text("y = 3\n")
    assert g.source_digest(tmp_path) != d0


# ------------------------------------------------------------------------------------------------------
# the figure
def test_figure_quick_runs(tmp_path):
    from paper_figures import fig03_mqar as f
    from paper_figures._common import read_csv

    rows = f.main(tmp_path, quick=True, trained_csv=tmp_path / "none.csv")
    assert (tmp_path / "mqar.png").is_file() and (tmp_path / "mqar_capacity.csv").is_file()
    assert {r[0] for r in rows} == {"linear_attention", "rls", "deltanet"}
    # the construction: RLS interpolates the 2P + 2 distinct predecessors while 2P + 2 <= d (d = 16, P = 4)
    # exactly: every query decodes (ridge 1e-6 moves the outputs by ~1e-6, far below the decoding margin)
    assert all(r[4] == 1.0 for r in rows if r[0] == "rls" and r[1] == 4)
    live = read_csv(tmp_path / "mqar_live.csv")
    if HAS_TORCH:
        assert {r["recipe"] for r in live} == {"linear_attention", "rls"}
    else:
        assert live == []
    assert not (tmp_path / "mqar_trained.csv").exists()


def test_figure_without_torch_draws_panel_a(tmp_path, monkeypatch):
    """Without PyTorch the figure still draws (a), says so in (c) and writes an empty live CSV."""
    from paper_figures import fig03_mqar as f
    from paper_figures._common import read_csv

    monkeypatch.setattr(f, "torch_available", lambda: False)
    f.main(tmp_path, quick=True, trained_csv=tmp_path / "none.csv")
    assert (tmp_path / "mqar.png").is_file() and read_csv(tmp_path / "mqar_live.csv") == []
    assert len(read_csv(tmp_path / "mqar_capacity.csv")) == 3 * len(f.QUICK["P"]) * len(f.QUICK["T"])


def test_figure_draws_the_gpu_csv(tmp_path):
    """(b) from a grid CSV: the summary is the mean and s.e. over seeds, the paper's number beside."""
    from benchmarks import gpu_mqar as g
    from paper_figures import fig03_mqar as f

    src = tmp_path / "grid.csv"
    sink = g.CSVSink(src)
    accs = {("linear_attention", 128, 512, 1e-2): (0.9, 0.8), ("linear_attention", 128, 512, 3e-3): (0.1, 0.9),
            ("rls", 128, 512, 1e-2): (1.0, 1.0)}  # fmt: skip
    for (recipe, P, T, lr), pair in accs.items():
        sink.write([{"card": "H200", "recipe": recipe, "n_pairs": P, "seq_len": T, "seed": s, "steps": 100,
                     "lr": lr, "accuracy": a, "status": "ok",
                     "paper_accuracy": g.paper_accuracy(recipe, P, T)}
                    for s, a in enumerate(pair)])  # fmt: skip
    sink.write([{"recipe": "rls", "n_pairs": 64, "seq_len": 512, "seed": 0, "status": "timeout"}])
    sink.close()
    summary = f.summarise(f.trained_rows(src))
    assert set(summary) == {("linear_attention", 128), ("rls", 128)}  # the timeout row is left out
    ((T, mean, se, n, paper, lr),) = summary[("linear_attention", 128)]
    assert (T, n, paper, lr) == (512, 2, 0.934, 1e-2)  # the better of the two rates
    assert mean == pytest.approx(0.85, abs=1e-12) and se == pytest.approx(0.05, abs=1e-12)
    f.main(tmp_path / "out", quick=True, trained_csv=src, live=False)
    assert (tmp_path / "out" / "mqar_trained.csv").read_bytes() == src.read_bytes()
    assert (tmp_path / "out" / "mqar.png").is_file()


@needs_torch
def test_deferred_losses_are_read_in_order_and_a_non_finite_one_names_its_step():
    """The step losses stay on the device and are read back together (``LOSS_READ_EVERY``); they arrive
    in step order, and a non-finite one is refused with the step it appeared at."""
    import torch

    from ttr_stats.train import MQARTrainConfig, _take_losses

    cfg = MQARTrainConfig(n_pairs=4, seq_len=32, vocab=64, steps=1)
    losses = [np.array([1.0])] * 16  # 16 steps already read
    pending = [torch.tensor([2.0]), torch.tensor([3.0])]
    _take_losses(pending, losses, cfg)
    assert pending == [] and [float(x[0]) for x in losses[-2:]] == [2.0, 3.0] and len(losses) == 18
    pending = [torch.tensor([4.0]), torch.tensor([float("nan")]), torch.tensor([5.0])]
    with pytest.raises(FloatingPointError, match=r"at step 20 \(linear_attention, P=4, T=32\)"):
        _take_losses(pending, losses, cfg)


@needs_torch
def test_a_run_longer_than_one_read_keeps_every_step_loss():
    """A run of more steps than ``LOSS_READ_EVERY`` has one training loss a step, each finite, and the
    history's losses are those steps' losses."""
    from ttr_stats import train

    cfg = _cfg(seeds=(0,), steps=train.LOSS_READ_EVERY + 5)
    hist = []
    _, (r,) = train.train_mqar(cfg, log=lambda s, e, lv: hist.append((s, float(lv[0]))))
    assert r.steps == cfg.steps and np.isfinite(r.last_train_loss)
    assert [h[0] for h in r.history] == [s for s, _ in hist]
    assert [h[2] for h in r.history] == [loss for _, loss in hist]


@needs_torch
def test_scored_positions_gather_the_rows_the_mask_selects():
    """The training loop's gather by ``scored_positions`` gives the mask path's logits and labels, bit for
    bit (the same rows in the same order); unequal counts fall back to the mask (None)."""
    import torch

    from ttr_stats import train

    cfg = _cfg(seeds=(0, 1))
    model = train.build_model(cfg)
    tokens, labels = train._batch_host(cfg, train._rngs([0, 1], 0), 3)
    pos = train.scored_positions(labels)
    assert pos.shape == (2, 3, cfg.n_pairs) and np.all(np.diff(pos, axis=-1) > 0)
    t, lab = torch.from_numpy(tokens), torch.from_numpy(labels)
    with torch.no_grad():
        a, ya = model(t, lab)
        b, yb = model(t, lab, torch.from_numpy(pos))
    assert torch.equal(ya, yb) and torch.equal(a, b)
    uneven = labels.copy()
    uneven[0, 0, pos[0, 0, 0]] = IGNORE
    assert train.scored_positions(uneven) is None


@needs_torch
def test_replica_adamw_takes_parameters_of_several_dtypes():
    """A group holding float32 and float64 parameters: each follows torch.optim.AdamW at its own precision
    (float64 1e-12, float32 1e-6: the same operations in another order, 5 steps)."""
    import torch

    from ttr_stats.train import ReplicaAdamW

    gen = torch.Generator().manual_seed(1)
    p64 = torch.nn.Parameter(torch.randn(2, 3, generator=gen, dtype=torch.float64))
    p32 = torch.nn.Parameter(torch.randn(2, 4, 2, generator=gen).float())
    ref = [torch.nn.Parameter(p.detach()[s].clone()) for p in (p64, p32) for s in range(2)]
    lrs = torch.tensor([1e-2, 3e-2], dtype=torch.float64)
    opt = ReplicaAdamW([([p64, p32], 0.1)])
    topts = [torch.optim.AdamW([r], lr=float(lrs[i % 2]), weight_decay=0.1) for i, r in enumerate(ref)]
    for _ in range(5):
        g64, g32 = torch.randn(2, 3, generator=gen, dtype=torch.float64), torch.randn(2, 4, 2, generator=gen)
        p64.grad, p32.grad = g64.clone(), g32.clone()
        opt.step(lrs)
        for i, (r, t) in enumerate(zip(ref, topts, strict=True)):
            r.grad = (g64 if i < 2 else g32)[i % 2].clone()
            t.step()
    for i, r in enumerate(ref):
        ours = (p64 if i < 2 else p32)[i % 2]
        assert ours.dtype == r.dtype
        assert torch.allclose(ours, r, rtol=0, atol=1e-12 if i < 2 else 1e-6)


def test_grid_sink_appends_to_an_older_csv(tmp_path):
    """``--append``: the rows already in the CSV stay, in order, under the current columns (a column the
    old header lacked is empty), and the history file grows the same way; without it the file starts anew."""
    import csv

    from benchmarks import gpu_mqar as g
    from paper_figures._common import read_csv

    path = tmp_path / "grid.csv"
    old_cols = [c for c in g.COLUMNS if c != "source"]  # a CSV written before the source column
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, old_cols)
        w.writeheader()
        w.writerow({"recipe": "rls", "n_pairs": 64, "seq_len": 512, "accuracy": 0.99, "status": "ok"})
    hist = [(1, 0.5, 9.0), (2, 1.0, 8.0)]
    sink = g.CSVSink(path, append=True)
    sink.write([{"recipe": "linear_attention", "n_pairs": 64, "seq_len": 2048, "seed": 0, "accuracy": 0.5,
                 "source": "abc", "status": "ok", "_history": hist}])  # fmt: skip
    sink.close()
    rows = read_csv(path)
    assert list(rows[0]) == g.COLUMNS and [r["seq_len"] for r in rows] == ["512", "2048"]
    assert rows[0]["source"] == "" and rows[0]["accuracy"] == "0.99" and rows[1]["source"] == "abc"
    sink = g.CSVSink(path, append=True)  # a second run adds its curve after the first one's
    sink.write([{"recipe": "rls", "n_pairs": 128, "seq_len": 2048, "seed": 0, "status": "ok", "_history": hist}])
    sink.close()
    assert [h["recipe"] for h in read_csv(g.history_path(path))] == ["linear_attention"] * 2 + ["rls"] * 2
    g.CSVSink(path).close()  # no append: a fresh file
    assert read_csv(path) == [] and read_csv(g.history_path(path)) == []


@needs_torch
def test_per_replica_clipping_is_clip_grad_norm_of_each_replica():
    """``_clip_per_replica`` scales replica s of every gradient as ``torch.nn.utils.clip_grad_norm_`` (max
    norm 1, its eps 1e-6) scales the gradients of a model trained alone (float64: 1e-14); a replica below
    the norm is left as it is."""
    import torch

    from ttr_stats.train import _clip_per_replica

    gen = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.zeros(3, *shape, dtype=torch.float64)) for shape in ((4, 5), (6,), (2, 2, 2))]
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    grads = [g * torch.tensor([3.0, 0.01, 1.5], dtype=torch.float64).reshape((3,) + (1,) * (g.ndim - 1)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    _clip_per_replica(params, 1.0)
    for s in range(3):
        alone = [torch.nn.Parameter(torch.zeros(g.shape[1:], dtype=torch.float64)) for g in grads]
        for a, g in zip(alone, grads, strict=True):
            a.grad = g[s].clone()
        torch.nn.utils.clip_grad_norm_(alone, 1.0)
        for a, p in zip(alone, params, strict=True):
            assert torch.allclose(p.grad[s], a.grad, rtol=1e-14, atol=0)
    assert torch.equal(params[0].grad[1], grads[0][1])  # norm < 1: unchanged
