"""OUTPUT/index.html: one row per case with its status, burden, warnings and links, failures with reasons, text
escaped; and in headless Chromium (skipped with a reason when absent, unless COVSEG_REQUIRE_CHROMIUM=1 as in CI)
it renders, its rows equal the cases, sorting works and a screenshot is not blank."""
from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from covseg_fast.cli.main import main
from tests.ct_helpers import chest_phantom, reoriented, save_nifti
from tests.inference.tiny_model import make_checkpoint

SPACING = (4.0, 4.0, 5.0)
ODD = 'a<b>&"c'  # a folder name a user may have: must come out as text, never markup


class Page(html.parser.HTMLParser):
    """The case rows (the data-col cells' values and texts), failure rows, links, images and scripts of a page."""

    def __init__(self):
        super().__init__()
        self.rows, self.failures, self.links, self.images, self.scripts = [], [], [], [], []
        self.table = None
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.table = a.get("id")
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and getattr(self, "_in_body", False):
            (self.rows if self.table == "cases" else self.failures).append({})
        elif tag == "td" and self.table == "cases" and "data-col" in a:
            self._cell = a["data-col"]
            self.rows[-1][self._cell] = {"value": a.get("data-value"), "text": ""}
        elif tag == "td" and self.table == "failures":
            self.failures[-1].setdefault("cells", []).append("")
        elif tag == "a":
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "script":
            self.scripts.append(a)

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tbody":
            self._in_body = False

    def handle_data(self, data):
        if self._cell and self.rows:
            self.rows[-1][self._cell]["text"] += data
        elif self.table == "failures" and self.failures and "cells" in self.failures[-1]:
            self.failures[-1]["cells"][-1] += data


def parse(path) -> Page:
    p = Page()
    p.feed(open(path, encoding="utf-8").read())
    return p


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Three readable chests of different sizes (different burdens) under an odd folder name, and a broken file."""
    root = tmp_path_factory.mktemp("in") / ODD
    root.mkdir()
    for i, shape in enumerate([(96, 96, 60), (80, 80, 40), (64, 64, 30)]):
        hu, _ = chest_phantom(shape=shape, spacing=SPACING, seed=i)
        stored, aff = reoriented(np.round(hu), SPACING, "RAS")
        save_nifti(str(root / f"chest{i}.nii.gz"), stored, aff)
    (root / "broken.nii.gz").write_bytes(b"<script>alert(1)</script>")
    ckpt = make_checkpoint(str(tmp_path_factory.mktemp("ck") / "tiny.pt"))
    out = tmp_path_factory.mktemp("out") / "out"
    assert main(["screen", "--no-progress", "--workers", "0", str(root), "-o", str(out), "--checkpoint", ckpt]) == 1
    return out


def test_page_has_a_row_per_case_links_that_exist_and_escaped_text(batch):
    page = parse(batch / "index.html")
    summary = json.load(open(batch / "summary.json"))
    assert [r["case_id"]["text"] for r in page.rows] == [c["case_id"] for c in summary["cases"]]
    for row, rec in zip(page.rows, summary["cases"]):
        assert row["status"]["text"] == rec["status"]
        assert float(row["burden_pct"]["value"]) == pytest.approx(rec["burden_pct"])
        assert row["burden_pct"]["text"] == f"{rec['burden_pct']:.2f}"
        assert row["warnings"]["value"] == str(len(rec["warnings"]))
    assert len(page.failures) == 1 and page.failures[0]["cells"][0] == "broken"
    assert ODD in page.failures[0]["cells"][1] and page.failures[0]["cells"][2]  # the path as text; a reason
    text = open(batch / "index.html", encoding="utf-8").read()
    assert "<script>alert" not in text and ODD not in text and "a&lt;b&gt;&amp;&quot;c" in text
    assert len(page.images) == 3 and all(os.path.isfile(batch / src) for src in page.images)
    for href in page.links:
        assert "://" not in href and os.path.isfile(batch / href), href  # relative, and there
    assert page.scripts == [{}]  # one inline script, nothing loaded from anywhere
    assert "research use" in text


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("COVSEG_REQUIRE_CHROMIUM") == "1":
        pytest.fail("COVSEG_REQUIRE_CHROMIUM=1 but no chromium on PATH (apt-get install chromium)")
    pytest.skip("no headless Chromium on PATH (Debian: apt-get install chromium)")


def _browse(chromium: str, tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=2000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_page_in_headless_chromium_renders_sorts_and_is_not_blank(batch, tmp_path):
    from PIL import Image

    chromium = _chromium()
    url = (batch / "index.html").as_uri()
    cases = json.load(open(batch / "summary.json"))["cases"]
    for fragment, key, reverse in (("#sort=-burden_pct", "burden_pct", True), ("#sort=case_id", "case_id", False),
                                   ("#sort=burden_pct", "burden_pct", False)):
        done = _browse(chromium, tmp_path, "--dump-dom", url + fragment)
        assert done.returncode == 0, done.stderr[-2000:]
        page = Page()
        page.feed(done.stdout)
        want = [c["case_id"] for c in sorted(cases, key=lambda c: c[key], reverse=reverse)]
        assert [r["case_id"]["text"] for r in page.rows] == want, fragment
        assert f'data-sorted="{"-" if reverse else ""}{key}"' in done.stdout  # the script ran and sorted
    shot = tmp_path / "page.png"
    done = _browse(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,900", url)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    grey = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert grey.shape == (900, 1200) and grey.std() > 5 and (grey < 128).mean() > 0.005  # text and thumbnails
