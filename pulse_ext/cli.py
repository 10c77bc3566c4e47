"""The ``pulse-ext`` command line: ``main(argv) -> exit code``.

Subcommands live in their own modules and are registered in :data:`SUBCOMMANDS` as
``name -> "module:ATTRIBUTE"``, where the attribute is a ``(help, add_arguments, run)`` triple:
``add_arguments(parser)`` declares the options, ``run(args) -> int`` does the work. Add a command by
adding one line here.

User mistakes (a missing file, an unreadable checkpoint, a bad option value) raise the library's
:class:`~pulse_ext.errors.UserError` (or its command-line subclass :class:`UsageError`) or a
``CheckpointError``; ``main`` prints them as one line
``pulse-ext: error: …`` on stderr and returns 2, without a traceback.
"""
import argparse
import ctypes
import importlib
import os
import sys

from pulse_ext.errors import PROG, UserError

SUBCOMMANDS = {
    "align": "pulse_ext.cli_align:ALIGN",
    "convert": "pulse_ext.checkpoints.commands:CONVERT",
    "demo": "pulse_ext.cli_demo:DEMO",
    "info": "pulse_ext.checkpoints.commands:INFO",
    "upscale": "pulse_ext.cli_upscale:UPSCALE",
}


class UsageError(UserError):
    """A mistake in the command line's arguments; reported in one line, exit code 2."""


def _load_subcommand(target):
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def build_parser():
    from pulse_ext import __version__

    parser = argparse.ArgumentParser(prog=PROG, description="PULSE face super-resolution on StyleGAN2.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, target in SUBCOMMANDS.items():
        help_text, add_arguments, run = _load_subcommand(target)
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        add_arguments(subparser)
        subparser.set_defaults(_run=run)
    return parser


def _user_error_types():
    from pulse_ext.checkpoints.errors import CheckpointError

    return (UserError, CheckpointError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def main(argv=None):
    """Run ``pulse-ext`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except _user_error_types() as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


def tune_glibc_malloc() -> bool:
    """Keep large buffers in the heap and freed memory in the process (glibc only).

    By default glibc serves allocations over its (at most 32 MiB) mmap threshold with fresh mmaps and
    returns freed heap tops to the OS, so every search step page-faults its activations in again:
    ~15 % of a 32-restart CPU step here (docs/performance.md). Process-wide, so only the command line
    does it (its process is ours); the price is that peak memory stays with the process until it
    exits. Skipped when the user set MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ themselves. Returns
    whether it applied.
    """
    if not sys.platform.startswith("linux") or {"MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"} & set(os.environ):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    ok = mallopt(M_MMAP_MAX, 0) == 1  # never mmap: every allocation from the (reused) heap
    ok &= mallopt(M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1  # never give the heap top back
    return bool(ok)


def run():
    """The ``pulse-ext`` console script: process-level set-up, then :func:`main`."""
    tune_glibc_malloc()
    sys.exit(main())


if __name__ == "__main__":
    run()
