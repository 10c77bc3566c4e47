"""Errors raised by the checkpoint loaders.

Every problem with a checkpoint *file* (missing, truncated, unknown format, unsafe content,
unsupported architecture) is a :class:`CheckpointError`, a ``ValueError``, so callers and the CLI
can report it in one line without a traceback.
"""


class CheckpointError(ValueError):
    """A checkpoint could not be read or converted; the message names what was found."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for a global outside the allow-list (``module.name`` is in the message)."""

    def __init__(self, message, global_name=None):
        super().__init__(message)
        self.global_name = global_name


class UnsupportedArchitectureError(CheckpointError):
    """The checkpoint holds a network pulse_ext cannot run (StyleGAN3, conditional, …)."""
