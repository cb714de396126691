"""`python -m xdezero ...` runs the `xdezero` command."""

import sys

from xdezero.cli import main

if __name__ == "__main__":
    sys.exit(main())
