"""``benchmarks/gpu_train_step.py`` runs end to end (on the host, tiny: the code path a GPU call takes) and
leaves the lazy devices as it found them; without a card and without ``--device cpu`` it says so."""

import importlib.util

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")


def test_it_prints_a_row_per_recipe_and_length_and_restores_the_lazy_devices(capsys):
    from benchmarks import gpu_train_step
    from ttr_stats import _validation as v

    before = v.LAZY_TORCH_DEVICES
    gpu_train_step.main(
        ["--device", "cpu", "--T", "32", "--P", "4", "--steps", "2", "--warmup", "1", "--vocab", "64"]
    )
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("linear_attention", "rls"))]
    assert [r[0] for r in rows] == ["linear_attention", "rls"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)  # deferred and immediate ms a step
    assert v.LAZY_TORCH_DEVICES == before


def test_without_a_card_it_says_so(monkeypatch):
    import torch

    from benchmarks import gpu_train_step

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        gpu_train_step.main([])
