"""Tests of `pacekeeper run`: the batch reader, the result file, the engine and the CLI."""
