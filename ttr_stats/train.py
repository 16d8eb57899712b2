r"""Training a one-layer test-time-regression model on Zoology's MQAR (paper Fig. 3), with PyTorch.

The model is the paper's: token embedding (d_model), pre-norm, projections
:math:`q_t = W_Q h_t`, :math:`k_t = c_0 \odot W_K h_t + c_1 \odot W_K h_{t-1}` (a length-2 depthwise short
convolution on the keys: the key of the value token carries the previous, key, token), :math:`v_t = W_V h_t`,
one :class:`~ttr_stats.TestTimeRegression` layer run on the torch tensors by the library's own code
(``method="chunked"`` by default, autograd through it), an output projection with a residual, a final
norm and the tied embedding as the read-out. No MLP, one head, d_k = d_v = d_model.

Training follows Zoology (Arora et al. 2023, ``zoology/train.py``): AdamW (weight decay 0.1 on the
matrices), cross-entropy on the query positions only (the other labels are ignored), a cosine
learning-rate schedule to 0, accuracy = argmax over the whole vocabulary at the query positions, the
read-out tied to the embedding, no positional embedding. Differences, chosen for a fixed wall-clock
budget: fresh sequences every step (Zoology reuses a fixed training set for many epochs; no dropout is then
needed), a linear warm-up, a schedule that runs on ``max(step / steps, elapsed / seconds)`` so that it
ends when either budget does, gradient clipping at norm 1 (per replica), and several seeds and learning
rates trained at once as independent replicas of one model (:class:`ReplicaAdamW`). Choices the paper does
not state: q and k are L2-normalised after the convolution (``qk_norm``; linear attention's sums and the
RLS ridge then act on a fixed scale) and RLS has ridge 1 (``P_0 = I``) on those unit keys.

PyTorch is optional (``pip install 'ttr_stats[train]'``); this module imports it only when a function
needs it, so importing :mod:`ttr_stats.train` never fails.

References
----------
Wang, Shi & Fox (2025), *Test-time regression*, arXiv 2501.12352, §6-7 (Fig. 3); Arora, Eyuboglu et al.
(2023), *Zoology*, arXiv 2312.04927.
"""

from __future__ import annotations

import dataclasses
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .datasets import IGNORE, mqar_tokens

__all__ = ["MQARTrainConfig", "TrainResult", "require_torch", "build_model", "train_mqar", "evaluate"]

#: the layers of the figure: name -> recipe factory (unweighted RLS = uniform weights, exact RLS)
RECIPES = ("linear_attention", "rls")


