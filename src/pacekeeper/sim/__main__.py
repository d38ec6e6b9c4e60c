"""`python -m pacekeeper.sim`: see `python -m pacekeeper.sim --help`."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
