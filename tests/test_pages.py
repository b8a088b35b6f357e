"""engine.pages (the one module that writes HTML) and the reports' pages, opened in headless
Chromium: the screenshot is not blank and every embedded image loaded."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from engine import __version__, pages
from browser import assert_not_blank, render
from test_report import make_store, monotone


def test_page_escapes_text_and_embeds_figures():
    fig = pages.figure(3, 2)
    fig.add_subplot().plot([0, 1], [1, 0])
    html = pages.page("a <b> & c", [
        pages.Heading("<h>"), pages.Text("x < y"), pages.Text(["one", "<two>"]),
        pages.Table(pd.DataFrame({"n": [1, 2], "acc": [0.5, np.nan], "name": ["<a>", "b"]}), "cap"),
        pages.Image(fig, "a figure"), pages.Pre("{\n  \"k\": 1\n}")])
    assert "<b>" not in html and "&lt;b&gt; &amp; c" in html and "&lt;two&gt;" in html
    assert html.count("<img") == 1 and "data:image/png;base64,iVBORw0KGgo" in html
    assert "<td>–</td>" in html and "<td>0.5</td>" in html and '<td class="text">&lt;a&gt;</td>' in html
    assert f"engine {__version__}" in html and "<script" not in html and "http" not in html
    with pytest.raises(TypeError):
        pages.page("t", ["not a section"])


def test_sweep_report_page_in_a_browser(tmp_path):
    from engine.sweep.report import write_report
    out = make_store(tmp_path / "sweep", monotone, n_bobs=(100,))
    (out / "sweep.json").write_text('{"pair": "mnist:fashion", "betas": [0, 0.5, 1]}\n')
    analysis = out / "analysis"
    analysis.mkdir()
    fig = pages.figure(3, 2)
    fig.add_subplot().bar([0, 1], [1, 2])
    pages.save_png(fig, analysis / "cka.png")
    written = write_report(out)
    page = out / "report" / "report.html"
    assert page in written and page.is_file()
    html = page.read_text()
    pngs = [p for p in written if p.suffix == ".png"]
    assert html.count("<img") == len(pngs) + 1  # and the analysis figure
    for p in pngs:
        assert p.name in html
    assert "Sweep spec (sweep.json)" in html and "mnist:fashion" in html
    assert "beta 0.5" in html and "<table>" in html  # the depth x beta tables
    assert "monotone non-decreasing in beta" in html  # the findings
    shown = render(page, tmp_path / "browser")
    assert shown.images == len(pngs) + 1 and shown.loaded == shown.images
    assert_not_blank(shown.screenshot)


def test_manifold_page_in_a_browser(tmp_path):
    from engine.studies.manifold_figures import write_figures
    rows = [{"beta": s, "n_bob": n, "mode": mode, "retrain_from": l, "seed": seed,
             "test_acc": 0.3 + 0.1 * l * s + 0.01 * seed + (0.05 if n > 100 else 0), "n_layers": 3,
             "chance": 0.1}
            for s in (0.0, 1.0) for n in (100, 1000) for seed in (0, 1)
            for mode, ls in (("finetune", (1, 2, 3)), ("scratch", (1,))) for l in ls]
    written = write_figures(pd.DataFrame(rows), tmp_path / "manifold")
    page = tmp_path / "manifold" / "report.html"
    assert written[-1] == page and page.read_text().count("<img") == 3
    shown = render(page, tmp_path / "browser")
    assert (shown.images, shown.loaded) == (3, 3)
    assert_not_blank(shown.screenshot)


def test_the_browser_check_catches_a_broken_image_and_a_blank_page(tmp_path):
    """The checks above can fail: a page whose image is not a PNG, and an empty page."""
    fig = pages.figure(3, 2)
    fig.add_subplot().plot([0, 1])
    good = pages.page("t", [pages.Image(fig, "fine"), pages.Image(b"not a png", "broken")])
    path = tmp_path / "broken.html"
    path.write_text(good)
    shown = render(path, tmp_path / "b1")
    assert (shown.images, shown.loaded) == (2, 1)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    with pytest.raises(AssertionError):
        assert_not_blank(render(blank, tmp_path / "b2").screenshot)
    assert re.search("written by engine", good)
