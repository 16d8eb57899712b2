"""The Kalman filter's reference: the generic loop (predict, update, read) on :class:`KalmanFilter`."""

from __future__ import annotations

from .._dense import state_bytes
from ..recurrent import recurrent
from ..registry import register

register(
    "recurrent",
    "kalman",
    run=recurrent,
    memory=state_bytes,
    reference=True,
    rank=90,
    summary="the generic loop: predict (P / alpha + q I), update, read (definition)",
)
