"""``python -m pulse_ext``: the ``pulse-ext`` command line."""
from pulse_ext.cli import run

if __name__ == "__main__":
    run()