def require_torch():
    """Import and return :mod:`torch`, or raise ``ImportError`` saying how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise ImportError(
            "training needs PyTorch: pip install 'ttr_stats[train]' (or pip install torch)"
        ) from exc
    return torch


@dataclass(frozen=True)
class MQARTrainConfig:
    """One training run (a cell of the Fig. 3 grid).

    Attributes
    ----------
    recipe : {"linear_attention", "rls"}
        The layer: :func:`ttr_stats.recipes.linear_attention` or :func:`ttr_stats.recipes.rls`
        (uniform weights: unweighted RLS) with ``ridge``.
    n_pairs, seq_len, vocab : int
        MQAR pairs P, length T and vocabulary (:func:`ttr_stats.datasets.mqar_tokens`).
    d_model : int
        Embedding width = d_k = d_v.
    batch_size : int
    steps : int
        Most optimizer steps.
    seconds : float or None
        Wall-clock budget of the training loop (None: ``steps`` only). The schedule follows whichever
        budget is used up first.
    lr, warmup, weight_decay : float
        AdamW peak learning rate, warm-up fraction of the schedule, decoupled weight decay (Zoology: 0.1).
        The accuracy stays at chance until the layer finds the pairs, and a larger rate finds them sooner
        (measured on a CPU, linear attention at P = 32, T = 128, batch 64: training loss 7.5 at step 80
        and 2.9 at 160 at lr 3e-3; 1.6 at step 80 at 1e-2; 2.4 at step 40 at 3e-2), hence 1e-2.
    qk_norm : bool
        L2-normalise q and k after the short convolution (as DeltaNet and MesaNet do): keeps linear
        attention's sums and RLS's ridge on a fixed scale.
    ridge : float
        RLS prior precision (``P_0 = I / ridge``); unused by linear attention.
    method : str
        The layer's computation method (``"chunked"``: linear memory in T; autograd through it).
    eval_sequences : int
        Held-out sequences for the final accuracy (their own seed stream).
    power_a, random_non_queries
        Passed to :func:`~ttr_stats.datasets.mqar_tokens`.
    seeds : tuple of int
        One model replica per seed, trained together (:func:`build_model`); seed s draws replica s's
        parameters and its training and evaluation sequences.
    lrs : tuple of float, optional
        Several peak learning rates in one run (Zoology sweeps the rate and keeps the best): one replica
        per (lr, seed), see :attr:`replicas`; None: ``(lr,)``.
    max_tokens : int, optional
        Most tokens (replicas x sequences x T) in one forward/backward pass: a larger step is split into
        micro-batches whose gradients add up to the step's (memory bound; None: no split).
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
    threads : int or None
        ``torch.set_num_threads`` for this run (None: leave it).
    """

    recipe: str = "linear_attention"
    n_pairs: int = 64
    seq_len: int = 512
    vocab: int = 8192
    d_model: int = 64
    batch_size: int = 32
    steps: int = 2000
    seconds: float | None = None
    lr: float = 1e-2
    warmup: float = 0.05
    weight_decay: float = 0.1
    qk_norm: bool = True
    ridge: float = 1.0
    method: str = "chunked"
    eval_sequences: int = 256
    power_a: float = 0.01
    random_non_queries: bool = True
    seeds: tuple = (0,)
    lrs: tuple | None = None
    max_tokens: int | None = None
    device: str = "cpu"
    threads: int | None = None

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        for name in ("n_pairs", "seq_len", "vocab", "d_model", "batch_size", "steps", "eval_sequences"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        seeds = tuple(self.seeds) if isinstance(self.seeds, (tuple, list)) else (self.seeds,)
        if not seeds or any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) for x in seeds):
            raise ValueError(f"seeds must be a non-empty tuple of integers, got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(int(x) for x in seeds))
        if self.lrs is not None:
            lrs = tuple(float(x) for x in self.lrs)
            if not lrs or not all(x > 0 for x in lrs):
                raise ValueError(f"lrs must be a non-empty tuple of positive rates, got {self.lrs!r}")
            object.__setattr__(self, "lrs", lrs)
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be > 0 or None, got {self.seconds!r}")
        if not (self.lr > 0 and 0 <= self.warmup < 1 and self.weight_decay >= 0 and self.ridge > 0):
            raise ValueError(
                "need lr > 0, 0 <= warmup < 1, weight_decay >= 0 and ridge > 0, got "
                f"lr={self.lr}, warmup={self.warmup}, weight_decay={self.weight_decay}, ridge={self.ridge}"
            )
        # the data conditions, checked here so that a bad cell fails before any training
        mqar_tokens(self.n_pairs, self.seq_len, vocab=self.vocab, n_batch=1, seed=0)

    @property
    def replicas(self):
        """The (lr, seed) of each model replica, lr-major."""
        return [(lr, s) for lr in (self.lrs or (self.lr,)) for s in self.seeds]


@dataclass
class TrainResult:
    """What :func:`train_mqar` returns for one replica (seed): :meth:`row` gives a CSV row."""

    seed: int
    lr: float  # the replica's peak learning rate
    accuracy: float  # held-out accuracy at the end
    loss: float  # held-out cross-entropy at the end
    first_loss: float  # training loss of the first step
    last_train_loss: float  # mean training loss over the last 10% of steps
    steps: int
    train_seconds: float  # the whole group's (every replica trains in the same steps)
    seconds_per_step: float
    history: list = dataclasses.field(default_factory=list)  # (step, elapsed s, train loss)

    def row(self):
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "history"}


def make_layer(cfg):
    """The test-time-regression layer of ``cfg`` (from :mod:`ttr_stats.recipes`)."""
    from . import recipes

    if cfg.recipe == "linear_attention":
        return recipes.linear_attention()
    return recipes.rls(ridge=cfg.ridge)


def _uniform(gen, shape, bound):
    torch = require_torch()
    return (torch.rand(shape, generator=gen) * 2 - 1) * bound


@lru_cache(maxsize=1)
def _model_class():
    torch = require_torch()
    nn = torch.nn
    F = torch.nn.functional

    class MQARModel(nn.Module):
        """S independent replicas (one per seed) of: embedding -> pre-norm -> q, short-conv k, v ->
        test-time regression -> W_O, residual -> norm -> tied read-out (see :mod:`ttr_stats.train`).

        Every parameter has a leading replica axis and every replica its own data, so one step trains S
        models at once; the layer sees the replicas as one more batch axis (bigger arrays, the same
        number of operations: the small models of the figure are launch-bound on a GPU). Replica s is
        initialised from its own seed, so it is the model a run with that seed alone trains.
        """

        def __init__(self, layer, vocab, d_model, seeds=(0,), qk_norm=True, method="chunked"):
            super().__init__()
            self.layer, self.method, self.qk_norm = layer, method, qk_norm
            S, d = len(seeds), d_model
            shapes = {
                "embed": (vocab, d),
                "wq": (d, d),
                "wk": (d, d),
                "wv": (d, d),
                "wo": (d, d),
                "conv": (2, d),
            }
            init = {name: [] for name in shapes}
            for seed in seeds:
                gen = torch.Generator().manual_seed(int(seed))
                init["embed"].append(torch.randn(shapes["embed"], generator=gen) * 0.02)  # GPT-2 / Zoology
                for name in ("wq", "wk", "wv", "wo"):  # torch.nn.Linear's default bound 1/sqrt(fan_in)
                    init[name].append(_uniform(gen, shapes[name], 1 / math.sqrt(d)))
                # depthwise causal short convolution of 2 taps: k_t = c0 k'_t + c1 k'_{t-1} (Conv1d's bound)
                init["conv"].append(_uniform(gen, shapes["conv"], 1 / math.sqrt(2)))
            for name, arrays in init.items():
                setattr(self, name, nn.Parameter(torch.stack(arrays)))
            for name in ("norm_in", "norm_out"):
                setattr(self, name + "_w", nn.Parameter(torch.ones(S, 1, 1, d)))
                setattr(self, name + "_b", nn.Parameter(torch.zeros(S, 1, 1, d)))

        @property
        def n_replicas(self):
            return self.embed.shape[0]

        def _norm(self, x, name):
            d = x.shape[-1]
            return F.layer_norm(x, (d,)) * getattr(self, name + "_w") + getattr(self, name + "_b")

        def hidden(self, tokens):
            """(S, B, T) token ids -> (S, B, T, d_model) final hidden states."""
            S = self.n_replicas
            rep = torch.arange(S, device=tokens.device)[:, None, None]
            x = self.embed[rep, tokens]
            h = self._norm(x, "norm_in")
            lin = lambda W, z: torch.matmul(z, W.transpose(-1, -2)[:, None])  # noqa: E731  per replica
            q, k, v = lin(self.wq, h), lin(self.wk, h), lin(self.wv, h)
            k_prev = F.pad(k, (0, 0, 1, 0))[..., :-1, :]  # k'_{t-1}, 0 before the first token: causal
            c = self.conv[:, :, None, None, :]
            k = c[:, 0] * k + c[:, 1] * k_prev
            if self.qk_norm:
                q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            y = self.layer(q, k, v, method=self.method)
            return self._norm(x + lin(self.wo, y), "norm_out")

        def forward(self, tokens, labels=None, positions=None):
            """Logits (S, B, T, vocab), or with ``labels`` only at the scored positions: (S, N, vocab) and
            the (S, N) labels (every replica's batch has the same number N of scored positions; the
            read-out of the ignored positions would be wasted work). ``positions`` (S, B, n), optional:
            the scored positions of each sequence in ascending order (:func:`scored_positions`), read by
            a gather; without them a boolean mask selects the same rows in the same order (a host
            synchronisation on a GPU: the mask's count)."""
            H = self.hidden(tokens)
            E = self.embed.transpose(-1, -2)
            if labels is None:
                return torch.matmul(H, E[:, None])
            S = self.n_replicas
            if positions is not None:
                d = H.shape[-1]
                Hs = torch.gather(H, 2, positions[..., None].expand(*positions.shape, d))
                ys = torch.gather(labels, 2, positions).reshape(S, -1)
                return torch.matmul(Hs.reshape(S, -1, d), E), ys
            mask = labels != IGNORE
            Hs = H[mask].reshape(S, -1, H.shape[-1])
            return torch.matmul(Hs, E), labels[mask].reshape(S, -1)

    return MQARModel


def build_model(cfg, seeds=None):
    """The model of ``cfg`` on ``cfg.device``: one replica per seed of ``seeds`` (default: the seeds of
    ``cfg.replicas``)."""
    seeds = [s for _, s in cfg.replicas] if seeds is None else tuple(seeds)
    model = _model_class()(make_layer(cfg), cfg.vocab, cfg.d_model, seeds, cfg.qk_norm, cfg.method)
    return model.to(cfg.device)


def _batch(cfg, rngs, n):
    """(S, n, T) inputs and labels on ``cfg.device``, replica s drawn from ``rngs[s]``."""
    torch = require_torch()
    return tuple(torch.from_numpy(a).to(cfg.device) for a in _batch_host(cfg, rngs, n))


def _batch_host(cfg, rngs, n, pool=None):
    """(S, n, T) NumPy inputs and labels, replica s drawn from ``rngs[s]`` (on the threads of ``pool``
    when given: each generator is used by one draw at a time, so the draws are those of a serial loop)."""

    def one(rng):
        return mqar_tokens(
            cfg.n_pairs,
            cfg.seq_len,
            vocab=cfg.vocab,
            n_batch=n,
            power_a=cfg.power_a,
            random_non_queries=cfg.random_non_queries,
            seed=rng,
        )

    ds = list(pool.map(one, rngs)) if pool is not None else [one(rng) for rng in rngs]
    return np.stack([d.inputs for d in ds]), np.stack([d.labels for d in ds])


def scored_positions(labels):
    """The positions of the scored labels of every sequence, for the model's gather.

    Parameters
    ----------
    labels : ndarray of shape (S, B, T)
        MQAR labels, ``IGNORE`` where a position is not scored.

    Returns
    -------
    ndarray of shape (S, B, n) or None
        The positions with ``labels != IGNORE`` of each sequence, ascending (the rows a boolean mask picks,
        in its order); None when the sequences do not all score the same number n (the mask path then).
    """
    mask = labels != IGNORE
    counts = mask.sum(axis=-1)
    if not counts.size or not np.all(counts == counts.flat[0]):
        return None
    return np.nonzero(mask)[-1].reshape(labels.shape[:-1] + (int(counts.flat[0]),))


def _rngs(seeds, stream):
    return [np.random.default_rng(np.random.SeedSequence([int(s), stream])) for s in seeds]


def per_replica_ce(logits, labels):
    """Mean cross-entropy of each replica: (S, N, vocab), (S, N) -> (S,)."""
    torch = require_torch()
    S, N, V = logits.shape
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(S * N, V).float(), labels.reshape(-1), reduction="none"
    )
    return ce.reshape(S, N).mean(dim=1)


