r"""Bias/variance sweep: local polynomial order p in {0, 1, 2} x bandwidth h x sample size n x
boundary/interior (theory §1).

The setting is the bias/variance figure's (``paper_figures/fig_bias_variance.py``): :math:`m(x) = \sin 4x
+ 4x^2`, noise sd 0.5, the interior point x = 0.3 under a Beta(2, 2) design and the boundary point x = 0
under U[0, 1]; the estimator is ``LocalPolynomial(p, Gaussian(h))`` read with ``causal=False``. The figure
fixes n = 10 000; here n is swept too, to see the rates. One cell is one seed index: ``n_rep``
replications by :func:`ttr_stats.diagnostics.bias_variance.monte_carlo` (bias from the noise-free reads,
variance of the noisy ones, each with its standard error), with the asymptotic theory beside
(:func:`~ttr_stats.diagnostics.bias_variance.theory`). All orders and bandwidths at the same (setting, n,
seed index) see the same data (common random numbers).

Full: 3 orders x 9 bandwidths (0.01 .. 0.16) x 3 n (1 000, 10 000, 100 000) x 2 settings x 10 seeds of
100 replications = 1 620 cells. Quick: 2 orders x 2 bandwidths x n = 400 x 2 settings x 2 seeds of 20.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for paper_figures

import ttr_stats as tt  # noqa: E402
from paper_figures import fig_bias_variance as fig  # noqa: E402
from ttr_stats.diagnostics.bias_variance import monte_carlo, theory  # noqa: E402
from ttr_stats.experiments import Sweep, grid  # noqa: E402

SEED = fig.SEED


def local_polynomial(order, bandwidth):
    """Local polynomial attention of degree ``order`` with the Gaussian similarity of bandwidth h."""
    reg = tt.regressors.LocalPolynomial(order, tt.similarity.Gaussian(bandwidth))
    return tt.TestTimeRegression(regressor=reg)


def regression(rng, setting, n, n_rep):
    """The problem of one cell: the design and point of ``setting`` and the Monte Carlo's seed.

    The seed is an integer drawn from the cell's generator (not the generator itself), so every layer
    that shares this data key redraws the same X and noise.
    """
    design, x0, boundary = fig.SETTINGS[setting]
    return {
        "design": design,
        "x0": x0,
        "boundary": boundary,
        "n": n,
        "n_rep": n_rep,
        "seed": int(rng.integers(2**63)),
    }


def bias_variance(layer, data, cell):
    order, h = cell.params["order"], cell.params["bandwidth"]
    df = monte_carlo(
        {"est": lambda _h: layer},
        fig.target,
        data["design"],
        [data["x0"]],
        [h],
        data["n"],
        fig.SIGMA,
        data["n_rep"],
        seed=data["seed"],
    )
    r = df.iloc[0]
    th = theory(
        order,
        n=data["n"],
        h=h,
        sigma=fig.SIGMA,
        x0=[data["x0"]],
        target=fig._np_target,
        f=data["design"],
        boundary=data["boundary"],
    )
    out = {k: float(r[k]) for k in ("bias", "bias_se", "variance", "variance_se", "mse")}
    out.update(theory_bias=float(th.bias), theory_variance=float(th.variance), theory_mse=float(th.mse))
    return out


def _cells(orders, bandwidths, ns, seeds, n_rep):
    layers = {"local_polynomial": [{"order": p, "bandwidth": float(h)} for p in orders for h in bandwidths]}
    data = {"regression": [{"setting": s, "n": n, "n_rep": n_rep} for s in fig.SETTINGS for n in ns]}
    return grid(layers, data, seeds, ["bias_variance"])


def _sweep(name, cells):
    return Sweep(
        name,
        cells,
        data={"regression": regression},
        metrics={"bias_variance": bias_variance},
        layers={"local_polynomial": local_polynomial},
        seed=SEED,
        description=__doc__.splitlines()[0],
    )


SWEEP = _sweep("bias_variance", _cells((0, 1, 2), fig.BANDWIDTHS_FULL, (1000, 10000, 100000), 10, 100))
QUICK = _sweep("bias_variance_quick", _cells((0, 1), np.geomspace(0.05, 0.2, 2), (400,), 2, 20))
