"""``<output>/report.html``: a run with ok, failed and skipped scenes, rendered in headless
Chromium -- the screenshot is not blank, the page logs nothing to the console, and it needs
nothing from the network."""
from __future__ import annotations

import re

import numpy as np
import pytest

from tests.chromium import chromium_binary, render
from tests.test_segment import job_env, make_bundle
from tests.test_segment_concurrent import finish_job, start_job

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from ingest.synthetic import make_geotiff

    tmp = tmp_path_factory.mktemp("report")
    a = make_geotiff(str(tmp / "in" / "a.tif"), 200, 250, seed=31)
    b = make_geotiff(str(tmp / "in" / "b.tif"), 150, 200, seed=32)
    model, env, out = make_bundle(str(tmp / "model")), job_env(type("E", (), {"env": dict})), tmp / "out"
    first = finish_job(start_job([a], str(out), model, env))
    assert first.rc == 0, first.out[-2000:]
    second = finish_job(start_job([a, b, str(tmp / "in" / "missing.tif")], str(out), model, env))
    assert second.rc == 1, second.out[-2000:]  # the missing scene fails
    return out / "report.html", second


def test_report_lists_every_scene_with_its_reason(report):
    page, run = report
    text = page.read_text()
    assert run.summary["run_id"] in text
    assert re.search(r"<td>a</td><td class='skipped'>skipped</td><td>done in run \S+</td>", text)
    assert "<td>b</td><td class='ok'>ok</td>" in text
    assert re.search(r"<td>missing</td><td class='failed'>failed</td><td>plan: MissingSceneError", text)
    assert "<a href='b/mask.tif'>mask.tif</a>" in text and "<a href='b/stats.json'>" in text
    # review queue: b's tiles (computed in this run), each with an inline quick-look crop
    crops = re.findall(r"<img alt='scene b tile [^']*' src='data:image/png;base64,", text)
    assert len(crops) == 2 * 2  # b: 150x200 = 2 x 2 tiles of 128 (overlap 16)
    # self-contained: nothing from the network, links relative
    assert not re.search(r"""(src|href)=['"]?(https?:)?//""", text)


@pytest.mark.skipif(chromium_binary() is None, reason="chromium is not installed "
                    "(.ci/run installs the Debian package where it can)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    from PIL import Image

    page, _ = report
    shot = tmp_path / "report.png"
    console = render(page, shot)
    assert console == [], console  # no script errors, no failed resource loads
    img = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)
    assert img.shape[:2] == (900, 1200)
    not_white = (img < 235).any(axis=2)
    assert 0.03 < not_white.mean() < 0.9, not_white.mean()  # text, table and crops drawn
    colourful = (img.max(axis=2) - img.min(axis=2)) > 60
    assert colourful.sum() > 20 * 160 * 4, colourful.sum()  # the crops rendered (not empty boxes)

    # the check itself sees what it must: a console error and a missing image on a bad page
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><img src='missing.png'><script>console.error('boom')</script>"
                   "</body></html>")
    assert any("boom" in line for line in render(bad, tmp_path / "bad.png"))


def test_a_rerun_that_only_skips_keeps_the_review_queue_page(tmp_path):
    """report.html is the latest run that computed (or failed) something; every run has its
    own page under reports/, and the pages link each other (issue 33)."""
    from jobs.segmentation.report import write_report

    out = str(tmp_path)
    first = {"run_id": "20261206T010000-aaaaaa", "tiles_computed": 12, "model": "m", "output": out}
    rows = [{"id": "s1", "status": "ok", "tiles": 12, "tiles_computed": 12,
             "outputs": ["mask.tif"], "foreground_fraction": 0.1}]
    assert write_report(out, first, rows, 64, 8) == f"{out}/report.html"
    page = (tmp_path / "report.html").read_text()
    own = (tmp_path / "reports" / f"{first['run_id']}.html").read_text()
    assert "href='s1/mask.tif'" in page and "href='../s1/mask.tif'" in own  # both resolve
    second = dict(first, run_id="20261207T010000-bbbbbb", tiles_computed=0)
    skipped = [dict(rows[0], status="skipped", tiles_computed=0)]
    got = write_report(out, second, skipped, 64, 8)
    assert got.endswith(f"reports/{second['run_id']}.html")
    assert (tmp_path / "report.html").read_text() == page  # yesterday's queue stays
    newest = (tmp_path / "reports" / f"{second['run_id']}.html").read_text()
    assert f"../reports/{first['run_id']}.html" in newest and "../report.html" in newest
    third = dict(first, run_id="20261208T010000-cccccc", tiles_computed=0)
    write_report(out, third, [dict(rows[0], status="failed", error="boom")], 64, 8)
    assert third["run_id"] in (tmp_path / "report.html").read_text()  # a failure is news
