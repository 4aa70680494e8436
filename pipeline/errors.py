"""Errors a user can act on: one line naming the thing and the fix."""


class PipelineError(Exception):
    """A user-facing error; the CLI prints its message on one line and exits non-zero."""
