"""paper_figures/gallery.py and the new figures: every image of the gallery exists, every caption number is
the number in its CSV, the numbers say what the captions claim, and the page renders in a real browser."""

import csv
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest

import ttr_stats as tt
from paper_figures import (
    fig01_taxonomy,
    fig_cost_scaling,
    fig_gating_wls,
    fig_identities,
    fig_optimizer_interpolation,
    fig_output_norm,
    gallery,
    run_all,
)

matplotlib.use("Agg")

FIGURES = (fig01_taxonomy, fig_identities, fig_output_norm, fig_optimizer_interpolation, fig_gating_wls,
           fig_cost_scaling)  # fmt: skip


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("gallery")
    for m in FIGURES:
        m.main(d, quick=True)
    (d / "stray.png").write_bytes((d / "taxonomy.png").read_bytes())  # a figure with no caption entry
    gallery.write(d)
    return d


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.imgs, self.nums, self._num, self.text = [], [], None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.imgs.append(a["src"])
        elif tag == "span" and a.get("class") == "num":
            self._num = a

    def handle_data(self, data):
        self.text.append(data)
        if self._num is not None:
            self.nums.append((self._num, data))
            self._num = None


def _page(out):
    p = _Page()
    p.feed((out / "index.html").read_text(encoding="utf-8"))
    return p


