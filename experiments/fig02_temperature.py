r"""Figure 2 sweep: softmax temperature tau x key correlation rho x polynomial order p (paper §7).

The data and the layers are Figure 2's (``paper_figures/fig02_nonstationary.py``): keys from a two-phase
AR(1) (coefficient 0.9 then 0.999 from T/4) with equicorrelated noise (off-diagonals rho), values the
next key's direction, one-step-ahead error :math:`\|v_{t+1} - m_t(k_{t+1})\|^2`. Here rho is swept too
(the paper only says "non-zero"; the figure uses 0.5), and each cell is one seed index: ``n_seq``
sequences, whose mean late-phase (t >= 150 of 256) and peak-window (30 <= t < 60) errors are the cell's
metrics ``one_step``, and whose errors averaged over bins of CURVE_BIN = 4 steps (columns ``err_t0``,
``err_t4``, ...: 64 at T = 256) are its metric ``curve``, from which ``fig02_nonstationary.py
--from-results`` draws panel (a). ``ttr-stats experiment show`` then gives mean +- s.e. over the seed
indices.

Layers: ``softmax_qknorm`` (order 0: softmax attention with QKNorm at logit scale tau; order 1: local
linear attention on the same kernel, ridge 1e-3 on the slope -- QKNorm applied by hand as the figure
does), and per rho the three baselines that have no temperature: linear attention with output
normalisation, RLS (ridge 1e-3), the naive forecast (previous value). Cells that differ only in the layer
share their data (same SeedSequence child), so differences between layers are paired.

Full: 2 orders x 6 tau x 5 rho x 5 seeds + 3 baselines x 5 rho x 5 seeds = 375 cells of 4 sequences each
(20 sequences per setting, as in the figure). Quick: d = 8, T = 64, 14 cells.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for paper_figures

import ttr_stats as tt  # noqa: E402
from paper_figures import fig02_nonstationary as fig02  # noqa: E402
from ttr_stats.experiments import Sweep, grid  # noqa: E402

SEED = fig02.SEED
RHOS = (0.0, 0.25, 0.5, 0.75, 0.9)
ORDERS = (0, 1)


def nonstationary(rng, n_seq, T, d, rho):
    """(Q, K, V, target) of Figure 2, ``n_seq`` sequences drawn from the cell's generator."""
    return fig02.simulate(n_seq, T, d, rho, seed=rng)


def softmax_qknorm(order, tau, ridge=fig02.P1_RIDGE):
    layer = fig02.softmax_layer(order, tau, ridge)
    return lambda Q, K, V: layer(fig02.unit(Q), fig02.unit(K), V)  # QKNorm by hand, as in the figure


def naive():
    return lambda Q, K, V: V  # v_{t+1} forecast by v_t


#: steps per bin of the per-step curve (metric ``curve``): 64 columns at T = 256
CURVE_BIN = 4
_LAST = [None]  # (layer, data, errors) of the last cell: its metrics share one run of the layer


def _errors(layer, data, cell):
    """Per-sequence, per-step one-step-ahead errors (n_seq, T); computed once per (layer, data)."""
    last = _LAST[0]
    if last is not None and last[0] is layer and last[1] is data:
        return last[2]
    Q, K, V, target = data
    e = fig02.sq_error(np.asarray(layer(Q, K, V)), target)
    if not np.all(np.isfinite(e)):
        raise FloatingPointError(f"{cell.recipe}: non-finite one-step error")
    _LAST[0] = (layer, data, e)  # holding them keeps the identities from being reused
    return e


def one_step(layer, data, cell):
    """Late-phase and peak-window one-step-ahead error, averaged over the cell's sequences."""
    e = _errors(layer, data, cell)
    T = e.shape[-1]
    a, b = fig02.peak_window(T)
    return {
        "late": float(np.mean(e[:, fig02.late_start(T) :])),
        "peak": float(np.mean(e[:, a:b])),
        "mean": float(np.mean(e)),
    }


def curve(layer, data, cell):
    """The per-step curve, binned: column ``err_t<lo>`` is the mean error over the cell's sequences and
    the steps lo <= t < lo + CURVE_BIN (``fig02.curve_bins``); Figure 2's panel (a) from a results folder."""
    e = _errors(layer, data, cell)
    return {
        f"{fig02.CURVE_PREFIX}{lo}": float(np.mean(e[:, lo:hi]))
        for lo, hi in fig02.curve_bins(e.shape[-1], CURVE_BIN)
    }


def _cells(taus, rhos, seeds, n_seq, T, d):
    data = {"nonstationary": [{"n_seq": n_seq, "T": T, "d": d, "rho": r} for r in rhos]}
    learners = {"softmax_qknorm": [{"order": p, "tau": float(t)} for p in ORDERS for t in taus]}
    baselines = {
        "linear_attention": [{"normalize": "output"}],
        "rls": [{"ridge": fig02.RLS_RIDGE}],
        "naive": [{}],
    }
    metrics = ["one_step", "curve"]
    return grid(learners, data, seeds, metrics) + grid(baselines, data, seeds, metrics)


def _sweep(name, cells):
    return Sweep(
        name,
        cells,
        data={"nonstationary": nonstationary},
        metrics={"one_step": one_step, "curve": curve},
        layers={"softmax_qknorm": softmax_qknorm, "naive": naive, "rls": tt.recipes.rls},
        seed=SEED,
        description=__doc__.splitlines()[0],
    )


SWEEP = _sweep("fig02_temperature", _cells(fig02.TAUS, RHOS, 5, n_seq=4, T=256, d=64))
QUICK = _sweep("fig02_temperature_quick", _cells((1.0, 64.0), (0.5,), 2, n_seq=2, T=64, d=8))
