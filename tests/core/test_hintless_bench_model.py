"""Hintless servers of the robustness bench's classes, driven on a simulated clock with a
finite workload (tests/core/hintless_servers.py): what the bench scores, on draws it does
not use."""

from __future__ import annotations

import random

from .hintless_servers import draw_bare, run


def test_no_bucket_of_bare_class_is_held_to_windows_it_does_not_have() -> None:
    """Buckets of 1-2 s, 300-3000/min, answers of 0.2-3 s, bare 429s (the `bare` class
    widened): none ends its run held to fixed windows, and none runs at a fraction of
    its rate. Before the grid counted a boundary's brackets once, a 2018/min bucket with
    1.1-s answers was held to windows of 1 (efficiency 0.22 of the ideal, 0.75 now)."""
    buckets = 0
    for seed in range(32):
        server = draw_bare(random.Random(f"bare-fresh:{seed}"), seed)
        if server.fixed:
            continue
        buckets += 1
        result = run(server)
        grid = result.lane._grid
        assert grid is None or grid.windows is None, (server.summary, grid.windows)
        assert result.efficiency >= 0.5, (server.summary, result.efficiency)
    assert buckets >= 10
