r"""The exact chunked method of (ridge) least squares: ClosedForm, the ``least_squares`` and ``mesa`` recipes.

.. math:: y_t = S_t (R_t + \rho I)^{-1} q_t,\qquad R_t = c_t R_0 + \sum_{j \le t} W_{tj} k_j k_j^\top,\quad
          S_t = c_t S_0 + \sum_{j \le t} W_{tj} v_j k_j^\top

on every prefix of every chunk, from the statistics at the chunk start (a scan over chunks) and decays
relative to it (:mod:`._prefix`). Three exact reads, chosen per call:

* **Woodbury** (ridge > 0 and no gate that can decay, from the layer and the call's arguments, not the gate
  values, so the choice is causal: ``least_squares(ridge)``, ``mesa`` without
  gates): the base :math:`R_0 + \rho I` does not change within a chunk, so one C x C Cholesky factor per
  chunk serves every prefix, O(C d + d^2) per token and no d x d solve per token;
* **prefix solves** (any decay, or ridge = 0): every :math:`R_t` is formed (C d x d matrices per batch
  element and chunk) and solved by the optimizer's own solve, a Cholesky-free definite solve for ridge > 0
  and the minimum-norm eigen-solve for ridge = 0, exactly as the recurrent read does. The fixed ridge
  keeps this well posed at any decay (log alpha = -50 included). On CuPy with ridge > 0 and d_k <= 64
  one kernel per chunk forms each :math:`R_t` in shared memory and solves it there
  (:mod:`._fused_prefix`: no d x d matrix per token in memory, 64-token chunks);
* **conjugate gradients** (``ClosedForm(solver="cg", max_iter=k)``): k MesaNet steps, matrix-free:
  :math:`(R_t + \rho I) x = c_t R_0 x + \sum_{j\le t} W_{tj} k_j (k_j^\top x) + \rho x` for every row at once.

Computed in float64 (float32 inputs too, cast back at the end). See docs/derivations/exact_chunked.md.
"""

from __future__ import annotations

from ... import _validation
from ...optimizers import SufficientStatistics
from ...optimizers.closed_form import conjugate_gradient
from ..problem import initial_state
from ..registry import register
from . import _fused_prefix
from ._prefix import (
    Layout,
    as_work,
    chunk_starts,
    chunk_sums,
    chunk_weights,
    group_bytes,
    groups,
    masked_apply,
    pd_inverse,
    prefix_systems,
    read_outputs,
    woodbury_chunk,
    work_dtype,
)

#: default chunk lengths (docs/derivations/exact_chunked.md, timings). Woodbury: O(C d) work per token
#: against one d x d inversion per chunk. Prefix solves: forming R_t costs O(C d^2) per token, the solve
#: O(d^3) whatever C is, so short chunks; CG: O(k (C d + d^2)) per token.
DEFAULT_CHUNK = {"woodbury": 64, "prefix": 16, "cg": 32, "fused": 64}


def _path(opt, P):
    """Which exact read runs this call (one host check of the gates when the ridge allows Woodbury)."""
    if opt.cg_steps is not None:
        return "cg"
    # from the call's structure, not the gate values: a later nonzero gate must not switch the algorithm
    # (and so the rounding) of earlier outputs
    if float(opt.ridge) > 0 and not P.gated:
        return "woodbury"
    return "prefix"


