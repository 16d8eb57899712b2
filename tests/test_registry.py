"""Cross-cutting tests of the method registry: variable lengths, state chaining, registry consistency.

Every case is generated from ``tt.recipes.registry()`` and each layer's ``supported_methods``
(``ttr_stats.methods.registry.supported``), so a method registered later (``"chunked"``) is covered as
soon as its file lands. Inputs come from :func:`test_causality.make_inputs` (unit keys, mild gates).

Tolerances:

* lengths, 1e-12 relative: the padded run and the solo run sum the same valid pairs; the padded pairs
  contribute exact zeros (replaced, not multiplied), so the two differ only by the order in which BLAS
  blocks reductions of different lengths, a few eps times the conditioning of the prefix systems (< 1e3
  with unit keys and the ridges used here, RLS at ridge 1e-2 as in test_methods), i.e. ~1e-13 (measured:
  at most 1e-15, least_squares direct).
* chaining, 1e-9 relative: the second piece starts from a stored state, so the dense methods fold it in
  through different products (decays c_t = exp(cumsum g) times M_0, RLS's direct method inverts P_0 once
  more, a least-squares prefix solve restarts from the stored statistics); rounding then grows with the
  prefix systems' condition number (up to ~1e5 for minimum-norm least squares at t ~ d), ~1e-11 (measured:
  at most 3e-14, least_squares direct split after one token), and 1e-9 leaves a margin without hiding a
  real difference (a wrong state is off by O(1)).
"""

import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import rel_err
from test_causality import CASES, RECIPES, chunk_sizes, make_inputs, make_layer

import ttr_stats as tt
from ttr_stats.methods import registry

ROOT = Path(__file__).resolve().parents[1]
TOL_LENGTHS = 1e-12
TOL_CHAIN = 1e-9
HUGE = 1e300  # finite garbage: any product with it overflows, so it must never enter a sum
IDS = [f"{n}-{m}" for n, m in CASES]


def _seed(*parts):
    return np.random.default_rng(zlib.crc32("-".join(map(str, parts)).encode()))


def _slice(layer, gates, i, L):
    """Sequence i's own gates, its first L tokens (L * steps pairs for beta)."""
    n = int(layer.optimizer.steps_per_token)
    out = {}
    for key, g in gates.items():
        if key == "beta":
            out[key] = g[i, : L * n]
        elif layer.weights.per_dimension:
            out[key] = g[i, :L, :]
        else:
            out[key] = g[i, :L]
    return out


def _pad(layer, rng, Q, K, V, gates, lengths, kind):
    """Fill everything after each sequence's length with ``kind`` garbage: ``"random"`` fresh draws,
    ``"huge"`` +-1e300 keys, values and steps and log-gates of -1e300 (alpha goes in as log_alpha)."""
    n = int(layer.optimizer.steps_per_token)
    Q, K, V = Q.copy(), K.copy(), V.copy()
    gates = {k: v.copy() for k, v in gates.items()}
    if "alpha" in gates:
        gates["log_alpha"] = np.log(gates.pop("alpha"))
    for i, L in enumerate(lengths):
        pairs = K[i, L * n :].shape
        if kind == "huge":
            K[i, L * n :] = HUGE * rng.choice([-1.0, 1.0], pairs)
            V[i, L * n :] = HUGE * rng.choice([-1.0, 1.0], V[i, L * n :].shape)
        else:
            K[i, L * n :] = rng.standard_normal(pairs)
            V[i, L * n :] = rng.standard_normal(V[i, L * n :].shape)
        if "beta" in gates:
            gates["beta"][i, L * n :] = HUGE if kind == "huge" else rng.uniform(0.5, 1.0)
        if "log_alpha" in gates:
            gates["log_alpha"][i, L:] = -HUGE if kind == "huge" else -rng.uniform(0.0, 0.5)
    return Q, K, V, gates


def _row(state, i):
    return type(state)(*(np.asarray(f)[i] for f in state))


def _assert_same_state(layer, padded, own, what, rng):
    """Parametric: every field equal; nonparametric (a cache of pairs, its padded pairs kept with weight
    0): the same memory, i.e. the same reads at probe queries."""
    if layer.nonparametric:
        probe = rng.standard_normal((4, padded.K.shape[-1]))
        probe /= np.linalg.norm(probe, axis=-1, keepdims=True)
        err = rel_err(layer.read(padded, probe), layer.read(own, probe))
        assert err < TOL_LENGTHS, (*what, "reads of the final cache", err)
        return
    for field, a, b in zip(own._fields, padded, own, strict=True):
        assert rel_err(a, b) < TOL_LENGTHS, (*what, "state", field, rel_err(a, b))


