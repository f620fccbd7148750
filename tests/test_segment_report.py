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
