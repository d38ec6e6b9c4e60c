"""The report of a real run (a batch through the simulator), rendered by a real headless
Chromium: the charts decode and have a size in the browser, under the page's own
Content-Security-Policy; the table is there; a screenshot is kept for people to look at."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pacekeeper.report import render_report

from .conftest import ClassesRun, SimulatedRun
from .test_render import CHARTS_WITH_COST as CHARTS
from .test_render import Page, decode

pytestmark = [pytest.mark.browser, pytest.mark.slow]

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)

# Added to a copy of the page for the test: after load, write what the browser decoded of each
# image into the DOM. It runs under the page's own CSP (plus this one script's nonce), so an
# image the CSP blocked would show 0x0.
_PROBE = """<script nonce="probe">
addEventListener("load", () => {
  for (const img of document.images) {
    img.dataset.natural = img.naturalWidth + "x" + img.naturalHeight;
    img.dataset.shown = Math.round(img.getBoundingClientRect().width) + "x" +
      Math.round(img.getBoundingClientRect().height);
  }
  document.body.dataset.probed = "yes";
});
</script>"""


def chromium_run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


@pytest.fixture(scope="module")
def report(simulated_run: SimulatedRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report.html"
    render_report(simulated_run.log, out, title="pacekeeper run: the simulator, two models")
    return out


def test_the_verdict_of_a_real_run(simulated_run: SimulatedRun, report: Path) -> None:
    """What the simulator enforced is what the verdict says, from the records alone."""
    assert simulated_run.result.all_succeeded
    findings = simulated_run.recorder.findings()
    by_model = {f.lane[1]: f for f in findings if f.kind == "limit" and f.lane}
    assert "limited by tokens per minute (150,000 tpm)" in by_model["gpt-4o"].text
    assert by_model["gpt-4o"].numbers["share_tpm"] >= 0.6
    assert "limited by requests per minute (1,200 rpm)" in by_model["gpt-4o-mini"].text
    assert by_model["gpt-4o-mini"].numbers["share_rpm"] >= 0.5
    (reserve,) = [f for f in findings if f.kind == "max_tokens"]
    assert reserve.lane == ("/v1/chat/completions", "gpt-4o")
    assert reserve.numbers["max_tokens"] == pytest.approx(1000, rel=0.02)
    assert reserve.numbers["completion_p99"] <= 200  # the simulator's replies: 16..200
    assert reserve.numbers["gain"] > 3
    assert "lowering max_tokens from 1,000" in reserve.text
    # what each model cost, from the answers' usage at genai-prices' prices
    (cost,) = [f for f in findings if f.kind == "cost"]
    assert cost.text.startswith("Cost: $")
    assert "gpt-4o-mini $" in cost.text
    assert "gpt-4o $" in cost.text
    assert cost.numbers["cost_usd"] > 0
    # the page says the same as the hook that watched the run
    page = Page(report.read_text(encoding="utf-8"))
    assert page.findings == [f"{f.severity}{f.text}" for f in findings]


def test_chromium_renders_the_charts_and_the_table(
    chromium: str, report: Path, tmp_path: Path
) -> None:
    probed = tmp_path / "probed.html"
    text = report.read_text(encoding="utf-8")
    text = text.replace("default-src 'none';", "default-src 'none'; script-src 'nonce-probe';")
    probed.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    done = chromium_run(
        chromium,
        tmp_path / "profile",
        "--window-size=1280,2400",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probed.as_uri(),
    )
    dom = done.stdout
    assert 'data-probed="yes"' in dom, done.stderr[-2000:]
    page = Page(dom)
    assert len(page.images) == len(CHARTS)
    for img in page.images:
        mime, data = decode(img["src"])
        assert mime == "image/png"
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        natural_w, natural_h = (int(v) for v in img["data-natural"].split("x"))
        shown_w, shown_h = (int(v) for v in img["data-shown"].split("x"))
        assert natural_w > 1000
        assert natural_h > 100
        assert shown_w > 800  # laid out at the page's width, not collapsed
        assert shown_h > 50
        assert img["alt"]
    assert [f"chart-{c}" for c in CHARTS] == re.findall(r'<figure id="(chart-\w+)"', dom)
    rows = page.tables["summary-table"]
    assert [row[0] for row in rows[1:]] == ["gpt-4o", "gpt-4o-mini"]
    assert rows[1][1] == "16"
    assert rows[2][1] == "120"
    assert "binding-table" in page.tables
    assert len(page.findings) >= 4


def test_a_screenshot_is_kept(
    chromium: str, report: Path, tmp_path: Path, artifacts_dir: Path | None
) -> None:
    shot = tmp_path / "report.png"
    done = chromium_run(
        chromium,
        tmp_path / "profile",
        "--window-size=1280,2400",
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
        report.as_uri(),  # the page as shipped, its CSP untouched
    )
    assert shot.is_file(), done.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1280, 2400)
    # a page of text alone compresses far smaller than one with six charts
    assert len(data) > 150_000
    if artifacts_dir is not None:
        shutil.copy(shot, artifacts_dir / "report-screenshot.png")
        shutil.copy(report, artifacts_dir / "report.html")


def test_chromium_renders_the_queue_wait_panel(
    chromium: str, classes_run: ClassesRun, tmp_path: Path
) -> None:
    """Two classes on one key: the queue-wait chart decodes and is laid out in the browser,
    under the page's CSP, next to its table and its verdict sentence."""
    report = tmp_path / "classes.html"
    render_report(classes_run.log, report)
    probed = tmp_path / "probed.html"
    text = report.read_text(encoding="utf-8")
    text = text.replace("default-src 'none';", "default-src 'none'; script-src 'nonce-probe';")
    probed.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    done = chromium_run(
        chromium,
        tmp_path / "profile",
        "--window-size=1280,2400",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probed.as_uri(),
    )
    dom = done.stdout
    assert 'data-probed="yes"' in dom, done.stderr[-2000:]
    page = Page(dom)
    (img,) = [i for i in page.images if "Queue wait" in i["alt"] or "interactive:" in i["alt"]]
    natural_w, natural_h = (int(v) for v in img["data-natural"].split("x"))
    shown_w, shown_h = (int(v) for v in img["data-shown"].split("x"))
    assert natural_w > 1000
    assert natural_h > 100
    assert shown_w > 800
    assert shown_h > 50
    assert 'id="chart-queue_wait"' in dom
    rows = page.tables["queue-wait-table"]
    assert [row[1:3] for row in rows[1:]] == [
        ["interactive", "all"],
        ["interactive", "chat"],
        ["batch", "all"],
        ["batch", "nightly"],
    ]
    assert any(f.startswith("infoQueue wait per priority class") for f in page.findings)