def _check_lengths(name, method, lengths, kind, T=24):
    layer = make_layer(name)
    rng = _seed(name, method, kind, *lengths)
    B = len(lengths)
    Q, K, V, gates = make_inputs(layer, rng, (B,), T)
    Qp, Kp, Vp, gp = _pad(layer, rng, Q, K, V, gates, lengths, kind)
    for cs in chunk_sizes(method, T):
        Y, state = layer(Qp, Kp, Vp, method=method, chunk_size=cs, lengths=np.array(lengths),
                         return_state=True, **gp)  # fmt: skip
        for i, L in enumerate(lengths):
            n = int(layer.optimizer.steps_per_token)
            y, own = layer(Q[i, :L], K[i, : L * n], V[i, : L * n], method=method, chunk_size=cs,
                           return_state=True, **_slice(layer, gates, i, L))  # fmt: skip
            what = (name, method, f"chunk_size={cs}", f"sequence {i} of length {L}")
            assert rel_err(Y[i, :L], y) < TOL_LENGTHS, (*what, "outputs", rel_err(Y[i, :L], y))
            assert np.all(Y[i, L:] == 0), (*what, "padded outputs are not 0")
            _assert_same_state(layer, _row(state, i), own, what, rng)


# --- 2. variable lengths ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["random", "huge"])
@pytest.mark.parametrize(("name", "method"), CASES, ids=IDS)
def test_lengths_equal_running_each_sequence_alone(name, method, kind):
    """A right-padded batch (one full sequence, two shorter) against each sequence on its own."""
    _check_lengths(name, method, (24, 9, 1), kind)


@pytest.mark.parametrize(("name", "method"), CASES, ids=IDS)
def test_lengths_with_an_empty_sequence(name, method):
    """A sequence of length 0 in the batch: all its outputs are padding (0), its state the initial one."""
    _check_lengths(name, method, (24, 0), "random")


@pytest.mark.parametrize(("name", "method"), CASES, ids=IDS)
def test_lengths_ignore_queries_in_the_padding(name, method):
    """Huge finite queries after a sequence's end read garbage there, but those outputs are padding: they
    must come back 0, not raise or leak."""
    layer = make_layer(name)
    rng = _seed(name, method, "queries")
    T, lengths = 20, np.array([20, 6])
    Q, K, V, gates = make_inputs(layer, rng, (2,), T)
    ref = layer(Q, K, V, method=method, lengths=lengths, **gates)
    Q[1, 6:] = HUGE * rng.choice([-1.0, 1.0], Q[1, 6:].shape)
    Y = layer(Q, K, V, method=method, lengths=lengths, **gates)
    assert np.array_equal(Y, ref), (name, method)


@pytest.mark.parametrize(("name", "method"), CASES, ids=IDS)
def test_lengths_on_every_backend(name, method, backend):
    """The masking is array-API code: the same outputs and state on every namespace, in its own arrays."""
    layer = make_layer(name)
    rng = _seed(name, method, "backend")
    Q, K, V, gates = make_inputs(layer, rng, (2,), 12)
    lengths = np.array([12, 5])
    ref, ref_state = layer(Q, K, V, method=method, lengths=lengths, return_state=True, **gates)
    put = {k: backend.put(v) for k, v in gates.items()}
    Y, state = layer(backend.put(Q), backend.put(K), backend.put(V), method=method,
                     lengths=backend.put(lengths), return_state=True, **put)  # fmt: skip
    assert backend.is_native(Y)
    # the same operations, except the factorisations: cuSOLVER and LAPACK round differently, so outputs
    # differ by eps times the prefix systems' condition number, as between the chained runs (module
    # docstring: up to ~1e5-1e6 for least squares near t ~ d): TOL_CHAIN. Measured on an H200 (CuPy
    # 14.2): least_squares direct 6.1e-11, local linear direct 1.2e-12; kernel ridge ~1e-14
    tol = TOL_LENGTHS if backend.name == "numpy" else TOL_CHAIN
    assert rel_err(backend.get(Y), ref) < tol, (name, method)
    for field, a, b in zip(ref_state._fields, state, ref_state, strict=True):
        a, b = backend.get(a), np.asarray(b)
        out = np.isneginf(b)  # a cache's excluded pairs: log-weight -inf on both
        assert np.array_equal(np.isneginf(a), out), (name, method, field)
        assert rel_err(np.where(out, 0, a), np.where(out, 0, b)) < tol, (name, method, field)