def evaluate(model, cfg, n_sequences=None, seeds=None, batch_size=None):
    """Held-out accuracy and loss of every replica on fresh MQAR sequences of ``cfg``.

    Replica s is scored on sequences of its own stream ``SeedSequence([seed_s, 1])`` (training draws
    from ``[seed_s, 0]``); accuracy is argmax over the whole vocabulary at the query positions (Zoology's).

    Returns
    -------
    accuracy, loss : ndarray of shape (S,)
    """
    torch = require_torch()
    seeds = [s for _, s in cfg.replicas] if seeds is None else tuple(seeds)
    n = cfg.eval_sequences if n_sequences is None else int(n_sequences)
    rngs = _rngs(seeds, 1)
    bs = batch_size or cfg.batch_size
    hits = np.zeros(len(seeds))
    loss_sum = np.zeros(len(seeds))
    total = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, n, bs):
            tokens, labels = _batch(cfg, rngs, min(bs, n - start))
            logits, y = model(tokens, labels)
            hits += (logits.argmax(-1) == y).sum(dim=1).cpu().numpy()
            loss_sum += per_replica_ce(logits, y).cpu().numpy() * y.shape[1]
            total += y.shape[1]
    model.train(was_training)
    return hits / total, loss_sum / total


def lr_factor(progress, warmup):
    """Linear warm-up to 1 over ``warmup`` of the run, then cosine to 0 at ``progress = 1``."""
    if progress < warmup:
        return progress / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (progress - warmup) / (1.0 - warmup))))


