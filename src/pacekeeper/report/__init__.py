"""What a run looks like afterwards: the summary table, the HTML report with its verdict, and
OpenTelemetry spans and metrics.

Importing this package is cheap: matplotlib (``pacekeeper[report]``) is imported only when a
report is drawn, and OpenTelemetry (``pacekeeper[otel]``) only when an
:class:`~pacekeeper.report.otel.OpenTelemetryHook` is made.
"""

from typing import TYPE_CHECKING, Any

from pacekeeper.report._extras import MissingExtraError
from pacekeeper.report._load import BadLine, RunData, iter_records, load_run
from pacekeeper.report._plots import require_matplotlib
from pacekeeper.report._render import (
    ReportError,
    ReportRecorder,
    ReportSummary,
    render_report,
    write_report_from_records,
)
from pacekeeper.report._verdict import Finding, findings
from pacekeeper.report.summary import queue_wait_rows, queue_wait_table, summary_rows, summary_table

if TYPE_CHECKING:
    from pacekeeper.report.otel import OpenTelemetryHook

__all__ = [
    "BadLine",
    "Finding",
    "MissingExtraError",
    "OpenTelemetryHook",
    "ReportError",
    "ReportRecorder",
    "ReportSummary",
    "RunData",
    "findings",
    "iter_records",
    "load_run",
    "queue_wait_rows",
    "queue_wait_table",
    "render_report",
    "require_matplotlib",
    "summary_rows",
    "summary_table",
    "write_report_from_records",
]


def __getattr__(name: str) -> Any:
    if name == "OpenTelemetryHook":
        from pacekeeper.report.otel import OpenTelemetryHook

        return OpenTelemetryHook
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