@pytest.mark.parametrize("kind", ["random", "huge"])
@pytest.mark.parametrize("name", list(RECIPES))
def test_memorize_with_lengths_equals_each_sequence_alone(name, kind):
    layer = make_layer(name)
    rng = _seed(name, "memorize", kind)
    T, lengths = 18, (18, 7, 1)
    n = int(layer.optimizer.steps_per_token)
    Q, K, V, gates = make_inputs(layer, rng, (3,), T)
    _, Kp, Vp, gp = _pad(layer, rng, Q, K, V, gates, lengths, kind)
    state = layer.memorize(Kp, Vp, lengths=np.array(lengths), **gp)
    for i, L in enumerate(lengths):
        own = layer.memorize(K[i, : L * n], V[i, : L * n], **_slice(layer, gates, i, L))
        _assert_same_state(layer, _row(state, i), own, (name, "memorize", f"length {L}"), rng)


BAD_LENGTHS = {
    "wrong shape": np.array([3, 3, 3]),
    "wrong rank": np.array([[3], [3]]),
    "negative": np.array([3, -1]),
    "longer than T": np.array([3, 9]),
    "non-integer": np.array([3.5, 2.0]),
    "nan": np.array([3.0, np.nan]),
    "boolean": np.array([True, False]),
    "string": np.array(["3", "2"]),
}


@pytest.mark.parametrize("bad", list(BAD_LENGTHS), ids=list(BAD_LENGTHS))
@pytest.mark.parametrize("name", list(RECIPES))
def test_bad_lengths_raise_naming_lengths(name, bad):
    layer = make_layer(name)
    Q, K, V, gates = make_inputs(layer, _seed(name, bad), (2,), 8)
    with pytest.raises(ValueError, match="lengths"):
        layer(Q, K, V, lengths=BAD_LENGTHS[bad], **gates)
    with pytest.raises(ValueError, match="lengths"):
        layer.memorize(K, V, lengths=BAD_LENGTHS[bad], **gates)


def test_integer_valued_float_lengths_are_accepted(rng):
    layer = tt.recipes.mamba2()
    Q, K, V, gates = make_inputs(layer, rng, (2,), 8)
    a = layer(Q, K, V, lengths=np.array([8.0, 3.0]), **gates)
    b = layer(Q, K, V, lengths=[8, 3], **gates)
    assert np.array_equal(a, b)


# --- 3. state chaining --------------------------------------------------------------------------------
PARAMETRIC = [(n, m) for n, m in CASES if not RECIPES[n].factory().nonparametric]


@pytest.mark.parametrize(("name", "method"), PARAMETRIC, ids=[f"{n}-{m}" for n, m in PARAMETRIC])
def test_two_pieces_with_initial_state_equal_one_run(name, method):
    """Split points anywhere (inside a TTT mini-batch too: its position is part of the state)."""
    layer = make_layer(name)
    rng = _seed(name, method, "chain")
    n = int(layer.optimizer.steps_per_token)
    T = 29
    Q, K, V, gates = make_inputs(layer, rng, (2,), T)
    for s in (1, 11, 28):
        for cs in chunk_sizes(method, T):
            full, end = layer(Q, K, V, method=method, chunk_size=cs, return_state=True, **gates)
            pieces, state = [], None
            for lo, hi in ((0, s), (s, T)):
                g = {k: (v[..., lo * n : hi * n] if k == "beta" else v[:, lo:hi]) for k, v in gates.items()}
                y, state = layer(Q[:, lo:hi], K[:, lo * n : hi * n], V[:, lo * n : hi * n], method=method,
                                 chunk_size=cs, initial_state=state, return_state=True, **g)  # fmt: skip
                pieces.append(y)
            err = rel_err(np.concatenate(pieces, axis=-2), full)
            assert err < TOL_CHAIN, (name, method, cs, s, "outputs", err)
            for field, a, b in zip(end._fields, state, end, strict=True):
                assert rel_err(a, b) < TOL_CHAIN, (name, method, cs, s, "state", field, rel_err(a, b))


# --- 4. registry consistency ----------------------------------------------------------------------------
def test_every_family_has_exactly_one_reference():
    for fam in registry.FAMILIES:
        refs = [m.name for m in registry.methods_for(fam) if m.reference]
        assert len(refs) == 1, (fam, refs)
        assert registry.reference(fam).name == refs[0]


def test_support_table_lists_every_registered_method():
    rows = {line.split()[0]: line for line in tt.methods.support_table().splitlines()[1:]}
    for fam in registry.FAMILIES:
        names = [m.name for m in registry.methods_for(fam)]
        assert fam in rows, fam
        assert ", ".join(names) in rows[fam], (fam, names, rows[fam])
        assert set(names) <= set(registry.method_names())