def _clip_per_replica(params, max_norm):
    """Clip each replica's gradient to global norm ``max_norm`` (replica = leading axis of every
    parameter): what ``clip_grad_norm_`` does to a model trained alone."""
    torch = require_torch()
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    squares = torch._foreach_mul(grads, grads)  # one launch for every gradient, then a sum per replica
    sq = torch.stack([x.reshape(x.shape[0], -1).sum(dim=1) for x in squares]).sum(dim=0)
    scale = torch.clamp(max_norm / (sq.sqrt() + 1e-6), max=1.0)
    torch._foreach_mul_(grads, [scale.reshape((-1,) + (1,) * (g.ndim - 1)) for g in grads])


class ReplicaAdamW:
    """AdamW (decoupled weight decay, torch's defaults: betas (0.9, 0.999), eps 1e-8) with one learning
    rate per replica: ``lr`` of shape (S,) scales the update of slice s of every parameter.

    torch.optim.AdamW takes one rate per parameter group, and a replica is a slice of every parameter;
    the update is elementwise, so each slice gets exactly the update AdamW would give a model alone
    (tests/test_fig03_mqar.py checks it against torch.optim.AdamW).
    """

    def __init__(self, groups, betas=(0.9, 0.999), eps=1e-8):
        torch = require_torch()
        self.groups = [(list(ps), float(wd)) for ps, wd in groups]
        self.b1, self.b2, self.eps, self.t = betas[0], betas[1], eps, 0
        self.state = {id(p): (torch.zeros_like(p), torch.zeros_like(p)) for ps, _ in self.groups for p in ps}

    def zero_grad(self):
        for ps, _ in self.groups:
            for p in ps:
                p.grad = None

    def step(self, lr):
        """One step with rates ``lr`` (tensor of shape (S,) on the parameters' device).

        Each group is updated by ``torch._foreach_*`` operations (a handful of launches for all its
        parameters, where a loop over them took ~10 a parameter: the models of Fig. 3 are launch-bound),
        AdamW's update in the same elementwise operations.
        """
        torch = require_torch()
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        with torch.no_grad():
            for ps, wd in self.groups:
                ps = [p for p in ps if p.grad is not None]
                if not ps:
                    continue
                grads = [p.grad for p in ps]
                ms = [self.state[id(p)][0] for p in ps]
                vs = [self.state[id(p)][1] for p in ps]
                # one conversion a dtype; the per-parameter shapes below are views of it
                lr_of = {dt: lr.to(dt) for dt in {p.dtype for p in ps}}
                shape = lambda x, p: x.reshape((-1,) + (1,) * (p.ndim - 1))  # noqa: E731
                rs = [shape(lr_of[p.dtype], p) for p in ps]
                if wd:
                    keep = {dt: 1 - r * wd for dt, r in lr_of.items()}
                    torch._foreach_mul_(ps, [shape(keep[p.dtype], p) for p in ps])
                torch._foreach_mul_(ms, self.b1)
                torch._foreach_add_(ms, grads, alpha=1 - self.b1)
                torch._foreach_mul_(vs, self.b2)
                torch._foreach_addcmul_(vs, grads, grads, value=1 - self.b2)
                den = torch._foreach_div(vs, c2)
                torch._foreach_sqrt_(den)
                torch._foreach_add_(den, self.eps)
                upd = torch._foreach_div(ms, c1)
                torch._foreach_div_(upd, den)
                torch._foreach_mul_(upd, rs)
                torch._foreach_sub_(ps, upd)


