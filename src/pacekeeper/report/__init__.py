"""What a run looks like afterwards: the summary table (and, with extras, plots and metrics)."""

from pacekeeper.report.summary import summary_rows, summary_table

__all__ = ["summary_rows", "summary_table"]