def test_support_table_flags_are_each_references():
    # columns: window, sinks, per-dim decay, read at the header's positions (cells are padded to the
    # column width); each is the family reference's registry flag
    lines = tt.methods.support_table().splitlines()
    head = lines[0]
    cols = {c: head.index(c) for c in ("methods", "window", "sinks", "per-dim decay")}
    assert cols["methods"] < cols["window"] < cols["sinks"] < cols["per-dim decay"]
    seen = set()
    for line in lines[1:]:
        fam = line.split()[0]
        ref = registry.reference(fam)
        assert line[cols["window"] - 2 : cols["window"]] == "  ", line  # the methods cell ends before it
        want = {"window": ref.window, "sinks": ref.sinks, "per-dim decay": ref.per_dimension}
        for c, flag in want.items():
            assert line[cols[c] :].split()[0] == ("yes" if flag else "no"), (fam, c, line)
        assert "-" != line.split()[1], (fam, "no optimizer or regressor listed")
        seen.add(fam)
    assert seen == {f for f in registry.FAMILIES if registry.methods_for(f)}
    # issue 13: Parallax's reference keeps a SinkWindow's sinks, log-linear attention's has no window
    assert registry.reference("parallax").sinks and not registry.reference("log_linear").sinks


@pytest.mark.parametrize("name", list(RECIPES))
def test_supported_methods_include_the_reference_and_auto_picks_one_of_them(name, rng):
    layer = make_layer(name)
    supported = layer.supported_methods
    assert registry.reference(layer.family).name in supported
    assert supported == tuple(m.name for m in registry.supported(layer))
    assert len(set(supported)) == len(supported)
    for T in (5, 40):
        Q, K, V, gates = make_inputs(layer, rng, (2,), T)
        Y = layer(Q, K, V, method="auto", **gates)
        assert layer.method_ in supported, (name, layer.method_)
        assert np.array_equal(Y, layer(Q, K, V, method=layer.method_, **gates))


@pytest.mark.parametrize("name", list(RECIPES))
def test_unsupported_and_unknown_methods_raise_listing_the_supported_ones(name, rng):
    layer = make_layer(name)
    Q, K, V, gates = make_inputs(layer, rng, (2,), 6)
    others = [m for m in registry.method_names() if m != "auto" and m not in layer.supported_methods]
    for m in others:
        with pytest.raises(ValueError, match="supported") as info:
            layer(Q, K, V, method=m, **gates)
        for ok in layer.supported_methods:
            assert repr(ok) in str(info.value), (name, m, ok)
    with pytest.raises(ValueError, match="method"):
        layer(Q, K, V, method="no-such-method", **gates)


# every method of every family (the check is the layer's, before any method runs)
ONE_PER_METHOD = sorted({(RECIPES[n].factory().family, m): (n, m) for n, m in CASES}.values())


@pytest.mark.parametrize("bad", [0, -3, "a", 2.5, True])
@pytest.mark.parametrize(("name", "method"), ONE_PER_METHOD, ids=[f"{n}-{m}" for n, m in ONE_PER_METHOD])
def test_bad_chunk_size_raises_naming_it(name, method, bad):
    layer = make_layer(name)
    Q, K, V, gates = make_inputs(layer, _seed(name, method, bad), (2,), 6)
    with pytest.raises(ValueError, match="chunk_size"):
        layer(Q, K, V, method=method, chunk_size=bad, **gates)


def _readme_rows():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    begin, end = tt.recipes.BEGIN, tt.recipes.END
    assert begin in text and end in text, "README has no recipe catalogue markers"
    block = text.split(begin, 1)[1].split(end, 1)[0].strip()
    return block, {
        # columns: recipe | weights | regressor | optimizer | methods | note
        re.match(r"\|\s*`(\w+)\(\)`", line).group(1): line.strip().strip("|").split("|")[4].strip()
        for line in block.splitlines()[2:]
    }


def test_readme_methods_column_is_each_recipes_supported_methods():
    block, rows = _readme_rows()
    catalogue = {r.name: r for r in tt.recipes.catalogue()}  # the registry and the noted recipes
    assert set(rows) == set(catalogue) and set(RECIPES) <= set(rows)
    for name, cell in rows.items():
        listed = tuple(m.strip() for m in cell.split(","))
        assert listed == catalogue[name].factory().supported_methods, (
            f"README lists {listed} for {name}; the registry supports "
            f"{catalogue[name].factory().supported_methods}: run `make readme`"
        )
    assert block == tt.recipes.registry_markdown(), "README catalogue is stale: run `make readme`"
