"""Open the sample's report in headless Chromium: it renders from disk, logs nothing to the console, and looks like
a page (a non-blank screenshot).  Chromium is installed by ``scripts/ensure_chromium.sh`` when missing.

Console detection: Chromium with ``--enable-logging=stderr --v=0`` writes every console message (``console.*`` and
uncaught exceptions) as a ``:CONSOLE`` log line.  The report has no scripts, so *any* console line is a failure;
``test_console_detection_works`` proves the scan catches an uncaught error on a deliberately broken page.
"""

from __future__ import annotations

import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from servingbench.report.build import write_report

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "results" / "sample"
ENSURE = ROOT / "scripts" / "ensure_chromium.sh"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--hide-scrollbars"]


@pytest.fixture(scope="module")
def chromium() -> str:
    proc = subprocess.run(["bash", str(ENSURE)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"could not install Chromium with {ENSURE}:\n{proc.stderr[-3000:]}")
    path = proc.stdout.strip().splitlines()[-1]
    assert Path(path).exists(), path
    return path


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=180)


def _console_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if ":CONSOLE" in l or "Uncaught" in l]


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    return write_report(SAMPLE, tmp_path_factory.mktemp("reports"))


def test_console_detection_works(chromium, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><p>x</p><script>throw new Error("planted-error")</script></body></html>')
    proc = _run(chromium, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom", bad.as_uri())
    assert any("planted-error" in l for l in _console_lines(proc.stderr)), proc.stderr[-2000:]


def test_report_renders_without_console_errors(chromium, report, tmp_path):
    proc = _run(chromium, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom", report.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _console_lines(proc.stderr) == []
    dom = proc.stdout
    assert "servingbench report" in dom
    for section in ("summary", "environment", "features", "performance", "reproduce"):
        assert f'id="{section}"' in dom
    for name in ("litserve", "mosec", "mlserver", "mlp"):
        assert name in dom


def test_every_image_is_an_embedded_data_uri(report):
    class Imgs(HTMLParser):
        def __init__(self):
            super().__init__()
            self.src: list[str] = []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.src.append(dict(attrs).get("src") or "")

    p = Imgs()
    p.feed(report.read_text())
    assert p.src
    for s in p.src:
        m = re.match(r"data:image/png;base64,([A-Za-z0-9+/=]+)$", s)
        assert m and len(m.group(1)) > 1000, s[:80]


def test_screenshot_is_not_blank(chromium, report, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    proc = _run(chromium, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1400,3000", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    with open(shot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    img = Image.open(shot).convert("L")
    assert img.size == (1400, 3000)
    lo, hi = img.getextrema()
    assert hi - lo > 100  # text on a background, not a flat image
    hist = img.histogram()
    non_white = sum(hist[:240]) / (img.size[0] * img.size[1])
    assert 0.01 < non_white < 0.9, non_white
