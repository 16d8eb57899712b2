r"""``TestTimeRegression``: a sequence layer as weights x regressor x optimizer."""

from __future__ import annotations

import math

from sklearn.base import BaseEstimator

from . import _array, _plans
from ._gates import (
    check_beta,
    check_lengths,
    mask_padding,
    mask_queries,
    resolve_log_alpha,
    right_align,
    roll_rows,
    zero_padding,
)
from ._validation import Deferred, all_finite, check_finite, check_not_text
from .methods import Problem, registry, support_table
from .methods.final_state import final_state
from .optimizers import ClosedForm, GradientOptimizer, Optimizer
from .regressors import Linear, Regressor
from .regressors.nonparametric import CacheState, kept_pairs, last_log_weights
from .weights import Uniform, Weights

__all__ = ["TestTimeRegression"]

#: on the host, ``method="auto"`` uses a T x T parallel form up to this length (kept here for backwards
#: compatibility; the rule lives in :mod:`ttr_stats.methods.registry`)
HOST_PARALLEL_MAX_T = registry.HOST_PARALLEL_MAX_T


def check_chunk_size(chunk_size):
    """``None`` or a positive integer; the error names the argument."""
    if chunk_size is None:
        return None
    from ._validation import check_scalar

    return check_scalar("chunk_size", chunk_size, low=1, integer=True)


def _check_inputs(named):
    """Q, K and V are required; no argument may be text (``alpha="0.5"`` is not parsed as 0.5)."""
    for name in ("Q", "K", "V"):
        if name in named and named[name] is None:
            last = "d_v" if name == "V" else "d_k"
            raise TypeError(f"{name} is required: pass an array of shape (..., T, {last}), not None")
    for name, value in named.items():
        check_not_text(name, value)


def _broadcast(xp, x, shape):
    """``xp.broadcast_to(x, shape)``, or ``x`` itself where it has that shape already (the usual case:
    a call's arrays share their batch shape; a broadcast is a few microseconds of host time each)."""
    return _array.broadcast_to(xp, x, shape)  # (a default gate's cached constant: no view a call)


def broadcast_shapes(named):
    """Broadcast batch shapes given as ``{name: shape}``; the error names every argument."""
    shapes = [tuple(s) for s in named.values()]
    longest = max(shapes, key=len, default=())
    if all(s == longest or not s for s in shapes):  # the usual call: one batch shape (or none: a default)
        return longest
    out = ()
    for shape in named.values():
        n = max(len(out), len(shape))
        a = (1,) * (n - len(out)) + tuple(out)
        b = (1,) * (n - len(shape)) + tuple(shape)
        res = []
        for x, y in zip(a, b, strict=True):
            if x != y and x != 1 and y != 1:
                desc = ", ".join(f"{k} {tuple(v)}" for k, v in named.items())
                raise ValueError(f"batch dimensions do not broadcast: {desc}")
            res.append(max(x, y) if x != 1 else y)
        out = tuple(res)
    return out


def _sinks(weights):
    """The attention sinks of ``weights`` (``SinkWindow(sinks=s)``), 0 for every other weights class (and
    for a malformed value, which the weights' own validation then names)."""
    if weights.window is None:
        return 0
    try:
        return max(0, int(getattr(weights, "sinks", 0) or 0))
    except (TypeError, ValueError):
        return 0


def _check_sinks(w, ref, owner):
    """Refuse sinks where the family's reference (hence every method of it) would drop them."""
    s = _sinks(w)
    if s and not ref.sinks:
        raise ValueError(
            f"weights: {type(w).__name__}(sinks={s}) keeps the first {s} pairs in every window, and no "
            f"method of {owner} ({ref.family}) keeps them: it would drop the sinks and compute the plain "
            "window. Use a kernel smoother (LocalPolynomial / softmax regressor, or "
            "recipes.sink_window_attention), an additive-statistics optimizer (IdentityCovariance, "
            f"ClosedForm), or sinks=0.\n{support_table()}"
        )


def _declared_inputs(layer):
    """``{name: trailing}`` of the per-token inputs the layer's components declare (``token_inputs``):
    ``"d_k"`` for rows of shape (..., T, d_k), ``None`` for one value per token (..., T)."""
    out = {}
    for part in (layer.regressor, layer.optimizer):
        out.update(getattr(part, "token_inputs", None) or {})
    return out


