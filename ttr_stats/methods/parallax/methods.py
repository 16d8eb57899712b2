"""Parallax's methods: the kernel smoother's growing cache (reference) and its dense per-query form; both
call ``regressor.solve`` (Parallax's closed form), so they are registered again under ``"parallax"``.

Both keep a window's attention sinks (``weights.SinkWindow``): the growing cache puts the first ``P.sinks``
pairs back in front of the window before each solve, the dense form's log-weights come from ``log_gamma``
(``kept_pairs``), and the final cache from ``last_log_weights``, which keep them too; Parallax's closed form
then takes its means and covariances over the kept pairs (tests/test_issue13_parallax_sinks.py)."""

from __future__ import annotations

from ..kernel_smoother._common import dense_bytes
from ..kernel_smoother.direct import direct
from ..kernel_smoother.recurrent import recurrent
from ..registry import register

register("recurrent", "parallax", run=recurrent, memory=dense_bytes, reference=True, rank=90, window=True,
         sinks=True, summary="the growing cache, one closed-form read per query (definition)")  # fmt: skip
register("direct", "parallax", run=direct, memory=dense_bytes, rank=20, window=True,
         sinks=True, summary="every query's closed form with dense T x T log-weights")  # fmt: skip
