"""pacekeeper's core: pure pacing, classification and accounting logic, with no I/O."""