#: training steps whose losses are read back to the host together (one synchronisation, not one a step,
#: so the host queues the next steps while the device runs); a non-finite loss is still reported at the
#: exact step it appeared
LOSS_READ_EVERY = 16


def _take_losses(pending, losses, cfg):
    """Move the device losses of ``pending`` to ``losses`` (host arrays, one per step, in order), refusing
    a non-finite one with the step it appeared at."""
    if not pending:
        return
    torch = require_torch()
    L = torch.stack(pending).cpu().numpy()
    pending.clear()
    bad = ~np.all(np.isfinite(L), axis=1)
    if bad.any():
        i = int(np.argmax(bad))
        raise FloatingPointError(
            f"training loss is {L[i].tolist()} at step {len(losses) + i + 1} ({cfg.recipe}, "
            f"P={cfg.n_pairs}, T={cfg.seq_len}); lower lr or, for rls, raise ridge"
        )
    losses.extend(L)


def train_mqar(cfg, deadline=None, log=None):
    """Train the model of ``cfg`` (one replica per seed) and return ``(model, [TrainResult, ...])``.

    Parameters
    ----------
    cfg : MQARTrainConfig
    deadline : float, optional
        ``time.time()`` by which training must stop whatever ``cfg`` says (the grid's hard limit).
    log : callable, optional
        Called as ``log(step, elapsed_s, losses)`` (losses: one per replica) about 20 times in a run.

    Returns
    -------
    model, list of TrainResult
        One result per replica, in the order of ``cfg.replicas``.

    Notes
    -----
    The loss is the sum of the replicas' mean cross-entropies, so each replica's gradient is its own;
    AdamW is elementwise and the gradient clipping (global norm 1 per replica) is per replica, so the
    replicas train independently, as separate runs would. The progress of the schedule is
    ``max(step / steps, elapsed / seconds)`` (seconds of the training loop, the first step included);
    training stops when it reaches 1 or at ``deadline``, so on a busy card a run takes fewer steps, not
    more time.
    """
    torch = require_torch()
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    model = build_model(cfg)
    decay_names = {"embed", "wq", "wk", "wv", "wo"}  # matrices; norms and the short convolution: none
    params = list(model.parameters())
    decay = [p for n, p in model.named_parameters() if n in decay_names]
    no_decay = [p for n, p in model.named_parameters() if n not in decay_names]
    opt = ReplicaAdamW([(decay, cfg.weight_decay), (no_decay, 0.0)])
    peak = torch.tensor([lr for lr, _ in cfg.replicas], dtype=torch.float64, device=cfg.device)
    rngs = _rngs([s for _, s in cfg.replicas], 0)
    seconds = math.inf if cfg.seconds is None else float(cfg.seconds)
    if deadline is not None:
        seconds = min(seconds, deadline - time.time())
    history, losses, pending = [], [], []  # pending: the device's losses not yet read back
    log_every = max(1, cfg.steps // 20)
    # the next batch is drawn on a host thread while the device runs this step (NumPy releases the GIL
    # in its sorts and random fills), the replicas' parts on threads of their own (up to 4) when the
    # device is a GPU; each generator is used by one draw at a time, so the data are the serial loop's
    pool = ThreadPoolExecutor(max_workers=1)
    n_draw = min(4, len(rngs)) if not str(cfg.device).startswith("cpu") else 1
    draw_pool = ThreadPoolExecutor(max_workers=n_draw) if n_draw > 1 else None
    on_gpu = str(cfg.device).startswith("cuda")

    def draw():  # pinned host memory on a GPU: the copy below then does not block the host
        tokens, labels = _batch_host(cfg, rngs, cfg.batch_size, draw_pool)
        pos = scored_positions(labels)  # a gather instead of a boolean mask: no sync in the forward
        arrays = [torch.from_numpy(a) for a in (tokens, labels) + (() if pos is None else (pos,))]
        return tuple(a.pin_memory() for a in arrays) if on_gpu else tuple(arrays)

    nxt = pool.submit(draw)
    t0 = time.perf_counter()
    step, last_log = 0, 0.0
    nb = cfg.batch_size
    mb = nb  # sequences of each replica in one forward/backward pass
    if cfg.max_tokens is not None:
        mb = max(1, min(nb, cfg.max_tokens // (len(cfg.replicas) * cfg.seq_len)))
    while step < cfg.steps:
        elapsed = time.perf_counter() - t0
        progress = max(step / cfg.steps, elapsed / seconds)
        if progress >= 1.0 and step > 0:
            break
        # the first step is taken at a small, not zero, rate: a zero step would waste it
        factor = max(lr_factor(progress, cfg.warmup), 1.0 / max(cfg.steps, 1))
        tokens, labels, *pos = (a.to(cfg.device, non_blocking=True) for a in nxt.result())
        pos = pos[0] if pos else None
        nxt = pool.submit(draw)
        opt.zero_grad()
        ce = torch.zeros(len(cfg.replicas), dtype=torch.float32, device=cfg.device)
        for i in range(0, nb, mb):  # every sequence has P scored positions: equal weights are exact
            sub = None if pos is None else pos[:, i : i + mb]
            logits, y = model(tokens[:, i : i + mb], labels[:, i : i + mb], sub)
            part = per_replica_ce(logits, y) * ((min(i + mb, nb) - i) / nb)
            part.sum().backward()
            ce = ce + part.detach()
        _clip_per_replica(params, 1.0)
        opt.step(peak * factor)
        step += 1
        pending.append(ce.detach())
        now = time.perf_counter() - t0
        logging = step % log_every == 0 or step == 1 or now - last_log >= seconds / 40  # ~20-40 points
        if logging or len(pending) >= LOSS_READ_EVERY:
            _take_losses(pending, losses, cfg)
        if logging:
            last_log = now
            lv = losses[-1]
            history.append((step, time.perf_counter() - t0, lv.tolist()))
            if log is not None:
                log(step, time.perf_counter() - t0, lv)
    _take_losses(pending, losses, cfg)
    train_s = time.perf_counter() - t0
    pool.shutdown(wait=True)
    if draw_pool is not None:
        draw_pool.shutdown(wait=True)
    acc, loss = evaluate(model, cfg)
    L = np.stack(losses)  # (steps, S)
    tail = L[-max(1, len(L) // 10) :].mean(axis=0)
    results = [
        TrainResult(
            seed=seed,
            lr=lr,
            accuracy=float(acc[i]),
            loss=float(loss[i]),
            first_loss=float(L[0, i]),
            last_train_loss=float(tail[i]),
            steps=step,
            train_seconds=train_s,
            seconds_per_step=train_s / step,
            history=[(h[0], h[1], h[2][i]) for h in history],
        )  # fmt: skip
        for i, (lr, seed) in enumerate(cfg.replicas)
    ]
    return model, results
