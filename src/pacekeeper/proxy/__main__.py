"""``python -m pacekeeper.proxy``: the same as ``pacekeeper proxy``."""

import sys

from pacekeeper.proxy._cli import main

if __name__ == "__main__":
    sys.exit(main())
