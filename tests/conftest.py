import numpy as np
import pytest


def rel_err(a, b):
    """Relative RMS error ||a - b|| / ||b|| (the flash-linear-attention metric), 0 when both vanish."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    return float(num / den) if den > 0 else float(num)


@pytest.fixture
def rng():
    return np.random.default_rng(20250121)


def make_qkv(rng, batch=(2,), T=24, d_k=5, d_v=3, dtype=np.float64, unit=False):
    Q = rng.standard_normal(batch + (T, d_k))
    K = rng.standard_normal(batch + (T, d_k))
    V = rng.standard_normal(batch + (T, d_v))
    if unit:
        Q /= np.linalg.norm(Q, axis=-1, keepdims=True)
        K /= np.linalg.norm(K, axis=-1, keepdims=True)
    return Q.astype(dtype), K.astype(dtype), V.astype(dtype)