def _input_arrays(layer, inputs):
    """The call's ``inputs`` dict as ``{"inputs['name']": array}`` (the names the errors use), checked
    against what the components declare: every declared name present, no other name."""
    declared = _declared_inputs(layer)
    if inputs is None:
        if not declared:  # the usual call: nothing declared, nothing given
            return {}
        inputs = {}
    if not isinstance(inputs, dict):
        raise TypeError(f"inputs must be a dict of per-token arrays (name -> array), got {type(inputs)}")
    owner = " and ".join(
        type(p).__name__ for p in (layer.regressor, layer.optimizer) if getattr(p, "token_inputs", None)
    )
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        takes = f"{owner} takes inputs {sorted(declared)}" if declared else "this layer takes none"
        raise ValueError(f"inputs: {takes}; got unknown {unknown}")
    for name, trailing in declared.items():
        if inputs.get(name) is None:
            shape = "(..., T, d_k)" if trailing else "(..., T)"
            raise ValueError(
                f"inputs['{name}'] is required by {owner}: pass inputs={{'{name}': array of shape "
                f"{shape}, ...}}"
            )
    return {f"inputs['{n}']": inputs[n] for n in declared}


def _check_input_shapes(declared, arrays, T, d_k):
    """Each per-token input has T rows (and d_k columns for vector inputs); the error names it."""
    for name, trailing in declared.items():
        key = f"inputs['{name}']"
        x = arrays[key]
        want = (T, d_k) if trailing else (T,)
        if x.ndim < len(want) or tuple(x.shape[x.ndim - len(want) :]) != want:
            shape = f"(..., {T}, {d_k})" if trailing else f"(..., {T})"
            one = "row" if trailing else "value"
            raise ValueError(f"{key} must have shape {shape} (one {one} per token), got {tuple(x.shape)}")