def chunked(layer, P):
    """Return ``(Y, final_state)``; Y of shape (*batch, T, d_v)."""
    opt = layer.optimizer
    xp = P.xp
    s0 = initial_state(opt, P)
    if not P.T:
        return xp.zeros(P.batch_shape + (0, P.d_v), dtype=P.dtype, device=P.device), s0
    wd = work_dtype(P)
    path = _path(opt, P)
    rho = float(opt.ridge)
    if path == "prefix" and rho > 0 and _fused_prefix.applies(xp, wd, P.d_k):
        path = "fused"  # the prefix solves in one kernel a chunk
    C = int(P.chunk_size or DEFAULT_CHUNK[path])
    # Woodbury: a first chunk of at most d_k tokens, as in the RLS method (a small ridge is a large P_0)
    lay = Layout(P, C, first=min(C, P.d_k) if path == "woodbury" else C)
    Q, K, V = (lay.split(xp, as_work(xp, x, wd)) for x in (P.Q, P.K, P.V))  # (..., n, C, .)
    g = lay.split(xp, as_work(xp, P.g[..., 0], wd), time_axis_last=True)  # (..., n, C)
    b = lay.split(xp, as_work(xp, P.b, wd), time_axis_last=True)
    full = path != "woodbury"
    c, W = chunk_weights(xp, g, b, full=full)
    R0, S0 = as_work(xp, s0.R, wd), as_work(xp, s0.S, wd)
    w = W[..., -1, :] if full else W
    Rs, Ss, R_end, S_end = chunk_starts(xp, R0, S0, c[..., -1], *chunk_sums(xp, w, K, V))
    ys = []
    dfr = _validation.defers(P.Q)
    for sl in groups(lay.n, _chunk_bytes(P, path, C), group_bytes(xp)):
        Kg, Vg, Qg = K[..., sl, :, :], V[..., sl, :, :], Q[..., sl, :, :]
        Rg, Sg, cg = Rs[..., sl, :, :], Ss[..., sl, :, :], c[..., sl, :]
        if path == "woodbury":
            eye = xp.eye(P.d_k, dtype=wd, device=P.device)
            # definite: the ridge bounds it below. On a lazy torch device no factor reads its status at
            # once (a host sync each); one that failed all the same gives NaN, refused with the output
            Pg, _ = pd_inverse(xp, Rg + rho * eye, dfr)
            ys.append(woodbury_chunk(xp, Pg, xp.matmul(Sg, Pg), Kg, Vg, Qg, b[..., sl, :], cg, dfr))
            continue
        Wg = W[..., sl, :, :]
        if path == "fused":
            X = _fused_prefix.prefix_solve(xp, Rg, Kg, Qg, g[..., sl, :], b[..., sl, :], rho)
        elif path == "cg":
            X = _cg(xp, Rg, cg, Wg, Kg, Qg, rho, opt.cg_steps)
        else:
            X = opt.solve(xp, prefix_systems(xp, Rg, cg, Wg, Kg), Qg[..., None])[..., 0]
        ys.append(read_outputs(xp, X, cg, Wg, Sg, Kg, Vg))
    Y = as_work(xp, lay.join(xp, xp.concat(ys, axis=-3)), P.dtype)
    return Y, SufficientStatistics(as_work(xp, R_end, P.dtype), as_work(xp, S_end, P.dtype))


def _cg(xp, R0, c, W, K, Q, rho, steps):
    r"""MesaNet's conjugate-gradient read of every prefix, matrix-free.

    :math:`(R_t + \rho I) x = c_t R_0 x + \sum_{j\le t} W_{tj} k_j (k_j^\top x) + \rho x` for all rows x_t
    of X (..., C, d_k) at once; R0 (..., d_k, d_k) is the chunk-start statistic (symmetric).
    """

    def apply(X):
        return c[..., None] * xp.matmul(X, R0) + masked_apply(xp, W, X, K, K) + rho * X

    return conjugate_gradient(xp, apply, Q, steps)


def _chunk_bytes(P, path, C):
    """Bytes of one chunk's intermediates (float64), per batch element times the batch."""
    dk, dv = P.d_k, P.d_v
    if path == "prefix":
        per = C * (3 * dk * dk + C + 2 * dk + dv)  # outer products, R_t, the solve's copy
    elif path == "cg":
        per = C * (C + 6 * dk + dv) + dk * dk
    elif path == "fused":
        per = C * (3 * C + 3 * dk + 2 * dv) + dk * (dk + dv)  # W, X K^T, X, the outputs; no R_t
    else:
        per = C * (C + 2 * dk + dv) + 2 * dk * (dk + dv)
    return P.n_batch * per * 8


def chunked_bytes(P):
    """The largest intermediates: one group of chunks of the largest path (the prefix solves; the fused
    kernel's 64-token chunks on a device), the chunk-start statistics and chunk sums (T / C d x d
    matrices each) and the chunked inputs with their C x C weights."""
    budget = group_bytes(P.xp)
    worst = 0
    for path in ("prefix", "fused"):
        C = min(int(P.chunk_size or DEFAULT_CHUNK[path]), max(P.T, 1))
        n = -(-P.T // C) + 1
        per = _chunk_bytes(P, path, C)
        starts = 2 * P.n_batch * n * P.d_k * (P.d_k + P.d_v) * 8
        inputs = P.n_batch * (n * C) * (2 * P.d_k + 2 * P.d_v + C) * 8
        worst = max(worst, min(n * per, max(per, budget)) + starts + inputs)
    return worst


def auto(P, free):
    """On a device whenever the intermediates fit in a quarter of free memory. On the host only without
    decay and from T = 64 on, where the Woodbury read runs (docs/derivations/exact_chunked.md: 5-9x the
    loop at B = 1, H = 16, d = 64); under decay the prefix solves do the loop's d x d solve per token and
    are no faster on the host (0.7x measured), so the loop stays the choice there. (``auto`` sees the
    problem, not the optimizer: a ridge-0 layer without decay also gets the chunked prefix solves, measured
    1.1-1.2x the loop.)"""
    if free is not None:
        return chunked_bytes(P) <= free // 4
    return P.T >= HOST_MIN_T and not P.gated


#: the host's shortest T for ``auto`` (measured: below it the loop's few steps cost less than the setup)
HOST_MIN_T = 64


register(
    "chunked",
    "least_squares",
    run=chunked,
    memory=chunked_bytes,
    auto=auto,
    rank=5,
    summary="prefix statistics per chunk; one C x C Cholesky per chunk without decay",
)
