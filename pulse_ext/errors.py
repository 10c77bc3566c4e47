"""The library's one exception for a caller's mistake.

:class:`UserError` is a ``ValueError`` whose message names the argument or file, what was expected and
what was found, in one line. Library code (reading images, writing outputs, folder jobs, the demo)
raises it; the command line prints it as ``pulse-ext: error: …`` with exit code 2 and no traceback,
and the demo shows it in the page.
"""


class UserError(ValueError):
    """A mistake of the caller's (a bad option, an unreadable input, an unwritable output)."""


# The command's name, which prefixes what library code prints for a person (folder jobs' warnings).
PROG = "pulse-ext"
