"""The recipe registry, its docstrings, and the README catalogue generated from it."""

import pathlib

import pytest

import ttr_stats as tt
from ttr_stats.recipes import catalogue, registry, registry_markdown, render_readme

ROOT = pathlib.Path(__file__).resolve().parents[1]

EXPECTED = {
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
    # 2025-26 delta-family layers (issue 13)
    "kda",
    "gdn2",
    "rwkv7",
    "preconditioned_deltanet",
    "gated_oja",
    # 2025-26 layers beyond the delta family (issue 13)
    "log_linear_attention",
    "log_linear_mamba2",
    "log_linear_gated_deltanet",
    "parallax",
    "higher_order_linear_attention",
    "kalman_filter",
    "gated_sliding_window_attention",
    "sink_window_attention",
}
#: in the catalogue with a note, outside the generic suites (issue 13)
CATALOGUE_ONLY = {"huber_attention", "omega_rule", "path_attention", "deltaformer"}


def test_registry_lists_every_recipe_with_its_components():
    rows = registry()
    assert {r.name for r in rows} == EXPECTED
    for r in rows:
        assert isinstance(r.factory(), tt.TestTimeRegression)
        assert isinstance(r.weights, tt.weights.Weights)
        assert isinstance(r.regressor, tt.regressors.Regressor)
        assert isinstance(r.optimizer, tt.optimizers.Optimizer)
        assert "recurrent" in r.methods
        assert r.note == ""


def test_catalogue_is_the_registry_plus_the_noted_recipes():
    rows = catalogue()
    assert [r.name for r in rows[: len(registry())]] == [r.name for r in registry()]
    extra = rows[len(registry()) :]
    assert {r.name for r in extra} == CATALOGUE_ONLY
    for r in extra:  # each says what it cannot do, in one Markdown cell
        assert len(r.note) > 20 and "|" not in r.note and "\n" not in r.note, r.name
        assert isinstance(r.factory(), tt.TestTimeRegression) and "recurrent" in r.methods


@pytest.mark.parametrize("info", catalogue(), ids=lambda r: r.name)
def test_recipe_docstrings_give_update_rule_and_paper_row(info):
    doc = info.factory.__doc__
    assert "Paper row" in doc and ":math:" in doc, info.name


def test_readme_catalogue_is_generated_from_the_registry():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert registry_markdown() in text
    assert render_readme(text) == text, "README catalogue is stale: run `make readme`"


def test_catalogue_rows_are_single_markdown_lines():
    """scikit-learn wraps long reprs over lines; a wrapped repr would split the table's rows."""
    lines = registry_markdown().splitlines()
    assert len(lines) == 2 + len(catalogue())
    assert all(line.startswith("|") and line.endswith("|") and line.count("|") == 7 for line in lines)
