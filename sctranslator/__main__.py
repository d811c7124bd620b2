"""`python -m sctranslator ...`: the same command line as `sctranslator ...`."""

import sys

from sctranslator.cli.entry import main

if __name__ == "__main__":
    sys.exit(main())
