"""The HTML report without a browser: what it contains, what it escapes, what it refuses; the
`pacekeeper report` command line; and that the extras stay optional."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import pacekeeper
from pacekeeper import AttemptRecord, Governor, Limits, RequestRecord
from pacekeeper.report import (
    MissingExtraError,
    ReportError,
    ReportRecorder,
    render_report,
    require_matplotlib,
    write_report_from_records,
)
from pacekeeper.report._cli import default_output, main
from pacekeeper.report._plots import image_size

from .conftest import ClassesRun
from .crafted import Provider, Run, every, simulate

CHARTS = ("throughput", "concurrency", "errors", "tokens", "latency", "binding")
CHARTS_WITH_COST = (*CHARTS[:-1], "cost", CHARTS[-1])  # records that carry costs


class Page(HTMLParser):
    """The parts of a page the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.findings: list[str] = []
        self.tags: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._finding: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        for name in ("src", "href", "action", "poster", "data"):
            if name in a:
                self.urls.append(a[name])
        if tag == "img":
            self.images.append(a)
        elif tag == "table":
            self._table = a.get("id", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "li" and "finding" in a.get("class", ""):
            self._finding = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "li" and self._finding is not None:
            self.findings.append("".join(self._finding).strip())
            self._finding = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._finding is not None:
            self._finding.append(data)


def decode(uri: str) -> tuple[str, bytes]:
    match = re.fullmatch(r"data:([\w/+.-]+);base64,([A-Za-z0-9+/=]+)", uri)
    assert match, uri[:80]
    return match.group(1), base64.b64decode(match.group(2), validate=True)


def write_log(path: Path, records: list[Any]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r.as_dict()) + "\n")
    return path


@pytest.fixture(scope="module")
def two_model_records() -> list[AttemptRecord | RequestRecord]:
    fast = simulate(
        Run(requests=150, model="gpt-4o-mini", provider=Provider(rpm=1200), known_rpm=1200)
    )
    slow = simulate(
        Run(
            requests=40,
            model="gpt-4o",
            provider=Provider(tpm=60_000),
            max_tokens=1000,
            completion_tokens=lambda i: 80 + i % 50,
            fault=every(9, ("server_error", 500, "HTTP 500 server_error: boom")),
        )
    )
    return fast + slow


def test_the_page_has_its_charts_verdict_and_tables(
    tmp_path: Path, two_model_records: list[Any]
) -> None:
    log = write_log(tmp_path / "attempts.jsonl", two_model_records)
    summary = render_report(log, tmp_path / "out" / "report.html", title="Nightly batch")
    assert summary.output_path == tmp_path / "out" / "report.html"
    assert summary.charts == CHARTS
    assert summary.requests == 190
    assert summary.bad_line_count == 0
    text = summary.output_path.read_text(encoding="utf-8")
    page = Page(text)

    assert len(page.images) == len(CHARTS)
    for img in page.images:
        mime, data = decode(img["src"])
        assert mime == "image/png"
        size = image_size(mime, data)
        assert size is not None
        assert size[0] > 1000
        assert size[1] > 100
        assert len(img["alt"]) > 40
        assert int(img["width"]) > 0
        assert int(img["height"]) > 0
    throughput_alt = page.images[0]["alt"]
    assert "gpt-4o-mini peaked at" in throughput_alt
    assert "against a limit of 1,200 rpm" in throughput_alt

    assert page.findings == [f"{f.severity}{f.text}" for f in summary.findings]
    assert any("limited by tokens per minute (60,000 tpm)" in f for f in page.findings)
    summary_table = page.tables["summary-table"]
    assert summary_table[0][:3] == ["model", "reqs", "ok"]
    assert [row[0] for row in summary_table[1:]] == ["gpt-4o", "gpt-4o-mini"]
    assert [row[1] for row in summary_table[1:]] == ["40", "150"]
    assert page.tables["binding-table"][0][0] == "model"
    assert "<title>Nightly batch</title>" in text


def test_the_page_loads_nothing_from_anywhere(tmp_path: Path, two_model_records: list[Any]) -> None:
    summary = render_report(write_log(tmp_path / "a.jsonl", two_model_records), tmp_path / "r.html")
    text = summary.output_path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.urls
    assert all(url.startswith("data:") for url in page.urls)
    assert "script" not in page.tags
    assert "link" not in page.tags
    without_images = re.sub(r"data:[^\"]+", "", text)
    assert "http://" not in without_images
    assert "https://" not in without_images
    assert "url(" not in without_images
    assert "@import" not in without_images
    assert "default-src 'none'; img-src data:" in text


