"""``Problem``: a validated layer call, the one input every method receives."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Problem", "initial_state"]


class Problem(NamedTuple):
    """A validated call, ready for a method.

    It carries the array namespace, the device and the per-position log-gates; no method receives a dense
    T x T weight matrix (the dense methods build Gamma themselves, :mod:`ttr_stats.methods._dense`).

    Attributes
    ----------
    xp : array-API namespace
    Q : array of shape (*batch_shape, T_q, d_k)
        Queries after the regressor's feature map (prepared, e.g. L2-normalised, for nonparametric ones).
    K : array of shape (*batch_shape, T * steps_per_token, d_k)
    V : array of shape (*batch_shape, T * steps_per_token, d_v)
    g : array of shape (*batch_shape, T, 1) or (*batch_shape, T, d_k)
        Per-token log-decay (the weights' decay plus the optimizer's forgetting factor), ``<= 0``;
        ``-inf`` is a hard reset.
    b : array of shape (*batch_shape, T * steps_per_token)
        Write strengths / step sizes.
    window : int or None
    sinks : int
        Attention sinks of a window (``weights.SinkWindow``): the first ``sinks`` pairs never leave it, so
        pair i counts at t when ``i <= t`` and (``t - i < window`` or ``i < sinks``). 0 without a window;
        a method that cannot keep them registers ``sinks=False`` and is refused.
    state0 : optimizer state or None
    batch_shape : tuple
    T : int
        Number of tokens (queries of a causal call).
    d_k, d_v : int
    dtype : the floating dtype of every array
    steps_per_token : int
        Pairs written per token (DeltaProduct writes several; K, V and b are then interleaved).
    device : the arrays' device (``array_api_compat.device``)
    causal : bool
        ``False``: every query reads the memory after the last pair (nonparametric set regression).
    chunk_size : int or None
        The chunk length of chunked methods (``None``: the method's default).
    gated : bool
        Whether any gate of the call can decay, known from the layer and the call's arguments alone (a
        decaying weights class, a forgetting factor, call-time ``alpha``/``log_alpha``), never from the
        gate values. A method that chooses its algorithm from this (rather than from ``g``) keeps outputs
        before s bit-for-bit independent of inputs at s and after. Default True (may decay).
    lengths : array of shape batch_shape (integers) or None
        Valid tokens of each sequence (right padding). The layer has already made the padded steps
        identities in every family (:func:`ttr_stats._gates.mask_padding`): zero keys and values, zero
        log-decay and write strength ``b = 0`` for every padded pair (so a nonparametric cache gives them
        log-weight ``-inf``: excluded), and, in a causal call, zero queries at padded positions (their
        outputs are padding, set to 0 by the layer). The generic loop also freezes the state there, so
        every family's final state is the state after ``lengths`` tokens.
    inputs : dict of str -> array, or None
        Per-token inputs a component declares in ``token_inputs`` (PaTH's ``w`` (..., T, d_k) and ``w_beta``
        (..., T)), checked, in the call's dtype and broadcast to ``batch_shape``; not masked under
        ``lengths`` (a method that needs identities in the padding makes them).
    checks : :class:`~ttr_stats._validation.Deferred` or None
        The call's input checks. A method whose output carries every non-finite entry of Q, K and V
        (only products and sums between them) may call ``checks.vouch(Y, flag)``: a finite output then
        stands for those inputs' own finiteness tests (never the gates'); see ``Deferred.finite``.
    b_constant : float or None
        The value of every entry of ``b`` where the call fixed it without passing ``beta`` (the
        optimizer's default strength, and no ``lengths`` padding), else ``None``: a method may use it in
        place of reading ``b`` (known from the call, never from values).
    want_state : bool
        Whether the caller reads the final state (``return_state=True``, ``memorize``). ``False`` lets a
        method whose final state is extra work return ``None`` in its place (a nonparametric cache's last
        log-weights; the identity family's chunked method, whose final z takes passes of its own on a
        device); others return the state that falls out of their computation anyway.
    """

    xp: object
    Q: object
    K: object
    V: object
    g: object
    b: object
    window: object
    state0: object
    batch_shape: tuple
    T: int
    d_k: int
    d_v: int
    dtype: object
    steps_per_token: int = 1
    device: object = None
    causal: bool = True
    lengths: object = None
    chunk_size: object = None
    gated: bool = True
    sinks: int = 0
    inputs: object = None
    checks: object = None
    want_state: bool = True
    b_constant: object = None

    @property
    def itemsize(self) -> int:
        return 8 if self.dtype == self.xp.float64 else 4

    @property
    def n_batch(self) -> int:
        import math

        return math.prod(self.batch_shape) if self.batch_shape else 1


def initial_state(opt, P: Problem):
    """The state before step 1: the call's ``initial_state`` or the optimizer's ``init``."""
    if P.state0 is not None:
        return P.state0
    return opt.init(P.xp, P.batch_shape, P.d_k, P.d_v, P.dtype, device=P.device)
