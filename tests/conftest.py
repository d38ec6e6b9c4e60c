"""Suite-wide settings.

In CI (PACEKEEPER_CI=1, set by .ci/run) hypothesis runs derandomized: the same examples on
every run, so that a landing is never decided by a new random draw. Outside CI it explores
freshly each time, and what it finds is kept in .hypothesis/ and replayed.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("PACEKEEPER_CI") == "1":
    settings.load_profile("ci")
