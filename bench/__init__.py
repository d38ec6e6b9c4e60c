"""pacekeeper's benchmark: pacekeeper against the recipes people write today, a reference pacer
and the practical limit, on the simulator's scenarios; plus CPU and memory overhead.

Run ``make bench`` (or ``python -m bench --quick`` for a smoke run). See bench/README.md.
"""
