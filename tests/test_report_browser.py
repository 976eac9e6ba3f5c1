"""A real browser opens report.html: headless Chromium renders it, the page is not blank and every
image decoded (naturalWidth > 0). Skipped, with the reason, where Chromium is not installed
(`make test` installs the Debian package `chromium` with apt-get when it can)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_report_pareto import _experiment

from progtune.analysis.report import build_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (make test runs `apt-get install -y chromium` when it can)",
)
# Runs on load, writes what the page shows into a <pre> that --dump-dom prints.
CHECK = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const result = {
    text: document.body.innerText.trim().length,
    tables: document.querySelectorAll("table").length,
    images: images.length,
    loaded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    broken: images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt),
  };
  const pre = document.createElement("pre");
  pre.id = "browser-check";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"),
        *("--disable-component-update", "--disable-sync", "--no-first-run"),
        f"--user-data-dir={profile}",
    ]
    return subprocess.run(
        [str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120
    )


def rendered(html: Path, tmp: Path) -> dict:
    """What Chromium made of `html`: text length, tables, images and how many decoded."""
    page = tmp / "checked.html"
    page.write_text(html.read_text().replace("</body>", CHECK + "\n</body>"))
    out = chromium(tmp / "profile", "--virtual-time-budget=10000", "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', out.stdout, re.S)
    assert found, f"no check result in the rendered page; stderr: {out.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"'))


def test_report_renders_in_chromium_with_every_image(tmp_path):
    folder = _experiment(tmp_path / "res" / "p")
    out = write_report(build_report([folder]), tmp_path / "report", top=3)
    pngs = list(out.glob("*.png"))
    got = rendered(out / "report.html", tmp_path)
    assert got["text"] > 500 and got["tables"] >= 3  # not blank: words and tables
    assert got["images"] == len(pngs) > 5
    assert got["loaded"] == got["images"], f"images that did not load: {got['broken']}"


def test_screenshot_is_a_picture_of_the_page(tmp_path):
    folder = _experiment(tmp_path / "res" / "p")
    out = write_report(build_report([folder]), tmp_path / "report", top=3)
    shot = tmp_path / "shot.png"
    done = chromium(
        tmp_path / "profile",
        f"--screenshot={shot}",
        "--window-size=1200,1600",
        "--hide-scrollbars",
        (out / "report.html").as_uri(),
    )
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels.std() > 0.05  # not one colour: the page drew something


if __name__ == "__main__":  # python tests/test_report_browser.py EXPERIMENT OUT.png
    report = write_report(build_report([sys.argv[1]]), Path(sys.argv[2]).with_suffix(""), top=3)
    size = os.environ.get("SHOT_SIZE", "1200,2200")
    done = chromium(
        report / ".profile",
        f"--screenshot={Path(sys.argv[2]).absolute()}",
        f"--window-size={size}",
        "--hide-scrollbars",
        (report / "report.html").as_uri(),
    )
    shutil.rmtree(report / ".profile", ignore_errors=True)
    print(done.returncode, done.stderr[-500:])
