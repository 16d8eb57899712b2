"""``benchmarks/gpu_nonparametric.py`` (issue 10's one-run table) and ``benchmarks/gpu_call_anatomy.py``
run on NumPy (their CPU modes): every family of the table appears at both dry-run lengths with a max
relative difference from the float64 reference within float32's rounding (1e-5) or float64's (1e-10),
and the anatomy reaches every stage of the full path it stamps."""

import re

import pytest


def test_the_issue_table_has_every_family_within_its_precision(capsys, monkeypatch):
    from benchmarks import gpu_nonparametric
    from ttr_stats.methods.kernel_smoother import _fused_nw

    for name in ("_on_device", "forward"):  # the dry run replaces them for its process: restored after
        monkeypatch.setattr(_fused_nw, name, getattr(_fused_nw, name))

    assert gpu_nonparametric.main(["--cpu-dry-run"]) == 0
    summary = capsys.readouterr().out.split("# summary")[1]
    rows = [r for r in summary.splitlines() if re.search(r"\s(70|200)\s+float", r)]
    families = ("causal softmax", "sliding window 512", "window 512 + 4 sinks", "forgetting attention",
                "local linear")  # fmt: skip
    for T in (70, 200):
        for fam in families:
            mine = [r for r in rows if r.startswith(fam) and re.search(rf"\s{T}\s", r)]
            assert mine, (fam, T)
            for r in mine:
                assert "failed" not in r, r
                diff = float(re.search(r"\s(\d\.\de[-+]\d\d)\s", r).group(1))
                assert diff < (1e-10 if "float64" in r else 1e-5), r  # float64 / float32 rounding
    assert not [r for r in rows if "C=" in r or "tiled (array)" in r and "local" not in r]  # --rows issue


def test_the_call_anatomy_reaches_every_stage_on_numpy(capsys):
    pytest.importorskip("benchmarks.cpu_prelaunch_proxy")
    from benchmarks import gpu_call_anatomy

    gpu_call_anatomy.main(["--device", "cpu", "--runs", "5", "--T", "16", "--B", "1", "--H", "2"])
    out = capsys.readouterr().out
    assert "not reached" not in out.replace("_fused_nw._forward2 (not reached)", ""), out
    assert "layer call (tiled), no plan" in out and "_prepare" in out