def test_svg_charts(tmp_path: Path, two_model_records: list[Any]) -> None:
    summary = write_report_from_records(two_model_records, tmp_path / "r.html", image_format="svg")
    page = Page(summary.output_path.read_text(encoding="utf-8"))
    for img in page.images:
        mime, data = decode(img["src"])
        assert mime == "image/svg+xml"
        assert b"<svg" in data[:2000]
        size = image_size(mime, data)
        assert size is not None
        assert size[0] > 0


def test_every_text_from_the_records_is_escaped(tmp_path: Path) -> None:
    hostile = '<img src=x onerror="alert(1)">'
    records = simulate(
        Run(
            requests=20,
            model=hostile,
            route="/v1/chat/completions?<b>",
            fault=every(4, ("client_error", 400, "HTTP 400: </li><script>alert('pwned')</script>")),
        )
    )
    summary = write_report_from_records(
        records, tmp_path / "r.html", title="<script>title</script> & co"
    )
    text = summary.output_path.read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in page.tags
    assert [tag for tag in page.tags if tag == "img"] == ["img"] * len(CHARTS)
    assert "&lt;script&gt;title&lt;/script&gt; &amp; co" in text
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
    assert "&lt;/li&gt;&lt;script&gt;" in text


def test_unreadable_lines_are_listed_in_the_page_and_the_summary(
    tmp_path: Path, two_model_records: list[Any]
) -> None:
    log = write_log(tmp_path / "a.jsonl", two_model_records[:50])
    with log.open("a", encoding="utf-8") as f:
        f.write("garbage\n")
        f.write('{"type": "attempt"}\n')
        f.write('{"type": "request", "route": "/v1/chat/comp')  # torn
    summary = render_report(log, tmp_path / "r.html")
    assert summary.bad_line_count == 3
    assert [b.line_no for b in summary.bad_lines] == [51, 52, 53]
    text = summary.output_path.read_text(encoding="utf-8")
    assert "3 lines of the records file could not be read" in text
    assert "line 51: not JSON" in text
    assert "line 53: incomplete last line" in text


