"""`python -m pacekeeper.report`: the same as `pacekeeper report` (see --help)."""

import sys

from pacekeeper.report._cli import main

if __name__ == "__main__":
    sys.exit(main())
