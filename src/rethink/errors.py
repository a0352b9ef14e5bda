"""The one error type for user mistakes.

A :class:`UserError` carries a single line that names the problem and the fix. The command line
prints it and exits with status 2, without a traceback. Bugs raise ordinary exceptions.
"""


class UserError(Exception):
    """A mistake in the user's input (spec, data file, model name, ...), not a bug."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