def test_a_file_without_records_is_refused_with_a_hint(tmp_path: Path) -> None:
    results = tmp_path / "results.jsonl"
    results.write_text('{"custom_id": "a", "response": {"status_code": 200}}\n')
    with pytest.raises(ReportError, match="not the results file"):
        render_report(results, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(ReportError):
        write_report_from_records([], tmp_path / "r.html")
    with pytest.raises(ReportError):
        ReportRecorder().write(tmp_path / "r.html")


def test_the_write_is_atomic_and_leaves_no_temporary_files(
    tmp_path: Path, two_model_records: list[Any]
) -> None:
    out = tmp_path / "r.html"
    out.write_text("old report")
    write_report_from_records(two_model_records, out)
    assert out.read_text(encoding="utf-8").startswith("<!doctype html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]


async def test_the_recorder_is_a_hook_on_a_real_governor(tmp_path: Path) -> None:
    class Flaky(Exception):
        status_code = 503

    class Usage:
        prompt_tokens, completion_tokens = 12, 7

    class Reply:
        usage = Usage()

    calls = 0

    async def call() -> Reply:
        nonlocal calls
        calls += 1
        if calls % 3 == 1:
            raise Flaky("overloaded")
        return Reply()

    recorder = ReportRecorder()
    gov = Governor(limits=Limits(rpm=6000, concurrency=4), hooks=[recorder])
    pacekeeper.set_testing(True)
    try:
        for _ in range(20):
            await gov.run(call, route="/v1/chat/completions", model="m")
    finally:
        pacekeeper.set_testing(False)
    assert recorder.records == 20 + calls
    summary = recorder.write(tmp_path / "r.html", title="from a governor")
    assert summary.requests == 20
    assert summary.attempts == calls
    up = [f for f in summary.findings if f.kind == "upstream"]
    assert up
    assert "503" in up[0].text


def test_a_missing_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, two_model_records: list[Any]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pacekeeper\[report\]"):
        require_matplotlib()  # what `run --report` checks before a long run starts
    log = write_log(tmp_path / "a.jsonl", two_model_records[:10])
    with pytest.raises(MissingExtraError, match=r"pip install 'pacekeeper\[report\]'"):
        render_report(log, tmp_path / "r.html")
    # the verdict alone needs no matplotlib
    recorder = ReportRecorder()
    for r in two_model_records[:10]:
        if isinstance(r, AttemptRecord):
            recorder.on_attempt(r)
        else:
            recorder.on_request(r)
    assert recorder.findings()
    assert main([str(log), "-o", str(tmp_path / "r.html")]) == 2


def test_importing_the_package_imports_no_extra() -> None:
    code = (
        "import sys, pacekeeper.report, pacekeeper.report.otel; "
        "bad = [m for m in sys.modules if m.startswith(('matplotlib', 'opentelemetry'))]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# -- the command line -----------------------------------------------------------------------


def test_cli_writes_the_report_and_prints_the_verdict(
    tmp_path: Path, two_model_records: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "attempts.jsonl", two_model_records)
    with log.open("a") as f:
        f.write("not json\n")
    assert main([str(log)]) == 0
    out, err = capsys.readouterr()
    assert (tmp_path / "attempts.html").is_file()
    assert out.startswith(f"pacekeeper report: wrote {tmp_path / 'attempts.html'} (190 requests")
    assert "- gpt-4o finished last" in out
    assert "warning: 1 line of" in err
    assert f"line {len(two_model_records) + 1}: not JSON" in err

    assert main([str(log), "-o", str(tmp_path / "q.html"), "--quiet"]) == 0
    out, _ = capsys.readouterr()
    assert out == ""
    assert (tmp_path / "q.html").is_file()


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    results = tmp_path / "results.jsonl"
    results.write_text('{"custom_id": "a"}\n')
    assert main([str(results)]) == 1
    assert "no pacekeeper records found" in capsys.readouterr().err
    assert main([str(results), "-o", str(results)]) == 2
    assert "must not be the records file" in capsys.readouterr().err


def test_default_output_names() -> None:
    assert default_output(Path("a/attempts.jsonl")) == Path("a/attempts.html")
    assert default_output(Path("run.log.jsonl.gz")) == Path("run.html")
    assert default_output(Path("records")) == Path("records.html")


def test_python_dash_m_runs_the_command(tmp_path: Path, two_model_records: list[Any]) -> None:
    log = write_log(tmp_path / "a.jsonl", two_model_records[:40])
    done = subprocess.run(
        [sys.executable, "-m", "pacekeeper.report", str(log), "-o", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_queue_wait_per_class_and_tenant_from_a_real_run(
    tmp_path: Path, classes_run: ClassesRun
) -> None:
    """A batch and an interactive caller on one key: the page read back from the --log file
    has the queue-wait chart, its table and a verdict sentence per class; the interactive
    caller waited far less than the batch it overtook."""
    assert classes_run.result.all_succeeded
    summary = render_report(classes_run.log, tmp_path / "r.html")
    assert summary.charts == (*CHARTS[:-1], "queue_wait", CHARTS[-1])
    (finding,) = [f for f in summary.findings if f.kind == "queue_wait"]
    assert finding.text.startswith("Queue wait per priority class: interactive p50 ")
    assert "(8 requests); batch p50 " in finding.text
    assert "Per tenant (p95): nightly (batch) " in finding.text
    assert "chat (interactive)" in finding.text
    interactive_p95 = finding.numbers["queue_wait_p95_s:interactive"]
    assert interactive_p95 < finding.numbers["queue_wait_p95_s:batch"]
    assert finding.numbers["requests:batch"] == 80
    # the file says what the hook that watched the run says
    (live,) = [f for f in classes_run.recorder.findings() if f.kind == "queue_wait"]
    assert live.text == finding.text
    page = Page(summary.output_path.read_text(encoding="utf-8"))
    table = page.tables["queue-wait-table"]
    assert table[0] == ["model", "class", "tenant", "reqs", "wait p50", "wait p95", "wait p99"]
    assert [row[1:4] for row in table[1:]] == [
        ["interactive", "all", "8"],
        ["interactive", "chat", "8"],
        ["batch", "all", "80"],
        ["batch", "nightly", "80"],
    ]
    chart = page.images[summary.charts.index("queue_wait")]
    assert "interactive: 8 requests, p50 " in chart["alt"]
    assert "batch \u00b7 nightly: 80 requests" in chart["alt"]


def test_a_log_from_before_priority_classes_reads_as_interactive(tmp_path: Path) -> None:
    (record,) = [r for r in simulate(Run(requests=1)) if isinstance(r, RequestRecord)]
    line = record.as_dict()
    del line["priority"], line["tenant"]
    log = tmp_path / "old.jsonl"
    log.write_text(json.dumps(line) + "\n", encoding="utf-8")
    from pacekeeper.report import load_run

    run = load_run(log)
    assert run.bad_line_count == 0
    assert [(w.priority, w.requests) for w in run.queue_waits.by_class()] == [("interactive", 1)]
    assert not run.queue_waits.varied
