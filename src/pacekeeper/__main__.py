import sys

from pacekeeper.cli import main

sys.exit(main())
