"""``python -m pulse_ext``: the ``pulse-ext`` command line."""
import sys

from pulse_ext.cli import main

if __name__ == "__main__":
    sys.exit(main())
