"""The batch runner behind ``pacekeeper run``: JSONL in, JSONL out, exactly once, resumable."""

from pacekeeper.batch._input import BadLine, BatchLine, count_lines, read_lines
from pacekeeper.batch._output import OutputDamaged, ResultFile
from pacekeeper.batch._runner import BatchJob, BatchResult, join_url, run_batch, shard_of

__all__ = [
    "BadLine",
    "BatchJob",
    "BatchLine",
    "BatchResult",
    "OutputDamaged",
    "ResultFile",
    "count_lines",
    "join_url",
    "read_lines",
    "run_batch",
    "shard_of",
]