class TestTimeRegression(BaseEstimator):
    r"""A causal sequence layer defined by the test-time regression it solves.

    At every step t the layer memorises by regression and retrieves by evaluation:

    .. math::

        m_t = \arg\min_{m\in\mathcal M} \tfrac12 \sum_{i\le t} \gamma_i^{(t)} \|v_i - m(k_i)\|^2,
        \qquad y_t = m_t(q_t),

    where the **weights** give :math:`\gamma_i^{(t)}`, the **regressor** the function class
    :math:`\mathcal M` and the **optimizer** how the problem is (approximately) solved.

    Parameters
    ----------
    weights : Weights, default Uniform()
    regressor : Regressor, default Linear()
    optimizer : Optimizer, default ClosedForm()

    Attributes
    ----------
    method_ : str
        The method used by the last call (what ``method="auto"`` chose).

    Examples
    --------
    >>> import numpy as np, ttr_stats as tt
    >>> rng = np.random.default_rng(0)
    >>> Q, K, V = rng.standard_normal((3, 2, 32, 8))
    >>> layer = tt.TestTimeRegression(tt.weights.ExponentialDecay(0.95),
    ...                               tt.regressors.Linear(),
    ...                               tt.optimizers.RecursiveLeastSquares(ridge=1e-2))
    >>> Y = layer(Q, K, V)
    >>> Y.shape, layer.method_
    ((2, 32, 8), 'recurrent')

    References
    ----------
    Wang, Shi & Fox (2025), *Test-time regression: a unifying framework for designing sequence models with
    associative memory*, arXiv 2501.12352.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, weights=None, regressor=None, optimizer=None):
        self.weights = Uniform() if weights is None else weights
        self.regressor = Linear() if regressor is None else regressor
        self.optimizer = ClosedForm() if optimizer is None else optimizer
        self._check_components()

    # ------------------------------------------------------------------------------------------------
    def _check_components(self):
        w, r, o = self.weights, self.regressor, self.optimizer
        if not isinstance(w, Weights):
            raise TypeError(f"weights must be a ttr_stats.weights.Weights, got {type(w).__name__}")
        if not isinstance(r, Regressor):
            raise TypeError(f"regressor must be a ttr_stats.regressors.Regressor, got {type(r).__name__}")
        if not isinstance(o, Optimizer):
            raise TypeError(f"optimizer must be a ttr_stats.optimizers.Optimizer, got {type(o).__name__}")
        if isinstance(o, GradientOptimizer) or not (r.linear_in_features or r.nonparametric):
            self._check_neural(w, r, o)
            return
        if r.nonparametric:
            self._check_nonparametric(w, r, o)
            return
        ref = registry.reference(o.family)
        if w.window is not None and not ref.window:
            raise ValueError(
                f"weights: {type(w).__name__} needs an optimizer with additive statistics; "
                f"{type(o).__name__} has none.\n{support_table()}"
            )
        _check_sinks(w, ref, type(o).__name__)
        if w.per_dimension and not ref.per_dimension:
            raise ValueError(
                f"weights: per-dimension decay is not a scalar-weighted regression; only "
                f"IdentityCovariance supports it, not {type(o).__name__}.\n{support_table()}"
            )

    @staticmethod
    def _check_neural(w, r, o):
        name = type(r).__name__
        if not isinstance(o, GradientOptimizer):
            raise ValueError(
                f"optimizer: {name} is not linear in its parameters (a neural memory); train it with a "
                f"gradient optimizer (MiniBatchGD, Momentum), not {type(o).__name__}"
            )
        if not callable(getattr(r, "loss_grad", None)):
            raise ValueError(
                f"regressor: {type(o).__name__} trains a parametric regressor with analytic gradients "
                f"(Linear, MLP), not {name}"
            )
        if w.per_dimension or w.window is not None:
            raise ValueError(
                f"weights: {type(o).__name__} supports scalar decay gates only, not {type(w).__name__}"
                + ("(per_dimension=True)" if w.per_dimension else "")
            )

    @staticmethod
    def _check_nonparametric(w, r, o):
        name = type(r).__name__
        if not isinstance(o, ClosedForm):
            raise ValueError(
                f"optimizer: {name} is a nonparametric regressor, solved exactly; use ClosedForm() (the "
                f"default), not {type(o).__name__}"
            )
        if isinstance(o.ridge, (int, float)) and o.ridge != 0:
            raise ValueError(
                f"optimizer: the ridge of a {name} layer belongs to the regressor ({name}(ridge=...)); "
                "leave ClosedForm's ridge at 0"
            )
        if w.per_dimension:
            raise ValueError(f"weights: per-dimension decay has no meaning for {name}")
        if not r.supports_gates and not isinstance(w, Uniform):
            raise ValueError(f"weights: {name} supports Uniform() weights only, got {type(w).__name__}")
        if w.window is not None and not registry.reference(r.family).window:
            raise ValueError(f"weights: {name} does not support {type(w).__name__}")
        _check_sinks(w, registry.reference(r.family), name)

    @property
    def nonparametric(self) -> bool:
        """True when the regressor keeps every pair (its state is a :class:`CacheState`)."""
        return bool(self.regressor.nonparametric)

    @property
    def neural(self) -> bool:
        """True when a gradient optimizer trains the regressor's parameters (TTT, Titans)."""
        return isinstance(self.optimizer, GradientOptimizer)

    def _solver(self):
        """The optimizer's pure functions on this layer's regressor (the optimizer itself for the linear
        family; bound to the regressor's parameters for gradient optimizers)."""
        return self.optimizer.bind(self.regressor)

    @property
    def family(self) -> str:
        """The family of methods that compute this layer (:mod:`ttr_stats.methods.registry`)."""
        return registry.family_of(self)

    @property
    def supported_methods(self):
        """Methods this layer supports, in the order ``method="auto"`` prefers them (from the registry)."""
        return tuple(m.name for m in registry.supported(self))

    # ------------------------------------------------------------------------------------------------
    def _prepare(
        self, Q, K, V, alpha, log_alpha, beta, initial_state, causal=True, lengths=None, chunk_size=None,
        inputs=None, checks=None, want_state=True,
    ):  # fmt: skip
        """The validated :class:`Problem` of a call. ``checks``: a :class:`Deferred` that keeps the
        verdicts of the input checks (finiteness of Q, K, V and the gates, the gates' ranges) on the
        device for the caller to read with its output (:meth:`_run`); None checks them at once.
        ``want_state=False``: the caller drops the final state (``Problem.want_state``)."""
        self._check_components()
        self.weights._validate()
        self.optimizer._validate()
        self.regressor._validate()
        opt = self.optimizer
        if self.nonparametric and not self.regressor.supports_gates:
            for name, gate in (("alpha", alpha), ("log_alpha", log_alpha), ("beta", beta)):
                if gate is not None:
                    raise ValueError(f"{name}: {type(self.regressor).__name__} supports uniform weights only")
        named = {"Q": Q, "K": K, "V": V, "alpha": alpha, "log_alpha": log_alpha, "beta": beta}
        named.update(_input_arrays(self, inputs))  # per-token inputs a component declares (PaTH's w)
        _check_inputs(named)
        xp, a, dtype = _array.as_float_arrays(named)
        Q, K, V = a["Q"], a["K"], a["V"]
        for name, x, last in (("Q", Q, "d_k"), ("K", K, "d_k"), ("V", V, "d_v")):
            if x.ndim < 2:
                raise ValueError(f"{name} must have shape (..., T, {last}), got shape {tuple(x.shape)}")
        if checks is None:
            checks = Deferred(xp, lazy=False)  # every check at once
        else:
            checks.bind(xp)  # CuPy: one pass each, no sync; the verdicts are read in _run
        checks.finite({"Q": Q, "K": K, "V": V}, vouchable=True)  # a method's output may vouch (Deferred)
        device = _array.device(K)
        T_q, d_k = Q.shape[-2], Q.shape[-1]
        if K.shape[-1] != d_k:
            raise ValueError(f"Q and K must share d_k: Q has d_k = {d_k}, K has d_k = {K.shape[-1]}")
        if d_k < 1:
            raise ValueError(
                "K (and Q) must have d_k >= 1 features: a regression on 0 features has nothing to "
                f"compare; got shape {tuple(K.shape)}"
            )
        steps = int(opt.steps_per_token)
        T_k = K.shape[-2]
        T = T_k // steps  # steps of the gates
        if causal and T_k != steps * T_q:
            if steps > 1:
                raise ValueError(
                    f"K must have {steps * T_q} time steps, {steps} per query row (Q has {T_q}): "
                    f"{type(opt).__name__}(steps_per_token={steps}), i.e. delta_product(n_householder="
                    f"{steps}), writes {steps} pairs per token, interleaved along time; got {T_k}"
                )
            raise ValueError(f"K must have {T_q} time steps, one per query row (Q has {T_q}), got {T_k}")
        if V.shape[-2] != T_k:
            raise ValueError(f"V must have the same number of time steps as K ({T_k}), got {V.shape[-2]}")
        d_v = V.shape[-1]
        d_f = self.regressor.output_dim(d_k)

        la = resolve_log_alpha(xp, a["alpha"], a["log_alpha"], checks)
        gate_name = "alpha" if a["alpha"] is not None else "log_alpha"
        if la is not None and la.ndim == 0:
            la = xp.broadcast_to(la, (T, d_f) if self.weights.per_dimension else (T,))
        g = self.weights.resolve(xp, la, T=T, d_k=d_f, dtype=dtype, device=device)
        lf = opt.log_forgetting()
        if lf:
            g = g + lf
        # whether any gate can decay, from the layer and the call's arguments, never from gate values: a
        # method that picks its algorithm from this stays exactly causal
        gated = la is not None or bool(lf) or self.weights.constant_log_decay() != 0.0
        if opt.needs_positive_decay and gated and bool(xp.any(g == -math.inf)):  # ungated: g has no -inf
            raise ValueError(f"{gate_name}: {type(opt).__name__} divides by the decay; alpha must be > 0")

        b = check_beta(xp, a["beta"], checks)
        b_const = None
        if b is None:
            const = opt.default_beta()
            b_const = 1.0 if const is None else float(const)
            b = _array.constant(xp, (T_k,), b_const, dtype, device)
        elif b.ndim == 0:
            b = xp.broadcast_to(b, (T_k,))
        elif b.shape[-1] != T_k:
            raise ValueError(
                f"beta must have shape (..., {T_k}) (one value per written pair), got {tuple(b.shape)}"
            )

        declared = _declared_inputs(self)
        extra = {k: v for k, v in a.items() if k.startswith("inputs[")}
        _check_input_shapes(declared, extra, T, d_f)
        for key, x in extra.items():
            check_finite(xp, key, x)
        named = {
            "Q": Q.shape[:-2],
            "K": K.shape[:-2],
            "V": V.shape[:-2],
            gate_name: g.shape[:-2],
            "beta": b.shape[:-1],
        }
        for (key, x), trailing in zip(extra.items(), declared.values(), strict=True):
            named[key] = x.shape[: -2 if trailing else -1]
        batch = broadcast_shapes(named)
        extra = {
            key[len("inputs['") : -2]: xp.broadcast_to(x, batch + x.shape[-2 if t else -1 :])
            for (key, x), t in zip(extra.items(), declared.values(), strict=True)
        }
        Q, K, V, g = (_broadcast(xp, x, batch + x.shape[-2:]) for x in (Q, K, V, g))
        b = _broadcast(xp, b, batch + b.shape[-1:])
        if lengths is not None:
            lengths = check_lengths(xp, lengths, batch, T, device)
            K, V, g, b = mask_padding(xp, lengths, K, V, g, b, steps, nonparametric=self.nonparametric)
            b_const = None  # 0 in the padding
            if causal:  # queries are tokens only in a causal call (non-causal ones read the final memory)
                # zero queries in the padding: a feature map (performer, based) or a local polynomial
                # solve must never see the garbage there; those outputs are padding (zeroed in _run)
                Q = mask_queries(xp, lengths, Q)
        Qf, Kf = self._pair_features(xp, Q, K)
        if not (lengths is None and Qf is Q and Kf is K):
            # a feature map may turn NaN into numbers, and padding is zeroed: the method's output cannot
            # vouch for the raw Q, K and V, so they are checked as they are
            checks.launch_pending()
        state0 = None
        if initial_state is not None:
            if self.nonparametric and getattr(self.regressor, "carries_state", False):
                # a cache that is more than the raw pairs (PaTH's transported keys): its methods continue it
                if not isinstance(initial_state, CacheState):
                    raise TypeError(
                        f"initial_state must be a CacheState (from memorize() or return_state=True), got "
                        f"{type(initial_state).__name__}"
                    )
                state0 = initial_state
            elif self.nonparametric:
                raise ValueError(
                    "initial_state: a nonparametric layer's state is its cache of pairs; concatenate the "
                    "earlier keys and values to K and V instead (memorize accepts a CacheState to continue)"
                )
            else:
                state0 = self._solver().check_state(xp, initial_state, batch, d_f, d_v, dtype)
        return Problem(
            xp, Qf, Kf, V, g, b, self.weights.window, state0, batch, T_q, d_f, d_v, dtype,
            steps_per_token=steps, device=device, causal=causal, lengths=lengths,
            chunk_size=check_chunk_size(chunk_size), gated=gated,
            inputs=extra or None, sinks=_sinks(self.weights), checks=checks, want_state=want_state,
            b_constant=b_const,
        )  # fmt: skip

    def _choose(self, method, P):
        """The registered method to run: ``method`` itself (checked), or what ``"auto"`` picks."""
        if method == "auto":  # (a reading up to a quarter second old: _run re-reads near the limit)
            free = _array.free_device_bytes(P.xp, P.device, max_age=_array.DEVICE_MEMORY_TTL)
            m = registry.choose_auto(self, P, free)
        else:
            m = registry.lookup(self, method)
        registry.check_dtype(self, m, P)  # e.g. float16 where a method factorises (no half linalg)
        return m

    def _memory_advice(self, P, method, detail=""):
        others = [m for m in registry.supported(self) if m.name != method.name]
        lean = min(others, key=lambda m: m.memory(P), default=None)
        return (
            f"method={method.name!r} needs about {method.memory(P) / 2**30:.2f} GiB for batch "
            f"shape {P.batch_shape}, T = {P.T}, d_k = {P.d_k}; split the batch into smaller calls"
            + (f" or use method={lean.name!r}" if lean is not None else "")
            + (f" ({detail})" if detail else "")
        )

    def _check_device_memory(self, P, method):
        """Fail early, and clearly, when a method's intermediates cannot fit in free device memory.

        A driver reading up to :data:`~ttr_stats._array.DEVICE_MEMORY_TTL` old is trusted only while the
        method needs at most half of it; nearer the limit the driver is read again."""
        free = _array.free_device_bytes(P.xp, P.device, max_age=_array.DEVICE_MEMORY_TTL)
        need = None if free is None or method.reference else method.memory(P)
        if need is not None and 2 * need > free:
            free = _array.free_device_bytes(P.xp, P.device)
        if need is not None and need > free:
            raise MemoryError(self._memory_advice(P, method, f"{free / 2**30:.2f} GiB free on the device"))
        if free is None and not method.reference and registry.is_host(P):
            # the same estimate on the host, before any allocation: a T x T form at T = 1e5 would
            # otherwise run for tens of seconds and take gigabytes before NumPy's own MemoryError
            host = registry.free_host_bytes()
            if host is not None and method.memory(P) > host:
                raise MemoryError(
                    self._memory_advice(P, method, f"{host / 2**30:.2f} GiB available on the host")
                )

    def _check_output(self, xp, Y, what="output", checks=None):
        if not (all_finite(xp, Y) if checks is None else checks.outputs_finite(Y)):
            raise FloatingPointError(
                f"{type(self.optimizer).__name__} produced a non-finite {what} from finite inputs: the "
                f"recursion diverged or overflowed (theory §5). {self._divergence_remedy()}"
            )

    def _divergence_remedy(self):
        """What the user can change: the optimizer's ``divergence_remedy``, with its class name."""
        opt = self.optimizer
        return opt.divergence_remedy.format(name=type(opt).__name__)

    # ------------------------------------------------------------------------------------------------
    def __call__(
        self,
        Q,
        K,
        V,
        *,
        alpha=None,
        log_alpha=None,
        beta=None,
        method="auto",
        initial_state=None,
        return_state=False,
        causal=True,
        lengths=None,
        chunk_size=None,
        inputs=None,
    ):
        """Run the layer.

        Parameters
        ----------
        Q : array of shape (..., T, d_k)
            Queries (any number T_q of them when ``causal=False``).
        K : array of shape (..., T, d_k)
            Keys (``T * steps_per_token`` rows for DeltaProduct).
        V : array of shape (..., T, d_v)
            Values (as many rows as K).
        alpha : array of shape (..., T) or (..., T, d_k), optional
            Decay gates in [0, 1] (per-dimension with ``Gated(per_dimension=True)``); override the
            weights' constant. A scalar is broadcast over time.
        log_alpha : array, optional
            ``log(alpha) <= 0``, the stable alternative; pass at most one of alpha and log_alpha.
        beta : array of shape (..., T), optional
            Write strengths (sample weights for exact, identity-covariance and nonparametric layers) or
            step sizes (delta-rule family), > 0; override the optimizer's constant.
        method : {"auto", "recurrent", "chunked", "direct", "parallel"}
            See :attr:`supported_methods` and :func:`ttr_stats.methods.support_table`; ``"auto"`` picks
            the fastest registered method that fits and records its choice in ``method_``.
        initial_state : optimizer state, optional
            The state before step 1 (a ``NamedTuple`` of the optimizer's state type), broadcast over
            batch dims. Parametric layers only (linear and neural).
        return_state : bool
            Also return the final state.
        causal : bool
            ``True``: the output at t is read from the memory after step t. ``False``: every query is
            read from the memory after the last step (the set regression, T_q free).
        lengths : array of ints of shape (...,) (the batch shape), optional
            Valid tokens of each sequence of a right-padded batch: the padded positions never touch a
            sequence's outputs (they are 0 there) or its final state (the state after ``lengths``
            tokens).
        chunk_size : int >= 1, optional
            Chunk length of ``method="chunked"`` (default: the method's own, 64 for most); any value
            gives the same outputs up to rounding, it only trades parallelism for work.
        inputs : dict of str -> array, optional
            Per-token inputs beyond q, k, v that a component declares in its ``token_inputs`` (PaTH's
            Householder vectors and strengths: ``inputs={"w": W, "w_beta": b}``, W of shape (..., T, d_k),
            b of shape (..., T)); every declared name is required, no other is accepted. They broadcast
            over the batch dims like the gates.

        Returns
        -------
        Y : array of shape (..., T, d_v)
            ``Y[..., t, :] = m_t(q_t)``, read after step t's update. Same array library as the inputs.
        state : optimizer state
            Only with ``return_state=True``: the memory after the last step.

        Notes
        -----
        A plain call (causal; ``log_alpha`` at most: no ``alpha``, strengths, lengths, state or extra
        inputs) on CuPy arrays that a method can repeat leaves a *plan* (:mod:`ttr_stats._plans`;
        softmax, sliding-window, sink and forgetting attention with ``method="tiled"``): the next call
        with arrays of the same shapes, dtypes, strides and device, on a layer whose configuration is
        unchanged, launches the same kernel on the same operands without the set-up (the same bits;
        0.14-0.17 ms less host time a call on an H100 at T = 1024).
        Any failure there, a NaN in Q for one, runs the full call, which raises its usual error.
        """
        if not causal and not self.nonparametric:
            if lengths is not None:
                raise ValueError(
                    "lengths: a non-causal call reads every query after the last pair; pass "
                    "each sequence's valid pairs only"
                )
            state = self.memorize(
                K, V, alpha=alpha, log_alpha=log_alpha, beta=beta, initial_state=initial_state, inputs=inputs
            )
            Y = self.read(state, Q)
            self.method_ = "recurrent"
            return (Y, state) if return_state else Y
        plain = (
            alpha is None and beta is None and initial_state is None and not return_state and causal
            and lengths is None and chunk_size is None and inputs is None
        )  # fmt: skip
        if plain and _plans.ENABLED:  # a repeat of a plain call's signature: its plan, where one was left
            Y = _plans.run(self, method, Q, K, V, log_alpha)
            if Y is not None:
                return Y
        checks = Deferred()  # the input checks' verdicts are read with the output's: one sync a call
        try:
            P = self._prepare(
                Q, K, V, alpha, log_alpha, beta, initial_state, causal=causal, lengths=lengths,
                chunk_size=chunk_size, inputs=inputs, checks=checks, want_state=bool(return_state),
            )  # fmt: skip
            m = self._choose(method, P)
            Y, state = self._run(m, P, checks)
        except Exception:
            err = checks.input_error()  # a bad input is reported as itself, not as what it broke
            if err is not None:
                raise err from None
            raise
        self.method_ = m.name
        if plain and _plans.ENABLED:
            _plans.make(self, method, m, P, Q, K, V, log_alpha)  # (nothing where the method leaves none)
        return (Y, state) if return_state else Y

    def _run(self, m, P, checks=None):
        """Run registered method ``m`` on problem ``P``: memory check, overflow as one clear error.
        ``checks``: the call's deferred input checks, read with the output's finiteness."""
        self._check_device_memory(P, m)
        # a windowed final state read after step T must not see the padding move the window: the
        # reference loop freezes its state there; every other method runs on right-aligned sequences
        realign = (
            P.lengths is not None and P.causal and not m.reference and not self.nonparametric
            and P.window is not None and P.window < P.T and not P.sinks and P.inputs is None
        )  # fmt: skip
        if realign:
            P, shift = right_align(P.xp, P)
        try:
            with _array.quiet_overflow(P.xp):  # overflow is reported below as one clear error
                Y, state = m.run(self, P)
        except Exception as exc:
            if _array.is_out_of_memory(exc):
                raise MemoryError(self._memory_advice(P, m, str(exc))) from exc
            raise
        if realign:
            Y = roll_rows(P.xp, Y, -shift, P.T, P.batch_shape)
        if P.lengths is not None and P.causal:
            # padded outputs are 0 by definition: zero them before the finiteness check so that only
            # the valid outputs are judged (a non-causal call has no padded queries: its T_q is free)
            Y = zero_padding(P.xp, Y, P.lengths)
        self._check_output(P.xp, Y, checks=checks)
        return Y, state

    def memorize(
        self, K, V, *, alpha=None, log_alpha=None, beta=None, initial_state=None, lengths=None, inputs=None
    ):
        """Write a whole sequence into the memory and return the final state (no reads).

        Parameters
        ----------
        K : array of shape (..., T, d_k)
        V : array of shape (..., T, d_v)
        alpha, log_alpha, beta
            As in :meth:`__call__`.
        initial_state : state, optional
            The memory to continue (for a nonparametric layer, a :class:`CacheState`: the new pairs are
            appended and the old weights decay by the new steps' gates).
        lengths : array of ints of shape (...,), optional
            Valid pairs (tokens) of each sequence of a right-padded batch, as in :meth:`__call__`.
        inputs : dict of str -> array, optional
            Per-token inputs, as in :meth:`__call__`.

        Returns
        -------
        state : the memory after step T
        """
        _check_inputs({"K": K, "V": V, "alpha": alpha, "log_alpha": log_alpha, "beta": beta})
        xp, a, _ = _array.as_float_arrays({"K": K})
        Kx = a["K"]
        if Kx.ndim < 2:
            raise ValueError(f"K must have shape (..., T, d_k), got shape {tuple(Kx.shape)}")
        steps = int(self.optimizer.steps_per_token)
        if Kx.shape[-2] % steps:
            raise ValueError(
                f"K must have a multiple of {steps} time steps: {type(self.optimizer).__name__}"
                f"(steps_per_token={steps}), i.e. delta_product(n_householder={steps}), writes {steps} "
                f"pairs per token, interleaved along time; got {Kx.shape[-2]}"
            )
        T = Kx.shape[-2] // steps
        Q = Kx[..., ::steps, :][..., :T, :]  # placeholder queries: never read
        if self.nonparametric and getattr(self.regressor, "carries_state", False):
            # the cache is what the family's reference leaves (PaTH: keys transported to the last step)
            if getattr(self.regressor, "writes_with_queries", False):
                raise ValueError(
                    f"memorize: {type(self.regressor).__name__} writes with each token's query, which "
                    "memorize(K, V) does not have; run a causal call with return_state=True instead"
                )
            P = self._prepare(Q, K, V, alpha, log_alpha, beta, initial_state, lengths=lengths, inputs=inputs)
            return self._run(registry.reference(self.family), P)[1]
        if self.nonparametric:
            P = self._prepare(Q, K, V, alpha, log_alpha, beta, None, lengths=lengths, inputs=inputs)
            with _array.quiet_overflow(P.xp):
                return self._extend_cache(P, initial_state)
        # zero placeholders: never read, and a feature map must not overflow on garbage in the padding
        Q = xp.broadcast_to(
            xp.zeros((1, Kx.shape[-1]), dtype=Kx.dtype, device=_array.device(Kx)), Q.shape[-2:]
        )
        P = self._prepare(Q, K, V, alpha, log_alpha, beta, initial_state, lengths=lengths, inputs=inputs)
        with _array.quiet_overflow(P.xp):
            state = final_state(self, P)  # the closed form where the family has one, else the loop
        for field in state:
            self._check_output(P.xp, field, what="state")
        return state

    def _extend_cache(self, P, old):
        xp = P.xp
        lw = last_log_weights(xp, P)
        K, V = P.K, P.V
        if old is not None:
            if not isinstance(old, CacheState):
                raise ValueError(f"initial_state must be a CacheState, got {type(old).__name__}")
            if old.K.shape[-1] != K.shape[-1] or old.V.shape[-1] != V.shape[-1]:
                raise ValueError(
                    f"initial_state holds pairs of dimensions ({old.K.shape[-1]}, {old.V.shape[-1]}), "
                    f"the new ones have ({K.shape[-1]}, {V.shape[-1]})"
                )
            batch = broadcast_shapes({"initial_state": old.K.shape[:-2], "K": K.shape[:-2]})
            grow = lambda x, n: xp.broadcast_to(x, batch + x.shape[n:])  # noqa: E731
            total = xp.sum(P.g[..., 0], axis=-1, keepdims=True)  # old pairs decay through every new step
            K = xp.concat([grow(old.K, -2), grow(K, -2)], axis=-2)
            V = xp.concat([grow(old.V, -2), grow(V, -2)], axis=-2)
            lw = xp.concat([grow(old.log_weight + total, -1), grow(lw, -1)], axis=-1)
            w = self.weights.window
            if w is not None and lw.shape[-1] > w:
                # the concatenated cache holds every pair from position 0: keep the sinks and the last w
                n = lw.shape[-1]
                keep = kept_pairs(xp, n - 1, xp.arange(n, device=P.device), w, _sinks(self.weights))
                lw = xp.where(keep, lw, xp.asarray(-math.inf, dtype=lw.dtype, device=_array.device(lw)))
        return CacheState(K, V, lw)

    def read(self, state, Q):
        """Evaluate the memory ``state`` at queries ``Q`` without writing.

        Parameters
        ----------
        state : the layer's state (batch dims ``B``)
        Q : array of shape (..., n_q, d_k), or (d_k,) for one query
            The leading dims broadcast against ``B`` (many queries against one memory).

        Returns
        -------
        array of shape (..., n_q, d_v), or (d_v,) for one query
        """
        if Q is None:
            raise TypeError("Q is required: pass an array of shape (..., n_q, d_k) or (d_k,), not None")
        check_not_text("Q", Q)
        xp, a, _ = _array.as_float_arrays({"Q": Q})
        Q = a["Q"]
        check_finite(xp, "Q", Q)
        if Q.ndim < 1:
            raise ValueError(f"Q must have shape (..., n_q, d_k) or (d_k,), got shape {tuple(Q.shape)}")
        single = Q.ndim == 1
        if single:
            Q = Q[None, :]
        self._check_state_type(xp, state, Q.dtype)
        d_k = (state.K if self.nonparametric else self._state_keys(state)).shape[-1]
        if self.regressor.output_dim(Q.shape[-1]) != d_k:
            raise ValueError(f"Q must have d_k matching the memory's keys, got {Q.shape[-1]}")
        if self.nonparametric:
            Y = self.regressor.read(xp, state, Q)
        else:
            solver = self._solver()
            ranks = [f.ndim for f in solver.init(xp, (), 1, 1, Q.dtype)]
            batch_nd = state[0].ndim - ranks[0]
            expanded = type(state)(*(xp.expand_dims(f, axis=batch_nd) for f in state))
            Y = solver.read(expanded, self._query_features(xp, Q))
        return Y[0, ...] if single else Y

    def _normalized_read(self):
        """True when the read divides out any positive factor per query (normalised linear attention)."""
        return getattr(self.optimizer, "normalize", None) in ("sum", "output") and callable(
            getattr(self.regressor, "normalized_pair_features", None)
        )

    def _pair_features(self, xp, Q, K):
        """Mapped queries and keys; under a normalised read the regressor may rescale each query row
        (Performer's features in log space, which would otherwise underflow)."""
        if self._normalized_read():
            return self.regressor.normalized_pair_features(xp, Q, K)
        return self.regressor.features(xp, Q), self.regressor.features(xp, K)

    def _query_features(self, xp, Q):
        if self._normalized_read():
            return self.regressor.normalized_pair_features(xp, Q, Q[..., :0, :])[0]
        return self.regressor.features(xp, Q)

    def _check_state_type(self, xp, state, dtype):
        """``state`` must be what this layer's memory is (e.g. not another layer's state)."""
        if self.nonparametric:
            expected = CacheState
        else:
            expected = type(self._solver().init(xp, (), 1, 1, dtype))
        if not isinstance(state, expected):
            raise TypeError(
                f"state must be a {expected.__name__} (the memory of this layer, from memorize() or "
                f"return_state=True), got {type(state).__name__}; read a state with the layer that wrote it"
            )

    def _state_keys(self, state):
        """A field of the state whose last axis is the (mapped) key dimension."""
        return state[0]
