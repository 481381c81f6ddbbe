"""Open a generated report.html in headless Chromium and check the table and plots really render.

String checks on the HTML (test_html.py) cannot tell whether a browser decodes the base64 images
or lets the page's own Content-Security-Policy block them; a real browser can. CI installs the
Debian ``chromium`` package (.ci/run); elsewhere the test skips when no Chromium is found.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from matplotlib.image import imread

from fedpress.report import write_report

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _find_chromium() -> str | None:
    env = os.environ.get("FEDPRESS_CHROMIUM")
    if env:
        return env
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not found (install the Debian 'chromium' package or set "
    "FEDPRESS_CHROMIUM); .ci/run installs it when CI=true",
)

# Runs on `load`: counts images the browser actually decoded (naturalWidth > 0) and laid out
# with a non-zero box, and results-table rows that take up space, then writes them into the DOM
# for --dump-dom to print.
_PROBE = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var shown = imgs.filter(function (i) {
    var r = i.getBoundingClientRect();
    return i.complete && i.naturalWidth > 0 && r.width > 0 && r.height > 0;
  }).length;
  var rows = Array.prototype.slice.call(document.querySelectorAll('table.results tbody tr'))
    .filter(function (tr) { return tr.getBoundingClientRect().height > 0; }).length;
  var m = document.createElement('pre');
  m.id = 'fp-probe';
  m.textContent = 'FPPROBE images=' + imgs.length + ' shown=' + shown + ' rows=' + rows + ' END';
  document.body.appendChild(m);
});
</script>"""
_MARK = re.compile(r"FPPROBE images=(\d+) shown=(\d+) rows=(\d+) END")


def _chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI containers run as root, where the sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # small /dev/shm in containers crashes the renderer
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - environment trouble
        pytest.fail(f"chromium did not finish within 120 s: {' '.join(cmd)}\n{exc.stderr}")


@pytest.fixture
def report_html(tmp_path, runs, partition) -> Path:
    runs[1]["summary"]["codec"] = "<script>document.title='pwned'</script>"
    paths = write_report(
        tmp_path / "out",
        runs,
        config={"scenario": "digits", "rounds": 5},
        environment={"python": "3.11"},
        partition=partition,
        target=0.9,
    )
    return paths["html"]


def test_browser_renders_table_and_images(tmp_path, report_html, runs):
    page = report_html.read_text(encoding="utf-8")
    # Test-only copy: allow the probe script through the CSP, keep every other restriction
    # (img-src data: in particular) so the images must load under the report's own policy.
    csp = re.compile(r'(<meta http-equiv="Content-Security-Policy" content=")([^"]*)(")')
    assert csp.search(page), "report lost its Content-Security-Policy"
    probed = csp.sub(lambda m: f"{m[1]}{m[2]}; script-src 'unsafe-inline'{m[3]}", page, count=1)
    probed = probed.replace("</body>", _PROBE + "</body>")
    copy = tmp_path / "probed.html"
    copy.write_text(probed, encoding="utf-8")

    proc = _chromium(
        tmp_path / "profile", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()
    )
    found = _MARK.search(proc.stdout)
    assert found, f"probe marker missing (rc={proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    images, shown, rows = map(int, found.groups())
    assert images == 4  # accuracy_vs_bytes, vs round, vs time, partition heatmap
    assert shown == images, f"only {shown}/{images} images decoded and laid out"
    assert rows == len(runs)
    # The codec name with a <script> tag is shown as text and never ran.
    assert "pwned" not in re.search(r"<title>(.*?)</title>", proc.stdout, re.S).group(1)


def test_browser_screenshot_is_not_blank(tmp_path, report_html):
    shot = tmp_path / "shot.png"
    proc = _chromium(
        tmp_path / "profile",
        "--window-size=1280,1400",
        f"--screenshot={shot}",
        report_html.as_uri(),  # the unmodified report, under its own CSP
    )
    assert shot.exists(), f"no screenshot (rc={proc.returncode}); stderr:\n{proc.stderr[-3000:]}"
    img = imread(shot)[..., :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1200
    dark = (img.max(axis=-1) < 0.35).mean()  # text, table borders, axes
    colourful = ((img.max(axis=-1) - img.min(axis=-1)) > 0.35).sum()  # plot lines only
    assert dark > 0.002, "page looks empty: no text"
    assert colourful > 2000, f"plot not visible in screenshot ({colourful} coloured pixels)"