def _recompute(out, attrs):
    """The number from the CSV, computed here independently of gallery.value."""
    with open(out / attrs["data-csv"], newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    where = json.loads(attrs["data-where"])

    def ok(r):
        return all(
            (float(r[k]) == float(v)) if isinstance(v, (int, float)) else r[k] == v for k, v in where.items()
        )

    rows = [r for r in rows if ok(r)]
    assert rows, attrs
    col = json.loads(attrs["data-col"])
    cols = [col] if isinstance(col, str) else col
    agg = attrs["data-agg"]
    if agg == "count":
        return len(rows)
    if agg == "first":
        return float(rows[0][cols[0]])
    if agg == "last":
        return float(rows[-1][cols[0]])
    vals = [float(r[c]) for r in rows for c in cols if not math.isnan(float(r[c]))]
    return {"min": min(vals), "max": max(vals), "mean": sum(vals) / len(vals)}[agg]


def test_every_image_exists_and_every_png_is_shown(out):
    page = _page(out)
    assert page.imgs, "no images in the gallery"
    for src in page.imgs:
        assert (out / src).stat().st_size > 10_000, src
    assert {p.name for p in out.glob("*.png")} == set(page.imgs)
    assert "no caption written yet" in "".join(page.text)  # stray.png is shown, marked


def test_every_caption_number_matches_its_csv(out):
    page = _page(out)
    # the figures run here have 1 + 1 + 3 + 5 + 4 + 3 numbers in their captions
    assert len(page.nums) == 17
    assert "numbers unavailable" not in "".join(page.text)
    for attrs, text in page.nums:
        want = _recompute(out, attrs)
        # the page rounds to 3 significant digits: |shown - exact| <= 5e-3 |exact| (integers exactly)
        assert float(text) == pytest.approx(want, rel=5e-3, abs=0), (attrs, text, want)


def test_caption_number_detects_a_changed_csv(out, tmp_path):
    # not vacuous: change one CSV value and the recomputed number no longer matches the page
    for f in out.iterdir():
        shutil.copy(f, tmp_path / f.name)
    summary = tmp_path / "gating_wls_summary.csv"
    rows = list(csv.reader(summary.open()))
    rows[1][1] = "123.0"
    with summary.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    nums = [(a, t) for a, t in _page(tmp_path).nums if a["data-csv"] == "gating_wls_summary.csv"]
    a, t = nums[0]
    assert _recompute(tmp_path, a) == 123.0 != float(t)


def test_caption_keys_are_figure_modules():
    assert set(gallery.CAPTIONS) <= set(run_all.discover())


# ---------------------------------------------------------------------------------------------------------
# the numbers say what the captions claim
def test_taxonomy_is_the_registry(out):
    rows = list(csv.DictReader((out / "taxonomy.csv").open()))
    reg = tt.recipes.catalogue()
    assert sorted(r["recipe"] for r in rows) == sorted(r.name for r in reg)
    by_name = {r.name: r for r in reg}
    for r in rows:
        info = by_name[r["recipe"]]
        assert r["methods"] == ", ".join(info.methods)
        assert r["optimizer"] == type(info.optimizer).__name__
        assert "\\" not in r["update_rule"] and ":math:" not in r["update_rule"]
    md = (out / "taxonomy.md").read_text().splitlines()
    assert len(md) == 2 + len(reg)


def test_output_norm_la_grows_and_least_squares_respects_the_bound(out):
    rows = list(csv.DictReader((out / "output_norm.csv").open()))
    last = {r["series"]: float(r["mean_norm"]) for r in rows}  # dict keeps the last t per series
    # y_t ~ t W q for LA; T = 256 in quick mode, so 10x is a wide margin
    assert last["linear_attention"] > 10 * last["least_squares"]
    ratios = [float(r["max_ratio_to_bound"]) for r in rows if r["series"] == "least_squares"]
    finite = [x for x in ratios if not math.isnan(x)]
    assert finite and max(finite) <= 1.0  # the bound is a theorem: no sequence, no t may exceed it


def test_optimizer_interpolation_orders_gd_jacobi_newton(out):
    rows = list(csv.DictReader((out / "optimizer_interpolation.csv").open()))
    newton = [float(r["recall_error"]) for r in rows if r["method"] == "newton"]
    # noiseless realizable data: Newton is exact up to kappa * eps ~ 1e3 * 2e-16 (quick mode, d = 8)
    assert max(newton) < 1e-10
    for rho in ("0.0", "0.9"):
        last = {r["method"]: float(r["recall_error"]) for r in rows if r["rho"] == rho}
        assert last["jacobi"] < last["gd"]


def test_optimizer_gd_memory_is_the_plain_iteration():
    # the library's batch GD equals M <- M - lr (M R - S) written out here (float64, same operation order
    # up to the first step: rounding only, 1e-12 relative)
    cfg = fig_optimizer_interpolation.QUICK
    K, V = fig_optimizer_interpolation.problem(cfg, 0.9, 1)
    R, S = K.T @ K, V.T @ K
    lr = 1.0 / np.linalg.eigvalsh(R)[-1]
    M = np.zeros_like(S)
    for _ in range(7):
        M = M - lr * (M @ R - S)
    got = fig_optimizer_interpolation.gd_memory(fig_optimizer_interpolation.gd_state(K, V), 7, lr)
    np.testing.assert_allclose(got, M, rtol=1e-12, atol=1e-12 * np.abs(M).max())


def test_gating_exact_weighted_ls_beats_its_approximations(out):
    late = {
        r["method"]: float(r["late_error"]) for r in csv.DictReader((out / "gating_wls_summary.csv").open())
    }
    assert late["weighted_ls"] < late["gated_deltanet"] < late["rls_uniform"]
    assert late["weighted_ls"] < late["mamba2"]


def test_cost_scaling_chunked_beats_the_loop(out):
    rows = [r for r in csv.DictReader((out / "cost_scaling.csv").open()) if r["status"] == "ok"]
    sec = {(r["recipe"], r["method"], int(r["T"])): float(r["seconds"]) for r in rows}
    # linear attention at T = 1024: chunked ~1 ms vs the loop ~10 ms on 2 cores; 13x leaves room for load
    assert sec[("linear_attention", "chunked", 1024)] < sec[("linear_attention", "recurrent", 1024)]


# ---------------------------------------------------------------------------------------------------------
# a real browser
def _browser():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_browser() is None, reason="no headless browser (chromium) installed")
def test_gallery_renders_in_a_headless_browser(out, tmp_path):
    shot = tmp_path / "gallery.png"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--window-size=1200,3000", f"--screenshot={shot}", (out / "index.html").as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    img = matplotlib.image.imread(shot)
    assert img.shape[0] == 3000 and img.shape[1] == 1200
    # the figures (plots, tables) cover much of the page; a page of broken-image icons would be ~all white
    ink = np.mean(np.min(img[..., :3], axis=-1) < 0.9)
    assert ink > 0.05, ink
