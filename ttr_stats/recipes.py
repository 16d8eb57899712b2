r"""Named layers as (weights, regressor, optimizer) recipes -- the rows of the paper's taxonomy (§2).

Each recipe is a few lines of composition and returns a :class:`~ttr_stats.TestTimeRegression`.
:func:`registry` lists them; the README's catalogue is generated from it (``make readme``).

Conventions (shared by every recipe): the memory is :math:`M \in \mathbb{R}^{d_v\times d_k}`, the output is
read after step t's update, :math:`y_t = M_t q_t` with no implicit query scaling; data-dependent gates
``alpha`` (decay, in [0, 1]) and ``beta`` (write strength / step, > 0) are passed at call time.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from . import optimizers as opt
from . import weights as w
from ._validation import check_scalar, renamed
from .layer import TestTimeRegression
from .regressors import MLP, FeatureMap, KernelRidge, Linear, LocalPolynomial
from .similarity import ExpDot

__all__ = [
    "linear_attention",
    "retnet",
    "mamba2",
    "gla",
    "least_squares",
    "rls",
    "mesa",
    "batch_gd",
    "deltanet",
    "gated_deltanet",
    "leaky_lms",
    "longhorn",
    "nlms",
    "delta_product",
    "softmax_attention",
    "qknorm_attention",
    "sliding_window_attention",
    "local_linear_attention",
    "local_polynomial_attention",
    "kernel_regression",
    "performer",
    "based",
    "ttt_linear",
    "ttt_mlp",
    "titans",
    "registry",
    "catalogue",
    "registry_markdown",
]


def _layer(weights, optimizer, regressor=None):
    return TestTimeRegression(weights=weights, regressor=regressor or Linear(), optimizer=optimizer)


def linear_attention(normalize=None, feature_map=None):
    r"""Linear attention: :math:`M_t = M_{t-1} + v_t \phi(k_t)^\top`, :math:`y_t = M_t \phi(q_t)`.

    Paper row: weights 1, linear class, exact solution with :math:`K^\top K \approx I` (one batch GD
    step from 0 with step 1). ``normalize="sum"`` divides by :math:`\phi(q_t)^\top \sum_i \phi(k_i)`:
    Nadaraya-Watson with the kernel :math:`\phi(q)^\top\phi(k)`; ``normalize="output"`` rescales
    :math:`y_t` to unit norm (Figure 2). ``feature_map``: a :class:`~ttr_stats.regressors.FeatureMap` or
    the name of one (``"elu_plus_one"``, ``"relu"``, ``"taylor"``, ...); ``None`` is the identity.
    """
    if isinstance(feature_map, str):
        feature_map = FeatureMap(feature_map)
    return _layer(w.Uniform(), opt.IdentityCovariance(normalize=normalize), regressor=feature_map)


def retnet(gamma=0.9):
    r"""RetNet retention: :math:`M_t = \gamma M_{t-1} + v_t k_t^\top`.

    Paper row: gated LA with constant decay, weights :math:`\gamma^{t-i}`, identity covariance.
    A call-time ``alpha`` overrides ``gamma``.
    """
    return _layer(w.ExponentialDecay(gamma), opt.IdentityCovariance())


def mamba2():
    r"""Mamba-2 / simple GLA: :math:`M_t = \alpha_t M_{t-1} + \beta_t v_t k_t^\top`, scalar ``alpha`` a step.

    Paper row: gated LA / SSM with data-dependent scalar decay, weights :math:`\prod_{j>i}\alpha_j`.
    ``alpha`` (or ``log_alpha``) of shape (..., T) is required at call time.
    """
    return _layer(w.Gated(), opt.IdentityCovariance())


def gla():
    r"""GLA (diagonal gates): :math:`M_t = M_{t-1}\mathrm{Diag}(\alpha_t) + v_t k_t^\top`.

    Paper row: per-key-dimension decay (RWKV-6 style); not a scalar-weighted least squares.
    ``alpha`` of shape (..., T, d_k) is required at call time.
    """
    return _layer(w.Gated(per_dimension=True), opt.IdentityCovariance())


def least_squares(ridge=0.0):
    r"""Exact (ridge) least squares on every prefix: :math:`M_t = V_t^\top K_t (K_t^\top K_t + \rho I)^{-1}`.

    Paper row: OLS, weights 1, exact = one Newton step; minimum-norm (pseudo-inverse) when ``t < d_k`` and
    ``ridge = 0``.
    """
    return _layer(w.Uniform(), opt.ClosedForm(ridge=ridge))


def rls(ridge=1e-6, forgetting=1.0):
    r"""Recursive least squares (Sherman-Morrison), the Mesa layer's recursion.

    :math:`g = Pk/(\lambda + k^\top P k)`, :math:`M \leftarrow M + (v - Mk)g^\top`,
    :math:`P \leftarrow (P - g k^\top P)/\lambda`, :math:`P_0 = I/\rho`. Paper row: OLS / RLS, exact.
    With ``forgetting < 1`` the prior decays too (unlike :func:`mesa`).
    """
    return _layer(w.Uniform(), opt.RecursiveLeastSquares(ridge=ridge, forgetting=forgetting))


def mesa(ridge=1.0):
    r"""MesaNet: :math:`H_t = \alpha_t H_{t-1} + \beta_t k k^\top`,
    :math:`G_t = \alpha_t G_{t-1} + \beta_t v k^\top`, :math:`y_t = G_t (H_t + \rho I)^{-1} q_t`.

    Paper row: weighted RLS (gated Mesa), exact with a fixed ridge. Gates default to 1 (then it is
    :func:`least_squares` with ``ridge``).
    """
    return _layer(w.Gated(alpha=1.0), opt.ClosedForm(ridge=ridge))


def batch_gd(steps=1, lr=1.0):
    r"""``steps`` full-batch GD steps from 0 on each prefix: :math:`M \leftarrow M(I - \eta R_t) + \eta S_t`.

    Paper row: batch GD, weights 1; one step with ``lr=1`` is linear attention.
    """
    return _layer(w.Uniform(), opt.BatchGradientDescent(steps=steps, lr=lr))


def deltanet(beta=1.0):
    r"""DeltaNet (LMS, Widrow-Hoff): :math:`M_t = M_{t-1}(I - \beta_t k_t k_t^\top) + \beta_t v_t k_t^\top`.

    Paper row: one SGD step per token from a warm start (implicit recency weights).
    """
    return _layer(w.Uniform(), opt.LMS(beta=beta))


def gated_deltanet(alpha=1.0, beta=1.0):
    r"""Gated DeltaNet: :math:`M_t = \alpha_t M_{t-1}(I - \beta_t k_t k_t^\top) + \beta_t v_t k_t^\top`.

    The decay is applied before the delta read. Paper row: leaky LMS reparameterised
    (:func:`ttr_stats.optimizers.leaky_lms_to_gated_deltanet`). Call-time ``alpha``/``beta`` override.
    """
    return _layer(w.Gated(alpha=alpha), opt.LMS(beta=beta))


def leaky_lms(beta=1.0, l2=0.01, *, decay=None):
    r"""Leaky LMS: :math:`M_t = (1 - \beta\lambda) M_{t-1} + \beta (v_t - M_{t-1} k_t) k_t^\top`.

    Paper row: SGD on the L2-regularised loss (``l2`` = :math:`\lambda`; ``decay`` is its deprecated
    old name).
    """
    return _layer(w.Uniform(), opt.LeakyLMS(beta=beta, l2=l2, decay=decay))


def longhorn(delta=1.0):
    r"""Longhorn: the implicit step, a delta rule with :math:`\beta_t = \delta_t/(1 + \delta_t\|k_t\|^2)`.

    Paper row: implicit (proximal) online update; a call-time ``beta`` array gives :math:`\delta_t`.
    """
    return _layer(w.Uniform(), opt.Implicit(delta=delta))


def nlms():
    r"""Normalised LMS / Kaczmarz: delta rule with :math:`\beta_t = 1/\|k_t\|^2` (so :math:`M_t k_t = v_t`).

    Paper row: the :math:`\delta \to \infty` limit of Longhorn.
    """
    return _layer(w.Uniform(), opt.NLMS())


def delta_product(n_householder=2, beta=1.0):
    r"""DeltaProduct: ``n_householder`` delta steps per token before the read.

    K, V and ``beta`` carry ``n_householder`` pairs per token, interleaved along time (length
    ``T * n_householder``); Q has length T. Paper row: DeltaProduct, several SGD steps per token,
    :math:`M \leftarrow M(I - \beta k k^\top) + \beta v k^\top` repeated.
    """
    return _layer(w.Uniform(), opt.LMS(beta=beta, steps_per_token=n_householder))


def softmax_attention(scale=None):
    r"""Causal softmax attention: :math:`y_t = \sum_{i\le t} s_i v_i / \sum_j s_j`,
    :math:`s_i = \exp(\tau q_t^\top k_i)`.

    Paper row: weights :math:`s(k_i, q)`, local constant (p = 0), exact: Nadaraya-Watson. ``scale``
    :math:`\tau` defaults to :math:`d_k^{-1/2}`.
    """
    return _layer(w.Uniform(), opt.ClosedForm(), regressor=LocalPolynomial(0, ExpDot(scale)))


def qknorm_attention(scale=10.0):
    r"""Softmax attention on L2-normalised queries and keys (QKNorm): logits :math:`\tau\cos(q, k)`.

    Paper row: softmax attention = NW with a Gaussian kernel of bandwidth :math:`h = \tau^{-1/2}` once
    :math:`\|q\| = \|k\| = 1` (P§4). ``scale`` is the (learned, in practice) logit scale g.
    """
    return _layer(w.Uniform(), opt.ClosedForm(), regressor=LocalPolynomial(0, ExpDot(scale, qk_norm=True)))


def sliding_window_attention(window=64, scale=None):
    r"""Softmax attention over the last ``window`` pairs: weights :math:`s(k_i, q)\,\mathbb{1}[t - i < w]`.

    Paper row: sliding-window attention, local constant, exact (windowed NW).
    """
    check_scalar("window", window, low=1, integer=True)
    return _layer(w.SlidingWindow(window), opt.ClosedForm(), regressor=LocalPolynomial(0, ExpDot(scale)))


def local_linear_attention(scale=None, ridge=0.0, qk_norm=False):
    r"""Local linear attention (p = 1): the intercept of a softmax-weighted linear fit in :math:`k - q`.

    :math:`[a, B] = \arg\min \sum_i s_i\|v_i - a - B(k_i - q)\|^2 + \lambda\omega\|B\|^2`,
    :math:`y = a = \bar v - B(\bar k - q)`. Paper row: local linear (P§5). ``ridge`` :math:`\lambda`:
    :math:`\lambda\to\infty` is softmax attention; with ``qk_norm`` the local covariance is nearly
    singular along q, so a ridge is needed.
    """
    return _layer(
        w.Uniform(), opt.ClosedForm(), regressor=LocalPolynomial(1, ExpDot(scale, qk_norm=qk_norm), ridge)
    )


def local_polynomial_attention(order=2, scale=None, ridge=0.0):
    r"""Local polynomial attention of degree ``order``: the intercept of a softmax-weighted polynomial fit.

    Paper row: local polynomial (p >= 2), exact (P§5). Cost grows with :math:`\binom{d+p}{p}`.
    """
    return _layer(w.Uniform(), opt.ClosedForm(), regressor=LocalPolynomial(order, ExpDot(scale), ridge))


def kernel_regression(kernel="rbf", ridge=1e-3, **kernel_params):
    r"""Kernel ridge regression on every prefix:
    :math:`y_t = V_t^\top(\kappa_t + \lambda I)^{-1}\kappa(K_t, q_t)`.

    Paper row: kernel regression (kernel ridge, Skyformer, SOFT), infinite feature map, exact.
    ``kernel_params``: ``gamma``, ``degree``, ``coef0`` as in scikit-learn.
    """
    return _layer(w.Uniform(), opt.ClosedForm(), regressor=KernelRidge(kernel, ridge, **kernel_params))


def performer(n_features=256, seed=0, scale=None):
    r"""Performer (FAVOR+): normalised linear attention on positive random features of the softmax kernel.

    :math:`y_t = \sum_i \phi(q_t)^\top\phi(k_i) v_i / \sum_j \phi(q_t)^\top\phi(k_j)` with
    :math:`E\,\phi(q)^\top\phi(k) = \exp(\tau q^\top k)`. Paper row: feature-map linear attention that
    approximates softmax attention (NW) as ``n_features`` grows.
    """
    fm = FeatureMap("positive_random", n_features=n_features, scale=scale, seed=seed)
    return linear_attention(normalize="sum", feature_map=fm)


def based(scale=None):
    r"""Based: normalised linear attention on the second-order Taylor features of :math:`\exp(\tau q^\top k)`.

    :math:`\phi(q)^\top\phi(k) = 1 + \tau q^\top k + (\tau q^\top k)^2/2`. Paper row: feature-map linear
    attention (polynomial / Taylor).
    """
    return linear_attention(normalize="sum", feature_map=FeatureMap("taylor", scale=scale))


def ttt_linear(lr=1.0, batch_size=16, layer_norm=True, *, mini_batch=None):
    r"""TTT-Linear: mini-batch GD on :math:`\tfrac12\|v_t - \mathrm{LN}(M k_t + b)\|^2`.

    Within a mini-batch of ``batch_size`` tokens (``mini_batch`` is the deprecated old name) every
    gradient is taken at the mini-batch's start and
    :math:`y_t` is read after the gradients so far (TTT's dual form,
    :class:`~ttr_stats.optimizers.MiniBatchGD`).
    Paper row: DeltaNet / TTT-linear (one SGD step per token when ``batch_size=1``; with
    ``layer_norm=False`` that is :func:`deltanet` with ``beta=lr``). The memory starts at zero.
    """
    check_scalar("lr", lr, low=0.0, low_inclusive=False)
    size = _batch_size(batch_size, mini_batch)
    return _layer(w.Uniform(), opt.MiniBatchGD(lr, size), regressor=Linear(layer_norm=layer_norm))


def _batch_size(batch_size, mini_batch):
    name = "batch_size" if mini_batch is None else "mini_batch"
    return check_scalar(
        name, renamed("batch_size", batch_size, "mini_batch", mini_batch), low=1, integer=True
    )


def _check_hidden(hidden):
    if hidden is not None:
        check_scalar("hidden", hidden, low=1, integer=True)


def ttt_mlp(hidden=None, lr=0.1, batch_size=16, seed=0, *, mini_batch=None):
    r"""TTT-MLP: mini-batch GD on :math:`\tfrac12\|v_t - m_\theta(k_t)\|^2`, a two-layer GELU MLP.

    :math:`\theta_t = \theta_{t_0} - \sum_{s=t_0+1}^t \beta_s\nabla\ell_s(\theta_{t_0})` within a mini-batch
    (TTT's dual form). Paper row: TTT-MLP, MLP class, SGD. ``hidden`` defaults to :math:`4 d_k`; the initial
    weights are drawn from ``seed`` (:class:`~ttr_stats.regressors.MLP`); ``batch_size`` tokens a mini-batch
    (``mini_batch`` is the deprecated old name).
    """
    _check_hidden(hidden)
    check_scalar("lr", lr, low=0.0, low_inclusive=False)
    size = _batch_size(batch_size, mini_batch)
    return _layer(w.Uniform(), opt.MiniBatchGD(lr, size), regressor=MLP(hidden, "gelu", seed=seed))


def titans(lr=0.1, momentum=0.9, weight_decay=0.01, hidden=None, seed=0, *, decay=None, convention="paper"):
    r"""Titans' neural memory: :math:`S_t = \eta S_{t-1} - \beta_t\nabla\ell(\theta_{t-1}; k_t, v_t)`,
    :math:`\theta_t = (1 - \lambda)\alpha_t\theta_{t-1} + S_t`.

    Paper row: Titans (memory MLP), SGD with momentum and weight decay. The same two-layer GELU MLP as
    :func:`ttt_mlp` (``hidden`` defaults to :math:`4 d_k`, initial weights from ``seed``), so
    ``titans(momentum=0, weight_decay=0)`` is ``ttt_mlp(batch_size=1)`` (``decay`` is the deprecated old
    name of ``weight_decay``, the name :class:`~ttr_stats.optimizers.Momentum` uses);
    ``set_params(regressor__activation="silu")``
    gives Titans' SiLU. Call-time ``beta`` is the step :math:`\theta_t`, ``alpha`` a retention multiplying
    :math:`1 - \lambda` (Titans' forgetting gate is :math:`1 - (1 - \lambda)\alpha_t`); the momentum is
    constant. The effective step is about ``lr / (1 - momentum)``: keys of norm about 1 keep the defaults
    stable (Titans L2-normalises keys and queries).

    ``convention="fla"`` is flash-linear-attention's ``titans`` (fla-core 0.5.2 ``fla/ops/titans/naive.py``,
    ``chunk_titans_linear``), which differs from the paper's memory in four ways: (1) the memory is linear,
    read through a fixed-gain layer norm with a residual on the key,
    :math:`m_M(k) = k + \gamma\odot\mathrm{LN}(Mk) + b` (fla's "target :math:`v - k`", gain ``w`` and
    bias ``b`` fixed, no trainable bias; :class:`~ttr_stats.regressors.residual_ln.ResidualLayerNorm`),
    not an MLP; (2) within a chunk of 16 tokens every gradient is taken at the chunk's start
    (:class:`~ttr_stats.optimizers.titans.MiniBatchMomentum`), not at :math:`\theta_{t-1}`; (3) its step
    carries a factor 2 (fla's ``theta`` is ``beta / 2``) and its momentum ``eta`` is per token (constant
    here); (4) two lines of its code are not that objective's: its step is not the layer norm's gradient
    (operator precedence) and it reads :math:`Mq + \gamma\odot\mathrm{LN}(Mq) + b`, not :math:`m_M(q)`.
    The objective :math:`\tfrac12\|v_t - m_M(k_t)\|^2` is a coherent regression, so this option solves it
    (true gradient, :math:`y = m_M(q)`); ``set_params(regressor__fla_quirks=True)`` reproduces fla's code
    exactly (tests/test_titans_fla.py, float32 to 2e-5). ``hidden`` and ``seed`` do not apply to it.
    """
    check_scalar("lr", lr, low=0.0, low_inclusive=False)
    check_scalar("momentum", momentum, low=0.0, high=1.0, high_inclusive=False)
    name = "weight_decay" if decay is None else "decay"
    wd = check_scalar(name, renamed("weight_decay", weight_decay, "decay", decay), low=0.0, high=1.0,
                      high_inclusive=False)  # fmt: skip
    if convention == "fla":
        if hidden is not None:
            raise ValueError("hidden: titans(convention='fla') has a linear memory (no hidden width)")
        from .optimizers.titans import MiniBatchMomentum
        from .regressors.residual_ln import ResidualLayerNorm

        return _layer(w.Gated(alpha=1.0), MiniBatchMomentum(lr, momentum, wd, 16), ResidualLayerNorm())
    if convention != "paper":
        raise ValueError(f"convention must be 'paper' (Titans' MLP memory) or 'fla', got {convention!r}")
    _check_hidden(hidden)
    return _layer(
        w.Gated(alpha=1.0), opt.Momentum(lr, momentum, wd), regressor=MLP(hidden, "gelu", seed=seed)
    )


# --- 2025-26 layers beyond the delta family (issue 13) ---
# Their components live in their own modules (imported here, not re-exported by the subpackages).
def log_linear_attention(levels=16):
    r"""Log-linear attention: linear attention over the Fenwick buckets of the past, one weight per level.

    :math:`y_t = \sum_\ell \lambda_t^{(\ell)} S_t^{(\ell)} q_t` (hierarchical weights
    :math:`\gamma_i^{(t)} = \lambda_t^{(\ell(t,i))}`, identity covariance; Guo et al. 2025). Set
    ``optimizer__level_weights`` to the (..., T, L) level weights; 1 everywhere is linear attention.
    Paper row: log-linear attention (Guo et al. 2025), hierarchical weights x linear x identity covariance.
    """
    from .optimizers.log_linear import LogLinearAttention

    return _layer(w.Uniform(), LogLinearAttention(levels))


def log_linear_mamba2(levels=16):
    r"""Log-linear Mamba-2: :func:`log_linear_attention` under data-dependent decay ``alpha`` (Gated).

    :math:`\gamma_i^{(t)} = \lambda_t^{(\ell(t,i))}\prod_{j>i}\alpha_j`; all :math:`\lambda = 1` is Mamba-2.
    Paper row: log-linear Mamba-2 (Guo et al. 2025), hierarchical gated weights x linear x identity cov.
    """
    from .optimizers.log_linear import LogLinearAttention

    return _layer(w.Gated(alpha=1.0), LogLinearAttention(levels))


def log_linear_gated_deltanet(levels=16, beta=1.0):
    r"""Log-linear Gated DeltaNet: Fenwick buckets of delta memories, each carried by the delta transition.

    :math:`y_t = \sum_\ell \lambda_t^{(\ell)} S_t^{(\ell)} q_t`, each bucket updated by
    :math:`S \leftarrow \alpha_t S(I - \beta_t k_t k_t^\top)`; λ = 1: :func:`gated_deltanet`.
    Paper row: log-linear Gated DeltaNet (Guo et al. 2025), hierarchical gated weights x delta-rule writes.
    """
    from .optimizers.log_linear_delta import LogLinearDelta

    return _layer(w.Gated(alpha=1.0), LogLinearDelta(levels, beta=beta))


def parallax(probe=None, scale=None):
    r"""Parallax: softmax attention minus :math:`\mathrm{Cov}_p(v, k)\,r_t`, a probe-corrected NW.

    With :math:`r = \Sigma^{-1}(\bar k - q)` (``probe="local_linear"``) it is local linear attention; a
    (d_k, d_k) ``probe`` W gives :math:`r_t = W q_t`; ``None`` is softmax attention. Any scalar weights
    run it (``Gated`` gates, windows, ``SinkWindow`` with its sinks kept: ``TestTimeRegression(weights,
    Parallax(...), ClosedForm())``); the means and the covariance are then taken under those weights.
    Paper row: Parallax (arXiv 2605.29157), softmax weights x local linear (given slope) x closed form.
    """
    from .regressors.parallax import Parallax

    return _layer(w.Uniform(), opt.ClosedForm(), regressor=Parallax(probe, ExpDot(scale)))


def huber_attention(delta=1.0, ridge=1e-6):
    r"""Miras's Huber attentional loss: :math:`\min_M \sum_i \gamma_i \rho_\delta(v_i - M k_i)` by IRLS.

    Per value coordinate, Huber :math:`\rho_\delta`, ridge :math:`\lambda`; exact on every prefix
    (``RobustIRLS(loss="lp", p=...)`` for the :math:`\ell_p` loss).
    Paper row: Miras (Behrouz et al. 2025), gated weights x linear x IRLS on a Huber loss.
    """
    from .optimizers.robust import RobustIRLS

    return _layer(w.Gated(alpha=1.0), RobustIRLS("huber", delta, ridge=ridge))


def omega_rule(window=16, ridge=1e-3, scale=None):
    r"""Atlas's Omega rule, solved exactly: least squares over the last ``window`` tokens, polynomial maps.

    :math:`\min_M \sum_{t-c<i\le t}\|v_i - M\phi(k_i)\|^2 + \lambda\|M\|^2`, :math:`\phi` the degree-2
    (Taylor) features; Atlas takes gradient / Muon steps on this loss, this is its minimiser.
    Paper row: Atlas (Behrouz et al. 2025), window weights x polynomial features x exact least squares.
    """
    check_scalar("window", window, low=1, integer=True)
    fm = FeatureMap("taylor", scale=scale)
    return _layer(w.SlidingWindow(window), opt.ClosedForm(ridge=ridge), regressor=fm)


def higher_order_linear_attention():
    r"""Second-order linear attention :math:`y_t = S_t R_t q_t`: the key second moment where RLS inverts it.

    :math:`S_t = \sum_i \gamma_i v_i k_i^\top`, :math:`R_t = \sum_i \gamma_i k_i k_i^\top` (HLA, key-key
    form).
    Paper row: HLA (Zhang, Qin & Gu 2025), gated weights x linear x second-moment readout.
    """
    from .optimizers.higher_order import HigherOrderLinearAttention

    return _layer(w.Gated(alpha=1.0), HigherOrderLinearAttention())


def kalman_filter(process_noise=1e-2, ridge=1e-2):
    r"""A Kalman filter on the memory with random-walk noise q: RLS with a moving state.

    :math:`P \leftarrow P/\alpha_t + qI`, then RLS's gain and update; ``process_noise=0`` is :func:`rls`.
    Paper row: RLS as a Kalman filter (Haykin 2002, ch. 10), gated weights x linear x Kalman filter.
    """
    from .optimizers.kalman import KalmanFilter

    return _layer(w.Gated(alpha=1.0), KalmanFilter(process_noise, ridge))


def gated_sliding_window_attention(window=64, scale=None):
    r"""Sliding-window forgetting attention: softmax over the last ``window`` pairs under decay ``alpha``.

    Weights :math:`s(k_i, q)\prod_{j>i}\alpha_j\mathbb{1}[t-i<w]` (:class:`~ttr_stats.weights.GatedWindow`),
    local constant, exact: fla's ``forgetting_attn(window_size=w)``.
    Paper row: forgetting attention in a window (Lin et al. 2025), gated window x local constant x exact.
    """
    check_scalar("window", window, low=1, integer=True)
    return _layer(w.GatedWindow(window), opt.ClosedForm(), regressor=LocalPolynomial(0, ExpDot(scale)))


def sink_window_attention(window=64, sinks=4, scale=None):
    r"""Sliding-window softmax attention with attention sinks: the first ``sinks`` pairs never leave.

    Weights :math:`\gamma_i^{(t)} = \beta_i\prod_{j>i}\alpha_j\,\mathbb{1}[t-i<w \text{ or } i<s]`
    (:class:`~ttr_stats.weights.SinkWindow`), local constant, exact: at step t
    :math:`\hat m(q_t) = \arg\min_m \sum_{i\le t}\gamma_i^{(t)} s(k_i, q_t)\|v_i - m\|^2`, the weighted
    mean of the s first and the w most recent values. Without gates it is StreamingLLM's mask; call-time
    ``alpha`` gives the gated variant (sliding-window forgetting attention with sinks). gpt-oss's learned
    sink logit :math:`b` (a term :math:`e^b` in the softmax denominator only) is one sink pair of value 0
    whose logit is :math:`b` for every query: append a feature 1 to the queries and 0 to the keys,
    prepend the key :math:`(0, \ldots, 0, b/\tau)` with value 0, and use ``sinks=1`` (tests/test_sinks.py).
    Paper row: StreamingLLM (Xiao et al. 2023, arXiv 2309.17453), sink window x local constant x exact.
    """
    check_scalar("window", window, low=1, integer=True)
    check_scalar("sinks", sinks, low=0, integer=True)
    return _layer(w.SinkWindow(window, sinks), opt.ClosedForm(), regressor=LocalPolynomial(0, ExpDot(scale)))


_RECIPES_2025_OTHER = (
    log_linear_attention,
    log_linear_mamba2,
    log_linear_gated_deltanet,
    parallax,
    higher_order_linear_attention,
    kalman_filter,
    gated_sliding_window_attention,
    sink_window_attention,
)


def path_attention(scale=None):
    r"""PaTH attention: softmax over keys transported by :math:`P_{ti} = H_t\cdots H_{i+1}`,
    :math:`H_s = I - \beta_s w_sw_s^\top`.

    :math:`y_t = \sum_{i\le t} p_{ti}v_i`, :math:`p_{ti}\propto\Gamma_{ti}\exp(\tau q_t^\top P_{ti}k_i)`;
    ``inputs={"w": W, "w_beta": b}`` at call time (W (..., T, d_k), b (..., T)), forgetting gates
    ``alpha`` as in forgetting attention (fla's ``g`` is ``log_alpha / scale``).
    Paper row: PaTH (Yang et al. 2025), gated softmax weights x local constant on transported keys x exact.
    """
    from .regressors.path import PaTH

    return _layer(w.Gated(alpha=1.0), opt.ClosedForm(), regressor=PaTH(ExpDot(scale)))


def deltaformer(scale=None):
    r"""DeltaFormer: :math:`u_t = v_t - \beta_t m_{t-1}(q_t)`, :math:`y_t = m_t(q_t)`, with
    :math:`m_t(x) = \sum_{j\le t} \mathrm{softmax}_j(\tau x^\top k_j)\,u_j`.

    A delta rule whose memory is a softmax smoother: the value written is corrected by the residual of a
    softmax-attention read (call-time ``beta`` is the step; ``alpha`` gates decay the smoother's weights).
    Paper row: DeltaFormer (Zhong et al. 2025), softmax weights x kernel smoother of corrected values x
    one delta step per token.
    """
    from .regressors.deltaformer import DeltaFormer

    return _layer(w.Gated(alpha=1.0), opt.ClosedForm(), regressor=DeltaFormer(ExpDot(scale)))


# --- 2025-26 delta-family layers (issue 13) ---
# Components: ttr_stats/optimizers/generalized_delta.py (family "generalized_delta", recurrent reference).
def kda(beta=1.0):
    r"""KDA (Kimi Delta Attention): :math:`M_t = M_{t-1}D_t + \beta_t(v_t - M_{t-1}D_tk_t)k_t^\top`,
    :math:`D_t = \mathrm{Diag}(\alpha_t)`.

    Paper row: the gated delta rule (one SGD step per token) under a per-key-channel decay; ``alpha`` of
    shape (..., T, d_k) at call time (scalar gates: :func:`gated_deltanet`).
    """
    from .optimizers.generalized_delta import PerChannelDelta

    return _layer(w.Gated(alpha=1.0, per_dimension=True), PerChannelDelta(beta))


def gdn2():
    r"""GDN-2: :math:`M_t = M'+(w_t\odot v_t - M'(b_t\odot k_t))k_t^\top`, :math:`M' = M_{t-1}D_t`.

    Paper row: a preconditioned delta step regressing the write-gated value on the erase-gated key; K rows
    ``(k_t, b_t)``, V rows ``(v_t, w_t)`` interleaved (``optimizers.generalized_delta.interleave``).
    """
    from .optimizers.generalized_delta import DecoupledDelta

    return _layer(w.Gated(alpha=1.0, per_dimension=True), DecoupledDelta())


def rwkv7():
    r"""RWKV-7 / DPLR: :math:`M_t = M_{t-1}(D_t + a_tb_t^\top) + v_tk_t^\top`.

    Paper row: with :math:`a = -\hat\kappa`, :math:`b = \eta\odot\hat\kappa`, a preconditioned SGD step
    (Diag(eta)) with decoupled decay; K rows ``(k_t, a_t, b_t)`` interleaved; ``Uniform()`` weights: IPLR.
    """
    from .optimizers.generalized_delta import LowRankTransition

    return _layer(w.Gated(alpha=1.0, per_dimension=True), LowRankTransition())


def preconditioned_deltanet(beta=1.0, preconditioner="squash"):
    r"""Preconditioned gated delta rule: :math:`M_t = M' + \beta_t(v_t - M'k_t)(p_t\odot k_t)^\top`.

    Paper row: delta rule with a diagonal curvature estimate :math:`p_t = \pi(\mathrm{diag}\,R_t)`
    (Jacobi; between LMS's :math:`I` and RLS's :math:`R_t^{-1}`), scalar decay :math:`M' = \alpha_tM_{t-1}`.
    """
    from .optimizers.generalized_delta import PreconditionedDelta

    return _layer(w.Gated(alpha=1.0), PreconditionedDelta(beta, preconditioner=preconditioner))


def gated_oja(beta=0.1):
    r"""Gated Oja rule: :math:`W_t = \alpha_tW_{t-1} + \beta_t(k_t - \alpha_tW_{t-1}v_t)v_t^\top`,
    :math:`y_t = W_t^\top q_t`.

    Paper row: reverse regression (keys on values, SGD), read through the adjoint; :math:`M = W^\top`.
    """
    from .optimizers.generalized_delta import OjaRule

    return _layer(w.Gated(alpha=1.0), OjaRule(beta))


_RECIPES_2025_DELTA = (kda, gdn2, rwkv7, preconditioned_deltanet, gated_oja)


_RECIPES = (
    linear_attention,
    retnet,
    mamba2,
    gla,
    least_squares,
    rls,
    mesa,
    batch_gd,
    deltanet,
    gated_deltanet,
    leaky_lms,
    longhorn,
    nlms,
    delta_product,
    softmax_attention,
    qknorm_attention,
    sliding_window_attention,
    local_linear_attention,
    local_polynomial_attention,
    kernel_regression,
    performer,
    based,
    ttt_linear,
    ttt_mlp,
    titans,
    *_RECIPES_2025_OTHER,
    *_RECIPES_2025_DELTA,
)


class RecipeInfo(NamedTuple):
    """One row of the catalogue."""

    name: str
    factory: object
    weights: object
    regressor: object
    optimizer: object
    methods: tuple
    summary: str
    #: what the recipe cannot do that the generic suites ask of every registry() layer ("" for those)
    note: str = ""


# Recipes in the catalogue (README, fig01_taxonomy) but outside registry(): the generic suites
# (tests/test_registry.py, test_causality.py, test_arrays.py, ...) call every registry() layer as
# layer(Q, K, V) on random data, chain states and run every dtype; these cannot meet that contract, for the
# reason in the note. Each is tested in its own file against an independent reference.
_CATALOGUE_ONLY = {
    huber_attention: (
        "no generic suites: IRLS re-solves the whole weighted past each step (the state is the growing "
        "cache), may stop at max_iter with an ArithmeticError on their random data, and has no float16 "
        "(tests/test_layers_2025_other.py)"
    ),
    path_attention: (
        "needs per-token inputs (inputs={'w': W, 'w_beta': b}), which the generic call layer(Q, K, V) does "
        "not pass; continues from its state (the cache of transported keys) (tests/test_path_attn.py)"
    ),
    deltaformer: (
        "the write needs each token's query, so no non-causal call and no memorize(); a causal call "
        "continues from its state (the cache of corrected values) (tests/test_deltaformer.py)"
    ),
    omega_rule: (
        "cannot continue from a state: the state keeps the window's sums, not its pairs, so a carried "
        "state is a prior the window never removes (memorize + a continued call is not one call once the "
        "window has filled) (tests/test_layers_2025_other.py)"
    ),
}


def _info(f, note=""):
    layer = f()
    summary = " ".join((f.__doc__ or "").strip().split("\n\n")[0].split())
    return RecipeInfo(
        f.__name__, f, layer.weights, layer.regressor, layer.optimizer, layer.supported_methods, summary, note
    )


def registry():
    """The recipes that meet every generic contract, built by calling each with its defaults.

    Returns
    -------
    list of RecipeInfo
        ``(name, factory, weights, regressor, optimizer, methods, summary, note)`` per recipe (``note`` is
        empty here); :func:`catalogue` adds the recipes with a limitation.
    """
    return [_info(f) for f in _RECIPES]


def catalogue():
    """Every recipe: :func:`registry` followed by the recipes that cannot meet a generic contract (a
    state to continue from, the generic call ``layer(Q, K, V)``, ...), each with its ``note``.

    Returns
    -------
    list of RecipeInfo
    """
    return registry() + [_info(f, note) for f, note in _CATALOGUE_ONLY.items()]


def registry_markdown() -> str:
    """The catalogue as a Markdown table (what the README shows)."""
    from sklearn import config_context

    lines = [
        "| recipe | weights | regressor | optimizer | methods | note |",
        "|---|---|---|---|---|---|",
    ]
    with config_context(print_changed_only=False):  # show every default hyperparameter
        for r in catalogue():
            one_line = lambda obj: " ".join(repr(obj).split())  # noqa: E731 - sklearn wraps long reprs
            lines.append(
                f"| `{r.name}()` | `{one_line(r.weights)}` | `{one_line(r.regressor)}` | "
                f"`{one_line(r.optimizer)}` | {', '.join(r.methods)} | {r.note} |"
            )
    return "\n".join(lines)


BEGIN, END = "<!-- recipes:begin (generated by `make readme`) -->", "<!-- recipes:end -->"


def render_readme(text: str) -> str:
    """Return ``text`` with the block between the recipe markers replaced by :func:`registry_markdown`."""
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise ValueError("README has no recipe catalogue markers")
    _, sep2, tail = rest.partition(END)
    if not sep2:
        raise ValueError("README has no closing recipe catalogue marker")
    return f"{head}{BEGIN}\n{registry_markdown()}\n{END}{tail}"


def _main(argv):
    if len(argv) >= 2 and argv[0] == "--update-readme":
        path = argv[1]
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(render_readme(text))
        return 0
    print(registry_markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
