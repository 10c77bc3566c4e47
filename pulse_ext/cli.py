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
import importlib
import sys

from pulse_ext.errors import PROG, UserError
from pulse_ext.allocator import tune_glibc_malloc

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


def run():
    """The ``pulse-ext`` console script: process-level set-up, then :func:`main`."""
    tune_glibc_malloc()
    sys.exit(main())


if __name__ == "__main__":
    run()
