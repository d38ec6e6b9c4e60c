"""Tests of pacekeeper.sim (a package: helpers import relatively, module names stay unique)."""
