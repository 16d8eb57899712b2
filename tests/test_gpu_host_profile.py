"""``benchmarks/gpu_host_profile.py``'s paired statistic (the issue-10 ratio at T = 1024, where the host's
drift over a run is as large as the gap being measured): each pair times one call of each side, the order
alternating; checked with a fake clock, so the ratios are exact and the test takes no time."""

import pytest

from benchmarks import gpu_host_profile as ghp


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_paired_ratios_pair_each_call_with_the_peers_and_alternate(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ghp.time, "perf_counter", clock)
    order = []
    drift = iter([0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0])  # the host slows by 1 unit a pair

    def ours():
        order.append("ours")
        clock.now += 3.0 + next(drift)

    def peer():
        order.append("peer")
        clock.now += 1.0 + next(drift)

    ratios = ghp.paired_ratios(ours, peer, lambda: None, 4)
    assert order == ["ours", "peer", "peer", "ours", "ours", "peer", "peer", "ours"]
    assert ratios == sorted([3 / 1, 4 / 2, 5 / 3, 6 / 4])  # each pair is timed under the same drift
    q1, med, q3 = ghp.quartiles(ratios)
    assert q1 <= med <= q3 and med == pytest.approx((5 / 3 + 2) / 2, rel=1e-12)
    assert ghp.quartiles([1.5]) == (1.5, 1.5, 1.5)


def test_the_prelaunch_proxy_runs_and_restores_what_it_patched(capsys):
    """``benchmarks/cpu_prelaunch_proxy.py``: a short run prints its median, and the deferred checks and the
    fused path are the library's own again afterwards (other tests run in the same process)."""
    from benchmarks import cpu_prelaunch_proxy as proxy
    from ttr_stats import _validation as v
    from ttr_stats.methods.kernel_smoother import _fused_nw as nw

    before = (v.Deferred.bind, v._fusable, v._launch_finite, nw._on_device, nw.forward)
    proxy.main(["--runs", "6"])
    assert "median" in capsys.readouterr().out
    assert (v.Deferred.bind, v._fusable, v._launch_finite, nw._on_device, nw.forward) == before
