"""Tests of the core: pure pieces, and lanes driven on a simulated clock."""
